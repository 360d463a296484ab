"""SMTP submission over real sockets: STARTTLS, AUTH, whose sender, and where
the message goes (smtplib and swaks as clients)."""

from __future__ import annotations

import base64
import email
import email.policy
import functools
import shutil
import smtplib
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from ams.config import Config, config_from_dict
from ams.store import Spool, Store, UserRegistry, fold
from gateways import serve_mx, serve_submission
from gateways._submission import complete_headers
from tests.mx_helpers import FAST_HASHER, add_users, running

MSG = b"From: alice@example.test\r\nSubject: submitted\r\n\r\nhi\r\n"


def make_config(tmp_path: Path, *, tls: bool = True, plaintext: bool = False,
                save_sent: bool = False) -> tuple[Config, trustme.CA]:
    ca = trustme.CA()
    section: dict[str, Any] = {"allow_plaintext_auth": plaintext}
    if tls:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        section.update(certificate=str(tmp_path / "server.pem"),
                       key=str(tmp_path / "server.pem"))
    cfg = config_from_dict({
        "store": {"root": str(tmp_path / "store"), "fsync": "never"},
        "host": {"name": "h1", "cache_dir": str(tmp_path / "cache")},
        "mail": {"domains": ["example.test", "example.org"]},
        "tls": section,
        "submission": {"save_sent": save_sent},
    })
    return cfg, ca


def setup(tmp_path: Path, **kw: Any) -> tuple[Config, Store, UserRegistry, ssl.SSLContext]:
    cfg, ca = make_config(tmp_path, **kw)
    store = Store.initialise(cfg)
    users = add_users(store, "alice", "bob")
    users.add_alias("alice", "a.smith")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return cfg, store, users, client_ctx


def spooled(store: Store, queue: str) -> list[tuple[str, list[str], bytes]]:
    spool = Spool(store)
    return [(e.envelope.mail_from, list(e.envelope.rcpt_to), e.message)
            for e in (spool.read(queue, i.id) for i in spool.list_entries(queue))]


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def running_submission(cfg: Config) -> Any:
    users = UserRegistry(Store(cfg), hasher=FAST_HASHER)  # no rehash to costly parameters
    return running(functools.partial(serve_submission, users=users), cfg)


async def test_auth_needs_tls_then_local_and_remote_recipients_are_split(
        tmp_path: Path) -> None:
    cfg, store, _, ctx = setup(tmp_path)

    def client(port: int) -> dict[str, Any]:
        got: dict[str, Any] = {}
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("client.test")
            got["plain_caps"] = s.esmtp_features.copy()
            got["mail_first"] = s.mail("alice@example.test")
            s.rset()
            got["auth_plain"] = s.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\0alice\0alice-pw").decode())
            s.starttls(context=ctx)
            s.ehlo("client.test")
            got["tls_caps"] = s.esmtp_features.copy()
            s.login("alice", "alice-pw")
            got["refused"] = s.sendmail("alice@example.test",
                                        ["bob@example.test", "carol@remote.test",
                                         "dave@other.test"], MSG)
        return got

    async with running_submission(cfg) as port:
        got = await in_thread(client, port)
    assert "auth" not in got["plain_caps"] and "starttls" in got["plain_caps"]
    assert got["mail_first"][0] == 530 and got["mail_first"][1].startswith(b"5.7.0")
    assert got["auth_plain"][0] == 538 and got["auth_plain"][1].startswith(b"5.7.11")
    assert got["tls_caps"]["auth"].split() == ["PLAIN", "LOGIN"]
    assert got["refused"] == {}
    ((f_in, to_in, m_in),) = spooled(store, "in")
    ((f_out, to_out, m_out),) = spooled(store, "out")
    assert f_in == f_out == "alice@example.test"
    assert to_in == ["bob@example.test"] and to_out == ["carol@remote.test", "dave@other.test"]
    assert m_in == m_out
    msg = email.message_from_bytes(m_out, policy=email.policy.SMTP)
    assert "with ESMTPSA" in msg["Received"] and "by h1" in msg["Received"]
    assert msg["Message-ID"].endswith("@example.test>") and msg["Date"]
    assert m_out.endswith(MSG)


