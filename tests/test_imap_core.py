"""The sans-IO IMAP server core: table tests of (state, command line) →
event, errors and state enforcement, literals (synchronising, LITERAL+,
LITERAL-, refused, split anywhere), IDLE, STARTTLS, AUTHENTICATE, the
response encoder against hand-written bytes, sequence sets, and a
hypothesis fuzz of random input fed whole, in random pieces and byte by byte."""

from __future__ import annotations

import base64
import imaplib
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ams.protocols.imap import (
    NEED_DATA,
    PAUSED,
    All,
    And,
    Append,
    Atom,
    Authenticate,
    BodyKey,
    Check,
    Close,
    Command,
    ConnectionClosed,
    ContinueRequest,
    Copy,
    Create,
    DateKey,
    Delete,
    Event,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FlagKey,
    HeaderKey,
    Id,
    Idle,
    IdleDone,
    IMAPServerConnection,
    List,
    LiteralData,
    LocalProtocolError,
    Login,
    Lsub,
    Mailbox,
    Mode,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    Not,
    Or,
    ProtocolError,
    QResync,
    RemoteProtocolError,
    Rename,
    ResponseCode,
    Search,
    Section,
    Select,
    SequenceKey,
    SequenceSet,
    SizeKey,
    StartTLS,
    State,
    Status,
    StatusResponse,
    Store,
    Subscribe,
    TextKey,
    Unselect,
    Unsubscribe,
    Untagged,
    responses,
)
from ams.protocols.imap._responses import Item, encode
from ams.protocols.imap._state import MODES, TRANSITIONS, ModeTrigger, Trigger

ROOT = Path(__file__).resolve().parent.parent
PLAIN = base64.b64encode(b"\0fred\0secret")           # AHVzZXIAc2VjcmV0-style

# --- helpers -----------------------------------------------------------------------------

Decide = Callable[[IMAPServerConnection, Event], None]


def default_decide(conn: IMAPServerConnection, event: Event) -> None:
    """OK to everything, except a wrong password and mailboxes named missing*."""
    if isinstance(event, Idle):
        return                                      # wait for DONE
    if isinstance(event, IdleDone):
        conn.complete(event.tag, "OK", "IDLE terminated")
    elif isinstance(event, (Login, Authenticate)):
        ok = event.password == "secret"
        conn.complete(event.tag, "OK" if ok else "NO", None if ok else "Wrong",
                      code=None if ok else responses.AUTHENTICATIONFAILED)
    elif isinstance(event, Select) and event.mailbox.startswith("missing"):
        conn.complete(event.tag, "NO", "No such mailbox", code=responses.NONEXISTENT)
    elif isinstance(event, Command):
        conn.complete(event.tag, "OK")


Outcome = Event | ProtocolError


def new(*, greet: bool = True, **config: Any) -> IMAPServerConnection:
    config.setdefault("allow_plaintext_auth", True)
    conn = IMAPServerConnection(**config)
    if greet:
        conn.greeting()
        conn.data_to_send()
    return conn


def drain(conn: IMAPServerConnection, decide: Decide = default_decide) -> list[Outcome]:
    """Events until NEED_DATA, the end, StartTLS or the remote error."""
    out: list[Outcome] = []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            out.append(exc)
            return out
        if event is NEED_DATA or event is PAUSED:
            return out
        out.append(event)
        if isinstance(event, (ConnectionClosed, StartTLS)):
            return out
        decide(conn, event)


def feed(conn: IMAPServerConnection, data: bytes, *, eof: bool = False,
         decide: Decide = default_decide) -> list[Outcome]:
    if data:
        conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    return drain(conn, decide)


def responses_of(out: bytes) -> list[bytes]:
    """Wire bytes → responses (literal data inline), checking their shape."""
    result = []
    pos = 0
    while pos < len(out):
        start = pos
        while True:
            end = out.index(b"\r\n", pos)
            literal = re.search(rb"~?\{(\d+)\}$", out[pos:end])
            if literal is None:
                pos = end + 2
                break
            pos = end + 2 + int(literal.group(1))
        response = out[start:pos - 2]
        assert re.match(rb"(\* |\+ |[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+ (OK|NO|BAD) )",
                        response), response
        result.append(response)
    return result


def tagged(out: bytes) -> list[str]:
    """The status parts of the responses: ``"a1 OK"``, ``"* BAD"``, ``"+"``."""
    found = []
    for response in responses_of(out):
        words = response.decode("utf-8", "replace").split(" ")
        if words[0] == "+":
            found.append("+")
        elif words[1] in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            found.append(f"{words[0]} {words[1]}")
    return found


def kinds(events: Iterable[Outcome]) -> list[type]:
    return [type(e) for e in events]


STEPS = {
    "not_authenticated": b"",
    "authenticated": b"L LOGIN fred secret\r\n",
    "selected": b"L LOGIN fred secret\r\nS SELECT INBOX\r\n",
}


def session(state: str, **config: Any) -> IMAPServerConnection:
    conn = new(**config)
    if STEPS[state]:
        feed(conn, STEPS[state])
    conn.data_to_send()
    assert conn.state.name.lower() == state
    return conn


def parse(line: bytes, state: str = "selected", **config: Any) -> Event:
    """The one event a command line (CRLF added) gives in ``state``."""
    conn = session(state, **config)
    events = feed(conn, line + b"\r\n", decide=lambda c, e: None)
    out = conn.data_to_send()
    assert len(events) == 1, (events, out)
    assert isinstance(events[0], Event)
    return events[0]


def refuse(line: bytes, state: str = "selected", **config: Any) -> bytes:
    """The response a refused command line gets; no event may come out."""
    conn = session(state, **config)
    events = feed(conn, line + b"\r\n")
    assert events == [], events
    return conn.data_to_send()


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


def fa(name: str, **kw: Any) -> FetchAttribute:
    return FetchAttribute(name, **kw)


# --- greeting and CAPABILITY ------------------------------------------------------------

def test_greeting_carries_capabilities() -> None:
    conn = IMAPServerConnection(tls_available=True)
    conn.greeting()
    assert conn.data_to_send() == (
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED LITERAL+ SASL-IR ID ENABLE IDLE "
        b"NAMESPACE UNSELECT UIDPLUS MOVE CONDSTORE QRESYNC SPECIAL-USE] "
        b"AMS IMAP4rev1 server ready\r\n")
    assert conn.state is State.NOT_AUTHENTICATED


def test_preauth_greeting_starts_authenticated() -> None:
    conn = IMAPServerConnection()
    conn.greeting("PREAUTH", "Welcome back", user="fred")
    assert conn.data_to_send().startswith(b"* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+")
    assert conn.state is State.AUTHENTICATED and conn.user == "fred"


def test_bye_greeting_closes() -> None:
    conn = IMAPServerConnection()
    conn.greeting("BYE", "Too busy")
    assert conn.data_to_send() == b"* BYE Too busy\r\n"
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.state is State.LOGOUT


def test_next_event_before_greeting_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        IMAPServerConnection().next_event()


def test_capability_is_answered_by_the_core() -> None:
    conn = new(allow_plaintext_auth=False, extensions=["IDLE"], non_sync_literals="-")
    assert feed(conn, b"c1 CAPABILITY\r\n") == []
    assert conn.data_to_send() == (b"* CAPABILITY IMAP4rev1 LOGINDISABLED LITERAL- IDLE\r\n"
                                   b"c1 OK CAPABILITY completed\r\n")


def test_capabilities_after_login_drop_auth() -> None:
    conn = session("authenticated")
    feed(conn, b"c CAPABILITY\r\n")
    assert b"AUTH=PLAIN" not in conn.data_to_send()


def test_logout_is_answered_with_bye_then_ok() -> None:
    conn = session("selected")
    events = feed(conn, b"z LOGOUT\r\nw NOOP\r\n")
    assert kinds(events) == [ConnectionClosed]
    assert conn.data_to_send() == b"* BYE Logging out\r\nz OK LOGOUT completed\r\n"
    assert conn.state is State.LOGOUT and conn.mode is Mode.CLOSED


def test_client_eof_closes_without_response() -> None:
    conn = session("authenticated")
    assert feed(conn, b"", eof=True) == [ConnectionClosed(None)]
    assert conn.data_to_send() == b""


# --- the parse table ---------------------------------------------------------------------

D1994 = datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8)))
HDR = Section((), "HEADER.FIELDS", ("DATE", "FROM"))

