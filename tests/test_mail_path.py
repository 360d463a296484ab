"""The whole inbound path: SMTP clients → MX → spool → workers → mailbox logs."""

from __future__ import annotations

import functools
import shutil
import smtplib
import subprocess
from collections import Counter

import pytest
import trio

from ams.config import Config
from ams.store import Spool, Store, UserRegistry, fold
from delivery import serve_workers
from gateways import serve_mx
from tests.conftest import MakeConfig
from tests.mx_helpers import add_users


def mailbox_messages(users: UserRegistry, user: str, mailbox: str = "INBOX") -> list[bytes]:
    log = users.mailboxes(user).open(mailbox)
    st = fold(log.reader())
    return [log.read_message(m.location) for _, m in sorted(st.messages.items())]


async def run_site(cfg: Config, client) -> None:  # type: ignore[no-untyped-def]
    store = Store(cfg)
    spool = Spool(store)
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(functools.partial(serve_workers, cfg, count=2))
        listeners = await nursery.start(functools.partial(serve_mx, cfg, on_queued=pool.wake,
                                                          listen="127.0.0.1:0"))
        port = listeners[0].socket.getsockname()[1]
        await trio.to_thread.run_sync(client, port)
        with trio.fail_after(30):
            while spool.depth("in") or spool.depth("in", spool_place_claimed()):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


def spool_place_claimed():  # type: ignore[no-untyped-def]
    from ams.store import Place
    return Place.CLAIMED


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks (Debian package) not installed")
async def test_smtplib_and_swaks_to_users_aliases_detail_and_many(make_config: MakeConfig
                                                                  ) -> None:
    cfg = make_config()
    store = Store.initialise(cfg)
    users = add_users(store, "alice", "bob", "carol")
    users.add_alias("bob", "team")
    users.add_alias("carol", "team")
    users.mailboxes("alice").create("lists")

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.sendmail("sender@remote.test", ["alice@example.test"],
                       b"Subject: one\r\nMessage-ID: <one@remote.test>\r\n\r\nto alice\r\n")
            s.sendmail("sender@remote.test", ["alice+lists@example.test"],
                       b"Subject: two\r\n\r\nto alice's lists folder\r\n")
            s.sendmail("sender@remote.test", ["alice+nosuchfolder@example.test"],
                       b"Subject: three\r\n\r\nto alice's INBOX\r\n")
            s.sendmail("", ["team@example.test", "alice@example.test"],
                       b"Subject: four\r\n\r\nto the team and alice, null sender\r\n")
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "sw@remote.test",
                            "--to", "alice@example.test,bob@example.test,carol+x@example.test",
                            "--header", "Subject: five", "--body", "swaks to three"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr

    await run_site(cfg, client)

    def subjects(user: str, mailbox: str = "INBOX") -> Counter[str]:
        out: Counter[str] = Counter()
        for m in mailbox_messages(users, user, mailbox):
            for line in m.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    out[line[9:].decode()] += 1
        return out

    assert subjects("alice") == Counter({"one": 1, "three": 1, "four": 1, "five": 1})
    assert subjects("alice", "lists") == Counter({"two": 1})
    assert subjects("bob") == Counter({"four": 1, "five": 1})
    assert subjects("carol") == Counter({"four": 1, "five": 1})
    (first, *_) = mailbox_messages(users, "alice")
    head = first.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Return-Path: <sender@remote.test>\r\n"
                           b"Delivered-To: alice@example.test\r\nReceived: from ")
    assert b"Message-ID: <one@remote.test>" in head
    four = [m for m in mailbox_messages(users, "bob") if b"Subject: four" in m][0]
    assert four.startswith(b"Return-Path: <>\r\nDelivered-To: team@example.test\r\n")
