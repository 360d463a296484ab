"""The SMTP client connection: commands in, bytes out; bytes in, responses out.

Theory of operation
-------------------
The mirror image of :class:`SMTPServerConnection`, for the outbound gateway.
The driver owns the socket, the clock and TLS; this object owns the
protocol::

    conn = SMTPClientConnection()
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())
            conn.receive_data(recv())          # b"" at EOF
        elif isinstance(event, Response):      # one per command, in order
            decide(event)                      # conn.ehlo(), conn.mail(), ...
        elif isinstance(event, ConnectionClosed):
            break

Each command method queues the command's bytes and expects one response;
responses come out as :class:`Response` events strictly in the order the
commands were given, each naming its command, so a pipelined MAIL, RCPT ...,
DATA (RFC 2920) is sent in one write and its answers read back in order.

What may be sent when is one table, :data:`TRANSITIONS`: a command that is
not allowed in the current state is a LocalProtocolError (a driver bug).
Some responses move the state too (a 354 to DATA lets the message go, a 220
to STARTTLS asks for the handshake, a 421 ends the session); they are in the
same table.  MAIL and RCPT answers do not: with pipelining the client has
already moved on, and it is the driver that decides, from the answers, to
send the message or to RSET.

The peer's mistakes (a reply that is not ``NNN[ -]text``, a multi-line reply
changing its code, lines or replies beyond the limits, a reply nobody asked
for) raise RemoteProtocolError: the session cannot be trusted any more.

The message is sent with its line endings made CRLF (a bare LF or CR would
be a smuggling vector at the next hop) and dot-stuffed (RFC 5321 4.5.2),
followed by ``.CRLF``.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ams.protocols.smtp._events import ConnectionClosed
from ams.protocols.smtp._replies import LOCAL_ERROR
from ams.protocols.smtp._util import NEED_DATA, LocalProtocolError, RemoteProtocolError, Sentinel

__all__ = ["ClientState", "Response", "SMTPClientConnection", "dot_stuff"]

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200
_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_IN_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
_BAD_IN_PARAMS = re.compile(r"[\x00-\x1f\x7f]")


class ClientState(enum.Enum):
    GREETING = "GREETING"          # connected, waiting for the 220
    REFUSED = "REFUSED"            # greeting was not 220: QUIT only
    INITIAL = "INITIAL"            # greeted (or TLS just started): EHLO / HELO
    HELLO_SENT = "HELLO_SENT"      # EHLO/HELO answer awaited
    READY = "READY"                # no transaction: MAIL, STARTTLS, RSET, NOOP, QUIT
    TLS_SENT = "TLS_SENT"          # STARTTLS answer awaited
    TLS_PENDING = "TLS_PENDING"    # 220 to STARTTLS: the driver runs the handshake
    MAIL = "MAIL"                  # MAIL sent: RCPT, DATA, RSET
    DATA_SENT = "DATA_SENT"        # DATA answer awaited
    MESSAGE = "MESSAGE"            # 354: the message may be sent
    MESSAGE_SENT = "MESSAGE_SENT"  # the final answer awaited
    QUIT_SENT = "QUIT_SENT"
    CLOSED = "CLOSED"


class Trigger(enum.Enum):
    # commands
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    MESSAGE = "MESSAGE"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    # responses that move the state
    GREETED = "GREETED"
    GREETING_REFUSED = "GREETING_REFUSED"
    HELLO_OK = "HELLO_OK"
    HELLO_FAILED = "HELLO_FAILED"
    TLS_GO = "TLS_GO"
    TLS_REFUSED = "TLS_REFUSED"
    TLS_STARTED = "TLS_STARTED"
    DATA_GO = "DATA_GO"
    DATA_REFUSED = "DATA_REFUSED"
    MESSAGE_ANSWERED = "MESSAGE_ANSWERED"
    CLOSE = "CLOSE"


S, T = ClientState, Trigger


def _build() -> dict[tuple[ClientState, Trigger], ClientState]:
    t = {
        (S.GREETING, T.GREETED): S.INITIAL,
        (S.GREETING, T.GREETING_REFUSED): S.REFUSED,
        (S.REFUSED, T.QUIT): S.QUIT_SENT,
        (S.INITIAL, T.EHLO): S.HELLO_SENT,
        (S.INITIAL, T.HELO): S.HELLO_SENT,
        (S.HELLO_SENT, T.HELLO_OK): S.READY,
        (S.HELLO_SENT, T.HELLO_FAILED): S.INITIAL,
        (S.READY, T.STARTTLS): S.TLS_SENT,
        (S.TLS_SENT, T.TLS_GO): S.TLS_PENDING,
        (S.TLS_SENT, T.TLS_REFUSED): S.READY,
        (S.TLS_PENDING, T.TLS_STARTED): S.INITIAL,
        (S.READY, T.MAIL): S.MAIL,
        (S.MAIL, T.RCPT): S.MAIL,
        (S.MAIL, T.DATA): S.DATA_SENT,
        (S.DATA_SENT, T.DATA_GO): S.MESSAGE,
        (S.DATA_SENT, T.DATA_REFUSED): S.READY,
        (S.MESSAGE, T.MESSAGE): S.MESSAGE_SENT,
        (S.MESSAGE_SENT, T.MESSAGE_ANSWERED): S.READY,
        (S.READY, T.RSET): S.READY,
        (S.MAIL, T.RSET): S.READY,
        (S.READY, T.NOOP): S.READY,
        (S.MAIL, T.NOOP): S.MAIL,
    }
    for state in (S.INITIAL, S.READY, S.MAIL):
        t[state, T.QUIT] = S.QUIT_SENT
    for state in ClientState:
        if state is not S.CLOSED:
            t[state, T.CLOSE] = S.CLOSED
    return t


TRANSITIONS: dict[tuple[ClientState, Trigger], ClientState] = _build()

Command = Literal["GREETING", "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT", "DATA", "MESSAGE",
                  "RSET", "NOOP", "QUIT"]


@dataclass(frozen=True, slots=True)
class Response:
    """The server's answer to ``command`` (``argument``: the RCPT address).

    ``text`` is the reply's lines joined by ``\\n``, the enhanced code
    (if the first line had one) taken off the first line, control
    characters replaced by ``?``.
    """

    command: str
    code: int
    enhanced: str | None
    text: str
    argument: str = ""
    lines: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200..599, not {self.code}")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        first = self.text.split("\n", 1)[0]
        return " ".join(str(p) for p in (self.code, self.enhanced, first) if p)


def dot_stuff(message: bytes) -> bytes:
    """``message`` as DATA sends it: CRLF line ends, dots doubled, ``.CRLF`` last."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    text = re.sub(rb"(?m)^\.", b"..", text)
    return text + b".\r\n"