PARSE_CASES: list[tuple[str, bytes, Event]] = [
    # RFC 3501 §6 examples
    ("not_authenticated", b"a001 LOGIN SMITH SESAME", Login("a001", "SMITH", "SESAME")),
    ("not_authenticated", b"abcd NOOP", Noop("abcd")),
    ("authenticated", b"A142 SELECT INBOX", Select("A142", "INBOX")),
    ("authenticated", b"A932 EXAMINE blurdybloop", Examine("A932", "blurdybloop")),
    ("authenticated", b"A003 CREATE owatagusiam/", Create("A003", "owatagusiam/")),
    ("authenticated", b"A683 DELETE blurdybloop", Delete("A683", "blurdybloop")),
    ("authenticated", b"A683 RENAME blurdybloop sarasoop",
     Rename("A683", "blurdybloop", "sarasoop")),
    ("authenticated", b"A002 SUBSCRIBE #news.comp.mail.mime",
     Subscribe("A002", "#news.comp.mail.mime")),
    ("authenticated", b"A002 UNSUBSCRIBE #news.comp.mail.mime",
     Unsubscribe("A002", "#news.comp.mail.mime")),
    ("authenticated", b"A101 LIST \"\" \"\"", List("A101", "", ("",))),
    ("authenticated", b"A202 LIST ~/Mail/ %", List("A202", "~/Mail/", ("%",))),
    ("authenticated", b"A002 LSUB \"#news.\" \"comp.mail.*\"",
     Lsub("A002", "#news.", "comp.mail.*")),
    ("authenticated", b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
     Status("A042", "blurdybloop", ("UIDNEXT", "MESSAGES"))),
    ("authenticated", b"A003 APPEND saved-messages (\\Seen) {5+}\r\nhello",
     Append("A003", "saved-messages", b"hello", ("\\Seen",))),
    ("authenticated", b"A003 APPEND x (\\Seen $Junk) \" 7-Feb-1994 21:52:25 -0800\" {2+}\r\nhi",
     Append("A003", "x", b"hi", ("\\Seen", "$Junk"), D1994)),
    ("authenticated", b"A003 APPEND x \"07-Feb-1994 21:52:25 -0800\" {0+}\r\n",
     Append("A003", "x", b"", (), D1994)),
    ("selected", b"FXXZ CHECK", Check("FXXZ")),
    ("selected", b"A341 CLOSE", Close("A341")),
    ("selected", b"A202 EXPUNGE", Expunge("A202")),
    ("selected", b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
     Fetch("A654", seq("2:4"), (fa("FLAGS"), fa("BODY", section=HDR)))),
    ("selected", b"A003 STORE 2:4 +FLAGS (\\Deleted)",
     Store("A003", seq("2:4"), "add", ("\\Deleted",))),
    ("selected", b"A003 COPY 2:4 MEETING", Copy("A003", seq("2:4"), "MEETING")),
    ("selected", b"A999 UID FETCH 4827313:4828442 FLAGS",
     Fetch("A999", seq("4827313:4828442"), (fa("FLAGS"), fa("UID")), uid=True)),
    ("selected", b"A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"",
     Search("A282", And((FlagKey("\\Flagged"), DateKey("INTERNALDATE", "SINCE",
                                                       date(1994, 2, 1)),
                         Not(HeaderKey("From", "Smith")))))),
    ("selected", b"A284 SEARCH CHARSET UTF-8 TEXT {6+}\r\nXXXXXX",
     Search("A284", TextKey("XXXXXX"), "UTF-8")),
    # extensions
    ("authenticated", b"a002 IDLE", Idle("a002")),
    ("authenticated", b"A02 NAMESPACE", Namespace("A02")),
    ("not_authenticated", b"a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"vendor\" NIL)",
     Id("a023", (("name", "sodr"), ("version", "19.34"), ("vendor", None)))),
    ("authenticated", b"a ID NIL", Id("a", None)),
    ("authenticated", b"a ID ()", Id("a", ())),
    ("selected", b"a UNSELECT", Unselect("a")),
    ("selected", b"a UID EXPUNGE 3000:3002", Expunge("a", seq("3000:3002"))),
    ("selected", b"a MOVE 1:3 Archive", Move("a", seq("1:3"), "Archive")),
    ("selected", b"a UID MOVE 42:69 foo", Move("a", seq("42:69"), "foo", uid=True)),
    ("authenticated", b"t1 SELECT INBOX (CONDSTORE)", Select("t1", "INBOX", condstore=True)),
    ("selected", b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
     Fetch("s100", seq("1:*"), (fa("FLAGS"), fa("UID"), fa("MODSEQ")), uid=True,
           changed_since=12345)),
    ("selected", b"a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)",
     Store("a103", seq("6,4,8"), "add", ("\\Deleted",), silent=True, uid=True,
           unchanged_since=12121230045)),
    ("selected", b"a SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338",
     Search("a", ModSeqKey(620162338, "/flags/\\draft", "all"))),
    ("selected", b"a SEARCH MODSEQ 0", Search("a", ModSeqKey(0))),
    ("authenticated", b"A042 STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)",
     Status("A042", "blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ"))),
    ("authenticated", b"A01 LIST \"\" \"*\"", List("A01", "", ("*",))),
    ("authenticated", b"A02 LIST (SUBSCRIBED) \"\" \"*\"",
     List("A02", "", ("*",), frozenset({"SUBSCRIBED"}))),
    ("authenticated", b"A03 LIST \"\" \"*\" RETURN (SPECIAL-USE CHILDREN SUBSCRIBED)",
     List("A03", "", ("*",), frozenset(), frozenset({"SPECIAL-USE", "CHILDREN", "SUBSCRIBED"}))),
    ("authenticated", b"A04 LIST (SPECIAL-USE) \"\" (\"INBOX\" \"Drafts\")",
     List("A04", "", ("INBOX", "Drafts"), frozenset({"SPECIAL-USE"}))),
    # imaplib
    ("not_authenticated", b"MPLE2 LOGIN fred \"pass word\\\\x\"",
     Login("MPLE2", "fred", "pass word\\x")),
    ("selected", b"MPLE4 FETCH 1 (RFC822)", Fetch("MPLE4", seq("1"), (fa("RFC822"),))),
    ("selected", b"MPLE5 STORE 1 +FLAGS \\Deleted", Store("MPLE5", seq("1"), "add",
                                                         ("\\Deleted",))),
    ("selected", b"MPLE6 UID SEARCH ALL", Search("MPLE6", All(), uid=True)),
    ("authenticated", b"MPLE7 LIST \"\" *", List("MPLE7", "", ("*",))),
    ("authenticated", b"MPLE8 APPEND INBOX () \"18-Jan-2024 10:00:00 +0000\" {1}\r\nx",
     Append("MPLE8", "INBOX", b"x", (), datetime(2024, 1, 18, 10, tzinfo=UTC))),
    # mbsync
    ("not_authenticated", b"2 AUTHENTICATE PLAIN " + PLAIN,
     Authenticate("2", "PLAIN", "", "fred", "secret")),
    ("selected", b"6 UID FETCH 1:1000000000 (UID FLAGS)",
     Fetch("6", seq("1:1000000000"), (fa("UID"), fa("FLAGS")), uid=True)),
    ("selected", b"7 UID STORE 5 +FLAGS.SILENT \\Seen",
     Store("7", seq("5"), "add", ("\\Seen",), silent=True, uid=True)),
    ("authenticated", b"8 APPEND \"INBOX\" (\\Seen) {3+}\r\nabc",
     Append("8", "INBOX", b"abc", ("\\Seen",))),
    ("selected", b"9 UID FETCH 7 (BODY.PEEK[])",
     Fetch("9", seq("7"), (fa("BODY", section=Section(), peek=True), fa("UID")), uid=True)),
    ("selected", b"10 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID)])",
     Fetch("10", seq("1:*"), (fa("UID"), fa("FLAGS"), fa(
         "BODY", section=Section((), "HEADER.FIELDS", ("X-TUID",)), peek=True)), uid=True)),
    # mutt
    ("authenticated", b"a0005 STATUS \"INBOX\" (MESSAGES)", Status("a0005", "INBOX",
                                                                  ("MESSAGES",))),
    ("selected", b"a0008 UID STORE 3 +FLAGS.SILENT (\\Seen)",
     Store("a0008", seq("3"), "add", ("\\Seen",), silent=True, uid=True)),
    ("selected", b"a0009 UID FETCH 3 BODY.PEEK[]",
     Fetch("a0009", seq("3"), (fa("BODY", section=Section(), peek=True), fa("UID")),
           uid=True)),
    ("authenticated", b"a0010 LSUB \"\" \"*\"", Lsub("a0010", "", "*")),
    ("selected", b"a0011 FETCH 1:2 (UID FLAGS INTERNALDATE RFC822.SIZE "
     b"BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])",
     Fetch("a0011", seq("1:2"), (fa("UID"), fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"),
                                 fa("BODY", section=Section((), "HEADER.FIELDS",
                                                            ("DATE", "FROM", "SUBJECT")),
                                    peek=True)))),
    # Thunderbird (lower-case verbs)
    ("authenticated", b"4 select \"INBOX\"", Select("4", "INBOX")),
    ("selected", b"5 UID fetch 1:* (FLAGS)", Fetch("5", seq("1:*"), (fa("FLAGS"), fa("UID")),
                                                   uid=True)),
    ("selected", b"8 UID fetch 1 (UID RFC822.SIZE FLAGS BODY.PEEK[])",
     Fetch("8", seq("1"), (fa("UID"), fa("RFC822.SIZE"), fa("FLAGS"),
                           fa("BODY", section=Section(), peek=True)), uid=True)),
    ("selected", b"9 uid store 1 +Flags (\\Seen)",
     Store("9", seq("1"), "add", ("\\Seen",), uid=True)),
    ("selected", b"10 UID copy 1 \"Trash\"", Copy("10", seq("1"), "Trash", uid=True)),
    ("authenticated", b"11 list (subscribed) \"\" \"*\" return (special-use)",
     List("11", "", ("*",), frozenset({"SUBSCRIBED"}), frozenset({"SPECIAL-USE"}))),
    # names
    ("authenticated", b"a SELECT inbox", Select("a", "INBOX")),
    ("authenticated", b"a SELECT \"InBoX\"", Select("a", "INBOX")),
    ("authenticated", b"a SELECT INBOX/sub", Select("a", "INBOX/sub")),
    ("authenticated", b"a SELECT Entw&APw-rfe", Select("a", "Entwürfe")),
    ("authenticated", b"a SELECT \"Tom &- Jerry\"", Select("a", "Tom & Jerry")),
    ("authenticated", b"a SELECT {5+}\r\na b c", Select("a", "a b c")),
]


@pytest.mark.parametrize(("state", "line", "expected"), PARSE_CASES,
                         ids=[c[1][:40].decode("ascii", "replace") for c in PARSE_CASES])
def test_parse_table(state: str, line: bytes, expected: Event) -> None:
    assert parse(line, state) == expected


