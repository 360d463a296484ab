"""The trio driver for SMTP servers: sockets, TLS, clocks; no protocol.

All protocol decisions live in the sans-IO core (ams.protocols.smtp); all
mail decisions in a :class:`Policy` (the MX's, submission's).  This module
only moves bytes, runs timeouts and starts TLS:

- one task per connection, a cap on concurrent connections (over the cap a
  client gets ``421 4.7.0`` and is closed);
- command and data timeouts from the config, answered with ``421 4.4.2``;
- every policy call that touches the store runs in a worker thread
  (``trio.to_thread.run_sync``), never on the event loop;
- an exception from a policy is logged and answered ``451 4.3.0``; a client
  never sees a traceback and the server keeps serving.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

import trio

from ams.protocols.smtp import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    ConnectionClosed,
    Data,
    EndOfData,
    Hello,
    MailFrom,
    MessageRejected,
    RcptTo,
    RemoteProtocolError,
    Reply,
    Reset,
    SMTPServerConnection,
    StartData,
    StartTLS,
)
from ams.protocols.smtp import replies as R

log = logging.getLogger(__name__)

RECV_SIZE = 65536
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "{hostname} Too many connections, try again later")
_DATA_STATES = frozenset({"DATA", "BDAT", "CHUNKING", "BDAT_DISCARD"})


@dataclass
class Session:
    """What one connection has said so far, for the policy."""

    peer: str
    helo: str = ""
    tls: bool = False
    user: str | None = None
    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    #: Per accepted recipient, whatever the policy resolved it to.
    resolved: list[object] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    def reset(self) -> None:
        self.mail_from = ""
        self.recipients.clear()
        self.resolved.clear()
        self.chunks.clear()


class Policy:
    """Mail decisions.  Each method returns None to accept, or a Reply."""

    hostname: str = "localhost"

    async def mail_from(self, s: Session, ev: MailFrom) -> Reply | None:
        return None

    async def rcpt_to(self, s: Session, ev: RcptTo) -> Reply | None:
        return R.RELAY_DENIED

    async def message(self, s: Session, ev: EndOfData, data: bytes) -> Reply:
        return R.LOCAL_ERROR

    async def auth(self, s: Session, ev: AuthRequest) -> bool:
        return False


@dataclass(frozen=True)
class ServerOptions:
    hostname: str
    max_size: int
    max_line: int
    max_recipients: int
    max_bad_commands: int
    max_connections: int
    command_timeout: float
    data_timeout: float
    ssl_context: ssl.SSLContext | None = None
    auth_enabled: bool = False
    allow_plaintext_auth: bool = False
    require_auth: bool = False


class SMTPServer:
    def __init__(self, options: ServerOptions, policy: Policy) -> None:
        self.options = options
        self.policy = policy
        self.active = 0

    def _connection(self, tls_active: bool) -> SMTPServerConnection:
        o = self.options
        return SMTPServerConnection(
            o.hostname, max_size=o.max_size, max_line=o.max_line,
            max_recipients=o.max_recipients, max_bad_commands=o.max_bad_commands,
            tls_available=o.ssl_context is not None, tls_active=tls_active,
            auth_enabled=o.auth_enabled, allow_plaintext_auth=o.allow_plaintext_auth,
            require_auth=o.require_auth)

    async def handle(self, stream: trio.abc.Stream) -> None:
        peer = _peer(stream)
        if self.active >= self.options.max_connections:
            conn = self._connection(False)
            conn.greeting(TOO_MANY_CONNECTIONS)
            await _send_quietly(stream, conn.data_to_send())
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await self._serve(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            log.info("%s: connection lost (%s)", peer, type(e).__name__)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, peer: str) -> None:
        conn = self._connection(False)
        session = Session(peer)
        conn.greeting()
        await stream.send_all(conn.data_to_send())
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                await _send_quietly(stream, conn.data_to_send())
                log.info("%s: closed for protocol errors", peer)
                return
            if event is NEED_DATA:
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                data = await self._receive(stream, conn, session)
                if data is None:
                    await _send_quietly(stream, conn.data_to_send())
                    return
                conn.receive_data(data)
            elif event is PAUSED:
                await self._decide(conn, session)
            elif isinstance(event, StartTLS):
                await stream.send_all(conn.data_to_send())
                assert self.options.ssl_context is not None
                stream = trio.SSLStream(stream, self.options.ssl_context, server_side=True)
                await stream.do_handshake()
                conn.tls_started()
                session.tls = True
                session.reset()
            elif isinstance(event, ConnectionClosed):
                await _send_quietly(stream, conn.data_to_send())
                return
            else:
                self._note(session, event)

    async def _receive(self, stream: trio.abc.Stream, conn: SMTPServerConnection,
                       session: Session) -> bytes | None:
        timeout = (self.options.data_timeout if conn.state.name in _DATA_STATES
                   else self.options.command_timeout)
        with trio.move_on_after(timeout) as scope:
            data = await stream.receive_some(RECV_SIZE)
        if scope.cancelled_caught:
            conn.timeout_reply()
            log.info("%s: timed out", session.peer)
            return None
        return bytes(data)

    def _note(self, session: Session, event: object) -> None:
        if isinstance(event, Hello):
            session.helo = event.name
            session.reset()
        elif isinstance(event, Data):
            session.chunks.append(event.data)
        elif isinstance(event, (Reset, MessageRejected, StartData)):
            if not isinstance(event, StartData):
                session.reset()
            else:
                session.chunks.clear()

    async def _decide(self, conn: SMTPServerConnection, session: Session) -> None:
        ev = conn.pending
        try:
            if isinstance(ev, AuthRequest):
                ok = await self.policy.auth(session, ev)
                conn.auth_result(ok)
                if ok:
                    session.user = ev.username
                return
            if isinstance(ev, MailFrom):
                reply = await self.policy.mail_from(session, ev)
                if reply is None:
                    session.reset()
                    session.mail_from = ev.address
            elif isinstance(ev, RcptTo):
                reply = await self.policy.rcpt_to(session, ev)
                if reply is None:
                    session.recipients.append(ev.address)
            elif isinstance(ev, EndOfData):
                data = b"".join(session.chunks)
                session.chunks.clear()
                reply = await self.policy.message(session, ev, data)
                session.reset()
                if reply.is_positive:
                    conn.accept(reply)
                else:
                    conn.reject(reply)
                return
            else:  # pragma: no cover - the core pauses only on the above
                raise AssertionError(f"unexpected decision {ev!r}")
        except Exception:
            log.exception("%s: policy failed on %s", session.peer, type(ev).__name__)
            if isinstance(ev, AuthRequest):
                conn.auth_result(False)
            else:
                conn.reject(R.LOCAL_ERROR)
            return
        if reply is None:
            conn.accept()
        else:
            conn.reject(reply)


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "?"
    return f"[{host}]:{port}"


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    if not data:
        return
    try:
        with trio.move_on_after(5):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        pass


def parse_listen(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, not {spec!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve_smtp(server: SMTPServer, listen: str, *,
                     task_status: trio.TaskStatus[list[trio.SocketListener]]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``listen`` and serve; ``task_status`` gets the listeners."""
    host, port = parse_listen(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(server.handle, listeners)

