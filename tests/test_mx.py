"""The inbound MX, over real sockets, with smtplib and swaks as clients."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest
import trio
import trustme

from ams.config import Config
from ams.store import Place, Spool, Store
from tests.conftest import MakeConfig
from tests.mx_helpers import add_users, running_mx

MSG = b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def config(make_config: MakeConfig, **limits: object) -> Config:
    cfg = make_config()
    if limits:
        import dataclasses
        cfg = cfg.replace(limits=dataclasses.replace(cfg.limits, **limits))
    return cfg


def spooled(store: Store) -> list[tuple[str, list[str], bytes]]:
    spool = Spool(store)
    out = []
    for info in spool.list_entries("in"):
        entry = spool.read("in", info.id)
        out.append((entry.envelope.mail_from, list(entry.envelope.rcpt_to), entry.message))
    return out


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(fn, *args)


async def test_accepts_local_recipients_and_spools_durably(make_config: MakeConfig) -> None:
    cfg = config(make_config)
    store = Store.initialise(cfg)
    users = add_users(store, "alice", "bob")
    users.add_alias("bob", "info")

    def client(port: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            code, caps = s.ehlo("client.test")
            assert code == 250 and b"ENHANCEDSTATUSCODES" in caps and b"PIPELINING" in caps
            return s.sendmail("x@remote.test", ["alice@example.test", "info@example.test",
                                                "alice+lists@Example.TEST"], MSG)

    async with running_mx(cfg) as port:
        refused = await in_thread(client, port)
    assert refused == {}
    ((sender, rcpts, message),) = spooled(store)
    assert sender == "x@remote.test"
    assert rcpts == ["alice@example.test", "info@example.test", "alice+lists@Example.TEST"]
    assert message.startswith(b"Received: from client.test ([127.0.0.1]:")
    assert b"by h1 (AMS) with ESMTP" in message and message.endswith(MSG)


async def test_refusals_carry_the_right_codes(make_config: MakeConfig) -> None:
    cfg = config(make_config, max_message_bytes=2000, max_recipients=3)
    store = Store.initialise(cfg)
    add_users(store, "alice")

    def client(port: int) -> list[tuple[int, bytes]]:
        got = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("c.test")
            s.mail("x@remote.test")
            got.append(s.rcpt("nobody@example.test"))
            got.append(s.rcpt("someone@elsewhere.test"))
            got.append(s.rcpt("bb+general@example.test"))
            got.append(s.rcpt("alice@example.test"))
            got.append(s.rcpt("alice@example.test"))
            got.append(s.rcpt("alice@example.test"))
            got.append(s.rcpt("alice@example.test"))  # the 4th accepted: too many
            s.rset()
            s.mail("x@remote.test", ["SIZE=999999"])
            got.append(s.rcpt("alice@example.test"))
            s.rset()
            s.mail("x@remote.test")
            s.rcpt("alice@example.test")
            got.append(s.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 50))
            s.rset()
            s.mail("x@remote.test")
            s.rcpt("alice@example.test")
            got.append(s.data(b"Subject: long line\r\n\r\n" + b"y" * 1200 + b"\r\n"))
            got.append(s.docmd("RCPT TO:<alice@example.test>"))  # no MAIL: bad sequence
        return got

    async with running_mx(cfg) as port:
        got = await in_thread(client, port)
    codes = [(c, t.split(b" ", 1)[0]) for c, t in got]
    assert codes[0] == (550, b"5.1.1")
    assert codes[1] == (550, b"5.7.1")
    assert codes[2][0] == 550
    assert codes[3:6] == [(250, b"2.1.5")] * 3
    assert codes[6] == (452, b"4.5.3")
    assert codes[7][0] == 503  # MAIL with SIZE too big was refused, so RCPT is out of sequence
    assert codes[8] == (552, b"5.3.4")
    assert codes[9] == (500, b"5.5.2")  # a line over max_line_bytes
    assert codes[10] == (503, b"5.5.1")
    assert spooled(store) == []


async def test_garbage_and_overlong_lines_get_replies_and_server_keeps_serving(
        make_config: MakeConfig) -> None:
    cfg = config(make_config, max_bad_commands=5)
    store = Store.initialise(cfg)
    add_users(store, "alice")

    def abuse(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            f = sock.makefile("rwb")
            f.readline()
            f.write(b"\x00\xff\xfe garbage\r\nEHLO " + b"a" * 2000 + b"\r\n")
            f.write(b"NONSENSE\r\nMAIL FROM:<<<>>>\r\nRCPT TO:<a@b>\r\nFOO\r\nBAR\r\n")
            f.flush()
            return f.read()

    def good(port: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            return s.sendmail("x@remote.test", ["alice@example.test"], MSG)

    async with running_mx(cfg) as port:
        transcript = await in_thread(abuse, port)
        assert await in_thread(good, port) == {}
    lines = transcript.split(b"\r\n")
    assert lines[0].startswith(b"500 5.5.2")
    assert any(ln.startswith(b"421 4.7.0") for ln in lines)
    assert b"Traceback" not in transcript
    assert len(spooled(store)) == 1


async def test_stalled_client_is_timed_out(make_config: MakeConfig) -> None:
    cfg = config(make_config, command_timeout=0.5)
    Store.initialise(cfg)

    def stall(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            f = sock.makefile("rb")
            f.readline()
            return f.readline()

    async with running_mx(cfg) as port:
        with trio.fail_after(10):
            line = await in_thread(stall, port)
    assert line.startswith(b"421 4.4.2")


async def test_bad_pipelining_is_answered_in_order(make_config: MakeConfig) -> None:
    cfg = config(make_config)
    store = Store.initialise(cfg)
    add_users(store, "alice")

    def pipeline(port: int) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            f = sock.makefile("rwb")
            f.readline()
            f.write(b"EHLO c.test\r\n")
            f.flush()
            while f.readline()[3:4] == b"-":
                pass
            f.write(b"RCPT TO:<alice@example.test>\r\nMAIL FROM:<x@r.test>\r\n"
                    b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"DATA\r\nSubject: p\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            f.flush()
            return [f.readline()[:9] for _ in range(7)]

    async with running_mx(cfg) as port:
        replies = await in_thread(pipeline, port)
    assert replies == [b"503 5.5.1", b"250 2.1.0", b"550 5.1.1", b"250 2.1.5", b"354 End d",
                       b"250 2.0.0", b"221 2.0.0"]
    assert len(spooled(store)) == 1


async def test_disk_error_answers_451_and_leaves_nothing(make_config: MakeConfig) -> None:
    cfg = config(make_config)
    store = Store.initialise(cfg)
    add_users(store, "alice")
    staging = store.staging_dir()
    staging.chmod(0o500)  # root ignores modes: make it a file instead
    staging.rmdir()
    staging.write_bytes(b"not a directory")

    def client(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("c.test")
            s.mail("x@remote.test")
            s.rcpt("alice@example.test")
            return s.data(MSG)

    try:
        async with running_mx(cfg) as port:
            code, text = await in_thread(client, port)
    finally:
        staging.unlink()
    assert (code, text.split(b" ")[0]) == (451, b"4.3.0")
    spool = Spool(store)
    assert spool.depth("in") == 0 and spool.depth("in", Place.CLAIMED) == 0


async def test_starttls_with_a_trustme_certificate(make_config: MakeConfig, tmp_path: Path
                                                   ) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "mx.pem"))
    cfg = make_config()
    import dataclasses
    cfg = cfg.replace(tls=dataclasses.replace(cfg.tls, certificate=tmp_path / "mx.pem",
                                              key=tmp_path / "mx.pem"))
    store = Store.initialise(cfg)
    add_users(store, "alice")

    def client(port: int) -> bytes:
        import ssl
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("c.test")
            assert s.has_extn("starttls")
            s.starttls(context=ctx)
            s.ehlo("c.test")
            assert not s.has_extn("starttls")
            s.sendmail("x@remote.test", ["alice@example.test"], MSG)
            return b"ok"

    async with running_mx(cfg) as port:
        assert await in_thread(client, port) == b"ok"
    ((_, _, message),) = spooled(store)
    assert b"with ESMTPS" in message


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks (Debian package) not installed")
async def test_swaks_delivers(make_config: MakeConfig) -> None:
    cfg = config(make_config)
    store = Store.initialise(cfg)
    add_users(store, "alice", "bob")
    async with running_mx(cfg) as port:
        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["swaks", "--server", f"127.0.0.1:{port}", "--from", "s@remote.test",
                 "--to", "alice@example.test,bob+x@example.test", "--header",
                 "Subject: via swaks", "--body", "hello from swaks", "--pipeline"],
                capture_output=True, text=True, timeout=30)
        r = await in_thread(run)
    assert r.returncode == 0, r.stdout + r.stderr
    ((sender, rcpts, message),) = spooled(store)
    assert rcpts == ["alice@example.test", "bob+x@example.test"]
    assert b"Subject: via swaks" in message