FETCH_CASES: list[tuple[bytes, tuple[FetchAttribute, ...], str | None]] = [
    (b"ALL", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"), fa("ENVELOPE")), "ALL"),
    (b"FAST", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE")), "FAST"),
    (b"FULL", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"), fa("ENVELOPE"), fa("BODY")),
     "FULL"),
    (b"(ENVELOPE BODYSTRUCTURE INTERNALDATE)",
     (fa("ENVELOPE"), fa("BODYSTRUCTURE"), fa("INTERNALDATE")), None),
    (b"(RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE)",
     (fa("RFC822"), fa("RFC822.HEADER"), fa("RFC822.TEXT"), fa("RFC822.SIZE")), None),
    (b"BODY", (fa("BODY"),), None),
    (b"BODY[]", (fa("BODY", section=Section()),), None),
    (b"BODY[]<0.2048>", (fa("BODY", section=Section(), partial=(0, 2048)),), None),
    (b"BODY[TEXT]", (fa("BODY", section=Section((), "TEXT")),), None),
    (b"BODY.PEEK[HEADER]", (fa("BODY", section=Section((), "HEADER"), peek=True),), None),
    (b"BODY[1]", (fa("BODY", section=Section((1,))),), None),
    (b"BODY[1.2.3]", (fa("BODY", section=Section((1, 2, 3))),), None),
    (b"BODY[4.2.HEADER]", (fa("BODY", section=Section((4, 2), "HEADER")),), None),
    (b"BODY[3.MIME]", (fa("BODY", section=Section((3,), "MIME")),), None),
    (b"body[1.text]<10.5>", (fa("BODY", section=Section((1,), "TEXT"), partial=(10, 5)),), None),
    (b"BODY[HEADER.FIELDS.NOT (Received \"X-Spam\")]",
     (fa("BODY", section=Section((), "HEADER.FIELDS.NOT", ("Received", "X-Spam"))),), None),
    (b"(UID MODSEQ FLAGS)", (fa("UID"), fa("MODSEQ"), fa("FLAGS")), None),
]


@pytest.mark.parametrize(("atts", "expected", "macro"), FETCH_CASES,
                         ids=[c[0].decode() for c in FETCH_CASES])
def test_fetch_attributes(atts: bytes, expected: tuple[FetchAttribute, ...],
                          macro: str | None) -> None:
    event = parse(b"f FETCH 1:* " + atts)
    assert isinstance(event, Fetch)
    assert event.attributes == expected and event.macro == macro


def test_binary_fetch_when_advertised() -> None:
    event = parse(b"f FETCH 1 (BINARY.PEEK[1.2]<0.10> BINARY.SIZE[1] BINARY[])",
                  extensions=["BINARY"])
    assert isinstance(event, Fetch)
    assert event.attributes == (
        fa("BINARY", section=Section((1, 2)), partial=(0, 10), peek=True),
        fa("BINARY.SIZE", section=Section((1,))), fa("BINARY", section=Section()))
    assert refuse(b"f FETCH 1 BINARY[]").startswith(b"f BAD")


def test_fetch_attribute_response_names_and_seen() -> None:
    peek = fa("BODY", section=Section((), "HEADER.FIELDS", ("A", "B")), partial=(5, 9), peek=True)
    assert peek.response_name == "BODY[HEADER.FIELDS (A B)]<5>" and not peek.sets_seen
    assert fa("BODY", section=Section((1, 2), "MIME")).response_name == "BODY[1.2.MIME]"
    assert fa("BODY", section=Section()).sets_seen
    assert fa("RFC822").sets_seen and not fa("RFC822.HEADER").sets_seen
    assert fa("BODY").response_name == "BODY" and not fa("BODY").sets_seen


SEARCH_CASES: list[tuple[bytes, object]] = [
    (b"ALL", All()),
    (b"ANSWERED DELETED DRAFT FLAGGED RECENT SEEN",
     And(tuple(FlagKey(f) for f in ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged",
                                     "\\Recent", "\\Seen")))),
    (b"UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN OLD",
     And(tuple(FlagKey(f, False) for f in ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged",
                                            "\\Seen", "\\Recent")))),
    (b"NEW", And((FlagKey("\\Recent"), FlagKey("\\Seen", False)))),
    (b"KEYWORD $Junk UNKEYWORD NonJunk", And((FlagKey("$Junk"), FlagKey("NonJunk", False)))),
    (b"BCC a CC b FROM c SUBJECT d TO e",
     And((HeaderKey("Bcc", "a"), HeaderKey("Cc", "b"), HeaderKey("From", "c"),
          HeaderKey("Subject", "d"), HeaderKey("To", "e")))),
    (b"HEADER Message-ID \"<x@y>\"", HeaderKey("Message-ID", "<x@y>")),
    (b"HEADER X-Empty \"\"", HeaderKey("X-Empty", "")),
    (b"BODY hello TEXT \"two words\"", And((BodyKey("hello"), TextKey("two words")))),
    (b"BEFORE 1-Feb-1994 ON \"01-feb-1994\" SINCE 29-Feb-2024",
     And((DateKey("INTERNALDATE", "BEFORE", date(1994, 2, 1)),
          DateKey("INTERNALDATE", "ON", date(1994, 2, 1)),
          DateKey("INTERNALDATE", "SINCE", date(2024, 2, 29))))),
    (b"SENTBEFORE 1-Jan-2000 SENTON 2-Jan-2000 SENTSINCE 3-Jan-2000",
     And((DateKey("SENT", "BEFORE", date(2000, 1, 1)), DateKey("SENT", "ON", date(2000, 1, 2)),
          DateKey("SENT", "SINCE", date(2000, 1, 3))))),
    (b"LARGER 100 SMALLER 2000", And((SizeKey("LARGER", 100), SizeKey("SMALLER", 2000)))),
    (b"1:3,7 UID 10:*", And((SequenceKey(seq("1:3,7")), SequenceKey(seq("10:*"), uid=True)))),
    (b"*", SequenceKey(seq("*"))),
    (b"NOT NOT SEEN", Not(Not(FlagKey("\\Seen")))),
    (b"OR SEEN (FLAGGED DELETED)",
     Or(FlagKey("\\Seen"), And((FlagKey("\\Flagged"), FlagKey("\\Deleted"))))),
    (b"OR (SEEN) OR FROM a TO b", Or(FlagKey("\\Seen"), Or(HeaderKey("From", "a"),
                                                           HeaderKey("To", "b")))),
    (b"(((ALL)))", All()),
    (b"undeleted subject {3+}\r\nabc", And((FlagKey("\\Deleted", False),
                                            HeaderKey("Subject", "abc")))),
]


@pytest.mark.parametrize(("keys", "expected"), SEARCH_CASES,
                         ids=[c[0][:30].decode() for c in SEARCH_CASES])
def test_search_keys(keys: bytes, expected: object) -> None:
    event = parse(b"s SEARCH " + keys)
    assert isinstance(event, Search)
    assert event.criteria == expected


def test_search_accepts_long_or_chains() -> None:
    event = parse(b"s SEARCH " + b"OR FROM a " * 90 + b"ALL")
    assert isinstance(event, Search) and isinstance(event.criteria, Or)


def test_many_literals_in_one_command_cost_linear_time() -> None:
    conn = session("selected")
    feed(conn, b"a SEARCH" + b" TEXT {0}\r\n" * 3000 + b"\r\n")
    out = conn.data_to_send()
    assert out.count(b"+ Ready") == 3000 and out.endswith(b"a OK SEARCH completed\r\n")


def test_search_charset_decodes_literals() -> None:
    event = parse(b"s SEARCH CHARSET UTF-8 SUBJECT {6+}\r\n\xc3\xa9t\xc3\xa9!")
    assert isinstance(event, Search) and event.criteria == HeaderKey("Subject", "été!")
    assert event.charset == "UTF-8"


def test_search_esearch_and_searchres_need_their_capabilities() -> None:
    ext = ["ESEARCH", "SEARCHRES"]
    event = parse(b"s UID SEARCH RETURN (MIN COUNT SAVE) CHARSET US-ASCII DELETED", extensions=ext)
    assert event == Search("s", FlagKey("\\Deleted"), "US-ASCII", True, ("MIN", "COUNT", "SAVE"))
    assert parse(b"s FETCH $ FLAGS", extensions=ext) == Fetch("s", SequenceSet(saved=True),
                                                              (fa("FLAGS"),))
    assert refuse(b"s SEARCH RETURN () ALL").startswith(b"s BAD")
    assert refuse(b"s FETCH $ FLAGS").startswith(b"s BAD")


def test_qresync_select_needs_enable() -> None:
    assert refuse(b"A02 SELECT INBOX (QRESYNC (67890007 90060115194045000))",
                  "authenticated").startswith(b"A02 BAD")
    conn = session("authenticated")
    feed(conn, b"e ENABLE QRESYNC\r\n")
    assert conn.data_to_send() == b"* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n"
    assert conn.enabled == {"QRESYNC", "CONDSTORE"}
    events = feed(conn, b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 "
                        b"41,43:211,214:541 (1:5 10:14)))\r\n", decide=lambda c, e: None)
    assert events == [Select("A02", "INBOX", True, QResync(
        67890007, 20050715194045000, seq("41,43:211,214:541"), seq("1:5"), seq("10:14")))]
    conn.complete("A02", "OK")
    conn.data_to_send()
    events = feed(conn, b"B SELECT x (QRESYNC (1 2 (3 4)))\r\nC UID FETCH 1:* FLAGS "
                        b"(CHANGEDSINCE 9 VANISHED)\r\n")
    assert conn.data_to_send() == (b"* OK [CLOSED] Previous mailbox closed\r\nB OK SELECT "
                                   b"completed\r\nC OK UID FETCH completed\r\n")
    assert events[0] == Select("B", "x", True, QResync(1, 2, None, seq("3"), seq("4")))
    assert isinstance(events[1], Fetch) and events[1].vanished


def test_condstore_is_enabled_by_first_use() -> None:
    conn = session("selected")
    assert conn.enabled == frozenset()
    feed(conn, b"f FETCH 1 (MODSEQ)\r\n")
    assert conn.enabled == {"CONDSTORE"}


def test_enable_ignores_what_is_not_offered() -> None:
    conn = session("authenticated", extensions=["ENABLE", "CONDSTORE", "UTF8=ACCEPT"])
    feed(conn, b"e ENABLE X-UNKNOWN QRESYNC UTF8=ACCEPT condstore\r\n")
    assert conn.data_to_send() == b"* ENABLED UTF8=ACCEPT CONDSTORE\r\ne OK ENABLE completed\r\n"
    assert conn.utf8


def test_enable_is_not_valid_when_selected() -> None:
    assert refuse(b"e ENABLE CONDSTORE") == b"e BAD Command not valid in this state\r\n"


def test_create_special_use() -> None:
    event = parse(b"c CREATE Drafts (USE (\\Drafts))", "authenticated",
                  extensions=["CREATE-SPECIAL-USE"])
    assert event == Create("c", "Drafts", ("\\Drafts",))
    assert refuse(b"c CREATE Drafts (USE (\\Drafts))", "authenticated").startswith(b"c BAD")


def test_literal8_append_when_binary_is_advertised() -> None:
    event = parse(b"a APPEND INBOX ~{3+}\r\na\x00b", "authenticated", extensions=["BINARY"])
    assert event == Append("a", "INBOX", b"a\x00b", binary=True)
    assert refuse(b"a APPEND INBOX ~{3+}\r\nabc", "authenticated").startswith(b"a BAD")


# --- errors ----------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, bytes, bytes]] = [
    ("selected", b"a1 FOO bar", b"a1 BAD Unknown command\r\n"),
    ("selected", b"", b"* BAD Missing or invalid tag\r\n"),
    ("selected", b"+x NOOP", b"* BAD Missing or invalid tag\r\n"),
    ("selected", b"(x NOOP", b"* BAD Missing or invalid tag\r\n"),
    ("selected", b"a1", b"a1 BAD Missing command\r\n"),
    ("selected", b"a1 NOOP extra", b"a1 BAD Unexpected extra arguments\r\n"),
    ("selected", b"a1 NOOP ", b"a1 BAD Unexpected extra arguments\r\n"),
    ("authenticated", b"a1 SELECT", b"a1 BAD Missing argument\r\n"),
    ("authenticated", b"a1 SELECT  INBOX", b"a1 BAD Invalid mailbox name\r\n"),
    ("authenticated", b"a1 SELECT \"unterminated", b"a1 BAD Invalid quoted mailbox name\r\n"),
    ("authenticated", b"a1 SELECT \"caf\xc3\xa9\"",
     b"a1 BAD 8-bit data in a quoted string; use a literal\r\n"),
    ("authenticated", b"a1 SELECT caf\xc3\xa9", b"a1 BAD Unexpected extra arguments\r\n"),
    ("authenticated", b"a1 SELECT &Jjo", b"a1 BAD Mailbox name is not valid modified UTF-7\r\n"),
    ("authenticated", b"a1 SELECT &AGE-", b"a1 BAD Mailbox name is not valid modified UTF-7\r\n"),
    ("authenticated", b"a1 SELECT \"a&AAE-\"", b"a1 BAD Control character in mailbox name\r\n"),
    ("authenticated", b"a1 SELECT INBOX (FOO)",
     b"a1 BAD Unknown or repeated select parameter\r\n"),
    ("authenticated", b"a1 STATUS INBOX (FOO)", b"a1 BAD Unknown status item\r\n"),
    ("authenticated", b"a1 STATUS INBOX ()", b"a1 BAD Empty list\r\n"),
    ("authenticated", b"a1 LIST (RECURSIVEMATCH) \"\" *",
     b"a1 BAD RECURSIVEMATCH needs another selection option\r\n"),
    ("authenticated", b"a1 APPEND INBOX \"hello\"", b"a1 BAD Invalid date-time\r\n"),
    ("authenticated", b"a1 APPEND INBOX hello", b"a1 BAD Invalid message literal\r\n"),
    ("authenticated", b"a1 APPEND INBOX \"31-Feb-2020 00:00:00 +0000\" {1+}\r\nx",
     b"a1 BAD Invalid date\r\n"),
    ("authenticated", b"a1 APPEND INBOX {1+}\r\n\x00", b"a1 BAD NUL in a literal\r\n"),
    ("selected", b"a1 FETCH 0 FLAGS", b"a1 BAD Invalid sequence set\r\n"),
    ("selected", b"a1 FETCH 1:2:3 FLAGS", b"a1 BAD Invalid sequence set\r\n"),
    ("selected", b"a1 FETCH 4294967296 FLAGS", b"a1 BAD Invalid sequence set\r\n"),
    ("selected", b"a1 FETCH 1 (FLAGS", b"a1 BAD Missing argument\r\n"),
    ("selected", b"a1 FETCH 1 ()", b"a1 BAD Empty list\r\n"),
    ("selected", b"a1 FETCH 1 BODY[MIME]", b"a1 BAD Invalid section\r\n"),
    ("selected", b"a1 FETCH 1 BODY[0]", b"a1 BAD Invalid section part\r\n"),
    ("selected", b"a1 FETCH 1 BODY[]<1.0>", b"a1 BAD Invalid partial length\r\n"),
    ("selected", b"a1 FETCH 1 BODY.PEEK", b"a1 BAD Missing section\r\n"),
    ("selected", b"a1 FETCH 1 FOO", b"a1 BAD Unknown fetch attribute\r\n"),
    ("selected", b"a1 UID FETCH 1 FLAGS (VANISHED)",
     b"a1 BAD VANISHED needs UID FETCH with CHANGEDSINCE\r\n"),
    ("selected", b"a1 FETCH 1 FLAGS (CHANGEDSINCE 0)", b"a1 BAD Invalid mod-sequence value\r\n"),
    ("selected", b"a1 STORE 1 +FLAGS (\\Recent)",
     b"a1 BAD \\Recent cannot be set by a client\r\n"),
    ("selected", b"a1 STORE 1 +FLAGS (\\*)", b"a1 BAD Invalid flag\r\n"),
    ("selected", b"a1 STORE 1 FLAGZ (\\Seen)", b"a1 BAD Invalid STORE item\r\n"),
    ("selected", b"a1 SEARCH", b"a1 BAD Missing argument\r\n"),
    ("selected", b"a1 SEARCH FOO", b"a1 BAD Unknown search key\r\n"),
    ("selected", b"a1 SEARCH SINCE 1-Foo-2000", b"a1 BAD Invalid month\r\n"),
    ("selected", b"a1 SEARCH (SEEN", b"a1 BAD Missing argument\r\n"),
    ("selected", b"a1 SEARCH " + b"NOT " * 150 + b"SEEN",
     b"a1 BAD Search criteria nested too deeply\r\n"),
    ("selected", b"a1 SEARCH CHARSET KOI8-R ALL",
     b"a1 NO [BADCHARSET (\"US-ASCII\" \"UTF-8\")] Unsupported charset\r\n"),
    ("selected", b"a1 SEARCH SUBJECT {2+}\r\n\xff\xfe", b"a1 BAD Invalid UTF-8 in search string\r\n"),
    ("selected", b"a1 UID FROB 1", b"a1 BAD Unknown UID command\r\n"),
    ("selected", b"a1 UID EXPUNGE", b"a1 BAD Missing argument\r\n"),
    ("not_authenticated", b"a1 AUTHENTICATE PLAIN !!!!", b"a1 BAD Invalid initial response\r\n"),
    ("not_authenticated", b"a1 ID (\"" + b"k" * 31 + b"\" NIL)", b"a1 BAD ID field too long\r\n"),
]


@pytest.mark.parametrize(("state", "line", "expected"), ERROR_CASES,
                         ids=[c[1][:40].decode("ascii", "replace") for c in ERROR_CASES])
def test_error_table(state: str, line: bytes, expected: bytes) -> None:
    assert refuse(line, state) == expected


def test_errors_never_echo_client_input() -> None:
    out = refuse(b"a1 SELECT \"<script>\x01\"", "authenticated")
    assert b"script" not in out and out.startswith(b"a1 BAD")


def test_too_many_errors_end_the_session() -> None:
    conn = new(max_bad_commands=2)
    events = feed(conn, b"a FOO\r\nb FOO\r\nc FOO\r\nd NOOP\r\n")
    assert kinds(events) == [RemoteProtocolError]
    assert tagged(conn.data_to_send()) == ["a BAD", "b BAD", "c BAD", "* BYE"]
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.LOGOUT


def test_no_responses_are_not_counted_as_errors() -> None:
    conn = new(max_bad_commands=0, allow_plaintext_auth=False)
    feed(conn, b"a LOGIN x y\r\nb LOGIN x y\r\n")
    assert tagged(conn.data_to_send()) == ["a NO", "b NO"]


# --- state enforcement ---------------------------------------------------------------------

