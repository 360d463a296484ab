"""The IMAP bridge with real clients over real sockets."""

from __future__ import annotations

import imaplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path

import trio

from ams.config import Config
from ams.protocols.imap import encode_mailbox_name
from ams.store import NewMessage, Store, UserRegistry
from tests.conftest import MakeConfig
from tests.imap_helpers import bridge_process, plaintext, running_imap
from tests.mx_helpers import add_users


def seed(store: Store, user: str, n: int) -> None:
    log = UserRegistry(store).mailboxes(user).open("INBOX")
    log.append([NewMessage(
        b"From: Bob <bob@x.test>\r\nTo: %s@example.test\r\nSubject: note %d\r\n"
        b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nbody %d\r\n" % (user.encode(), i, i),
        internal_date=1_700_000_000 + i) for i in range(1, n + 1)])


def multipart() -> bytes:
    m = EmailMessage()
    m["From"] = "Jürgen Müller <juergen@x.test>"
    m["To"] = "alice@example.test"
    m["Subject"] = "Grüße aus Köln"
    m.set_content("Hallo Alice, schöne Grüße!\n" * 20)
    m.add_alternative("<p>Hallo <b>Alice</b></p>", subtype="html")
    m.add_attachment(b"\x00\x01binary" * 100, maintype="application", subtype="octet-stream",
                     filename="data.bin")
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(fn, *args)


def site(make_config: MakeConfig, host: str = "h1") -> tuple[Config, Store]:
    cfg = plaintext(make_config(host=host))
    store = Store.initialise(cfg)
    return cfg, store


async def test_imaplib_through_the_commands(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 5)
    mp = multipart()

    def client(port: int) -> None:
        c = imaplib.IMAP4("127.0.0.1", port)
        typ, caps = c.capability()
        assert b"IDLE" in caps[0] and b"UIDPLUS" in caps[0] and b"MOVE" in caps[0]
        assert c.login("alice", "alice-pw")[0] == "OK"
        typ, data = c.list()
        names = [d.decode().rsplit(" ", 1)[1] for d in data]
        assert names[0] == "INBOX" and {"Sent", "Trash", "Drafts", "Junk", "Archive"} <= set(names)
        assert any(b"\\Sent" in d for d in data)
        typ, data = c.namespace()
        assert data == [b'(("" "/")) NIL (("Bboards/" "/"))']
        typ, data = c.select("INBOX")
        assert (typ, data) == ("OK", [b"5"])
        typ, data = c.fetch("1:2", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
        assert b'ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "note 1" (("Bob" NIL "bob" "x.test"))' \
            in data[0]
        assert b"UID 2" in data[1] and b"FLAGS ()" in data[1]
        typ, data = c.append("INBOX", "(\\Flagged)", None, mp)
        assert typ == "OK" and b"[APPENDUID " in data[0]
        typ, data = c.noop()
        typ, data = c.fetch("6", "(BODYSTRUCTURE)")
        assert b'(("text" "plain" ("charset" "utf-8") NIL NIL' in data[0]
        assert b'"alternative"' in data[0] and b'"mixed"' in data[0]
        typ, data = c.fetch("6", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1.1]<0.10>)")
        assert b"Subject: =?utf-8?" in data[0][1]
        assert data[1][1] == b"Hallo Alic"
        typ, data = c.fetch("6", "(FLAGS)")
        assert b"\\Seen" not in data[0]  # PEEK does not set \\Seen
        typ, data = c.fetch("6", "(BODY[2])")
        assert data[0][1].startswith(b"AAFiaW5hcnk")  # base64 of the attachment, as stored
        typ, data = c.fetch("6", "(FLAGS)")
        assert b"\\Seen" in data[0] and b"\\Flagged" in data[0]
        c.literal = "Jürgen".encode()
        typ, data = c.search("UTF-8", "FROM")
        assert data == [b"6"]
        c.literal = "Grüße".encode()
        typ, data = c.search("UTF-8", "SUBJECT")
        assert data == [b"6"]
        typ, data = c.uid("SEARCH", None, "SUBJECT", "note", "NOT", "SEEN")
        assert data == [b"1 2 3 4 5"]
        typ, data = c.search(None, "BODY", "body", "SINCE", "1-Jan-2020")
        assert data == [b"1 2 3 4 5"]
        assert c.store("1:2", "+FLAGS", "(\\Deleted $Label1)")[0] == "OK"
        typ, data = c.store("3", "+FLAGS.SILENT", "(\\Answered)")
        assert data == [None]
        typ, data = c.expunge()
        assert data == [b"2", b"1"]  # highest first: each number is valid when sent
        assert c.create("Work/Projects")[0] == "OK"
        typ, data = c.copy("1", "Work/Projects")
        assert typ == "OK" and b"[COPYUID " in data[0]
        typ, data = c._simple_command("UID", "MOVE", "4", "Archive")
        assert typ == "OK"
        typ, data = c.status("Archive", "(MESSAGES UIDNEXT UNSEEN)")
        assert data == [b"Archive (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"]
        typ, data = c.status("Work/Projects", "(MESSAGES)")
        assert data == [b"Work/Projects (MESSAGES 1)"]
        assert c.rename("Work", "Job")[0] == "OK"
        typ, data = c.list('""', "Job/*")
        assert data == [b'(\\HasNoChildren) "/" Job/Projects']
        assert c.subscribe("Job/Projects")[0] == "OK"
        typ, data = c.lsub()
        assert b'"/" Job/Projects' in b" ".join(data)
        wire = encode_mailbox_name("Ünïcödé")  # clients send modified UTF-7 (RFC 3501 5.1.3)
        assert c.create(wire)[0] == "OK"
        typ, data = c.list()
        assert any(wire.encode() in d for d in data)
        assert "Ünïcödé" in [i.name for i in UserRegistry(store).mailboxes("alice").list()]
        assert c.delete("Job/Projects")[0] == "OK"
        typ, data = c.select("Archive", readonly=True)
        assert c.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"
        c.close()
        c.logout()

    async with running_imap(cfg) as port:
        await in_thread(client, port)