class SMTPClientConnection:
    """One SMTP client session, without I/O.  See the module docstring."""

    def __init__(self, *, max_reply_line: int = MAX_REPLY_LINE,
                 max_reply_lines: int = MAX_REPLY_LINES) -> None:
        self.max_reply_line = max_reply_line
        self.max_reply_lines = max_reply_lines
        self._state = S.GREETING
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._lines: list[tuple[int, str]] = []
        self._awaiting: deque[tuple[Command, str]] = deque([("GREETING", "")])
        self._closed: ConnectionClosed | None = None
        self._error: RemoteProtocolError | None = None
        #: EHLO keywords (upper case) -> their parameters, once EHLO succeeded.
        self.extensions: dict[str, str] = {}

    # -- public surface ------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def awaiting(self) -> int:
        """Responses still expected."""
        return len(self._awaiting)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means it closed."""
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
        elif self._state is not S.CLOSED:
            self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Response | ConnectionClosed | Literal[Sentinel.NEED_DATA]:
        if self._error is not None:
            raise self._error
        if self._state is S.CLOSED:
            assert self._closed is not None
            return self._closed
        try:
            response = self._read_response()
        except RemoteProtocolError as e:
            self._error = e
            self._close()
            raise
        if response is not None:
            return response
        if self._eof:
            return self._close()
        return NEED_DATA

    # -- commands ------------------------------------------------------------------------

    def ehlo(self, name: str) -> None:
        self._hello("EHLO", name)

    def helo(self, name: str) -> None:
        self._hello("HELO", name)

    def _hello(self, verb: Literal["EHLO", "HELO"], name: str) -> None:
        if not name or " " in name or _CONTROL.search(name):
            raise LocalProtocolError(f"bad {verb} name {name!r}")
        self._command(T[verb], verb, f"{verb} {name}")

    def starttls(self) -> None:
        self._command(T.STARTTLS, "STARTTLS", "STARTTLS")

    def tls_started(self) -> None:
        """The handshake after a 220 to STARTTLS succeeded: EHLO again."""
        self._transition(T.TLS_STARTED)
        self.extensions = {}
        self._in.clear()  # nothing the server sent in plaintext may count

    def mail(self, address: str, params: str = "") -> None:
        """``MAIL FROM:<address>`` ("" is the null sender) with ESMTP ``params``."""
        _check_address(address, null_ok=True)
        if _BAD_IN_PARAMS.search(params):
            raise LocalProtocolError("control characters in MAIL parameters")
        self._command(T.MAIL, "MAIL", f"MAIL FROM:<{address}>" + (f" {params}" if params
                                                                   else ""))

    def rcpt(self, address: str) -> None:
        _check_address(address, null_ok=False)
        self._command(T.RCPT, "RCPT", f"RCPT TO:<{address}>", argument=address)

    def data(self) -> None:
        self._command(T.DATA, "DATA", "DATA")

    def message(self, message: bytes) -> None:
        """The message after a 354: sent dot-stuffed, ``.CRLF`` appended."""
        self._transition(T.MESSAGE)
        self._out += dot_stuff(message)
        self._awaiting.append(("MESSAGE", ""))

    def rset(self) -> None:
        self._command(T.RSET, "RSET", "RSET")

    def noop(self) -> None:
        self._command(T.NOOP, "NOOP", "NOOP")

    def quit(self) -> None:
        self._command(T.QUIT, "QUIT", "QUIT")

    # -- plumbing ------------------------------------------------------------------------

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"{trigger.value} is not allowed in state {self._state.value}") from None

    def _command(self, trigger: Trigger, command: Command, line: str, *,
                 argument: str = "") -> None:
        self._transition(trigger)
        data = line.encode("utf-8") + b"\r\n"
        if len(data) > 2048:
            raise LocalProtocolError("command line too long")
        self._out += data
        self._awaiting.append((command, argument))

    def _close(self) -> ConnectionClosed:
        if self._state is not S.CLOSED:
            self._state = TRANSITIONS[self._state, T.CLOSE]
            self._closed = ConnectionClosed(None)
            self._in.clear()
        assert self._closed is not None
        return self._closed

    def _fail(self, why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"bad SMTP reply from the server: {why}", LOCAL_ERROR)

    def _read_response(self) -> Response | None:
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > self.max_reply_line:
                    raise self._fail("reply line too long")
                return None
            raw = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[:end + 1]
            if len(raw) > self.max_reply_line:
                raise self._fail("reply line too long")
            m = _LINE.fullmatch(raw)
            if m is None or (m[2] == b"" and m[3]):
                raise self._fail(f"malformed line {raw[:80]!r}")
            code = int(m[1])
            if self._lines and self._lines[0][0] != code:
                raise self._fail("a multi-line reply changed its code")
            text = _CONTROL.sub("?", m[3].decode("utf-8", "replace"))
            self._lines.append((code, text))
            if len(self._lines) > self.max_reply_lines:
                raise self._fail("too many reply lines")
            if m[2] == b"-":
                continue
            return self._complete()

    def _complete(self) -> Response:
        lines = [t for _, t in self._lines]
        code = self._lines[0][0]
        self._lines = []
        if not self._awaiting:
            raise self._fail("a reply to no command")
        command, argument = self._awaiting.popleft()
        enhanced = None
        em = _ENHANCED.match(lines[0])
        if em and em[1] == str(code)[0]:
            enhanced = f"{em[1]}.{em[2]}.{em[3]}"
            lines[0] = lines[0][em.end():]
        response = Response(command, code, enhanced, "\n".join(lines), argument, tuple(lines))
        self._after(response)
        return response

    def _after(self, r: Response) -> None:
        """Responses that move the state (the rest are the driver's to judge)."""
        ok = r.code // 100 == 2
        if r.command == "GREETING":
            self._transition(T.GREETED if r.code == 220 else T.GREETING_REFUSED)
        elif r.command in ("EHLO", "HELO"):
            self._transition(T.HELLO_OK if ok else T.HELLO_FAILED)
            if ok and r.command == "EHLO":
                self.extensions = _extensions(r.lines[1:])
        elif r.command == "STARTTLS":
            self._transition(T.TLS_GO if r.code == 220 else T.TLS_REFUSED)
        elif r.command == "DATA":
            self._transition(T.DATA_GO if r.code == 354 else T.DATA_REFUSED)
        elif r.command == "MESSAGE":
            self._transition(T.MESSAGE_ANSWERED)
        elif r.command == "QUIT":
            self._close()
        if r.code == 421 and self._state is not S.CLOSED:
            self._close()  # the server is closing the channel (RFC 5321 3.8)


def _check_address(address: str, *, null_ok: bool) -> None:
    if (not address and not null_ok) or _BAD_IN_ADDRESS.search(address):
        raise LocalProtocolError(f"not an address to send: {address!r}")


def _extensions(lines: tuple[str, ...] | list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out