SAMPLES = {
    "CAPABILITY": b"CAPABILITY", "NOOP": b"NOOP", "ID": b"ID NIL",
    "LOGIN": b"LOGIN fred secret", "AUTHENTICATE": b"AUTHENTICATE PLAIN " + PLAIN,
    "ENABLE": b"ENABLE CONDSTORE", "SELECT": b"SELECT INBOX", "EXAMINE": b"EXAMINE INBOX",
    "CREATE": b"CREATE x", "DELETE": b"DELETE x", "RENAME": b"RENAME x y",
    "SUBSCRIBE": b"SUBSCRIBE x", "UNSUBSCRIBE": b"UNSUBSCRIBE x", "LIST": b"LIST \"\" *",
    "LSUB": b"LSUB \"\" *", "STATUS": b"STATUS x (MESSAGES)", "APPEND": b"APPEND x {1+}\r\nm",
    "NAMESPACE": b"NAMESPACE", "IDLE": b"IDLE\r\nDONE", "CHECK": b"CHECK", "CLOSE": b"CLOSE",
    "UNSELECT": b"UNSELECT", "EXPUNGE": b"EXPUNGE", "SEARCH": b"SEARCH ALL",
    "FETCH": b"FETCH 1 FLAGS", "STORE": b"STORE 1 FLAGS ()", "COPY": b"COPY 1 x",
    "MOVE": b"MOVE 1 x", "UID": b"UID FETCH 1 FLAGS",
}
ANY = {"CAPABILITY", "NOOP", "ID"}
VALID = {
    "not_authenticated": ANY | {"LOGIN", "AUTHENTICATE"},
    "authenticated": ANY | {"ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
                            "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND",
                            "NAMESPACE", "IDLE"},
}
VALID["selected"] = (VALID["authenticated"] - {"ENABLE"}) | {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID"}


@pytest.mark.parametrize("state", sorted(VALID))
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_commands_are_valid_only_in_their_states(state: str, name: str) -> None:
    conn = session(state)
    feed(conn, b"t " + SAMPLES[name] + b"\r\n")
    out = conn.data_to_send()
    if name in VALID[state]:
        assert tagged(out)[-1] == "t OK", out
    else:
        assert out.startswith(b"t BAD Command not valid in this state\r\n")


def test_select_outcomes_move_the_state() -> None:
    conn = session("authenticated")
    states = []
    for line in (b"a EXAMINE INBOX", b"b SELECT missing", b"c SELECT INBOX", b"d CLOSE",
                 b"e SELECT INBOX", b"f UNSELECT"):
        feed(conn, line + b"\r\n")
        states.append((conn.state, conn.read_only))
    A, S = State.AUTHENTICATED, State.SELECTED
    # A failed SELECT deselects; CLOSE and UNSELECT deselect.
    assert states == [(S, True), (A, False), (S, False), (A, False), (S, False), (A, False)]


def test_failed_login_stays_unauthenticated() -> None:
    conn = new()
    feed(conn, b"a LOGIN fred wrong\r\nb SELECT INBOX\r\n")
    assert conn.data_to_send() == (b"a NO [AUTHENTICATIONFAILED] Wrong\r\n"
                                   b"b BAD Command not valid in this state\r\n")
    assert conn.state is State.NOT_AUTHENTICATED and conn.user is None


def test_pipelined_commands_run_one_at_a_time() -> None:
    conn = session("authenticated")
    conn.receive_data(b"a SELECT INBOX\r\nb FETCH 1 FLAGS\r\n")
    event = conn.next_event()
    assert isinstance(event, Select)
    assert conn.next_event() is PAUSED and conn.pending is event
    conn.complete("a", "OK", code=responses.READ_WRITE)
    fetch = conn.next_event()
    assert isinstance(fetch, Fetch)          # checked in the state SELECT left
    with pytest.raises(LocalProtocolError):
        conn.complete("a", "OK")             # not the pending tag
    conn.complete("b", "OK")
    assert conn.data_to_send() == (b"a OK [READ-WRITE] SELECT completed\r\n"
                                   b"b OK FETCH completed\r\n")


def test_driver_misuse_is_a_local_error() -> None:
    conn = session("selected")
    with pytest.raises(LocalProtocolError):
        conn.complete("x", "OK")
    with pytest.raises(LocalProtocolError):
        conn.send(StatusResponse("OK", "done", tag="x"))
    with pytest.raises(LocalProtocolError):
        conn.send(StatusResponse("BYE", "bye"))
    with pytest.raises(LocalProtocolError):
        conn.send(ContinueRequest("more"))
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    with pytest.raises(LocalProtocolError):
        conn.greeting()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_bye_from_the_driver() -> None:
    conn = session("selected")
    conn.receive_data(b"a NOOP\r\n")
    assert isinstance(conn.next_event(), Noop)
    conn.bye("Shutting down", code=responses.UNAVAILABLE)
    assert conn.data_to_send() == b"* BYE [UNAVAILABLE] Shutting down\r\n"
    assert conn.next_event() == ConnectionClosed(
        StatusResponse("BYE", "Shutting down", responses.UNAVAILABLE))
    assert conn.pending is None and conn.state is State.LOGOUT


def test_transition_tables() -> None:
    for (origin, _), target in TRANSITIONS.items():
        assert origin is not State.LOGOUT and isinstance(target, State)
    assert (State.SELECTED, Trigger.ENABLE) not in TRANSITIONS
    for (mode, trigger), after in MODES.items():
        assert trigger is ModeTrigger.CLOSE or after is not Mode.CLOSED
        assert mode is not Mode.CLOSED


# --- literals --------------------------------------------------------------------------------

def test_synchronising_literal_gets_a_continuation() -> None:
    conn = session("not_authenticated")
    assert feed(conn, b"a LOGIN {4}\r\n") == []
    assert conn.data_to_send() == b"+ Ready for literal data\r\n"
    assert feed(conn, b"fred {6}\r\n") == []
    assert conn.data_to_send() == b"+ Ready for literal data\r\n"
    assert feed(conn, b"secret\r\n", decide=lambda c, e: None) == [Login("a", "fred", "secret")]


def test_literal_with_crlf_and_8bit_inside() -> None:
    event = parse(b"a APPEND INBOX {11}\r\nline\r\n\xe9t\xe9\r\n", "authenticated")
    assert isinstance(event, Append) and event.message == b"line\r\n\xe9t\xe9\r\n"


def test_zero_length_literal() -> None:
    assert parse(b"a LOGIN {4}\r\nfred {0}\r\n", "not_authenticated") == Login("a", "fred", "")


def test_no_continuation_for_a_command_refused_by_state() -> None:
    conn = session("selected")
    assert feed(conn, b"a LOGIN {4}\r\n") == []
    assert conn.data_to_send() == b"a BAD Command not valid in this state\r\n"
    # The client never sends the literal; the next line is a command.
    assert kinds(feed(conn, b"b NOOP\r\n")) == [Noop]


def test_no_continuation_when_login_is_disabled() -> None:
    conn = new(allow_plaintext_auth=False)
    feed(conn, b"a LOGIN {4}\r\n")
    assert conn.data_to_send() == b"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n"


def test_no_continuation_after_a_syntax_error_before_the_literal() -> None:
    conn = session("selected")
    feed(conn, b"a FETCH 1 (FLAGS {3}\r\n")
    assert conn.data_to_send() == b"a BAD Invalid fetch attribute\r\n"
    feed(conn, b"a FETCH x {3}\r\n")
    assert tagged(conn.data_to_send()) == ["a BAD"]


def test_too_big_synchronising_literal_is_refused_before_upload() -> None:
    conn = session("authenticated", max_literal=1000)
    assert feed(conn, b"a APPEND INBOX {1001}\r\n") == []
    assert conn.data_to_send() == b"a NO [TOOBIG] Literal too large\r\n"
    assert kinds(feed(conn, b"b NOOP\r\n")) == [Noop]


def test_literals_of_one_command_share_the_limit() -> None:
    conn = session("not_authenticated", max_literal=10)
    feed(conn, b"a LOGIN {6}\r\n")
    assert conn.data_to_send() == b"+ Ready for literal data\r\n"
    feed(conn, b"fred12 {5}\r\n")
    assert conn.data_to_send() == b"a NO [TOOBIG] Literal too large\r\n"


SMUGGLED = b"b DELETE INBOX\r\nc LOGOUT\r\n"


def test_refused_non_sync_literal_is_discarded_not_executed() -> None:
    conn = session("authenticated", max_literal=10)
    literal = SMUGGLED + b"x" * 10
    events = feed(conn, b"a APPEND INBOX {%d+}\r\n" % len(literal) + literal
                  + b" more {5+}\r\nb NOOP\r\nd NOOP\r\n")
    assert kinds(events) == [Noop]
    assert conn.data_to_send() == b"a BAD [TOOBIG] Literal too large\r\nd OK NOOP completed\r\n"


def test_literal_minus_limits_non_sync_literals_to_4096() -> None:
    conn = session("authenticated", non_sync_literals="-")
    data = SMUGGLED.ljust(4097, b"y")
    events = feed(conn, b"a APPEND INBOX {4097+}\r\n" + data + b"\r\nd NOOP\r\n")
    assert kinds(events) == [Noop]
    assert tagged(conn.data_to_send()) == ["a BAD", "d OK"]
    event = parse(b"a APPEND INBOX {4096+}\r\n" + b"z" * 4096, "authenticated",
                  non_sync_literals="-")
    assert isinstance(event, Append) and len(event.message) == 4096


def test_non_sync_literals_refused_when_not_offered() -> None:
    conn = session("authenticated", non_sync_literals=None)
    events = feed(conn, b"a APPEND INBOX {17+}\r\n" + SMUGGLED[:17] + b"\r\nd NOOP\r\n")
    assert kinds(events) == [Noop]
    assert conn.data_to_send() == (b"a BAD Non-synchronizing literals are not supported\r\n"
                                   b"d OK NOOP completed\r\n")
    feed(conn, b"c CAPABILITY\r\n")
    assert b"LITERAL" not in conn.data_to_send()


def test_refused_command_with_non_sync_literal_is_discarded_whole() -> None:
    conn = session("selected")
    events = feed(conn, b"a LOGIN {16+}\r\n" + SMUGGLED[:16] + b" {3+}\r\nabc\r\nd NOOP\r\n")
    assert kinds(events) == [Noop]
    assert tagged(conn.data_to_send()) == ["a BAD", "d OK"]


def test_literal_length_beyond_32_bits() -> None:
    conn = session("authenticated")
    feed(conn, b"a APPEND INBOX {4294967296}\r\nb NOOP\r\n")
    assert tagged(conn.data_to_send()) == ["a BAD", "b OK"]
    events = feed(conn, b"c APPEND INBOX {99999999999999999999+}\r\n")
    assert kinds(events) == [RemoteProtocolError]
    assert conn.data_to_send() == b"* BYE Invalid literal length\r\n"


def test_long_line_is_refused_and_skipped() -> None:
    conn = session("selected", max_line=1000)
    events = feed(conn, b"a SEARCH " + b"SEEN " * 300 + b"\r\nb NOOP\r\n")
    assert kinds(events) == [Noop]
    assert conn.data_to_send() == (b"a BAD [TOOBIG] Command line too long\r\n"
                                   b"b OK NOOP completed\r\n")


def test_long_line_ending_in_a_non_sync_literal_skips_the_literal() -> None:
    conn = session("selected", max_line=1000)
    events = feed(conn, b"a SEARCH " + b"SEEN " * 300 + b"TEXT {16+}\r\n" + SMUGGLED[:16]
                  + b"\r\nb NOOP\r\n")
    assert kinds(events) == [Noop]
    assert tagged(conn.data_to_send()) == ["a BAD", "b OK"]


def test_line_limit_counts_every_line_of_a_command() -> None:
    conn = session("not_authenticated", max_line=1000)
    feed(conn, b"a LOGIN {3}\r\n")
    conn.data_to_send()
    feed(conn, b"abc " + b"x" * 1000 + b"\r\nb NOOP\r\n")
    assert tagged(conn.data_to_send()) == ["a BAD", "b OK"]


def test_refusals_before_a_literal_use_the_tag_when_readable() -> None:
    conn = session("selected")
    feed(conn, b"+a SELECT {3}\r\nb SEARCH CHARSET KOI8-R TEXT {3}\r\n")
    assert conn.data_to_send() == (
        b"* BAD Missing or invalid tag\r\n"
        b"b NO [BADCHARSET (\"US-ASCII\" \"UTF-8\")] Unsupported charset\r\n")


def test_untagged_bad_when_the_tag_is_unreadable() -> None:
    conn = session("selected", max_line=1000)
    feed(conn, b" " + b"x" * 1200 + b"\r\n")
    assert conn.data_to_send() == b"* BAD [TOOBIG] Command line too long\r\n"


SCRIPT = (b"L LOGIN {4}\r\nfred {6+}\r\nsecret\r\n"
          b"A APPEND INBOX (\\Seen) {12}\r\nhello\r\nworld\r\n"
          b"B APPEND INBOX {3+}\r\nabc\r\n"
          b"S SELECT {5}\r\nINBOX\r\n"
          b"F UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)])\r\n"
          b"Q SEARCH SUBJECT {2}\r\nhi FROM {1+}\r\nx\r\n"
          b"I IDLE\r\nDONE\r\n"
          b"X FOO\r\nZ LOGOUT\r\n")


def run_pieces(pieces: Iterable[bytes], **config: Any) -> tuple[list[object], bytes, State]:
    """Feed pieces then EOF; stop at StartTLS, the end, or the remote error."""
    conn = new(**config)
    outcomes: list[Outcome] = []
    out = b""
    for piece in [*(p for p in pieces if p), b""]:
        if conn.mode in (Mode.CLOSED, Mode.TLS_PENDING):
            break
        if outcomes and isinstance(outcomes[-1], RemoteProtocolError):
            break
        outcomes += feed(conn, piece, eof=not piece)
        out += conn.data_to_send()
        assert isinstance(conn.state, State)
    return [repr(o) if isinstance(o, ProtocolError) else o for o in outcomes], out, conn.state


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def test_literals_split_anywhere_give_identical_results() -> None:
    whole = run_pieces([SCRIPT])
    assert whole == run_pieces(bytewise(SCRIPT))
    for cut in range(len(SCRIPT)):
        assert run_pieces([SCRIPT[:cut], SCRIPT[cut:]]) == whole
    events, out, state = whole
    assert kinds(events) == [Login, Append, Append, Select, Fetch, Search, Idle, IdleDone,  # type: ignore[arg-type]
                             ConnectionClosed]
    assert tagged(out) == ["+", "L OK", "+", "A OK", "B OK", "+", "S OK", "F OK", "+", "Q OK",
                           "+", "I OK", "X BAD", "* BYE", "Z OK"]
    assert state is State.LOGOUT


# --- IDLE ------------------------------------------------------------------------------------

def test_idle() -> None:
    conn = session("selected")
    events = feed(conn, b"a IDLE\r\n")
    assert events == [Idle("a")] and conn.mode is Mode.IDLE
    assert conn.data_to_send() == b"+ idling\r\n"
    conn.send(responses.exists(4))
    with pytest.raises(LocalProtocolError):
        conn.complete("a", "OK")                     # not before DONE
    assert feed(conn, b"b NOOP\r\n") == []           # only DONE is accepted
    assert conn.data_to_send() == b"* 4 EXISTS\r\n* BAD Expected DONE\r\n"
    events = feed(conn, b"done\r\nc NOOP\r\n")
    assert events == [IdleDone("a"), Noop("c")]
    assert conn.data_to_send() == b"a OK IDLE terminated\r\nc OK NOOP completed\r\n"


def test_idle_needs_the_capability() -> None:
    assert refuse(b"a IDLE", extensions=[]) == b"a BAD Unknown command\r\n"


def test_eof_during_idle_closes() -> None:
    conn = session("selected")
    feed(conn, b"a IDLE\r\n")
    assert feed(conn, b"", eof=True) == [ConnectionClosed(None)]


# --- STARTTLS --------------------------------------------------------------------------------

def test_starttls_discards_pipelined_commands() -> None:
    conn = new(tls_available=True, allow_plaintext_auth=False)
    events = feed(conn, b"a STARTTLS\r\nb LOGIN fred secret\r\n")
    assert events == [StartTLS("a")]
    assert conn.data_to_send() == b"a OK Begin TLS negotiation now\r\n"
    assert conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"c NOOP\r\n")
    conn.tls_started()
    assert conn.tls_active and not conn.login_disabled
    feed(conn, b"c CAPABILITY\r\n")
    out = conn.data_to_send()
    assert b"STARTTLS" not in out and b"LOGINDISABLED" not in out and b"AUTH=PLAIN" in out
    assert kinds(feed(conn, b"d LOGIN fred secret\r\n")) == [Login]
    assert conn.state is State.AUTHENTICATED


