"""The sans-IO SMTP client core: reply parsing, the state table, dot-stuffing,
a client talking to the server core with no sockets, and fuzzed replies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ams.protocols.smtp import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfData,
    LocalProtocolError,
    RcptTo,
    RemoteProtocolError,
    SMTPServerConnection,
    replies,
)
from ams.protocols.smtp._client import (
    TRANSITIONS,
    ClientState,
    Response,
    SMTPClientConnection,
    Trigger,
    dot_stuff,
)

ROOT = Path(__file__).resolve().parent.parent
S = ClientState


def events(conn: SMTPClientConnection, data: bytes = b"", *, eof: bool = False,
           ) -> list[Response | ConnectionClosed]:
    if data:
        conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    out: list[Response | ConnectionClosed] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


def greeted(ehlo: bytes = b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
            ) -> SMTPClientConnection:
    conn = SMTPClientConnection()
    (g,) = events(conn, b"220 mx.test ESMTP\r\n")
    assert g.code == 220 and conn.state is S.INITIAL
    conn.ehlo("client.test")
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    (r,) = events(conn, ehlo)
    assert r.command == "EHLO" and conn.state is S.READY
    return conn


# -- replies ---------------------------------------------------------------------------


def test_multiline_reply_with_enhanced_code_and_extensions() -> None:
    conn = greeted(b"250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
                   b"250-STARTTLS\r\n250 8BITMIME\r\n")
    assert conn.extensions == {"PIPELINING": "", "SIZE": "1000", "STARTTLS": "",
                               "8BITMIME": ""}
    conn.mail("a@b.test")
    (r,) = events(conn, b"550-5.7.1 first line\r\n550 5.7.1 second line\r\n")
    assert (r.command, r.code, r.enhanced) == ("MAIL", 550, "5.7.1")
    assert r.text == "first line\n5.7.1 second line"
    assert r.is_permanent and not r.is_positive
    assert str(r) == "550 5.7.1 first line"


def test_enhanced_code_must_match_the_reply_class() -> None:
    conn = greeted()
    conn.mail("a@b.test")
    (r,) = events(conn, b"250 5.1.0 odd but fine\r\n")
    assert r.enhanced is None and r.text == "5.1.0 odd but fine"


def test_reply_split_anywhere_gives_the_same_responses() -> None:
    stream = (b"220 mx ready\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n"
              b"250 2.1.0 ok\r\n550 5.1.1 no\r\n250 2.1.5 ok\r\n354 go\r\n")

    def run(pieces: list[bytes]) -> list[tuple[str, int, str | None, str, str]]:
        conn = SMTPClientConnection()
        got: list[tuple[str, int, str | None, str, str]] = []
        script = iter([lambda: conn.ehlo("c.test"),
                       lambda: (conn.mail("a@b.test"), conn.rcpt("x@y.test"),
                                conn.rcpt("z@y.test"), conn.data())])
        for p in pieces:
            conn.receive_data(p)
            while (ev := conn.next_event()) is not NEED_DATA:
                assert isinstance(ev, Response)
                got.append((ev.command, ev.code, ev.enhanced, ev.text, ev.argument))
                if ev.command in ("GREETING", "EHLO"):
                    next(script)()
        return got

    whole = run([stream])
    assert [g[0] for g in whole] == ["GREETING", "EHLO", "MAIL", "RCPT", "RCPT", "DATA"]
    assert whole[3][4] == "x@y.test" and whole[3][1] == 550
    assert run([stream[i:i + 1] for i in range(len(stream))]) == whole


@pytest.mark.parametrize("bad", [
    b"hello\r\n",                    # not a reply at all
    b"25 short\r\n",
    b"250x no separator\r\n",
    b"250-one\r\n251 two\r\n",       # the code changed mid-reply
    b"600 no such class\r\n",
    b"250 " + b"x" * 5000 + b"\r\n",  # over the line limit
])
def test_malformed_replies_are_remote_errors(bad: bytes) -> None:
    conn = SMTPClientConnection()
    with pytest.raises(RemoteProtocolError):
        events(conn, bad)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()  # and it stays broken


def test_a_reply_nobody_asked_for_is_a_remote_error() -> None:
    conn = greeted()
    with pytest.raises(RemoteProtocolError):
        events(conn, b"250 unsolicited\r\n")


def test_endless_reply_line_is_refused_before_it_is_buffered() -> None:
    conn = SMTPClientConnection(max_reply_line=100)
    with pytest.raises(RemoteProtocolError):
        events(conn, b"220 " + b"x" * 200)


def test_eof_closes_and_421_closes() -> None:
    conn = greeted()
    (closed,) = events(conn, eof=True)
    assert isinstance(closed, ConnectionClosed) and conn.state is S.CLOSED
    conn = greeted()
    conn.mail("a@b.test")
    (r, closed) = events(conn, b"421 4.3.2 shutting down\r\n", eof=True)
    assert isinstance(r, Response) and r.code == 421
    assert isinstance(closed, ConnectionClosed)


def test_control_characters_in_reply_text_are_replaced() -> None:
    conn = SMTPClientConnection()
    (g,) = events(conn, b"220 evil\x1b[31m\x00\r\n")
    assert g.text == "evil?[31m?"


# -- the state table -------------------------------------------------------------------


def test_commands_out_of_order_are_local_errors() -> None:
    conn = SMTPClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.ehlo("c.test")  # before the greeting
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.rcpt("x@y.test")  # no MAIL
    with pytest.raises(LocalProtocolError):
        conn.message(b"x")  # no 354
    conn.mail("a@b.test")
    with pytest.raises(LocalProtocolError):
        conn.starttls()  # inside a transaction
    conn.data()
    with pytest.raises(LocalProtocolError):
        conn.rcpt("x@y.test")  # DATA ends the pipeline group


@pytest.mark.parametrize("address", ["a b@c", "a@b>\r\nRCPT TO:<evil@x", "<a@b>", "\x00@x"])
def test_addresses_that_could_inject_commands_are_refused(address: str) -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.mail(address)
    assert conn.data_to_send() == b""


def test_every_state_but_closed_can_close_and_closed_is_final() -> None:
    for state in ClientState:
        assert ((state, Trigger.CLOSE) in TRANSITIONS) is (state is not S.CLOSED)
    assert not any(src is S.CLOSED for src, _ in TRANSITIONS)


def test_refused_greeting_allows_only_quit() -> None:
    conn = SMTPClientConnection()
    (g,) = events(conn, b"554 5.7.1 go away\r\n")
    assert g.code == 554 and conn.state is S.REFUSED
    with pytest.raises(LocalProtocolError):
        conn.ehlo("c.test")
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"


def test_starttls_then_ehlo_again_and_plaintext_leftovers_dropped() -> None:
    conn = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    conn.starttls()
    (r,) = events(conn, b"220 2.0.0 go ahead\r\n250 injected\r\n"[:22])
    assert r.command == "STARTTLS" and conn.state is S.TLS_PENDING
    conn.receive_data(b"250 injected before the handshake\r\n")
    conn.tls_started()
    assert conn.state is S.INITIAL and conn.extensions == {}
    assert events(conn) == []  # the injected line was thrown away
    conn.ehlo("c.test")
    (r,) = events(conn, b"250 mx\r\n")
    assert r.command == "EHLO" and conn.state is S.READY


def test_failed_data_returns_to_ready_and_354_lets_the_message_go() -> None:
    conn = greeted()
    conn.mail("a@b.test")
    conn.rcpt("x@y.test")
    conn.data()
    rs = events(conn, b"250 ok\r\n250 ok\r\n554 5.5.1 no valid recipients\r\n")
    assert [r.code for r in rs] == [250, 250, 554] and conn.state is S.READY
    conn.mail("a@b.test")
    conn.rcpt("x@y.test")
    conn.data()
    events(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert conn.state is S.MESSAGE
    conn.data_to_send()
    conn.message(b"Subject: x\n\n.hidden\nend")
    assert conn.data_to_send() == b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n"
    (r,) = events(conn, b"250 2.0.0 queued\r\n")
    assert r.command == "MESSAGE" and conn.state is S.READY


# -- dot-stuffing ------------------------------------------------------------------------


@pytest.mark.parametrize("message,wire", [
    (b"", b".\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"bare\rcr\r\n..two\r\n", b"bare\r\ncr\r\n...two\r\n.\r\n"),
])
def test_dot_stuffing_and_line_endings(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire


# -- a client and the server core, no sockets ------------------------------------------


def converse(message: bytes, rcpts: list[str]) -> tuple[list[Response], list[bytes], list[str]]:
    """Drive the client core against the server core; the server refuses "bad*"."""
    server = SMTPServerConnection("mx.test")
    client = SMTPClientConnection()
    server.greeting()
    responses: list[Response] = []
    received: list[bytes] = []
    accepted: list[str] = []
    plan = ["EHLO", "TX", "MESSAGE", "QUIT"]

    def pump() -> None:
        client.receive_data(server.data_to_send())

    pump()
    while True:
        ev = client.next_event()
        if ev is NEED_DATA:
            server.receive_data(client.data_to_send())
            while True:
                sev = server.next_event()
                if sev is NEED_DATA:
                    break
                if sev is PAUSED:
                    p = server.pending
                    if isinstance(p, RcptTo) and p.address.startswith("bad"):
                        server.reject(replies.USER_UNKNOWN)
                    else:
                        if isinstance(p, RcptTo):
                            accepted.append(p.address)
                        server.accept()
                elif isinstance(sev, Data):
                    received.append(sev.data)
                elif isinstance(sev, EndOfData | ConnectionClosed):
                    if isinstance(sev, ConnectionClosed):
                        break
            pump()
            continue
        if isinstance(ev, ConnectionClosed):
            return responses, received, accepted
        responses.append(ev)
        if client.awaiting or not plan:
            continue
        step = plan.pop(0)
        if step == "EHLO":
            client.ehlo("client.test")
        elif step == "TX":
            client.mail("sender@a.test")
            for r in rcpts:
                client.rcpt(r)
            client.data()
        elif step == "MESSAGE":
            client.message(message)
        else:
            client.quit()


def test_client_and_server_cores_complete_a_pipelined_transaction() -> None:
    message = b"Subject: hi\r\n\r\n.leading dot\r\n..two\r\nlast line"
    responses, received, accepted = converse(message, ["a@x.test", "bad@x.test", "b@x.test"])
    assert [(r.command, r.code) for r in responses] == [
        ("GREETING", 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250), ("RCPT", 550),
        ("RCPT", 250), ("DATA", 354), ("MESSAGE", 250), ("QUIT", 221)]
    assert accepted == ["a@x.test", "b@x.test"]
    assert b"".join(received) == message + b"\r\n"


@given(st.binary(max_size=300))
def test_any_message_bytes_survive_the_round_trip(body: bytes) -> None:
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    _, received, _ = converse(body, ["a@x.test"])
    expected = body if not body or body.endswith(b"\r\n") else body + b"\r\n"
    assert b"".join(received) == expected


@given(st.binary(max_size=200))
def test_random_replies_parse_or_raise_the_remote_error(data: bytes) -> None:
    def run(pieces: list[bytes]) -> list[object]:
        conn = SMTPClientConnection()
        out: list[object] = []
        try:
            for p in pieces:
                conn.receive_data(p)
                while (ev := conn.next_event()) is not NEED_DATA:
                    out.append(ev)
                    if isinstance(ev, ConnectionClosed):
                        return out
                    if isinstance(ev, Response) and ev.command == "GREETING" and ev.code == 220:
                        conn.ehlo("c.test")
        except RemoteProtocolError:
            out.append("error")
        return out

    whole = run([data] if data else [])
    assert run([data[i:i + 1] for i in range(len(data))]) == whole


def test_client_core_imports_without_io_modules() -> None:
    script = textwrap.dedent("""
        import sys
        import base64, binascii, collections, collections.abc, dataclasses, enum, ipaddress
        import re, types, typing
        for name in ("trio", "socket", "os", "lmdb", "ssl", "selectors", "asyncio",
                     "subprocess", "threading"):
            sys.modules[name] = None
        from ams.protocols.smtp._client import SMTPClientConnection
        conn = SMTPClientConnection()
        conn.receive_data(b"220 hi\\r\\n")
        assert conn.next_event().code == 220
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr
