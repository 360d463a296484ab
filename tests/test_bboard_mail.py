"""Posting by mail: SMTP client → real MX → spool → delivery workers → the board's logs."""

from __future__ import annotations

import functools
import smtplib

import trio

from ams.config import Config
from ams.store import Place, Spool, Store, fold
from bboard import Bboards, BoardInfo
from delivery import EX_OK, EX_UNAVAILABLE, deliver_main, serve_workers
from gateways import serve_mx
from tests.conftest import MakeConfig
from tests.mx_helpers import add_users
from tests.waiting import WAIT


def message(subject: str) -> bytes:
    return (f"From: someone@far.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@far.test>\r\n\r\nabout {subject}\r\n").encode()


def board_subjects(boards: Bboards, info: BoardInfo, *, pending: bool = False) -> list[str]:
    lg = boards.open_pending(info) if pending else boards.open(info)
    out = []
    for _, m in sorted(fold(lg.reader()).messages.items()):
        body = lg.read_message(m.location)
        out.append(body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
    return out


async def run_site(cfg: Config, client) -> list[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    spool = Spool(Store(cfg))
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(functools.partial(serve_workers, cfg, count=2))
        listeners = await nursery.start(functools.partial(serve_mx, cfg, on_queued=pool.wake,
                                                          listen="127.0.0.1:0"))
        port = listeners[0].socket.getsockname()[1]
        got = await trio.to_thread.run_sync(client, port)
        with trio.fail_after(WAIT):
            while spool.depth("in") or spool.depth("in", Place.CLAIMED):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert spool.depth("in", Place.FAILED) == 0
    return got  # type: ignore[no-any-return]


async def test_posting_by_mail_under_each_policy(make_config: MakeConfig) -> None:
    cfg = make_config()
    store = Store.initialise(cfg)
    boards = Bboards(store, add_users(store, "alice", "bob", "mod"))
    general = boards.create("andrew.general")
    members = boards.create("members.only", post="members", members=["alice"])
    moderated = boards.create("mod.board", post="moderated", moderators=["mod"])

    def transaction(s: smtplib.SMTP, sender: str, rcpts: list[str], subject: str,
                    got: list[tuple[int, bytes]]) -> None:
        s.mail(sender)
        accepted = 0
        for r in rcpts:
            code, text = s.rcpt(r)
            got.append((code, text.split(b" ", 1)[0]))
            accepted += code == 250
        if accepted:
            code, _ = s.data(message(subject))
            assert code == 250
        else:
            s.rset()

    def client(port: int) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("client.test")
            transaction(s, "someone@far.test", ["bb+andrew.general@example.test"], "open", got)
            # Both spellings reach one board, and the board gets one copy; a
            # user in the same message gets hers.
            transaction(s, "someone@far.test", ["BB+Andrew.General@Example.Test",
                                                "bb+andrew.general@example.test",
                                                "bob@example.test"], "twice", got)
            transaction(s, "someone@far.test", ["bb+no.such@example.test"], "unknown", got)
            transaction(s, "someone@far.test", ["bb+a/b@example.test"], "bad", got)  # "/"
            transaction(s, "someone@far.test", ["bb+members.only@example.test"], "outsider",
                        got)
            transaction(s, "", ["bb+members.only@example.test"], "bounce", got)
            transaction(s, "bob@example.test", ["bb+members.only@example.test"], "bob", got)
            transaction(s, "alice@example.test", ["bb+members.only@example.test"], "member",
                        got)
            # Moderated: accepted from anyone, into the pending log; mail
            # never skips moderation, not even from a moderator's address.
            transaction(s, "someone@far.test", ["bb+mod.board@example.test"], "moderate-me",
                        got)
            transaction(s, "mod@example.test", ["bb+mod.board@example.test"], "from-mod", got)
        return got

    got = await run_site(cfg, client)
    assert got == [(250, b"2.1.5")] * 4 + [(550, b"5.1.1")] * 2 + [(550, b"5.7.1")] * 3 + [
        (250, b"2.1.5")] * 3
    # Two workers file concurrently, so the order of the posts is not fixed.
    assert sorted(board_subjects(boards, general)) == ["open", "twice"]
    first = boards.message(general, board_subjects(boards, general).index("open") + 1)
    assert first.startswith(b"Return-Path: <someone@far.test>\r\n"
                            b"Delivered-To: bb+andrew.general@example.test\r\n")
    assert board_subjects(boards, members) == ["member"]
    assert board_subjects(boards, moderated) == []  # invisible until approved
    assert sorted(board_subjects(boards, moderated, pending=True)) == ["from-mod",
                                                                       "moderate-me"]
    (wait,) = [p.uid for p in boards.pending(moderated) if p.subject == "moderate-me"]
    boards.approve(moderated, wait, moderator="mod")
    assert board_subjects(boards, moderated) == ["moderate-me"]
    assert board_subjects(boards, moderated, pending=True) == ["from-mod"]
    bob_inbox = fold(boards.users.mailboxes("bob").open("INBOX").reader())
    assert len(bob_inbox.messages) == 1

    # The LDA files into boards too; it has no RCPT of its own, so a
    # members-only board admits its -f sender.
    assert deliver_main(cfg, ["bb+andrew.general@example.test"], "x@far.test",
                        message("by-lda")) == EX_OK
    assert board_subjects(boards, general)[2:] == ["by-lda"]
    members_addr = "bb+members.only@example.test"
    for sender in ("x@far.test", "bob@example.test", ""):
        assert deliver_main(cfg, [members_addr], sender, message("lda-denied")) == EX_UNAVAILABLE
    assert deliver_main(cfg, [members_addr], "alice@example.test",
                        message("lda-member")) == EX_OK
    assert board_subjects(boards, members) == ["member", "lda-member"]


async def test_filing_admits_again(make_config: MakeConfig) -> None:
    """RCPT admitted these posts to a members-only board (the MX's check is
    tested above); the worker checks again when it files: by the user that
    submission authenticated when the entry says so, else by the envelope
    sender.  A member removed in between gets a notice instead of a post."""
    cfg = make_config()
    store = Store.initialise(cfg)
    boards = Bboards(store, add_users(store, "alice", "bob", "carol"))
    members = boards.create("members.only", post="members", members=["alice", "carol"])
    spool = Spool(store)
    addr = "bb+members.only@example.test"
    for sender, subject, client in (
            ("alice@example.test", "by-alice", {}),
            ("x@far.test", "by-stranger", {}),
            ("bob@example.test", "by-bob", {}),
            ("", "by-null-sender", {}),
            ("x@far.test", "submitted-by-alice", {"auth": "alice"}),
            ("alice@example.test", "submitted-by-bob", {"auth": "bob"}),
            ("carol@example.test", "by-carol-removed", {})):
        spool.enqueue("in", mail_from=sender, rcpt_to=[addr], message=message(subject),
                      client=client)
    boards.update("members.only", remove_members=["carol"])
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_workers, cfg))
        with trio.fail_after(WAIT):
            while spool.depth("in") or spool.depth("in", Place.CLAIMED):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert spool.depth("in", Place.FAILED) == 0
    assert sorted(board_subjects(boards, members)) == ["by-alice", "submitted-by-alice"]
    notices = [boards.users.mailboxes(u).open("INBOX") for u in ("bob", "carol")]
    for log in notices:
        (m,) = fold(log.reader()).messages.values()
        text = log.read_message(m.location)
        assert b"Undelivered Mail" in text and b"Status: 5.7.1" in text