def test_starttls_refusals() -> None:
    assert refuse(b"a STARTTLS", "not_authenticated") == b"a BAD Unknown command\r\n"
    assert refuse(b"a STARTTLS", "not_authenticated", tls_available=True,
                  tls_active=True) == b"a BAD TLS is already active\r\n"
    assert refuse(b"a STARTTLS", "authenticated", tls_available=True) == \
        b"a BAD Command not valid in this state\r\n"


def test_eof_during_handshake_closes() -> None:
    conn = new(tls_available=True)
    feed(conn, b"a STARTTLS\r\n")
    assert feed(conn, b"", eof=True) == [ConnectionClosed(None)]


# --- AUTHENTICATE ----------------------------------------------------------------------------

def test_authenticate_plain_with_initial_response() -> None:
    conn = new()
    events = feed(conn, b"a AUTHENTICATE PLAIN " + base64.b64encode(b"admin\0fred\0secret")
                  + b"\r\n")
    assert events == [Authenticate("a", "PLAIN", "admin", "fred", "secret")]
    assert conn.data_to_send().startswith(b"a OK [CAPABILITY IMAP4rev1 LITERAL+")
    assert conn.state is State.AUTHENTICATED and conn.user == "fred"


def test_authenticate_plain_with_continuation() -> None:
    conn = new()
    assert feed(conn, b"a authenticate plain\r\n") == []
    assert conn.data_to_send() == b"+ \r\n"
    events = feed(conn, PLAIN + b"\r\n")
    assert events == [Authenticate("a", "PLAIN", "", "fred", "secret")]


@pytest.mark.parametrize(("response", "expected"), [
    (b"*", b"a BAD Authentication cancelled\r\n"),
    (b"!!!", b"a BAD Invalid base64 in SASL response\r\n"),
    (b"AAA", b"a BAD Invalid base64 in SASL response\r\n"),
    (b"", b"a BAD Invalid base64 in SASL response\r\n"),
    (base64.b64encode(b"fred\0secret"),
     b"a NO [AUTHENTICATIONFAILED] Malformed PLAIN credentials\r\n"),
    (base64.b64encode(b"\0fred\0\xff"),
     b"a NO [AUTHENTICATIONFAILED] Malformed PLAIN credentials\r\n"),
])
def test_authenticate_failures(response: bytes, expected: bytes) -> None:
    conn = new()
    feed(conn, b"a AUTHENTICATE PLAIN\r\n")
    conn.data_to_send()
    assert feed(conn, response + b"\r\nb NOOP\r\n") == [Noop("b")]
    assert conn.data_to_send() == expected + b"b OK NOOP completed\r\n"
    assert conn.state is State.NOT_AUTHENTICATED


def test_authenticate_other_mechanisms_and_empty_initial_response() -> None:
    assert refuse(b"a AUTHENTICATE CRAM-MD5", "not_authenticated") == \
        b"a NO [CANNOT] Unsupported authentication mechanism\r\n"
    assert refuse(b"a AUTHENTICATE PLAIN =", "not_authenticated") == \
        b"a NO [AUTHENTICATIONFAILED] Malformed PLAIN credentials\r\n"
    assert refuse(b"a AUTHENTICATE PLAIN " + PLAIN, "not_authenticated",
                  extensions=[]) == b"a BAD Extension not advertised or not enabled\r\n"
    assert refuse(b"a AUTHENTICATE PLAIN " + PLAIN, "not_authenticated",
                  allow_plaintext_auth=False) == \
        b"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n"


def test_failed_authentication_is_the_drivers_no() -> None:
    conn = new()
    feed(conn, b"a AUTHENTICATE PLAIN " + base64.b64encode(b"\0fred\0wrong") + b"\r\n")
    assert conn.data_to_send() == b"a NO [AUTHENTICATIONFAILED] Wrong\r\n"


# --- the response encoder ---------------------------------------------------------------------

ENVELOPE = ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)", "IMAP4rev1 WG mtg summary and minutes",
            (("Terry Gray", None, "gray", "cac.washington.edu"),),
            (("Terry Gray", None, "gray", "cac.washington.edu"),),
            (("Terry Gray", None, "gray", "cac.washington.edu"),),
            ((None, None, "imap", "cac.washington.edu"),),
            ((None, None, "minutes", "CNRI.Reston.VA.US"),
             ("John Klensin", None, "KLENSIN", "MIT.EDU")), None, None,
            "<B27397-0100000@cac.washington.edu>")
JULY = datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))

BODY_ITEMS: dict[str, Item] = {"BODY[]": b"Subject: x\r\n\r\nhi\r\n", "UID": 9}