async def test_auth_login_own_addresses_and_forged_senders(tmp_path: Path) -> None:
    cfg, store, _, ctx = setup(tmp_path)

    def client(port: int) -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.starttls(context=ctx)
            s.ehlo("c.test")
            code, text = s.docmd("AUTH", "LOGIN")
            assert code == 334
            s.docmd(base64.b64encode(b"alice@example.test").decode())
            assert s.docmd(base64.b64encode(b"alice-pw").decode())[0] == 235
            got = []
            for sender in ("alice@example.test", "ALICE+lists@Example.Org",
                           "a.smith@example.test", "bob@example.test", "alice@remote.test",
                           "", "postmaster@example.test"):
                got.append(s.docmd(f"MAIL FROM:<{sender}>"))
                s.rset()
        return got

    async with running_submission(cfg) as port:
        got = await in_thread(client, port)
    codes = [(c, t.split(b" ", 1)[0]) for c, t in got]
    assert codes[:3] == [(250, b"2.1.0")] * 3  # own name, +detail in another local domain, alias
    assert codes[3:] == [(553, b"5.7.1")] * 4  # another user, remote, null, unowned
    assert spooled(store, "in") == spooled(store, "out") == []


async def test_failed_auth_is_refused_and_slowed_down(tmp_path: Path) -> None:
    cfg, _, _, ctx = setup(tmp_path)

    def client(port: int) -> list[tuple[int, bytes, float]]:
        out = []
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.starttls(context=ctx)
            s.ehlo("c.test")
            for pw, authzid in ((b"wrong", b""), (b"wrong", b""), (b"wrong", b""),
                                (b"bob-pw", b"alice")):
                t = time.monotonic()
                code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(
                    authzid + b"\0bob\0" + pw).decode())
                out.append((code, text, time.monotonic() - t))
            out.append((*s.docmd("MAIL FROM:<bob@example.test>"), 0.0))
        return out

    async with running_submission(cfg) as port:
        got = await in_thread(client, port)
    assert [(c, t.split(b" ")[0]) for c, t, _ in got[:4]] == [(535, b"5.7.8")] * 4
    # 0.25 s after the first failure, doubling: the third waits at least 1 s.
    assert got[2][2] >= 0.9 and got[2][2] > got[0][2]
    assert got[4][0] == 530  # still not authenticated


