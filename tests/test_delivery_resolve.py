"""Recipient resolution and the filing helpers: tables, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ams.store import Store, UserRegistry
from delivery import (
    EX_NOUSER,
    EX_TEMPFAIL,
    REFUSALS,
    Forward,
    Mailbox,
    Reason,
    Refusal,
    Resolution,
    Resolver,
    parse_address,
    plan_message,
)
from delivery._filing import delivered_to, delivery_prefix, header_section, line_ending
from tests.delivery_procs import config_dict, setup_store


@pytest.fixture
def world(tmp_path: Path) -> tuple[Store, UserRegistry, Resolver]:
    _config, store, reg = setup_store(
        config_dict(tmp_path, domains=["example.test", "Other.Example"]),
        ["alice", "bob", "carol", "dave", "erin", "bb"])
    reg.mailboxes("alice").create("Lists")
    reg.mailboxes("alice").create("lists/work")
    reg.add_alias("alice", "info")
    reg.add_alias("bob", "info")
    reg.add_alias("erin", "info")
    reg.add_alias("carol", "team")
    reg.set_disabled("carol", True)
    reg.set_disabled("erin", True)
    reg.set_forward("dave", "dave@far.test")
    return store, reg, Resolver(store)


def targets(r: Resolution | Refusal) -> list[str] | str:
    if isinstance(r, Refusal):
        return r.reason.name
    return sorted(str(t) for t in r.targets)


@pytest.mark.parametrize(("address", "expected"), [
    ("alice@example.test", ["alice:INBOX"]),
    ("ALICE@EXAMPLE.TEST", ["alice:INBOX"]),
    ("<alice@example.test>", ["alice:INBOX"]),
    ("alice@other.example", ["alice:INBOX"]),
    ("alice@example.test.", ["alice:INBOX"]),
    ("alice", ["alice:INBOX"]),                       # bare local part: local
    ("alice+Lists@example.test", ["alice:Lists"]),    # +detail to an existing mailbox
    ("alice+lists@example.test", ["alice:INBOX"]),    # mailbox names are case-sensitive
    ("alice+lists/work@example.test", ["alice:lists/work"]),
    ("alice+inbox@example.test", ["alice:INBOX"]),
    ("alice+nosuch@example.test", ["alice:INBOX"]),   # missing folder: INBOX
    ("alice+@example.test", ["alice:INBOX"]),
    ("alice+a+b@example.test", ["alice:INBOX"]),      # split once: detail "a+b"
    ("alice+..@example.test", ["alice:INBOX"]),       # an invalid name is just missing
    ("info@example.test", ["alice:INBOX", "bob:INBOX"]),      # fan-out, erin disabled
    ("info+Lists@example.test", ["alice:Lists", "bob:INBOX"]),
    ("dave@example.test", ["dave>dave@far.test"]),            # forward only
    ("nobody@example.test", "UNKNOWN_USER"),
    ("+alice@example.test", "UNKNOWN_USER"),
    ('"alice smith"@example.test', "BAD_ADDRESS"),
    ("alice@far.test", "NOT_LOCAL"),
    ("alice@[127.0.0.1]", "NOT_LOCAL"),
    ("carol@example.test", "DISABLED"),
    ("team@example.test", "DISABLED"),                # an alias of disabled users only
    ("bb+news@example.test", "UNKNOWN_BBOARD"),       # bboards: tests/test_bboard_mail.py
    ("BB+news@example.test", "UNKNOWN_BBOARD"),
    ("bb@example.test", ["bb:INBOX"]),                # a user named bb is still a user
    ("", "BAD_ADDRESS"),
    ("@example.test", "BAD_ADDRESS"),
    ("alice@", "BAD_ADDRESS"),
    ("ali\rce@example.test", "BAD_ADDRESS"),
    ("alice@example.test\nX-Evil: 1", "BAD_ADDRESS"),
])
def test_resolution_table(world: tuple[Store, UserRegistry, Resolver], address: str,
                          expected: list[str] | str) -> None:
    _store, _reg, resolver = world
    assert targets(resolver.resolve_for_rcpt(address)) == expected


def test_resolution_details(world: tuple[Store, UserRegistry, Resolver]) -> None:
    _store, reg, resolver = world
    r = resolver.resolve("Info+Lists@Example.Test")
    assert isinstance(r, Resolution)
    assert (r.local, r.detail, r.skipped) == ("info", "Lists", ("erin",))
    alice = next(t for t in r.targets if isinstance(t, Mailbox) and t.user == "alice")
    info = reg.mailboxes("alice").lookup("Lists")
    assert (alice.path, alice.log_id, alice.user_id) == (info.path, info.id,
                                                         reg.get("alice").id)
    fwd = resolver.resolve("dave@example.test")
    assert isinstance(fwd, Resolution) and fwd.targets == (Forward("dave", "dave@far.test"),)
    assert resolver.is_local("x@OTHER.example") and not resolver.is_local("x@far.test")


def test_unknown_bboard_refusal(world: tuple[Store, UserRegistry, Resolver]) -> None:
    r = world[2].resolve("bb+news@example.test")
    assert isinstance(r, Refusal) and r.permanent
    assert "no such bulletin board" in str(r)
    assert (r.reply.code, r.reply.enhanced, r.exit_code) == (550, "5.1.1", EX_NOUSER)


def test_refusal_replies_are_one_table() -> None:
    assert set(REFUSALS) == set(Reason)
    unknown = Refusal("x@example.test", Reason.UNKNOWN_USER)
    assert (unknown.reply.code, unknown.reply.enhanced, unknown.exit_code) == (550, "5.1.1",
                                                                                EX_NOUSER)
    relay = Refusal("x@far.test", Reason.NOT_LOCAL)
    assert (relay.reply.code, relay.reply.enhanced) == (550, "5.7.1")
    temp = Refusal("x@example.test", Reason.TEMPORARY, "EIO")
    assert not temp.permanent and temp.reply.code == 451 and temp.exit_code == EX_TEMPFAIL
    for r in REFUSALS.values():
        assert str(r.code)[0] == r.enhanced[0]


def test_damaged_user_is_temporary(world: tuple[Store, UserRegistry, Resolver]) -> None:
    store, reg, resolver = world
    # A record whose mail dir is gone is damage, not an unknown user.
    d = store.user_dir(reg.get("bob").id)
    d.rename(d.with_name("moved-away"))
    r = resolver.resolve("bob@example.test")
    assert isinstance(r, Refusal) and r.reason is Reason.TEMPORARY and not r.permanent
    assert "no mail directory" in r.detail
    # A record that is not JSON (and old enough not to be a create in progress).
    rec = reg.record_path("alice")
    rec.write_bytes(b"{broken")
    import os
    os.utime(rec, (1, 1))
    r = resolver.resolve("alice@example.test")
    assert isinstance(r, Refusal) and r.reason is Reason.TEMPORARY


@pytest.mark.parametrize(("raw", "local", "domain"), [
    ("a@b", "a", "b"), ("<a@b>", "a", "b"), ("a", "a", None), ("a@b@c", "a@b", "c"),
    (" a@b ", "a", "b")])
def test_parse_address(raw: str, local: str, domain: str | None) -> None:
    a = parse_address(raw)
    assert a is not None and (a.local, a.domain) == (local, domain)


def test_prefix_follows_line_endings() -> None:
    crlf = b"Subject: x\r\n\r\nbody\r\n"
    lf = b"Subject: x\n\nbody\n"
    assert line_ending(crlf) == b"\r\n" and line_ending(lf) == b"\n"
    assert delivery_prefix("s@x.test", "r@example.test", crlf) == (
        b"Return-Path: <s@x.test>\r\nDelivered-To: r@example.test\r\n")
    assert delivery_prefix("", "r@example.test", lf) == (
        b"Return-Path: <>\nDelivered-To: r@example.test\n")
    assert delivery_prefix(None, "r@example.test", lf) == b"Delivered-To: r@example.test\n"
    assert delivery_prefix("a\r\nX-Evil: 1@x", "r\n@x", crlf) == (
        b"Return-Path: <aX-Evil: 1@x>\r\nDelivered-To: r@x\r\n")


def test_delivered_to_is_read_from_the_header_only() -> None:
    msg = (b"Delivered-To: A@Example.Test\r\nSubject: x\r\ndelivered-to: <b@x>\r\n\r\n"
           b"Delivered-To: c@x\r\n")
    assert delivered_to(msg) == {"a@example.test", "b@x"}
    assert header_section(b"A: b\n\nbody") == b"A: b\n"


def test_plan_dedupes_mailboxes_and_detects_loops(
        world: tuple[Store, UserRegistry, Resolver]) -> None:
    _store, _reg, resolver = world
    msg = b"Subject: hi\r\n\r\nbody\r\n"
    plan = plan_message(["alice@example.test", "alice+nosuch@example.test", "info@example.test",
                         "nobody@example.test", "dave@example.test", "dave@example.test"],
                        resolver.resolve, sender="s@far.test", message=msg,
                        delivery_id=lambda r: f"E/{r}", internal_date=1, tz_minutes=0)
    assert [(f.recipient, str(f.target)) for f in plan.filings] == [
        ("alice@example.test", "alice:INBOX"), ("info@example.test", "bob:INBOX")]
    assert [f.delivery_id for f in plan.filings] == ["E/alice@example.test",
                                                      "E/info@example.test"]
    assert plan.forwards == [("dave@example.test", Forward("dave", "dave@far.test"))]
    assert [r.reason for r in plan.permanent] == [Reason.UNKNOWN_USER]
    nm = plan.filings[0].new_message()
    assert nm.message == (b"Return-Path: <s@far.test>\r\nDelivered-To: alice@example.test\r\n"
                          + msg)
    # The same message coming back to dave: a loop, not another forward.
    looped = b"Delivered-To: dave@example.test\r\n" + msg
    plan = plan_message(["dave@example.test"], resolver.resolve, sender="s@far.test",
                        message=looped, delivery_id=lambda r: r, internal_date=1, tz_minutes=0)
    assert plan.forwards == [] and [r.reason for r in plan.permanent] == [Reason.LOOP]


