"""The IMAP server connection: bytes in, events out, responses queued.

Theory of operation
-------------------
The driver owns the socket, the clock and the mailboxes; this object owns
the protocol::

    conn = IMAPServerConnection(tls_available=True, max_literal=...)
    conn.greeting()
    send(conn.data_to_send())
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())          # includes "+" for literals
            conn.receive_data(recv())          # b"" at EOF
        elif event is PAUSED:                  # conn.pending awaits complete()
            ...                                # (or the TLS handshake)
        elif isinstance(event, StartTLS):
            send(conn.data_to_send()); handshake(); conn.tls_started()
        elif isinstance(event, ConnectionClosed):
            send(conn.data_to_send()); break
        elif isinstance(event, Idle):
            ...  # conn.send(exists(n)) as mail arrives, until IdleDone
        else:                                  # a Command, or IdleDone
            for response in handle(event):
                conn.send(response)            # untagged data
            conn.complete(event.tag, "OK", code=...)

The decision flow for one command:

1. The framer (``_framing``) cuts a command out of the byte stream,
   enforcing the line and literal limits.
2. When a line announces a literal, the command so far is parsed as a
   prefix, then checked against the state table, the advertised
   capabilities and LOGINDISABLED, *before* the literal is invited: a
   command that will be refused is refused now, instead of ``+``, and the
   client never uploads its literal.  (Only the first ``PREFIX_CHECKS``
   literals of a command are checked so; re-parsing at every literal of a
   command with thousands of them would take quadratic time.)  Only then is ``+ Ready for literal
   data`` queued, by the core, automatically; the driver merely sends it.
   (Non-synchronising literals arrive unasked; a refused one is read and
   thrown away, see ``_framing``.)
3. The whole command is parsed into a typed event and checked again.
   CAPABILITY, ENABLE, LOGOUT and STARTTLS are answered here.  Any other
   command is returned from ``next_event()`` and the connection PAUSES:
   bytes behind it stay buffered, so pipelined commands run strictly one at
   a time and each is checked in the state its predecessors left.
4. The driver sends untagged data (``send``) and finishes with
   ``complete(tag, "OK"|"NO"|"BAD", text, code=...)``.  The outcome moves the
   session state: LOGIN/AUTHENTICATE OK authenticates (the OK carries the new
   CAPABILITY unless the driver gives a code), SELECT OK selects, a failed
   SELECT leaves nothing selected, CLOSE/UNSELECT OK deselects.

Errors the client makes are answered in-protocol with BAD (with its tag
when the tag could be read, ``* BAD`` otherwise) using fixed texts; more
than ``max_bad_commands`` of them, or a literal whose length cannot be
trusted, end the session: ``* BYE`` is queued and RemoteProtocolError is
raised, now and on every later call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from ams.protocols.imap import _responses as R
from ams.protocols.imap._commands import (
    Authenticate,
    AuthenticateStart,
    Capability,
    Close,
    Command,
    ConnectionClosed,
    Enable,
    Event,
    Examine,
    Fetch,
    Idle,
    IdleDone,
    Login,
    Logout,
    Select,
    StartTLS,
    Unselect,
)
from ams.protocols.imap._framing import Frame, FrameError, Framer, LiteralAnnounced
from ams.protocols.imap._grammar import CHARSETS, COMMAND_NAMES, parse_args, parse_name
from ams.protocols.imap._parse import Cursor, Incomplete, ParseError
from ams.protocols.imap._responses import (
    ContinueRequest,
    Response,
    ResponseCode,
    StatusResponse,
    Text,
    Untagged,
    encode,
)
from ams.protocols.imap._sasl import Refusal as _Refusal
from ams.protocols.imap._sasl import plain_credentials
from ams.protocols.imap._state import MODES, TRANSITIONS, Mode, ModeTrigger, State, Trigger
from ams.protocols.imap._util import (
    NEED_DATA,
    PAUSED,
    LocalProtocolError,
    RemoteProtocolError,
    Sentinel,
)

__all__ = ["DEFAULT_EXTENSIONS", "IMAPServerConnection"]

S, T, M, MT = State, Trigger, Mode, ModeTrigger

DEFAULT_EXTENSIONS = ("SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS",
                      "MOVE", "CONDSTORE", "QRESYNC", "SPECIAL-USE")
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "UTF8=ACCEPT"})
# Commands that exist only with their extension advertised (else: unknown).
_COMMAND_CAPABILITY = {"IDLE": "IDLE", "NAMESPACE": "NAMESPACE", "MOVE": "MOVE",
                       "UNSELECT": "UNSELECT", "ID": "ID", "ENABLE": "ENABLE"}
PREFIX_CHECKS = 8      # literals of one command whose prefix is parsed before "+"
_TAG_HEAD = re.compile(rb"([!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+) ")


class IMAPServerConnection:
    """One IMAP server session, without I/O.  See the module docstring."""

    def __init__(self, *, max_line: int = 65536, max_literal: int = 64 * 1024 * 1024,
                 max_bad_commands: int = 20, tls_available: bool = False,
                 tls_active: bool = False, allow_plaintext_auth: bool = False,
                 non_sync_literals: Literal["+", "-"] | None = "+",
                 extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> None:
        if max_line < 1000:
            raise ValueError("max_line must be at least 1000")
        if max_literal < 0 or max_bad_commands < 0:
            raise ValueError("max_literal and max_bad_commands must be >= 0")
        if non_sync_literals not in ("+", "-", None):
            raise ValueError("non_sync_literals is '+', '-' or None")
        self.max_bad_commands = max_bad_commands
        self.tls_available = tls_available
        self.allow_plaintext_auth = allow_plaintext_auth
        self.non_sync_literals = non_sync_literals
        self.extensions = tuple(dict.fromkeys(e.upper() for e in extensions))
        for name in self.extensions:
            R.Atom(name)
        self._framer = Framer(max_line, max_literal, non_sync_literals)
        self._state = S.NOT_AUTHENTICATED
        self._mode = M.GREETING
        self._tls_active = tls_active
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._pending: Command | None = None
        self._sasl: AuthenticateStart | None = None
        self._closed: ConnectionClosed | None = None
        self._error: RemoteProtocolError | None = None
        self._bad_commands = 0
        self._enabled: set[str] = set()
        self._user: str | None = None
        self._read_only = False

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def pending(self) -> Command | None:
        """The command awaiting ``complete()`` (an Idle until IdleDone)."""
        return self._pending

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def user(self) -> str | None:
        """Whom LOGIN/AUTHENTICATE authenticated (once completed OK)."""
        return self._user

    @property
    def read_only(self) -> bool:
        """The selected mailbox was opened with EXAMINE."""
        return self._read_only

    @property
    def enabled(self) -> frozenset[str]:
        """Extensions in force: by ENABLE, or CONDSTORE by first use."""
        return frozenset(self._enabled)

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self._enabled

    @property
    def login_disabled(self) -> bool:
        return not (self._tls_active or self.allow_plaintext_auth)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What CAPABILITY says now (it depends on TLS and the state)."""
        caps = ["IMAP4rev1"]
        before_login = self._state is S.NOT_AUTHENTICATED
        if before_login and self.tls_available and not self._tls_active:
            caps.append("STARTTLS")
        if before_login:
            caps.append("LOGINDISABLED" if self.login_disabled else "AUTH=PLAIN")
        if self.non_sync_literals is not None:
            caps.append(f"LITERAL{self.non_sync_literals}")
        caps += [e for e in self.extensions if e not in caps]
        return tuple(caps)

    def greeting(self, condition: Literal["OK", "PREAUTH", "BYE"] = "OK",
                 text: str = Text.GREETING, *, user: str | None = None) -> None:
        """Queue the greeting.  PREAUTH starts authenticated (as ``user``);
        BYE refuses the connection."""
        if self._mode is not M.GREETING:
            raise LocalProtocolError("greeting() was already called")
        if condition == "BYE":
            self._mode = M.COMMAND
            self.bye(text)
            return
        if condition not in ("OK", "PREAUTH"):
            raise LocalProtocolError("the greeting is OK, PREAUTH or BYE")
        if condition == "PREAUTH":
            self._transition(T.PREAUTH)
            self._user = user
        self._set_mode(MT.GREET)
        self._queue(StatusResponse(condition, text, R.capability_code(self.capabilities)))

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed."""
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if self._mode is M.TLS_PENDING and data:
            raise LocalProtocolError("plaintext data while waiting for the TLS handshake")
        if not data:
            self._eof = True
        elif self._mode is not M.CLOSED:
            self._in += data

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]:
        """The next event, NEED_DATA, or PAUSED while ``pending`` awaits
        ``complete()`` (or the TLS handshake is awaited)."""
        if self._error is not None:
            raise self._error
        if self._mode is M.GREETING:
            raise LocalProtocolError("call greeting() before next_event()")
        while True:
            if self._mode is M.CLOSED:
                assert self._closed is not None
                return self._closed
            if self._mode in (M.PENDING, M.TLS_PENDING):
                if self._mode is M.TLS_PENDING and self._eof:
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

    def send(self, response: Response) -> None:
        """Queue untagged data or an untagged OK/NO/BAD (``* OK [ALERT] ...``)."""
        if self._mode in (M.GREETING, M.CLOSED, M.TLS_PENDING):
            raise LocalProtocolError(f"cannot send in mode {self._mode.value}")
        if isinstance(response, ContinueRequest):
            raise LocalProtocolError("continuation requests belong to the core")
        if isinstance(response, StatusResponse):
            if response.tag is not None:
                raise LocalProtocolError("tagged responses go through complete()")
            if response.condition not in ("OK", "NO", "BAD"):
                raise LocalProtocolError("BYE goes through bye(); PREAUTH through greeting()")
        elif not isinstance(response, Untagged):
            raise LocalProtocolError(f"not a response: {type(response).__name__}")
        self._queue(response)

    def send_encoded(self, data: bytes) -> None:
        """Queue untagged responses already encoded with the ``responses``
        helpers (``encoded_fetch``): the fast path for large FETCH results,
        which are validated piece by piece when built."""
        if self._mode in (M.GREETING, M.CLOSED, M.TLS_PENDING):
            raise LocalProtocolError(f"cannot send in mode {self._mode.value}")
        if data[:2] != b"* " or data[-2:] != b"\r\n":
            raise LocalProtocolError("not encoded untagged responses")
        self._out += data

    def complete(self, tag: str, condition: Literal["OK", "NO", "BAD"], text: str | None = None,
                 *, code: ResponseCode | str | None = None) -> None:
        """Finish the pending command with its tagged response."""
        command = self._pending
        if command is None or self._mode is not M.PENDING:
            raise LocalProtocolError(f"no command is pending (mode {self._mode.value})")
        if tag != command.tag:
            raise LocalProtocolError(f"tag {tag!r} is not the pending command's")
        if condition not in ("OK", "NO", "BAD"):
            raise LocalProtocolError("a command completes with OK, NO or BAD")
        if isinstance(code, str):
            code = ResponseCode(code)
        if text is None:
            text = f"{command.command_name} {'completed' if condition == 'OK' else 'failed'}"
        outcome = self._outcome(command, condition)
        if isinstance(command, (Login, Authenticate)) and outcome is T.AUTHENTICATED_OK:
            self._user = command.userid if isinstance(command, Login) else command.username
        if outcome is not None:
            self._transition(outcome)
        if condition == "OK" and code is None and outcome is T.AUTHENTICATED_OK:
            code = R.capability_code(self.capabilities)
        self._pending = None
        self._set_mode(MT.COMPLETE)
        self._queue(StatusResponse(condition, text, code, tag))

    def tls_started(self) -> None:
        """The handshake after StartTLS succeeded."""
        self._set_mode(MT.TLS_STARTED)
        self._tls_active = True

    def bye(self, text: str = "Server shutting down", *, code: ResponseCode | None = None) -> None:
        """Queue ``* BYE`` and end the session (shutdown, idle timeout)."""
        if self._mode is M.CLOSED:
            return
        response = StatusResponse("BYE", text, code)
        self._queue(response)
        self._close(response)

    # --- plumbing ---------------------------------------------------------------------------

    def _queue(self, response: Response) -> None:
        self._out += encode(response, utf8=self.utf8)

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"{trigger.value} is not allowed in state {self._state.value}") from None

    def _set_mode(self, trigger: ModeTrigger) -> None:
        try:
            self._mode = MODES[self._mode, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"{trigger.value} is not allowed in mode {self._mode.value}") from None

    def _close(self, response: StatusResponse | None) -> ConnectionClosed:
        if self._mode is not M.CLOSED:
            if self._state is not S.LOGOUT:
                self._transition(T.BYE)
            self._set_mode(MT.CLOSE)
            self._closed = ConnectionClosed(response)
            self._pending = None
            self._in.clear()
        assert self._closed is not None
        return self._closed

    def _fatal(self, text: str) -> RemoteProtocolError:
        response = StatusResponse("BYE", text)
        self._queue(response)
        self._close(response)
        return RemoteProtocolError(text, response)

    def _answer(self, tag: str | None, refusal: _Refusal) -> None:
        """A response the core gives on its own; client errors are counted."""
        self._queue(StatusResponse(refusal.condition, refusal.text, refusal.code, tag))
        if refusal.condition == "BAD" and refusal.counted:
            self._bad_commands += 1
            if self._bad_commands > self.max_bad_commands:
                raise self._fatal(Text.TOO_MANY_ERRORS)

    def _outcome(self, command: Command, condition: str) -> Trigger | None:
        ok = condition == "OK"
        if isinstance(command, (Login, Authenticate)):
            return T.AUTHENTICATED_OK if ok else None
        if isinstance(command, Select):
            self._read_only = ok and isinstance(command, Examine)
            return T.SELECT_OK if ok else T.SELECT_FAILED
        if isinstance(command, (Close, Unselect)) and ok:
            return T.CLOSED
        return None

    def _step(self) -> Event | Sentinel | None:
        if self._mode is M.SASL:
            return self._read_sasl()
        if self._mode is M.IDLE:
            return self._read_idle()
        result = self._framer.read(self._in)
        if result is None:
            return NEED_DATA
        if isinstance(result, FrameError):
            self._frame_error(result)
            return None
        if isinstance(result, LiteralAnnounced):
            self._literal_announced(result)
            return None
        assert isinstance(result, Frame)
        return self._command(result)

    # --- commands ---------------------------------------------------------------------------

    def _frame_error(self, error: FrameError) -> None:
        if error.reason == "FRAMING_LOST":
            raise self._fatal(Text.BAD_LITERAL)
        match = _TAG_HEAD.match(error.head)
        tag = match.group(1).decode("ascii") if match else None
        if error.reason == "LINE_TOO_LONG":
            refusal = _Refusal("BAD", Text.LINE_TOO_LONG, R.TOOBIG)
        elif error.reason == "LITERAL_TOO_BIG":
            # A synchronising literal was never sent: a limit, not a client error.
            refusal = _Refusal("NO" if error.synchronizing else "BAD", Text.LITERAL_TOO_BIG,
                               R.TOOBIG)
        elif error.reason == "NON_SYNC_TOO_BIG":
            refusal = _Refusal("BAD", Text.NON_SYNC_TOO_BIG, R.TOOBIG)
        elif error.reason == "NON_SYNC_REFUSED":
            refusal = _Refusal("BAD", Text.NON_SYNC_REFUSED)
        else:
            refusal = _Refusal("BAD", Text.BAD_LITERAL)
        self._answer(tag, refusal)

    def _cursor(self, segments: tuple[bytes, ...], *, complete: bool) -> Cursor:
        return Cursor(segments, complete=complete, utf8=self.utf8,
                      binary="BINARY" in self.extensions)

    def _literal_announced(self, frame: LiteralAnnounced) -> None:
        """Check the command so far; invite the literal or refuse it."""
        if len(frame.segments) > 2 * PREFIX_CHECKS:
            # Re-parsing the prefix at every literal would cost quadratic
            # time; the first checks found the command admissible, and the
            # parse of the whole command will catch the rest.
            self._accept_literal(frame)
            return
        cur = self._cursor(frame.segments, complete=False)
        tag = None
        try:
            tag = cur.tag()
            name = parse_name(cur)
            self._admit(name)
            parse_args(cur, tag, name)
            raise ParseError("Unexpected literal")
        except Incomplete:
            self._accept_literal(frame)
            return
        except ParseError as exc:
            refusal = self._parse_refusal(exc, tag)
        except _Refusal as exc:
            refusal = exc
        self._framer.refuse_literal()
        self._answer(tag, refusal)

    def _accept_literal(self, frame: LiteralAnnounced) -> None:
        self._framer.accept_literal()
        if frame.synchronizing:
            self._queue(ContinueRequest(Text.LITERAL))

    def _parse_refusal(self, exc: ParseError, tag: str | None) -> _Refusal:
        if tag is None:
            return _Refusal("BAD", Text.NO_TAG)
        code = R.badcharset(CHARSETS) if exc.code == "BADCHARSET" else None
        return _Refusal(exc.condition, exc.text, code, counted=exc.condition == "BAD")

    def _command(self, frame: Frame) -> Event | None:
        cur = self._cursor(frame.segments, complete=True)
        tag = None
        try:
            tag = cur.tag()
            name = parse_name(cur)
            self._admit(name)
            command = parse_args(cur, tag, name)
            self._check_extensions(command)
            return self._dispatch(command)
        except Incomplete:            # cannot happen: the framer read every literal
            self._answer(tag, _Refusal("BAD", Text.BAD_LITERAL))
        except ParseError as exc:
            self._answer(tag, self._parse_refusal(exc, tag))
        except _Refusal as exc:
            self._answer(tag, exc)
        return None

    def _admit(self, name: str) -> None:
        """May a command of this name run now?  Raises _Refusal if not."""
        needed = _COMMAND_CAPABILITY.get(name)
        if name not in COMMAND_NAMES or (needed is not None and needed not in self.extensions):
            raise _Refusal("BAD", Text.UNKNOWN_COMMAND)
        if name == "STARTTLS":
            if not self.tls_available:
                raise _Refusal("BAD", Text.UNKNOWN_COMMAND)
            if self._tls_active:
                raise _Refusal("BAD", Text.TLS_ACTIVE)
        if (self._state, Trigger[name]) not in TRANSITIONS:
            raise _Refusal("BAD", Text.NOT_IN_STATE)
        if name in ("LOGIN", "AUTHENTICATE") and self.login_disabled:
            raise _Refusal("NO", Text.LOGIN_DISABLED, R.PRIVACYREQUIRED, counted=False)

    def _check_extensions(self, command: Command) -> None:
        needs = command.extensions_used()
        if not needs <= set(self.extensions):
            raise _Refusal("BAD", Text.NOT_ADVERTISED)
        qresync = (isinstance(command, Select) and command.qresync is not None) or \
            (isinstance(command, Fetch) and command.vanished)
        if qresync and "QRESYNC" not in self._enabled:
            raise _Refusal("BAD", Text.NOT_ADVERTISED)      # RFC 7162 §3.2.5
        if "CONDSTORE" in needs:
            self._enabled.add("CONDSTORE")

    def _dispatch(self, command: Command) -> Event | None:
        if isinstance(command, Capability):
            self._queue(R.capability(self.capabilities))
            self._queue(StatusResponse("OK", "CAPABILITY completed", tag=command.tag))
            return None
        if isinstance(command, Enable):
            self._enable(command)
            return None
        if isinstance(command, Logout):
            bye = StatusResponse("BYE", Text.LOGOUT)
            self._queue(bye)
            self._queue(StatusResponse("OK", "LOGOUT completed", tag=command.tag))
            return self._close(bye)
        if isinstance(command, StartTLS):
            # Bytes pipelined behind STARTTLS came in plaintext: never run them.
            self._in.clear()
            self._framer.reset()
            self._queue(StatusResponse("OK", Text.BEGIN_TLS, tag=command.tag))
            self._set_mode(MT.STARTTLS)
            return command
        if isinstance(command, AuthenticateStart):
            return self._authenticate(command)
        if isinstance(command, Idle):
            self._queue(ContinueRequest(Text.IDLING))
            self._pending = command
            self._set_mode(MT.IDLE_START)
            return command
        if isinstance(command, Select) and self._state is S.SELECTED \
                and "QRESYNC" in self.extensions:
            self._queue(StatusResponse("OK", "Previous mailbox closed", R.CLOSED))  # RFC 7162
        return self._emit(command)

    def _emit(self, command: Command) -> Command:
        """Hand a command to the driver and wait for its ``complete()``."""
        self._pending = command
        self._set_mode(MT.EMIT)
        return command

    def _enable(self, command: Enable) -> None:
        granted = [name for name in dict.fromkeys(command.capabilities)
                   if name in ENABLEABLE and name in self.extensions]
        self._enabled.update(granted)
        if "QRESYNC" in granted:
            self._enabled.add("CONDSTORE")             # RFC 7162 §3.2.3
        self._queue(R.enabled(granted))
        self._queue(StatusResponse("OK", "ENABLE completed", tag=command.tag))

    # --- AUTHENTICATE and IDLE ------------------------------------------------------------------

    def _authenticate(self, command: AuthenticateStart) -> Event | None:
        if command.mechanism != "PLAIN":
            raise _Refusal("NO", Text.UNSUPPORTED_MECHANISM, R.CANNOT, counted=False)
        if command.initial_response is not None:
            return self._emit(self._credentials(command, command.initial_response))
        self._sasl = command
        self._set_mode(MT.SASL_START)
        self._queue(ContinueRequest())
        return None

    def _credentials(self, command: AuthenticateStart, response: bytes) -> Authenticate:
        authzid, username, password = plain_credentials(response)
        return Authenticate(command.tag, command.mechanism, authzid, username, password)

    def _read_sasl(self) -> Event | Sentinel | None:
        line = self._framer.read_line(self._in)
        if line is None:
            return NEED_DATA
        command = self._sasl
        assert command is not None
        try:
            if isinstance(line, FrameError):
                raise _Refusal("BAD", Text.LINE_TOO_LONG, R.TOOBIG)
            if line.strip(b" ") == b"*":
                raise _Refusal("BAD", Text.AUTH_CANCELLED, counted=False)   # RFC 3501 §6.2.2
            event = self._credentials(command, line.strip(b" "))
        except _Refusal as exc:
            self._sasl = None
            self._set_mode(MT.SASL_FAILED)
            self._answer(command.tag, exc)
            return None
        self._sasl = None
        return self._emit(event)

    def _read_idle(self) -> Event | Sentinel | None:
        line = self._framer.read_line(self._in)
        if line is None:
            return NEED_DATA
        if isinstance(line, FrameError):
            self._answer(None, _Refusal("BAD", Text.LINE_TOO_LONG, R.TOOBIG))
            return None
        if line.upper() != b"DONE":
            self._answer(None, _Refusal("BAD", Text.EXPECTED_DONE))
            return None
        assert self._pending is not None
        self._set_mode(MT.DONE)
        return IdleDone(self._pending.tag)