async def test_no_auth_at_all_without_tls_unless_the_config_allows_it(tmp_path: Path) -> None:
    cfg, _, _, _ = setup(tmp_path, tls=False)
    allowed, _, _, _ = setup(tmp_path / "b", tls=False, plaintext=True)

    def caps(port: int) -> tuple[dict[str, str], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("c.test")
            return s.esmtp_features.copy(), s.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\0alice\0alice-pw").decode())

    async with running_submission(cfg) as port:
        features, auth = await in_thread(caps, port)
    assert "auth" not in features and "starttls" not in features and auth[0] == 538
    async with running_submission(allowed) as port:
        features, auth = await in_thread(caps, port)
    assert features["auth"].split() == ["PLAIN", "LOGIN"] and auth[0] == 235


async def test_unauthenticated_relay_is_refused_through_submission_and_mx(
        tmp_path: Path) -> None:
    cfg, store, _, _ = setup(tmp_path, tls=False, plaintext=True)

    def relay(port: int) -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("c.test")
            got = [s.docmd("MAIL FROM:<alice@example.test>")]
            got.append(s.docmd("RCPT TO:<victim@remote.test>"))
            return got

    async with running_submission(cfg) as port:
        sub = await in_thread(relay, port)
    async with running(serve_mx, cfg) as port:
        mx = await in_thread(relay, port)
    assert sub[0][0] == 530 and sub[1][0] == 503  # no MAIL without AUTH, so no RCPT
    assert mx[0][0] == 250 and (mx[1][0], mx[1][1][:5]) == (550, b"5.7.1")
    assert spooled(store, "out") == [] and spooled(store, "in") == []


async def test_unknown_local_recipient_is_refused_at_rcpt(tmp_path: Path) -> None:
    cfg, store, _, _ = setup(tmp_path, tls=False, plaintext=True)

    def client(port: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.login("bob", "bob-pw")
            return s.sendmail("bob@example.test", ["nobody@example.test", "x@remote.test"],
                              MSG)

    async with running_submission(cfg) as port:
        refused = await in_thread(client, port)
    assert refused["nobody@example.test"][0] == 550
    assert [r for _, r, _ in spooled(store, "out")] == [["x@remote.test"]]


async def test_sent_copy_only_when_configured(tmp_path: Path) -> None:
    for save in (True, False):
        cfg, store, users, _ = setup(tmp_path / str(save), tls=False, plaintext=True,
                                     save_sent=save)

        def client(port: int) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.login("alice", "alice-pw")
                s.sendmail("alice@example.test", ["x@remote.test"], MSG)

        async with running_submission(cfg) as port:
            await in_thread(client, port)
        lg = users.mailboxes("alice").open("Sent")
        st = fold(lg.reader())
        if not save:
            assert st.messages == {}
            continue
        (m,) = st.messages.values()
        assert "\\Seen" in m.flags
        body = lg.read_message(m.location)
        assert body.endswith(MSG) and b"Message-ID:" in body and b"Received:" not in body


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
async def test_swaks_submits_with_starttls_and_auth(tmp_path: Path) -> None:
    cfg, store, _, _ = setup(tmp_path)

    def swaks(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(port), "--tls",
             "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "bob-pw",
             "--from", "bob@example.test", "--to", "someone@remote.test",
             "--header", "Subject: via swaks", "--body", "swaks body"],
            capture_output=True, text=True, timeout=30)

    async with running_submission(cfg) as port:
        r = await in_thread(swaks, port)
    assert r.returncode == 0, r.stdout + r.stderr
    ((sender, rcpts, message),) = spooled(store, "out")
    assert sender == "bob@example.test" and rcpts == ["someone@remote.test"]
    assert b"Subject: via swaks" in message


def test_complete_headers_adds_only_what_is_missing() -> None:
    both = complete_headers(b"Subject: x\r\n\r\nbody\r\n", "a@example.test", "h1")
    head = both.split(b"\r\n\r\n")[0]
    assert head.startswith(b"Message-ID: <") and b"@example.test>\r\nDate: " in head
    assert both.endswith(b"Subject: x\r\n\r\nbody\r\n")
    kept = b"message-id: <m@x>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n"
    assert complete_headers(kept, "a@b", "h1") == kept
    # A "Date:" in the body or a folded line is not a header field.
    body_only = b"Subject: y\n\tDate: folded\n\nDate: in the body\n"
    out = complete_headers(body_only, "", "h1")
    assert out.startswith(b"Message-ID: <") and b"@h1>\nDate: " in out


def test_ams_serve_runs_submission_and_a_gateway(tmp_path: Path) -> None:
    """``ams serve``: the demo user submits to itself and to a remote domain."""
    import os
    import re
    import signal
    import sys

    from ams.config import load_config
    from ams.store import Place
    from ams.store.outqueue import DeferredQueue

    def wait_line(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError("".join(seen))

    with subprocess.Popen(
            [sys.executable, "-m", "ams.cli", "serve", "--root", "var/store",
             "--listen-smtp", "127.0.0.1:0", "--listen-submission", "127.0.0.1:0"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "AMS_LOG_LEVEL": "WARNING"}) as proc:
        try:
            seen: list[str] = []
            password = wait_line(proc, r"password (\S+)", seen)[1]
            port = int(wait_line(proc, r"submission \(AUTH required\): 127\.0\.0\.1:(\d+)",
                                 seen)[1])
            wait_line(proc, r"outbound gateways: 1", seen)
            store = Store(load_config(tmp_path / "var" / "ams.toml"))
            spool = Spool(store)
            assert [w.queues for w in spool.live_workers()].count(("out",)) == 1
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.login("demo", password)  # the demo allows AUTH without TLS
                refused = s.sendmail("demo@example.test",
                                     ["demo@example.test", "x@nowhere.invalid"], MSG)
            assert refused == {}
            inbox = UserRegistry(store).mailboxes("demo").open("INBOX")
            deferred = DeferredQueue(spool)

            def settled() -> tuple[int, int] | None:
                """(in INBOX, deferred) once nothing is queued or claimed."""
                busy = sum(spool.depth(q, p) for q in ("in", "out")
                           for p in (Place.QUEUED, Place.CLAIMED))
                filed = len(fold(inbox.reader()).messages)
                return None if busy else (filed, deferred.depth())

            # The local copy is filed; the remote one (no route: the demo looks
            # up MX records, and .invalid has none) is deferred or bounced to
            # the INBOX, depending on what DNS answers here: never lost.
            deadline = time.monotonic() + 40
            while (got := settled()) not in ((1, 1), (2, 0)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert got in ((1, 1), (2, 0)), got
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
            assert spool.live_workers() == []
        finally:
            if proc.poll() is None:
                proc.kill()
