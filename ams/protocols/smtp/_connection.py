"""The SMTP server connection: bytes in, events out, replies queued.

Theory of operation
-------------------
The driver owns the socket and the clock; this object owns the protocol::

    conn = SMTPServerConnection("mx.example.org", max_size=...)
    conn.greeting()
    send(conn.data_to_send())
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())          # flush pipelined replies
            conn.receive_data(recv())          # b"" at EOF
        elif event is PAUSED:                  # conn.pending awaits a decision
            decide(conn.pending)               # accept() / reject() / auth_result()
        elif isinstance(event, StartTLS):
            send(conn.data_to_send()); handshake(); conn.tls_started()
        elif isinstance(event, ConnectionClosed):
            send(conn.data_to_send()); break
        else:
            handle(event)

Output: every reply is appended to one outgoing buffer, in order, and
``data_to_send()`` drains it (as in h2).  Methods never return bytes, so
there is one way out for output and pipelined replies cannot be reordered.

Decisions: ``MailFrom``, ``RcptTo``, ``EndOfData`` and ``AuthRequest`` are
answered only by the driver.  While one is pending, ``next_event()`` returns
PAUSED and reads nothing more: bytes that arrived behind the command stay in
the buffer, so pipelined commands are answered strictly in order
(RFC 2920) and the decision sees the state the client meant.

Errors the client makes are answered in-protocol (500/501/503/...).  More
than ``max_bad_commands`` of them, a bare newline in DATA under the default
policy, or an unreadable BDAT (its chunk length unknown, so the stream cannot
be resynchronised) end the session: the closing reply is queued and
RemoteProtocolError is raised, now and on every later call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ams.protocols.smtp import _replies as R
from ams.protocols.smtp._events import (
    AuthRequest,
    ConnectionClosed,
    Data,
    EndOfData,
    Event,
    Hello,
    MailFrom,
    MessageRejected,
    RcptTo,
    Reset,
    StartData,
    StartTLS,
)
from ams.protocols.smtp._parse import (
    CommandError,
    check_mail_params,
    parse_bdat,
    parse_mail,
    parse_rcpt,
    split_command,
)
from ams.protocols.smtp._readers import (
    BARE_NEWLINE,
    END_OF_DATA,
    DotReader,
    LineReader,
    LineTooLong,
)
from ams.protocols.smtp._replies import Reply
from ams.protocols.smtp._sasl import MECHANISMS, SaslExchange
from ams.protocols.smtp._state import (
    COMMAND_STATES,
    PAUSED_STATES,
    TRANSITIONS,
    State,
    Trigger,
    sequence_error,
)
from ams.protocols.smtp._util import (
    NEED_DATA,
    PAUSED,
    LocalProtocolError,
    RemoteProtocolError,
    Sentinel,
)

__all__ = ["BareNewlinePolicy", "SMTPServerConnection"]

BareNewlinePolicy = Literal["close", "reject", "keep"]

S, T = State, Trigger

MAX_AUTH_LINE = 12288          # RFC 4954 §4
# Replies that count as the client's mistakes toward max_bad_commands.
_COUNTED = frozenset({500, 501, 502, 503, 504, 555})
# Commands the RFCs define that we do not offer.
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML", "ATRN"})
# Another protocol talking to us (cross-protocol attacks): hang up at once.
_NON_SMTP = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "USER"})


class SMTPServerConnection:
    """One SMTP server session, without I/O.  See the module docstring."""

    # The mail transaction; _reset_transaction() sets all of these.
    _mail: MailFrom | None
    _recipients: list[str]
    _rcpt_seen: bool
    _message_started: bool
    _size: int
    _dot: DotReader | None
    _chunk_size: int
    _chunk_left: int
    _chunk_last: bool
    _chunk_refusal: Reply | None
    _discard_from: State

    def __init__(self, hostname: str, *, max_size: int | None = 25 * 1024 * 1024,
                 max_line: int | None = 1000, max_command_line: int = 512,
                 max_recipients: int = 100, max_bad_commands: int = 20,
                 tls_available: bool = False, tls_active: bool = False,
                 auth_enabled: bool = False, allow_plaintext_auth: bool = False,
                 require_tls: bool = False, require_auth: bool = False,
                 chunking: bool = True, smtputf8: bool = True,
                 bare_newline: BareNewlinePolicy = "close") -> None:
        if not hostname or not hostname.isprintable() or " " in hostname:
            raise ValueError(f"bad hostname {hostname!r}")
        if max_size is not None and max_size < 1:
            raise ValueError("max_size must be positive or None")
        if max_line is not None and max_line < 3:
            raise ValueError("max_line must be at least 3 or None")
        if max_command_line < 512:
            raise ValueError("RFC 5321 §4.5.3.1.4: command lines of 512 octets must fit")
        if max_recipients < 1 or max_bad_commands < 0:
            raise ValueError("max_recipients >= 1 and max_bad_commands >= 0")
        if bare_newline not in ("close", "reject", "keep"):
            raise ValueError(f"bare_newline must be close, reject or keep: {bare_newline!r}")
        self.hostname = hostname
        self.max_size = max_size
        self.max_line = max_line
        self.max_recipients = max_recipients
        self.max_bad_commands = max_bad_commands
        self.tls_available = tls_available
        self.auth_enabled = auth_enabled
        self.allow_plaintext_auth = allow_plaintext_auth
        self.require_tls = require_tls
        self.require_auth = require_auth
        self.chunking = chunking
        self.smtputf8 = smtputf8
        self.bare_newline: BareNewlinePolicy = bare_newline

        self._state = S.CONNECTED
        self._tls_active = tls_active
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._lines = LineReader(max_command_line, MAX_AUTH_LINE)
        self._pending: Event | None = None
        self._closed: ConnectionClosed | None = None
        self._error: RemoteProtocolError | None = None
        self._bad_commands = 0
        self._esmtp = False
        self._authenticated: str | None = None
        self._sasl: SaslExchange | None = None
        self._reset_transaction()

    # --- public surface -----------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def pending(self) -> Event | None:
        """The decision event awaiting accept()/reject()/auth_result()."""
        return self._pending

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def authenticated(self) -> str | None:
        """The user name AUTH succeeded for, or None."""
        return self._authenticated

    @property
    def auth_offered(self) -> bool:
        return self.auth_enabled and (self._tls_active or self.allow_plaintext_auth)

    def greeting(self, reply: Reply | None = None) -> None:
        """Queue the opening reply: 220 by default.  554 refuses service (only
        QUIT is then accepted, RFC 5321 §3.1); 421 refuses and closes."""
        reply = R.GREETING if reply is None else reply
        if reply.code not in (220, 554, 421):
            raise LocalProtocolError(f"a greeting is 220, 554 or 421, not {reply.code}")
        if self._state is not S.CONNECTED:
            raise LocalProtocolError("greeting() was already called")
        self._queue(reply)
        if reply.code == 421:
            self._close(reply)
        else:
            self._transition(T.GREET if reply.code == 220 else T.REFUSE)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed."""
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if self._state is S.TLS_PENDING and data:
            raise LocalProtocolError("plaintext data while waiting for the TLS handshake")
        if not data:
            self._eof = True
        elif self._state is not S.CLOSED:
            self._in += data

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]:
        """The next event, NEED_DATA, or PAUSED while a decision is pending."""
        if self._error is not None:
            raise self._error
        if self._state is S.CONNECTED:
            raise LocalProtocolError("call greeting() before next_event()")
        while True:
            if self._state is S.CLOSED:
                assert self._closed is not None
                return self._closed
            if self._state in PAUSED_STATES:
                if self._state is S.TLS_PENDING and self._eof:
                    return self._close(None)
                return PAUSED
            try:
                result = self._step()
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            if result is NEED_DATA:
                if not self._eof:
                    return NEED_DATA
                return self._close(None)
            if result is not None:
                return result

    def accept(self, reply: Reply | None = None) -> None:
        """Say yes to ``pending``; the default reply fits the event."""
        event = self._take_pending()
        if reply is None:
            reply = {MailFrom: R.SENDER_OK, RcptTo: R.RECIPIENT_OK, EndOfData: R.MESSAGE_ACCEPTED,
                     AuthRequest: R.AUTH_SUCCEEDED}[type(event)]
        if not reply.is_positive:
            raise LocalProtocolError(f"accept() needs a 2xx reply, not {reply.code}")
        if isinstance(event, MailFrom):
            self._mail = event
        elif isinstance(event, RcptTo):
            self._recipients.append(event.address)
        elif isinstance(event, EndOfData):
            self._reset_transaction()
        elif isinstance(event, AuthRequest):
            self._authenticated = event.username
        self._pending = None
        self._transition(T.ACCEPT)
        self._queue(reply)

    def reject(self, reply: Reply) -> None:
        """Say no to ``pending`` with a 4xx/5xx reply.  421 also closes."""
        event = self._take_pending()
        if not isinstance(reply, Reply) or reply.is_positive:
            raise LocalProtocolError("reject() needs a 4xx or 5xx reply")
        if isinstance(event, EndOfData):
            self._reset_transaction()
        self._pending = None
        self._queue(reply)
        if reply.code == 421:
            self._close(reply)
        else:
            self._transition(T.REJECT)

    def auth_result(self, ok: bool, reply: Reply | None = None) -> None:
        """Answer an AuthRequest: 235 2.7.0, or 535 5.7.8 (or ``reply``)."""
        if not isinstance(self._pending, AuthRequest):
            raise LocalProtocolError("no AuthRequest is pending")
        if ok:
            self.accept(reply)
        else:
            self.reject(R.AUTH_INVALID if reply is None else reply)

    def tls_started(self) -> None:
        """The handshake after StartTLS succeeded: forget everything the client
        said in plaintext (RFC 3207 §4.2); EHLO must come again."""
        self._transition(T.TLS_STARTED)
        self._tls_active = True
        self._esmtp = False
        self._authenticated = None
        self._lines.reset()
        self._reset_transaction()

    def close(self, reply: Reply = R.SHUTTING_DOWN) -> None:
        """Queue a closing reply (421) and end the session from our side."""
        if reply.code != 421:
            raise LocalProtocolError("the server closes a session with 421")
        if self._state is S.CLOSED:
            return
        self._pending = None
        self._queue(reply)
        self._close(reply)

    def timeout_reply(self) -> None:
        """The driver's timer fired: queue 421 4.4.2 and close."""
        self.close(R.TIMEOUT)

    # --- plumbing -------------------------------------------------------------------

    def _queue(self, reply: Reply) -> None:
        self._out += reply.render(self.hostname)

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"{trigger.value} is not allowed in state {self._state.value}") from None

    def _allowed(self, trigger: Trigger) -> bool:
        return (self._state, trigger) in TRANSITIONS

    def _close(self, reply: Reply | None) -> ConnectionClosed:
        if self._state is not S.CLOSED:
            self._transition(T.CLOSE)
            self._closed = ConnectionClosed(reply)
            self._in.clear()
        assert self._closed is not None
        return self._closed

    def _fatal(self, reply: Reply) -> RemoteProtocolError:
        self._queue(reply)
        self._close(reply)
        return RemoteProtocolError(reply.text.replace("{hostname}", self.hostname), reply)

    def _take_pending(self) -> Event:
        if self._pending is None:
            raise LocalProtocolError(f"no decision is pending (state {self._state.value})")
        return self._pending

    def _error_reply(self, reply: Reply) -> None:
        """Answer a client mistake; too many of them end the session."""
        if reply.code in _COUNTED:
            self._bad_commands += 1
            if self._bad_commands > self.max_bad_commands:
                raise self._fatal(R.TOO_MANY_ERRORS)
        self._queue(reply)

    def _reset_transaction(self) -> None:
        self._mail = None
        self._recipients = []
        self._rcpt_seen = False
        self._message_started = False
        self._size = 0
        self._dot = None
        self._chunk_size = self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal = None
        self._discard_from = S.READY

    def _step(self) -> Event | Sentinel | None:
        """Process buffered input until one event, NEED_DATA, or progress (None)."""
        try:
            if self._state in COMMAND_STATES:
                return self._read_command()
            if self._state is S.AUTH:
                return self._read_sasl()
            if self._state is S.DATA:
                return self._read_dot()
            return self._read_chunk()
        except CommandError as exc:
            self._error_reply(exc.reply)
            return None

    # --- commands ------------------------------------------------------------------

    def _read_command(self) -> Event | Sentinel | None:
        line = self._lines.read(self._in)
        if line is None:
            return NEED_DATA
        if isinstance(line, LineTooLong):
            raise CommandError(R.AUTH_LINE_TOO_LONG if line.auth else R.LINE_TOO_LONG)
        verb, args = split_command(line)
        if verb in _NON_SMTP:
            raise self._fatal(R.NON_SMTP_COMMAND)
        if self._state is S.REFUSED and verb != "QUIT":
            raise CommandError(R.BAD_SEQUENCE)
        handler = _HANDLERS.get(verb)
        if handler is None:
            raise CommandError(R.NOT_IMPLEMENTED if verb in _NOT_IMPLEMENTED
                               else R.COMMAND_UNRECOGNIZED)
        return handler(self, args)

    def _require(self, trigger: Trigger) -> None:
        if not self._allowed(trigger):
            raise CommandError(sequence_error(self._state, trigger))

    def _hello(self, args: str, extended: bool) -> Event:
        self._require(T.EHLO if extended else T.HELO)
        name = args.strip()
        if not name:
            raise CommandError(R.EHLO_SYNTAX if extended else R.HELO_SYNTAX)
        self._reset_transaction()
        self._esmtp = extended
        self._transition(T.EHLO if extended else T.HELO)
        self._queue(R.ehlo(
            max_size=self.max_size, smtputf8=self.smtputf8, chunking=self.chunking,
            starttls=self.tls_available and not self._tls_active,
            auth=MECHANISMS if self.auth_offered else ()) if extended else R.HELO)
        return Hello(name, extended)

    def _mail_cmd(self, args: str) -> Event:
        self._require(T.MAIL)
        if self.require_tls and not self._tls_active:
            raise CommandError(R.MUST_STARTTLS)
        if self.require_auth and self._authenticated is None:
            raise CommandError(R.AUTH_REQUIRED)
        address, params = parse_mail(args)
        check_mail_params(params, esmtp=self._esmtp, max_size=self.max_size,
                          chunking=self.chunking, smtputf8=self.smtputf8,
                          auth=self.auth_offered)
        if not address.isascii() and "SMTPUTF8" not in params:
            raise CommandError(R.NON_ASCII_ADDRESS)
        event = MailFrom(address, params)
        self._transition(T.MAIL)
        self._pending = event
        return event

    def _rcpt_cmd(self, args: str) -> Event:
        self._require(T.RCPT)
        self._rcpt_seen = True
        if len(self._recipients) >= self.max_recipients:
            raise CommandError(R.TOO_MANY_RECIPIENTS)
        address, params = parse_rcpt(args)
        if params:
            raise CommandError(R.PARAMETERS_UNRECOGNIZED)
        assert self._mail is not None
        if not address.isascii() and not self._mail.smtputf8:
            raise CommandError(R.NON_ASCII_ADDRESS)
        event = RcptTo(address, params)
        self._transition(T.RCPT)
        self._pending = event
        return event

    def _no_recipients_reply(self) -> Reply:
        return R.NO_VALID_RECIPIENTS if self._rcpt_seen else R.NEED_RCPT

    def _data_cmd(self, args: str) -> Event:
        self._require(T.DATA)
        if args:
            raise CommandError(R.SYNTAX_ERROR)
        assert self._mail is not None
        if self._mail.body == "BINARYMIME":
            raise CommandError(R.BINARYMIME_NEEDS_BDAT)    # RFC 3030 §3
        if not self._recipients:
            raise CommandError(self._no_recipients_reply())
        self._transition(T.DATA)
        self._dot = DotReader(self.max_line, stop_on_bare=self.bare_newline == "close")
        self._size = 0
        self._message_started = True
        self._queue(R.START_MAIL_INPUT)
        return StartData(chunked=False)

    def _bdat_cmd(self, args: str) -> Event | None:
        parsed = parse_bdat(args)
        if parsed is None:
            # The chunk length is unknown, so its bytes cannot be told from
            # commands: answer and hang up rather than execute the payload.
            raise self._fatal(R.BDAT_SYNTAX)
        size, last = parsed
        refusal = self._bdat_refusal(size)
        self._chunk_size = self._chunk_left = size
        self._chunk_last = last
        if refusal is not None:
            self._chunk_refusal = refusal
            self._discard_from = self._state
            self._transition(T.BDAT_REFUSED)
            return None
        first = self._state is S.MAIL
        self._transition(T.BDAT)
        if first:
            self._size = 0
            self._message_started = True
            return StartData(chunked=True)
        return None

    def _bdat_refusal(self, size: int) -> Reply | None:
        if not self.chunking:
            return R.NOT_IMPLEMENTED
        if not self._allowed(T.BDAT):
            return sequence_error(self._state, T.BDAT)
        if not self._recipients:
            return self._no_recipients_reply()
        if self.max_size is not None and self._size + size > self.max_size:
            return R.MESSAGE_TOO_BIG
        return None

    def _rset_cmd(self, args: str) -> Event:
        self._require(T.RSET)
        if args:
            raise CommandError(R.SYNTAX_ERROR)
        self._reset_transaction()
        self._transition(T.RSET)
        self._queue(R.OK)
        return Reset()

    def _quit_cmd(self, args: str) -> Event:
        self._require(T.QUIT)
        if args:
            raise CommandError(R.SYNTAX_ERROR)
        self._queue(R.CLOSING)
        return self._close(R.CLOSING)

    def _noop_cmd(self, args: str) -> None:
        self._require(T.NOOP)     # RFC 5321 §4.1.1.9: any argument is ignored
        self._queue(R.OK)

    def _vrfy_cmd(self, args: str) -> None:
        self._require(T.VRFY)
        if not args.strip():
            raise CommandError(R.VRFY_SYNTAX)
        self._queue(R.CANNOT_VRFY)

    def _help_cmd(self, args: str) -> None:
        self._require(T.HELP)
        self._queue(R.HELP)

    def _starttls_cmd(self, args: str) -> Event:
        if not self.tls_available:
            raise CommandError(R.NOT_IMPLEMENTED)
        self._require(T.STARTTLS)
        if self._tls_active:
            raise CommandError(R.TLS_ALREADY_ACTIVE)
        if args:
            raise CommandError(R.SYNTAX_ERROR)      # RFC 3207 §4: no parameters
        # Anything pipelined behind STARTTLS arrived in plaintext and must not
        # be executed inside the TLS session (CVE-2011-0411).
        self._in.clear()
        self._lines.reset()
        self._transition(T.STARTTLS)
        self._queue(R.READY_TO_START_TLS)
        return StartTLS()

    def _auth_cmd(self, args: str) -> Event | None:
        if not self.auth_enabled:
            raise CommandError(R.NOT_IMPLEMENTED)
        self._require(T.AUTH)
        if self._authenticated is not None:
            raise CommandError(R.ALREADY_AUTHENTICATED)
        if not self.auth_offered:
            raise CommandError(R.ENCRYPTION_REQUIRED)
        words = args.split(" ")
        if not 1 <= len(words) <= 2 or not words[0]:
            raise CommandError(R.SYNTAX_ERROR)
        if words[0].upper() not in MECHANISMS:
            raise CommandError(R.AUTH_MECHANISM_UNKNOWN)
        self._sasl = SaslExchange(words[0].upper())
        self._transition(T.AUTH)
        if len(words) == 2:                         # SASL-IR (RFC 4954 §4)
            return self._sasl_response(words[1])
        self._queue(self._sasl.first_challenge())
        return None

    def _read_sasl(self) -> Event | Sentinel | None:
        line = self._lines.read(self._in, sasl=True)
        if line is None:
            return NEED_DATA
        if isinstance(line, LineTooLong):
            self._transition(T.SASL_FAILED)
            raise CommandError(R.AUTH_LINE_TOO_LONG)
        try:
            text = line.decode("ascii").strip(" ")
        except UnicodeDecodeError:
            text = "\0"                             # not base64: fails below
        return self._sasl_response(text)

    def _sasl_response(self, text: str) -> Event | None:
        """One client response in the AUTH state; a failure leaves AUTH."""
        assert self._sasl is not None
        try:
            step = self._sasl.respond(text)
        except CommandError:
            self._transition(T.SASL_FAILED)
            raise
        if isinstance(step, Reply):
            self._transition(T.SASL_CONTINUE)
            self._queue(step)
            return None
        self._transition(T.SASL_COMPLETE)
        self._pending = step
        return step

    # --- message data --------------------------------------------------------------

    def _read_dot(self) -> Event | Sentinel | None:
        assert self._dot is not None
        result = self._dot.read(self._in)
        if result is None:
            return NEED_DATA
        if result is BARE_NEWLINE:
            raise self._fatal(R.BARE_NEWLINE_CLOSE)
        if result is END_OF_DATA:
            verdict = self._verdict()
            if verdict is None:
                return self._end_of_message(T.END_OF_DATA)
            self._reset_transaction()
            self._transition(T.DATA_REJECTED)
            self._queue(verdict)
            return MessageRejected(verdict)
        assert isinstance(result, bytes)
        self._size += len(result)
        # A message the core will refuse is read to its end, not delivered.
        return Data(result) if self._verdict() is None else None

    def _verdict(self) -> Reply | None:
        """Why the core refuses the message, if it does.  The flags are sticky
        and checked in a fixed order, so the answer does not depend on how
        the bytes were cut into packets."""
        assert self._dot is not None
        if self._dot.saw_bare and self.bare_newline == "reject":
            return R.BARE_NEWLINE_REJECT
        if self._dot.too_long:
            return R.DATA_LINE_TOO_LONG
        if self.max_size is not None and self._size > self.max_size:
            return R.MESSAGE_TOO_BIG
        return None

    def _end_of_message(self, trigger: Trigger) -> Event:
        assert self._mail is not None
        event = EndOfData(self._size, self._mail.address, tuple(self._recipients))
        self._transition(trigger)
        self._pending = event
        return event

    def _read_chunk(self) -> Event | Sentinel | None:
        if self._chunk_left:
            if not self._in:
                return NEED_DATA
            size = min(self._chunk_left, len(self._in))
            chunk = bytes(self._in[:size])
            del self._in[:size]
            self._chunk_left -= size
            if self._state is S.BDAT:
                self._size += size
                return Data(chunk)
            return None
        if self._state is S.BDAT_DISCARD:
            return self._chunk_discarded()
        if self._chunk_last:
            return self._end_of_message(T.LAST_CHUNK_END)
        self._transition(T.CHUNK_END)
        self._queue(R.chunk_received(self._chunk_size))
        return None

    def _chunk_discarded(self) -> Event | None:
        refusal, origin = self._chunk_refusal, self._discard_from
        assert refusal is not None
        self._chunk_refusal = None
        if origin is S.INITIAL:
            self._transition(T.DISCARDED_BEFORE_HELLO)
        elif origin is S.READY:
            self._transition(T.DISCARDED_OUTSIDE_TRANSACTION)
        else:
            self._transition(T.DISCARDED_IN_TRANSACTION)
        self._error_reply(refusal)
        if self._message_started:
            self._message_started = False
            return MessageRejected(refusal)
        return None


_Handler = Callable[[SMTPServerConnection, str], "Event | None"]
_HANDLERS: dict[str, _Handler] = {
    "EHLO": lambda conn, args: conn._hello(args, True),
    "HELO": lambda conn, args: conn._hello(args, False),
    "MAIL": SMTPServerConnection._mail_cmd,
    "RCPT": SMTPServerConnection._rcpt_cmd,
    "DATA": SMTPServerConnection._data_cmd,
    "BDAT": SMTPServerConnection._bdat_cmd,
    "RSET": SMTPServerConnection._rset_cmd,
    "QUIT": SMTPServerConnection._quit_cmd,
    "NOOP": SMTPServerConnection._noop_cmd,
    "VRFY": SMTPServerConnection._vrfy_cmd,
    "HELP": SMTPServerConnection._help_cmd,
    "STARTTLS": SMTPServerConnection._starttls_cmd,
    "AUTH": SMTPServerConnection._auth_cmd,
}