async def test_bad_names_and_cross_user_access_are_refused(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice", "bob")
    seed(store, "bob", 2)

    def attempt(fn, *args) -> str:  # type: ignore[no-untyped-def]
        try:
            return str(fn(*args)[0])
        except imaplib.IMAP4.error as e:
            return "BAD" if "BAD" in str(e) else f"error: {e}"

    def client(port: int) -> list[str]:
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login("alice", "alice-pw")
        out = []
        for name in ["../bob/INBOX", "/etc/passwd", "..", "&AC4ALgAv-", "INBOX/../../bob",
                     "&Jjo!", "&AGE-", "a\\b/../../x", "/", "a//b"]:
            out.append(attempt(c.select, f'"{name}"'))
            out.append(attempt(c.create, f'"{name}"'))
            out.append(attempt(c.rename, "INBOX", f'"{name}"'))
        # Names that look like another user's are alice's own, and do not exist yet.
        for name in ["bob/INBOX", "~bob/INBOX"]:
            out.append(attempt(c.select, f'"{name}"'))
            assert attempt(c.create, f'"{name}"') == "OK"
        assert attempt(c.select, "INBOX") == "OK"
        c.logout()
        return out

    async with running_imap(cfg) as port:
        results = await in_thread(client, port)
    assert set(results) <= {"NO", "BAD"}, results
    users = UserRegistry(store)
    alice = users.mailboxes("alice")
    names = sorted(i.name for i in alice.list())
    assert names == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash", "bob/INBOX",
                     "~bob/INBOX"]
    alice_dir = store.user_dir(users.get("alice").id)
    for info in alice.list():
        assert info.path.parent == alice_dir and info.path.name == info.id
    bob = UserRegistry(store).mailboxes("bob").open("INBOX")
    assert len(bob.reader().poll().records) == 2


async def test_logindisabled_without_tls(make_config: MakeConfig) -> None:
    cfg = make_config()
    store = Store.initialise(cfg)
    add_users(store, "alice")

    def client(port: int) -> tuple[bytes, str]:
        c = imaplib.IMAP4("127.0.0.1", port)
        caps = c.capability()[1][0]
        try:
            c.login("alice", "alice-pw")
            return caps, "OK"
        except imaplib.IMAP4.error as e:
            return caps, str(e)
        finally:
            c.shutdown()

    async with running_imap(cfg) as port:
        caps, result = await in_thread(client, port)
    assert b"LOGINDISABLED" in caps
    assert result != "OK"


