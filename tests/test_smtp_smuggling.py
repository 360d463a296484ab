"""SMTP smuggling regressions (SEC Consult, December 2023; CVE-2023-51764,
-51765, -51766), after aiosmtpd's tests/test_smtpsmuggling.py.

An outbound server that lets a bare LF or CR through, and an inbound server
that takes some other sequence than CRLF "." CRLF for the end of data,
disagree on where a message ends; whatever follows the fake end is then a
second, "smuggled" message in the inbound server's eyes, with any sender.
The core must never see an end of data except at CRLF "." CRLF, under any
policy for bare newlines, however the bytes are cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams.protocols.smtp import (
    ConnectionClosed,
    Data,
    EndOfData,
    MailFrom,
    MessageRejected,
    RcptTo,
    RemoteProtocolError,
    StartTLS,
    State,
    replies,
)
from tests.test_smtp_core import PRE, Outcome, bytewise, codes, feed, normalise, run_pieces, session

SMUGGLED = (b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\n"
            b"From: admin@bank.example\r\nSubject: smuggled\r\n\r\nsend money\r\n")

# Fake ends that some servers took for CRLF.CRLF.
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r",
             b"\r.\n", b".\n", b"\n.", b"\r\n\r.\r\n", b"\r\n.\n\r\n"]

POLICIES = ["close", "reject", "keep"]


def smuggling_attempt(fake_end: bytes) -> bytes:
    return (PRE + b"DATA\r\nFrom: a@b.example\r\nSubject: legit\r\n\r\nlegit body" + fake_end
            + SMUGGLED + b".\r\nQUIT\r\n")


def senders(outcomes: Iterable[object]) -> list[str]:
    return [o.address for o in outcomes if isinstance(o, MailFrom)]


@pytest.mark.parametrize("fake_end", FAKE_ENDS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cut", ["whole", "bytewise"])
def test_fake_end_of_data_never_starts_a_second_message(
        fake_end: bytes, policy: str, cut: str) -> None:
    data = smuggling_attempt(fake_end)
    outcomes, out, _ = run_pieces([data] if cut == "whole" else bytewise(data),
                                  bare_newline=policy)
    assert senders(outcomes) == ["a@b.example"]
    assert b"admin@bank.example" not in out
    ends = [o for o in outcomes if isinstance(o, (EndOfData, MessageRejected))]
    if policy == "close":
        assert outcomes[-1] == (RemoteProtocolError, replies.BARE_NEWLINE_CLOSE)
        assert codes(out)[-1] == 521 and ends == []
    elif policy == "reject":
        assert ends == [MessageRejected(replies.BARE_NEWLINE_REJECT)]
        assert codes(out)[-2:] == [554, 221]
    else:
        # Kept as data: one message, and the "smuggled" commands are its text
        # (a dot right after a CRLF is still unstuffed, as on any line).
        assert len(ends) == 1 and isinstance(ends[0], EndOfData)
        body = b"".join(o.data for o in outcomes if isinstance(o, Data))
        assert body.endswith(fake_end.replace(b"\r\n.", b"\r\n") + SMUGGLED)
        assert codes(out)[-2:] == [250, 221]


@pytest.mark.parametrize("policy", POLICIES)
def test_bare_newline_right_after_data(policy: str) -> None:
    conn = session("data", bare_newline=policy)
    events = feed(conn, b"\n.\n" + SMUGGLED + b".\r\n")
    assert not any(isinstance(e, MailFrom) for e in events)


def test_close_policy_delivers_nothing_after_the_bare_newline() -> None:
    conn = session("data")
    events = feed(conn, b"line one\r\nline two\nMAIL FROM:<x@y.example>\r\n")
    assert events[0] == Data(b"line one\r\nline two")
    assert isinstance(events[1], RemoteProtocolError)
    assert conn.data_to_send() == (b"521 5.5.2 mx.example.test Bare CR or LF in message data, "
                                   b"closing connection\r\n")
    assert conn.state is State.CLOSED


def test_end_of_data_only_at_crlf_dot_crlf_split_anywhere() -> None:
    for pieces in ([b"x\r", b"\n", b".", b"\r", b"\n"], [b"x\r\n.", b"\r\n"], [b"x\r\n", b".\r\n"]):
        conn = session("data")
        events = []
        for piece in pieces:
            events += feed(conn, piece)
        assert normalise(events) == [Data(b"x\r\n"),
                                     EndOfData(3, "a@b.example", ("u@d.example",))]


@pytest.mark.parametrize("text", [b"\r\n..\r\n", b"\r\n.\x00\r\n", b"\r\n. \r\n",
                                  b"\r\n.\r\r\n"])
def test_near_misses_are_data(text: bytes) -> None:
    conn = session("data", bare_newline="keep")
    events = feed(conn, b"x" + text + SMUGGLED)
    assert [type(e) for e in events] == [Data] * len(events)
    assert conn.state is State.DATA


# --- command lines ---------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"NOOP\nNOOP\r\n", b"NOOP\rNOOP\r\n", b"NOOP\n\r\n",
                                  b"MAIL FROM:<a@b.example>\nRCPT TO:<u@d.example>\r\n"])
def test_bare_newline_never_ends_a_command(line: bytes) -> None:
    conn = session("ready")
    assert feed(conn, line) == []
    assert codes(conn.data_to_send()) == [500]


def test_plaintext_pipelined_after_starttls_is_discarded() -> None:
    conn = session("ready", tls_available=True)
    assert feed(conn, b"STARTTLS\r\nMAIL FROM:<admin@bank.example>\r\n") == [StartTLS()]
    conn.tls_started()
    assert feed(conn, b"") == []
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
    assert conn.state is State.MAIL


# --- BDAT: the chunk length decides, never the content ----------------------------------

def test_bdat_content_that_looks_like_commands_is_data() -> None:
    chunk = b"\r\n.\r\n" + SMUGGLED + b".\r\n"
    conn = session("rcpt")
    events = feed(conn, b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
    assert senders(events) == []
    assert normalise(events)[1:] == [Data(chunk),
                                     EndOfData(len(chunk), "a@b.example", ("u@d.example",)),
                                     ConnectionClosed(replies.CLOSING)]


@pytest.mark.parametrize(("start", "config"), [
    ("ready", {}), ("mail", {}), ("initial", {}), ("rcpt", {"chunking": False}),
    ("rcpt", {"max_size": 10}),
])
def test_refused_bdat_chunk_is_read_and_thrown_away(start: str, config: dict[str, Any]) -> None:
    conn = session(start, **config)
    events = feed(conn, b"BDAT %d LAST\r\n" % len(SMUGGLED) + SMUGGLED)
    assert senders(events) == [] and not any(isinstance(e, RcptTo) for e in events)
    assert len(codes(conn.data_to_send())) == 1


# --- model: the core agrees with a reference reading of RFC 5321 §4.5.2 ----------------

def reference(content: bytes) -> tuple[bytes, bool] | None:
    """(unstuffed body, has bare CR/LF) for DATA text, or None if it never ends."""
    text = b"\r\n" + content
    end = text.find(b"\r\n.\r\n")
    if end < 0:
        return None
    raw = text[2:end + 2]
    body = b"\r\n".join(line[1:] if line.startswith(b".") else line
                        for line in raw.split(b"\r\n"))
    rest = raw.replace(b"\r\n", b"")
    return body, b"\r" in rest or b"\n" in rest


TEXT = st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"\r\n.",
                                 b"\r\n.\r\n", b"\x00", b" ", b"\r\n.\r"]),
                max_size=30).map(b"".join)


@given(TEXT, st.sampled_from(POLICIES))
@settings(max_examples=400, deadline=None)
def test_data_reader_matches_the_reference(content: bytes, policy: str) -> None:
    expected = reference(content)
    for pieces in ([content], bytewise(content)):
        conn = session("data", bare_newline=policy, max_line=None)
        outcomes: list[Outcome] = []
        for piece in [*pieces, b""]:
            outcomes += feed(conn, piece, eof=not piece)
            if conn.state is not State.DATA:
                break
        result = normalise(outcomes)
        if expected is None:
            assert EndOfData not in map(type, result) and MessageRejected not in map(type, result)
            continue
        body, bare = expected
        if bare and policy == "close":
            assert result[-1] == (RemoteProtocolError, replies.BARE_NEWLINE_CLOSE)
        elif bare and policy == "reject":
            assert result[0] == MessageRejected(replies.BARE_NEWLINE_REJECT)
        else:
            message = [Data(body)] if body else []
            assert result[:len(message) + 1] == [
                *message, EndOfData(len(body), "a@b.example", ("u@d.example",))]