ENCODE_CASES: list[tuple[object, bytes]] = [
    (StatusResponse("OK", "SELECT completed", responses.READ_WRITE, "A142"),
     b"A142 OK [READ-WRITE] SELECT completed\r\n"),
    (StatusResponse("OK", "Predicted next UID", responses.uidnext(4392)),
     b"* OK [UIDNEXT 4392] Predicted next UID\r\n"),
    (StatusResponse("OK", "Limited", responses.permanent_flags(["\\Deleted", "\\Seen", "\\*"])),
     b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"),
    (StatusResponse("NO", "No such mailbox", responses.TRYCREATE, "a"),
     b"a NO [TRYCREATE] No such mailbox\r\n"),
    (StatusResponse("OK", "done", responses.append_uid(38505, 3955), "A003"),
     b"A003 OK [APPENDUID 38505 3955] done\r\n"),
    (StatusResponse("OK", "Done", responses.copy_uid(38505, [304, 319, 320, 321],
                                                     [3956, 3957, 3958, 3959]), "A004"),
     b"A004 OK [COPYUID 38505 304,319:321 3956:3959] Done\r\n"),
    (StatusResponse("OK", "x", responses.highest_modseq(715194045007)),
     b"* OK [HIGHESTMODSEQ 715194045007] x\r\n"),
    (StatusResponse("OK", "Conditional STORE failed", responses.modified([7, 9]), "d105"),
     b"d105 OK [MODIFIED 7,9] Conditional STORE failed\r\n"),
    (StatusResponse("BYE", "Autologout; idle for too long"),
     b"* BYE Autologout; idle for too long\r\n"),
    (StatusResponse("OK", "x", ResponseCode("UIDVALIDITY", (3857529045,))),
     b"* OK [UIDVALIDITY 3857529045] x\r\n"),
    (responses.exists(172), b"* 172 EXISTS\r\n"),
    (responses.recent(1), b"* 1 RECENT\r\n"),
    (responses.expunge(44), b"* 44 EXPUNGE\r\n"),
    (responses.flags(["\\Answered", "\\Flagged", "$Junk"]),
     b"* FLAGS (\\Answered \\Flagged $Junk)\r\n"),
    (responses.search([2, 84, 3]), b"* SEARCH 2 3 84\r\n"),
    (responses.search([]), b"* SEARCH\r\n"),
    (responses.search([2, 5], modseq=917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"),
    (responses.esearch("A282", uid=True, min=2, count=3, all=SequenceSet.from_numbers([2, 3, 4])),
     b"* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2:4\r\n"),
    (responses.vanished([41, 43, 44, 45], earlier=True), b"* VANISHED (EARLIER) 41,43:45\r\n"),
    (responses.vanished(SequenceSet.parse("300:310")), b"* VANISHED 300:310\r\n"),
    (responses.capability(["IMAP4rev1", "AUTH=PLAIN"]), b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"),
    (responses.enabled([]), b"* ENABLED\r\n"),
    (responses.list_response(["\\Noselect"], "/", "~/Mail/foo"),
     b"* LIST (\\Noselect) \"/\" ~/Mail/foo\r\n"),
    (responses.list_response(["\\HasNoChildren", "\\Drafts"], "/", "Entwürfe"),
     b"* LIST (\\HasNoChildren \\Drafts) \"/\" Entw&APw-rfe\r\n"),
    (responses.list_response([], None, "INBOX"), b"* LIST () NIL INBOX\r\n"),
    (responses.list_response([], ".", "Sent Items", kind="LSUB"),
     b"* LSUB () \".\" \"Sent Items\"\r\n"),
    (responses.list_response([], "/", "nil"), b"* LIST () \"/\" \"nil\"\r\n"),
    (responses.list_response([], "/", "a*b%"), b"* LIST () \"/\" \"a*b%\"\r\n"),
    (responses.list_response([], "\\", "x"), b"* LIST () \"\\\\\" x\r\n"),
    (responses.mailbox_status("blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}),
     b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"),
    (responses.id_response({"name": "AMS", "version": None}),
     b"* ID (\"name\" \"AMS\" \"version\" NIL)\r\n"),
    (responses.id_response(None), b"* ID NIL\r\n"),
    (responses.namespace([("", "/")], None, [("#shared/", "/")]),
     b"* NAMESPACE ((\"\" \"/\")) NIL ((\"#shared/\" \"/\"))\r\n"),
    (responses.fetch(12, [("FLAGS", (Atom("\\Seen"),)), ("INTERNALDATE", JULY),
                          ("RFC822.SIZE", 4286), ("ENVELOPE", ENVELOPE),
                          ("BODY", ("TEXT", "PLAIN", ("CHARSET", "US-ASCII"), None, None, "7BIT",
                                    3028, 92))]),
     b"* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" "
     b"RFC822.SIZE 4286 ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" "
     b"\"IMAP4rev1 WG mtg summary and minutes\" ((\"Terry Gray\" NIL \"gray\" "
     b"\"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
     b"((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((NIL NIL \"imap\" "
     b"\"cac.washington.edu\")) ((NIL NIL \"minutes\" \"CNRI.Reston.VA.US\") "
     b"(\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) NIL NIL "
     b"\"<B27397-0100000@cac.washington.edu>\") BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" "
     b"\"US-ASCII\") NIL NIL \"7BIT\" 3028 92))\r\n"),
    (responses.fetch(1, BODY_ITEMS),
     b"* 1 FETCH (BODY[] {18}\r\nSubject: x\r\n\r\nhi\r\n UID 9)\r\n"),
    (responses.fetch(2, [(fa("BODY", section=Section((), "HEADER.FIELDS", ("FROM",)),
                             partial=(0, 10), peek=True), b"From: a\r\n"), ("MODSEQ", (5,))]),
     b"* 2 FETCH (BODY[HEADER.FIELDS (FROM)]<0> {9}\r\nFrom: a\r\n MODSEQ (5))\r\n"),
    (responses.fetch(3, [("BINARY[1]", LiteralData(b"\x00\x01", binary=True))]),
     b"* 3 FETCH (BINARY[1] ~{2}\r\n\x00\x01)\r\n"),
    (responses.fetch(4, [("BODY[TEXT]", LiteralData(b"short"))]),
     b"* 4 FETCH (BODY[TEXT] {5}\r\nshort)\r\n"),
    (Untagged("X-THING", ("a\"b\\c", "", b"\xe9", "x" * 1025, Mailbox("&"))),
     b"* X-THING \"a\\\"b\\\\c\" \"\" {1}\r\n\xe9 {1025}\r\n" + b"x" * 1025 + b" &-\r\n"),
    (ContinueRequest("Ready for literal data"), b"+ Ready for literal data\r\n"),
    (ContinueRequest(), b"+ \r\n"),
]


@pytest.mark.parametrize(("response", "wire"), ENCODE_CASES,
                         ids=[str(i) for i in range(len(ENCODE_CASES))])
def test_encoder(response: Any, wire: bytes) -> None:
    assert encode(response) == wire
    assert responses_of(wire) == [wire[:-2]]


ITEMS: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**63 - 1), st.binary(max_size=40).filter(
        lambda b: b"\0" not in b), st.text(max_size=20).filter(lambda s: "\0" not in s),
        st.builds(Atom, st.from_regex(r"\\?[A-Za-z$][A-Za-z0-9.\-]{0,8}", fullmatch=True)),
        st.builds(Mailbox, st.text(max_size=10)),
        # NUL is allowed only in a literal8 (binary=True): the constructor refuses it otherwise.
        st.builds(LiteralData, st.binary(max_size=9), st.just(True)),
        st.builds(LiteralData, st.binary(max_size=9).filter(lambda b: b"\0" not in b),
                  st.just(False))),
    lambda children: st.lists(children, max_size=4).map(tuple), max_leaves=12)


@given(st.lists(ITEMS, max_size=5), st.booleans())
def test_encoded_data_is_always_one_well_formed_response(items: list[Any], utf8: bool) -> None:
    wire = encode(Untagged("X-DATA", tuple(items)), utf8=utf8)
    assert responses_of(wire) == [wire[:-2]]


def test_encoder_with_utf8_enabled() -> None:
    listing = responses.list_response([], "/", "Entwürfe")
    assert encode(listing, utf8=True) == "* LIST () \"/\" \"Entwürfe\"\r\n".encode()
    assert encode(Untagged("X", ("é",)), utf8=True) == "* X \"é\"\r\n".encode()
    assert encode(Untagged("X", (b"\xff",)), utf8=True) == b"* X {1}\r\n\xff\r\n"


def test_connection_encodes_for_utf8_once_enabled() -> None:
    conn = session("authenticated", extensions=["ENABLE", "UTF8=ACCEPT"])
    events = feed(conn, "e ENABLE UTF8=ACCEPT\r\nl SELECT \"Entwürfe\"\r\n".encode())
    assert events == [Select("l", "Entwürfe")]
    conn.data_to_send()
    conn.send(responses.list_response([], "/", "Entwürfe"))
    assert conn.data_to_send() == "* LIST () \"/\" \"Entwürfe\"\r\n".encode()


@pytest.mark.parametrize("build", [
    lambda: Atom("two words"), lambda: Atom("\\"), lambda: Atom("a]"), lambda: Atom(""),
    lambda: StatusResponse("OK", "two\r\nlines"), lambda: StatusResponse("OK", ""),
    lambda: StatusResponse("OK", "[ALERT] fake code"), lambda: StatusResponse("MAYBE", "x"),
    lambda: StatusResponse("BYE", "x", tag="a"), lambda: StatusResponse("OK", "x", tag="a b"),
    lambda: StatusResponse("OK", "caf\u00e9"),
    lambda: Untagged("OK"), lambda: Untagged("two words"), lambda: Untagged("X", (True,)),
    lambda: Untagged("X", (-1,)), lambda: Untagged("X", (2**63,)), lambda: Untagged("X", (cast(Any, 1.5),)),
    lambda: Untagged("X", ("a\x00b",)), lambda: Untagged("X", number=-1),
    lambda: Untagged("X", (datetime(2020, 1, 1),)), lambda: Untagged("X", (SequenceSet(saved=True),)),
    lambda: LiteralData(b"\x00"), lambda: ResponseCode("A B"), lambda: ContinueRequest("a\r\n"),
    lambda: Mailbox("a\ud800"), lambda: responses.list_response([], "//", "x"),
    lambda: responses.fetch(1, [("BODY[\r\n]", 1)]),
])
def test_invalid_responses_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


def test_literal_never_goes_into_a_response_code() -> None:
    with pytest.raises(ValueError):
        encode(StatusResponse("NO", "x", ResponseCode("BADCHARSET", (("a\r\nb",),))))


# --- sequence sets ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ranges"), [
    ("1", ((1, 1),)), ("1:3", ((1, 3),)), ("3:1", ((3, 1),)), ("*", ((None, None),)),
    ("1:*", ((1, None),)), ("*:4", ((None, 4),)), ("1,3:5,7:*", ((1, 1), (3, 5), (7, None))),
    ("4294967295", ((4294967295, 4294967295),)),
])
def test_sequence_set_parse(text: str, ranges: tuple[Any, ...]) -> None:
    parsed = SequenceSet.parse(text)
    assert parsed.ranges == ranges
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["", "0", "01", "1:", ":1", "1,,2", "1,", ",1", "1:2:3",
                                  "4294967296", "a", "1 2", "$1", "1:$", "-1", "1.2"])
def test_sequence_set_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        SequenceSet.parse(text)


@pytest.mark.parametrize(("text", "largest", "clip", "expected"), [
    ("1:3,5", 10, False, [1, 2, 3, 5]),
    ("*", 7, False, [7]),
    ("*", 0, False, []),
    ("1:*", 0, False, []),
    ("5:*", 3, False, [3, 4, 5]),
    ("5:*", 3, True, [3]),
    ("7:2", 10, False, [2, 3, 4, 5, 6, 7]),
    ("1:5,3:7,9,8", 20, False, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("2,2,2", 5, False, [2]),
    ("100:200", 50, True, []),
])
def test_sequence_set_resolve(text: str, largest: int, clip: bool, expected: list[int]) -> None:
    parsed = SequenceSet.parse(text)
    assert list(parsed.numbers(largest, clip=clip)) == expected
    assert all(isinstance(r, range) for r in parsed.resolve(largest, clip=clip))


def test_sequence_set_saved_and_helpers() -> None:
    saved = SequenceSet.parse("$")
    assert saved.saved and str(saved) == "$"
    with pytest.raises(ValueError):
        saved.resolve(5)
    with pytest.raises(ValueError):
        SequenceSet.parse("$", allow_saved=False)
    assert SequenceSet.parse("3:*").highest(10) == 10
    assert SequenceSet.parse("12").highest(10) == 12      # names a message that is not there
    assert SequenceSet.parse("1:4").contains(3, 10)
    assert SequenceSet.parse("1,3:*").uses_star


@given(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=40))
def test_sequence_set_from_numbers_round_trips(numbers: list[int]) -> None:
    built = SequenceSet.from_numbers(numbers)
    assert list(built.numbers(max(numbers))) == sorted(set(numbers))
    assert SequenceSet.parse(str(built)) == built