async def test_failed_logins_are_delayed(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")

    def client(port: int) -> list[float]:
        times = []
        c = imaplib.IMAP4("127.0.0.1", port)
        for _ in range(4):
            t = time.monotonic()
            try:
                c.login("alice", "wrong")
            except imaplib.IMAP4.error:
                pass
            times.append(time.monotonic() - t)
        assert c.login("alice", "alice-pw")[0] == "OK"
        c.logout()
        return times

    async with running_imap(cfg) as port:
        times = await in_thread(client, port)
    assert times[3] >= 1.5 and times[3] > times[0]


async def test_garbage_gets_bad_and_the_server_keeps_serving(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")

    def abuse(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.recv(1000)
            s.sendall(b"\x00\xff garbage\r\na1 FETCH\r\n* * *\r\na2 LOGIN {5}\r\n"
                      b"a3 SELECT\r\n)))\r\na4 NOOP\r\n")
            time.sleep(0.3)
            return s.recv(10000)

    def good(port: int) -> str:
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login("alice", "alice-pw")
        typ, _ = c.select("INBOX")
        c.logout()
        return typ

    async with running_imap(cfg) as port:
        out = await in_thread(abuse, port)
        assert await in_thread(good, port) == "OK"
    assert b"BAD" in out and b"Traceback" not in out


def idle_until(port: int, user: str, trigger, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """IDLE on INBOX; run ``trigger``; return seconds until EXISTS arrives."""
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, f"{user}-pw")
    c.select("INBOX")
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    c.sock.settimeout(timeout)
    t0 = time.monotonic()
    trigger()
    while True:
        line = c.readline()
        if line.endswith(b"EXISTS\r\n"):
            elapsed = time.monotonic() - t0
            break
    c.send(b"DONE\r\n")
    c.readline()
    c.logout()
    return elapsed


def test_two_bridges_agree_and_idle_sees_the_others_changes(make_config: MakeConfig,
                                                            tmp_path: Path) -> None:
    cfg_a, store = site(make_config, "a")
    cfg_b = plaintext(make_config(host="b"))
    add_users(store, "alice")
    seed(store, "alice", 10)
    with bridge_process(cfg_a, tmp_path / "a.toml") as pa, \
            bridge_process(cfg_b, tmp_path / "b.toml") as pb:
        ca = imaplib.IMAP4("127.0.0.1", pa)
        cb = imaplib.IMAP4("127.0.0.1", pb)
        for c in (ca, cb):
            c.login("alice", "alice-pw")
            c.select("INBOX")
        ca.store("2:4", "+FLAGS", "(\\Flagged)")
        ca.store("5", "+FLAGS", "(\\Deleted)")
        ca.expunge()
        ca.append("INBOX", "(\\Seen)", None, b"Subject: via a\r\n\r\nx\r\n")
        cb.noop()
        # B was told about the changes made through A, unasked:
        assert cb.untagged_responses.pop("EXPUNGE") == [b"5"]
        assert cb.untagged_responses.pop("EXISTS")[-1] == b"10"
        told = cb.untagged_responses.pop("FETCH")
        assert sorted(told) == [b"%d (FLAGS (\\Flagged) UID %d)" % (i, i) for i in (2, 3, 4)]
        ca.untagged_responses.clear()
        fa = ca.fetch("1:*", "(UID FLAGS)")[1]
        fb = cb.fetch("1:*", "(UID FLAGS)")[1]
        assert fa == fb and len(fa) == 10
        latency = idle_until(pb, "alice", lambda: ca.append(
            "INBOX", None, None, b"Subject: for the idler\r\n\r\nx\r\n"))
        assert latency < 2.0
        ca.logout()
        cb.logout()


async def test_starttls_and_implicit_tls(make_config: MakeConfig, tmp_path: Path) -> None:
    import dataclasses
    import ssl

    import trustme
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "imap.pem"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    cfg = make_config()  # no plaintext logins
    cfg = cfg.replace(tls=dataclasses.replace(cfg.tls, certificate=tmp_path / "imap.pem",
                                              key=tmp_path / "imap.pem"),
                      listen=dataclasses.replace(cfg.listen, imaps=f"127.0.0.1:{tls_port}"))
    store = Store.initialise(cfg)
    add_users(store, "alice")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    def client(port: int) -> None:
        c = imaplib.IMAP4("127.0.0.1", port)
        assert b"LOGINDISABLED" in c.capability()[1][0]
        c.starttls(ssl_context=ctx)
        caps = c.capability()[1][0]
        assert b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
        assert c.login("alice", "alice-pw")[0] == "OK"
        c.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
        assert s.login("alice", "alice-pw")[0] == "OK"
        assert s.select("INBOX")[0] == "OK"
        s.logout()

    async with running_imap(cfg) as port:
        await in_thread(client, port)


async def test_capabilities_are_only_what_works(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")

    def client(port: int) -> bytes:
        c = imaplib.IMAP4("127.0.0.1", port)
        caps = c.capability()[1][0]
        c.logout()
        return caps

    async with running_imap(cfg) as port:
        caps = await in_thread(client, port)
    assert b"QRESYNC" in caps
    assert b"CONDSTORE" in caps and b"IDLE" in caps


async def test_autologout_after_inactivity_in_idle(make_config: MakeConfig) -> None:
    import dataclasses
    cfg, store = site(make_config)
    cfg = cfg.replace(limits=dataclasses.replace(cfg.limits, imap_autologout=1.0))
    add_users(store, "alice")

    def client(port: int) -> list[bytes]:
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login("alice", "alice-pw")
        c.select("INBOX")
        c.send(c._new_tag() + b" IDLE\r\n")
        c.sock.settimeout(10)
        lines = [c.readline()]
        while lines[-1] and not lines[-1].startswith(b"* BYE"):
            lines.append(c.readline())
        c.shutdown()
        return lines

    async with running_imap(cfg) as port:
        with trio.fail_after(15):
            lines = await in_thread(client, port)
    assert lines[0].startswith(b"+") and lines[-1].startswith(b"* BYE")