def test_resolver_checks_members_when_told_who_posts(make_config: MakeConfig) -> None:
    from delivery import Reason, Refusal, Resolution, Resolver
    from delivery._resolve import BboardTarget

    store = Store.initialise(make_config())
    boards = Bboards(store, add_users(store, "alice", "bob", "mod"))
    members = boards.create("members.only", post="members", members=["alice"])
    moderated = boards.create("mod.board", post="moderated", moderators=["mod"])
    resolver = Resolver(store)
    addr = "bb+members.only@example.test"

    def reason(r: Resolution | Refusal) -> str:
        return r.reason.name if isinstance(r, Refusal) else "ok"

    assert [reason(resolver.resolve_for_rcpt(addr, s)) for s in (
        "alice@example.test", "alice+tag@EXAMPLE.test", "bob@example.test",
        "alice@far.test", "", None)] == ["ok", "ok"] + ["BBOARD_DENIED"] * 4
    # Submission passes its authenticated user, which counts instead of the sender.
    assert reason(resolver.resolve_for_rcpt(addr, "x@far.test", user="alice")) == "ok"
    assert reason(resolver.resolve_for_rcpt(addr, "alice@example.test",
                                            user="bob")) == "BBOARD_DENIED"
    # With neither sender nor user, admission is not checked (what the
    # worker and the LDA pass is tested above).
    filed = resolver.resolve(addr)
    assert isinstance(filed, Resolution)
    (t,) = filed.targets
    assert isinstance(t, BboardTarget) and (t.path, t.log_id, t.pending) == (
        members.posts_path, members.id, False)
    pend = resolver.resolve_for_rcpt("bb+mod.board@example.test", "mod@example.test")
    assert isinstance(pend, Resolution)
    (t,) = pend.targets
    assert isinstance(t, BboardTarget) and (t.path, t.pending) == (moderated.pending_path, True)
    assert str(t) == "bboard:mod.board(pending)"
    bad = resolver.resolve_for_rcpt("bb+a..b@example.test", "x@far.test")
    assert isinstance(bad, Refusal) and bad.reason is Reason.UNKNOWN_BBOARD