# --- interop: the stdlib's imaplib against the core, no sockets ---------------------------------

class _FakeMailboxDriver:
    """Just enough of a driver: one mailbox of two messages, in memory."""

    def __init__(self) -> None:
        self.messages = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
        self.flags: list[set[str]] = [set(), {"\\Seen"}]
        self.events: list[Event] = []

    def handle(self, conn: IMAPServerConnection, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Select):
            conn.send(responses.flags(["\\Seen", "\\Deleted"]))
            conn.send(responses.exists(len(self.messages)))
            conn.send(StatusResponse("OK", "UIDs", responses.uidvalidity(7)))
            conn.complete(event.tag, "OK", code=responses.READ_WRITE)
        elif isinstance(event, List):
            conn.send(responses.list_response(["\\HasNoChildren"], "/", "INBOX"))
            conn.send(responses.list_response(["\\HasNoChildren"], "/", "Entwürfe"))
            conn.complete(event.tag, "OK")
        elif isinstance(event, Search):
            conn.send(responses.search(range(1, len(self.messages) + 1)))
            conn.complete(event.tag, "OK")
        elif isinstance(event, Fetch):
            for n in event.sequence_set.numbers(len(self.messages), clip=True):
                conn.send(responses.fetch(n, [(att, self._value(n, att))
                                              for att in event.attributes]))
            conn.complete(event.tag, "OK")
        elif isinstance(event, Store):
            for n in event.sequence_set.numbers(len(self.messages), clip=True):
                self.flags[n - 1] |= set(event.flags)
            conn.complete(event.tag, "OK")
        elif isinstance(event, Append):
            self.messages.append(event.message)
            self.flags.append(set(event.flags))
            conn.complete(event.tag, "OK", code=responses.append_uid(7, len(self.messages)))
        else:
            default_decide(conn, event)

    def _value(self, n: int, att: FetchAttribute) -> Any:
        if att.name == "FLAGS":
            return tuple(Atom(f) for f in sorted(self.flags[n - 1]))
        if att.name == "UID":
            return n
        return self.messages[n - 1]


class LoopbackIMAP4(imaplib.IMAP4):
    """imaplib talking to the core through memory instead of a socket."""

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host, self.port = host, port
        self.driver = _FakeMailboxDriver()
        self.server = IMAPServerConnection(allow_plaintext_auth=True)
        self.server.greeting()
        self.inbox = bytearray(self.server.data_to_send())

    def send(self, data: Any) -> None:
        self.inbox += b"".join(self._round_trip(bytes(data)))

    def _round_trip(self, data: bytes) -> Iterable[bytes]:
        self.server.receive_data(data)
        drain(self.server, self.driver.handle)
        yield self.server.data_to_send()

    def read(self, size: int) -> bytes:
        assert len(self.inbox) >= size, "the client waits for bytes the server never sent"
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def readline(self) -> bytes:
        end = self.inbox.index(b"\n") + 1
        return self.read(end)

    def shutdown(self) -> None:
        pass


def test_imaplib_session() -> None:
    client = LoopbackIMAP4()
    assert "IMAP4REV1" in client.capabilities
    assert client.login("fred", "secret")[0] == "OK"
    typ, listing = client.list()
    assert listing == [b'(\\HasNoChildren) "/" INBOX',
                       b'(\\HasNoChildren) "/" Entw&APw-rfe']
    assert client.select("INBOX") == ("OK", [b"2"])
    assert client.search(None, "ALL") == ("OK", [b"1 2"])
    typ, data = client.fetch("1", "(RFC822)")
    assert data[0] == (b"1 (RFC822 {23}", b"Subject: one\r\n\r\nfirst\r\n")
    typ, flags = client.uid("FETCH", "1:*", "(FLAGS)")
    assert flags == [b"1 (FLAGS () UID 1)", b"2 (FLAGS (\\Seen) UID 2)"]
    assert client.store("1", "+FLAGS", "\\Deleted")[0] == "OK"
    typ, appended = client.append("INBOX", "(\\Seen)",
                              imaplib.Time2Internaldate(datetime(2024, 1, 2, tzinfo=UTC)),
                              b"Subject: three\r\n\r\nthird\r\n")
    assert typ == "OK" and appended == [b"[APPENDUID 7 3] APPEND completed"]
    assert client.expunge()[0] == "OK"
    assert client.close()[0] == "OK"
    assert client.logout()[0] == "BYE"


def test_imaplib_authenticate_plain_with_continuation() -> None:
    client = LoopbackIMAP4()
    typ, _ = client.authenticate("PLAIN", lambda challenge: b"\0fred\0secret")
    assert typ == "OK" and client.state == "AUTH"
    assert client.server.user == "fred"


def test_imaplib_login_with_a_quoted_password() -> None:
    client = LoopbackIMAP4()
    with pytest.raises(imaplib.IMAP4.error):
        client.login("fred", 'se"cr\\et')
    [event] = client.driver.events
    assert isinstance(event, Login) and (event.userid, event.password) == ("fred", 'se"cr\\et')
    assert client.server.state is State.NOT_AUTHENTICATED


# --- the dependency rule ---------------------------------------------------------------------

def test_core_imports_without_io_modules() -> None:
    script = textwrap.dedent("""
        import sys
        # The stdlib the core legitimately uses, imported before the block
        # (several of them import os themselves).
        import base64, binascii, collections.abc, dataclasses, datetime, enum, re, types
        import typing
        for name in ("trio", "socket", "os", "lmdb", "ssl", "selectors", "asyncio",
                     "subprocess", "threading"):
            sys.modules[name] = None
        from ams.protocols.imap import IMAPServerConnection, ConnectionClosed
        conn = IMAPServerConnection(allow_plaintext_auth=True)
        conn.greeting()
        conn.receive_data(b"a CAPABILITY\\r\\nb LOGOUT\\r\\n")
        while not isinstance(conn.next_event(), ConnectionClosed):
            pass
        assert conn.data_to_send().endswith(b"b OK LOGOUT completed\\r\\n")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_core_source_imports_no_io_modules() -> None:
    forbidden = re.compile(r"^\s*(?:import|from)\s+(trio|socket|os|lmdb|ssl|asyncio)\b",
                           re.MULTILINE)
    for path in (ROOT / "ams" / "protocols" / "imap").glob("*.py"):
        assert not forbidden.search(path.read_text()), path


def test_modules_stay_small() -> None:
    for path in (ROOT / "ams" / "protocols" / "imap").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 700, path


# --- fuzz: random input never breaks the core ----------------------------------------------------

TOKENS = [
    b"a LOGIN fred secret\r\n", b"a LOGIN {4}\r\n", b"fred {6+}\r\nsecret\r\n", b"{3}\r\n",
    b"b SELECT INBOX\r\n", b"b EXAMINE missing\r\n", b"c FETCH 1:* (FLAGS BODY.PEEK[])\r\n",
    b"c UID FETCH 1 (CHANGEDSINCE 1 VANISHED)\r\n", b"d APPEND INBOX {5}\r\nhello\r\n",
    b"d APPEND INBOX (\\Seen) {3+}\r\n", b"abc", b"e IDLE\r\n", b"DONE\r\n",
    b"f AUTHENTICATE PLAIN\r\n", PLAIN + b"\r\n", b"*\r\n", b"g STARTTLS\r\n",
    b"h SEARCH OR SEEN NOT FROM {2+}\r\nxy\r\n", b"i STORE 1 +FLAGS (\\Seen)\r\n",
    b"j CLOSE\r\n", b"k LOGOUT\r\n", b"l ENABLE QRESYNC UTF8=ACCEPT\r\n", b"m NOOP\r\n",
    b"n LIST \"\" *\r\n", b"{99999999999+}\r\n", b"o APPEND INBOX {70+}\r\n",
    b"\r\n", b"\n", b"\r", b"(", b")", b"\"", b"{", b"}", b"x" * 300, b"\xff\xfe\x00",
    b" ", b"+", b"~{2}\r\n", b"p SELECT &Jjo-\r\n", b"q UID EXPUNGE 1:*\r\n",
]
CONFIGS = st.fixed_dictionaries({}, optional={
    "max_line": st.sampled_from([1000, 4096]),
    "max_literal": st.sampled_from([0, 4, 100]),
    "max_bad_commands": st.sampled_from([0, 3, 20]),
    "tls_available": st.booleans(),
    "allow_plaintext_auth": st.sampled_from([True, True, False]),
    "non_sync_literals": st.sampled_from(["+", "-", None]),
    "extensions": st.sampled_from([(), ("IDLE", "ENABLE", "QRESYNC", "CONDSTORE", "SASL-IR",
                                        "UIDPLUS", "UTF8=ACCEPT", "BINARY")]),
})
# Start most sessions somewhere interesting, then mostly speak IMAP.
PREFIXES = st.sampled_from([
    b"", b"a LOGIN fred secret\r\n", b"a LOGIN fred secret\r\nb SELECT INBOX\r\n",
    b"a LOGIN fred secret\r\nb SELECT INBOX\r\ne IDLE\r\n", b"f AUTHENTICATE PLAIN\r\n",
    b"a LOGIN fred secret\r\nd APPEND INBOX {9}\r\n",
])
PIECES = st.one_of(st.sampled_from(TOKENS), st.sampled_from(TOKENS), st.binary(max_size=12))
STREAMS = st.tuples(PREFIXES, st.lists(PIECES, max_size=25)).map(
    lambda parts: parts[0] + b"".join(parts[1]))


@given(STREAMS, st.lists(st.integers(0, 2000), max_size=8), CONFIGS)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_input_gives_events_or_the_remote_error(
        data: bytes, cuts: list[int], config: dict[str, Any]) -> None:
    whole = run_pieces([data], **config)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    split = run_pieces([data[a:b] for a, b in pairwise(bounds)], **config)
    single = run_pieces(bytewise(data), **config)
    assert whole == split == single
    outcomes, out, state = whole
    responses_of(out)
    for outcome in outcomes:
        assert isinstance(outcome, Event) or str(outcome).startswith("RemoteProtocolError(")
    if outcomes and isinstance(outcomes[-1], str):
        assert state is State.LOGOUT and out.endswith(b"\r\n") and b"* BYE " in out
