"""The trio driver for SMTP client sessions: one transaction to one host.

The protocol is the sans-IO core's (ams.protocols.smtp._client); this
module moves its bytes, runs the clocks and starts TLS.  :func:`send_to_host`
delivers one message to some recipients at one host and says, per
recipient, what the host answered.

How a failure is reported decides what the caller does next:

- :class:`HostFailure`: this host did not take part in a transaction
  (no connection, a refusing greeting, EHLO failing, a broken TLS
  handshake, the connection lost or timed out *before* the end of the
  message was sent).  Nothing was delivered, so the caller tries the next
  host of the domain.
- anything else comes back as a :class:`~ams.store.outqueue.Result` per
  recipient: ``sent`` (2xx to the end of data), ``failed`` (5xx to MAIL,
  RCPT, DATA or the end of data) or ``deferred`` (4xx, or the connection
  lost *after* the end of the message went out: the remote may have it, so
  it is retried, which is the one way SMTP itself can duplicate a message).

Timeouts follow RFC 5321 4.5.3.2 through :class:`ClientOptions`: one per
command answer and a longer one for the answer to the end of data.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ams.protocols.smtp._client import ClientState, Response, SMTPClientConnection
from ams.protocols.smtp._events import ConnectionClosed
from ams.protocols.smtp._util import NEED_DATA, ProtocolError
from ams.store.outqueue import Result

log = logging.getLogger("gateways.outbound")

RECV_SIZE = 65536


@dataclass(frozen=True)
class ClientOptions:
    helo_name: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    #: STARTTLS when offered; with ``tls_context`` None, never.
    starttls: bool = True
    tls_context: ssl.SSLContext | None = None


class HostFailure(Exception):
    """The host took no part in a transaction: try the next one."""

    def __init__(self, host: str, why: str, *, code: str = "4.4.1",
                 response: Response | None = None) -> None:
        super().__init__(f"{host}: {why}")
        self.host = host
        self.why = why
        self.code = (response.enhanced or _default_code(response.code)) if response else code
        self.response = response

    @property
    def reply(self) -> str:
        return str(self.response) if self.response is not None else self.why


def client_tls_context(verify: bool) -> ssl.SSLContext:
    """Opportunistic TLS (RFC 7435) unless ``verify``: encrypt, trust anything."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _now_us() -> int:
    return time.time_ns() // 1000


def _default_code(code: int) -> str:
    return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")


class _Session:
    """One connection: the core, the stream and the timeouts."""

    def __init__(self, stream: trio.abc.Stream, host: str, options: ClientOptions) -> None:
        self.stream = stream
        self.host = host
        self.options = options
        self.conn = SMTPClientConnection()
        self.tls = False
        #: The last transaction ended (message answered, or RSET): no RSET
        #: is needed before the session is used again.
        self.clean = True

    async def responses(self, count: int, timeout: float) -> list[Response]:
        """Send what is queued, then read ``count`` responses."""
        out = self.conn.data_to_send()
        if out:
            await self.stream.send_all(out)
        got: list[Response] = []
        with trio.fail_after(timeout):
            while len(got) < count:
                ev = self.conn.next_event()
                if ev is NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(RECV_SIZE)))
                elif isinstance(ev, ConnectionClosed):
                    raise trio.BrokenResourceError("the server closed the connection")
                else:
                    got.append(ev)
        return got

    async def one(self, timeout: float | None = None) -> Response:
        (r,) = await self.responses(1, timeout or self.options.command_timeout)
        return r

    async def hello(self) -> None:
        self.conn.ehlo(self.options.helo_name)
        r = await self.one()
        if r.code == 421:
            raise HostFailure(self.host, "closed the session", response=r)
        if not r.is_positive:
            self.conn.helo(self.options.helo_name)
            r = await self.one()
            if not r.is_positive:
                raise HostFailure(self.host, "refused EHLO and HELO", response=r)

    async def starttls(self) -> None:
        ctx = self.options.tls_context
        if not (self.options.starttls and ctx is not None and "STARTTLS" in self.conn.extensions):
            return
        self.conn.starttls()
        r = await self.one()
        if r.code != 220:
            log.info("%s refused STARTTLS (%s); going on without TLS", self.host, r)
            return
        stream = trio.SSLStream(self.stream, ctx, server_hostname=self.host)
        try:
            with trio.fail_after(self.options.command_timeout):
                await stream.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError) as e:
            raise HostFailure(self.host, f"TLS handshake failed: {e}") from None
        self.stream = stream
        self.tls = True
        self.conn.tls_started()
        await self.hello()

    async def quit(self) -> None:
        try:
            self.conn.quit()
            with trio.move_on_after(5):
                await self.one(5)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                ssl.SSLError, ProtocolError, OSError):
            pass


def _mail_params(conn: SMTPClientConnection, mail_from: str, rcpts: Sequence[str],
                 message: bytes) -> str | Result:
    """ESMTP parameters for MAIL, or why this host cannot take the message."""
    ext = conn.extensions
    params: list[str] = []
    if "SIZE" in ext:
        params.append(f"SIZE={len(message)}")
        limit = ext["SIZE"]
        if limit.isdigit() and int(limit) and len(message) > int(limit):
            return Result("failed", "5.3.4", f"message is {len(message)} bytes, the remote "
                          f"takes at most {limit}")
    if not message.isascii() and "8BITMIME" in ext:
        params.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (mail_from, *rcpts)):
        if "SMTPUTF8" not in ext:
            return Result("failed", "5.6.7", "the remote does not support SMTPUTF8, which "
                          "these addresses need")
        params.append("SMTPUTF8")
    return " ".join(params)


_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                      ssl.SSLError, ProtocolError, OSError)


class ConnectionCache:
    """Idle sessions per (host, port), reused for the next transaction.

    After a transaction that leaves the session READY, it is kept here
    instead of being closed (Postfix's connection cache does the same), so a
    stream of mail to one host pays for the connection, greeting, EHLO and
    STARTTLS once, not per message.  A session is kept at most
    ``idle_timeout`` seconds and at most ``per_host`` per destination; it
    belongs to one task at a time (taken out while in use).
    """

    def __init__(self, *, per_host: int = 8, idle_timeout: float = 2.0) -> None:
        self.per_host = per_host
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[tuple[float, _Session]]] = {}

    async def take(self, key: tuple[str, int]) -> _Session | None:
        idle = self._idle.get(key)
        now = trio.current_time()
        while idle:
            since, session = idle.pop()
            if now - since < self.idle_timeout:
                return session
            await _close(session)
        return None

    async def put(self, key: tuple[str, int], session: _Session) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.per_host:
            await _close(session)
            return
        idle.append((trio.current_time(), session))

    async def aclose(self) -> None:
        """Close every idle session (QUIT, then the socket; QUIT gets 2 s in all)."""
        idle, self._idle = self._idle, {}
        sessions = [session for group in idle.values() for _, session in group]
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                for session in sessions:
                    await session.quit()
            for session in sessions:
                await trio.aclose_forcefully(session.stream)


async def _close(session: _Session) -> None:
    with trio.CancelScope(shield=True):
        await session.quit()
        await trio.aclose_forcefully(session.stream)


async def _connect(host: str, port: int, options: ClientOptions) -> _Session:
    """A session up to READY: connected, greeted, EHLO, STARTTLS if offered."""
    try:
        with trio.fail_after(options.connect_timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        why = "connection timed out" if isinstance(e, trio.TooSlowError) else \
            f"cannot connect to port {port}: {_connect_error(e)}"
        raise HostFailure(host, why) from None
    s = _Session(stream, host, options)
    try:
        greeting = await s.one()
        if greeting.code != 220:
            raise HostFailure(host, "refused the session", response=greeting)
        await s.hello()
        await s.starttls()
    except BaseException as e:
        await trio.aclose_forcefully(s.stream)
        if isinstance(e, _CONNECTION_ERRORS):
            raise HostFailure(host, _describe(e)) from None
        raise
    return s


async def send_to_host(host: str, port: int, *, mail_from: str, recipients: Sequence[str],
                       message: bytes, options: ClientOptions,
                       cache: ConnectionCache | None = None) -> dict[str, Result]:
    """Deliver ``message`` to ``recipients`` at ``host:port``; a result per recipient.

    Raises :class:`HostFailure` when nothing was delivered and the next host
    should be tried.  With ``cache``, an idle session to the host is reused
    if there is one (a cached session that turns out to be dead before the
    message went out is replaced by a new connection, once), and the session
    is left there afterwards.
    """
    key = (host, port)
    s = await cache.take(key) if cache is not None else None
    reused = s is not None
    while True:
        if s is None:
            s = await _connect(host, port, options)
        keep = False
        try:
            results = await _transaction(s, mail_from, recipients, message)
            keep = cache is not None and await _reusable(s)
            return results
        except (HostFailure, *_CONNECTION_ERRORS) as e:
            if not reused:
                if isinstance(e, HostFailure):
                    raise
                raise HostFailure(host, _describe(e)) from None
            log.debug("%s: cached session was dead (%s); connecting again", host, e)
        finally:
            if keep:
                assert cache is not None
                await cache.put(key, s)
            else:
                await _close(s)
        s, reused = None, False


async def _reusable(s: _Session) -> bool:
    """Whether ``s`` can go back to the cache: READY, RSET if a transaction is open."""
    if s.conn.state is not ClientState.READY:
        return False
    if s.clean:
        return True
    try:
        s.conn.rset()
        ok = (await s.one()).is_positive
    except _CONNECTION_ERRORS:
        return False
    s.clean = ok
    return ok


def _connect_error(e: OSError) -> str:
    """The reason under trio's "all attempts to connect ... failed"."""
    causes = getattr(e.__cause__, "exceptions", None) or ([e.__cause__] if e.__cause__ else [])
    reasons = {c.strerror for c in causes if isinstance(c, OSError) and c.strerror}
    return ", ".join(sorted(reasons)) or e.strerror or str(e)


def _describe(e: BaseException) -> str:
    if isinstance(e, trio.TooSlowError):
        return "timed out waiting for the server"
    if isinstance(e, ProtocolError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"connection lost ({type(e).__name__})"


async def _transaction(s: _Session, mail_from: str, recipients: Sequence[str],
                       message: bytes) -> dict[str, Result]:
    """MAIL, RCPT..., DATA (pipelined when offered), then the message.

    A connection error before the end of the message propagates (nothing
    was delivered); after it, the accepted recipients are deferred.
    """
    conn, host = s.conn, s.host
    s.clean = False
    params = _mail_params(conn, mail_from, recipients, message)
    if isinstance(params, Result):
        return dict.fromkeys(recipients, Result(params.status, params.code, params.reply, host))
    conn.mail(mail_from, params)
    data_r: Response | None = None
    if "PIPELINING" in conn.extensions:
        for r in recipients:
            conn.rcpt(r)
        conn.data()
        replies = await s.responses(len(recipients) + 2, s.options.command_timeout)
        mail_r, rcpt_rs, data_r = replies[0], replies[1:-1], replies[-1]
    else:
        mail_r = await s.one()
        rcpt_rs = []
        if mail_r.is_positive:
            for r in recipients:
                conn.rcpt(r)
                rcpt_rs.append(await s.one())
    if not mail_r.is_positive:
        if mail_r.code == 421:
            raise HostFailure(host, "closed the session", response=mail_r)
        return dict.fromkeys(recipients, _result(mail_r, host))
    results: dict[str, Result] = {}
    accepted: list[str] = []
    for rcpt, r in zip(recipients, rcpt_rs, strict=True):
        if r.is_positive:
            accepted.append(rcpt)
        else:
            results[rcpt] = _result(r, host)
    if data_r is None:
        if not accepted:
            conn.rset()
            await s.one()
            s.clean = True
            return results
        conn.data()
        data_r = await s.one()
    if data_r.code != 354:
        for rcpt in accepted:
            results[rcpt] = _result(data_r, host)
        return results
    if not accepted:
        # Pipelined DATA went through with no recipient: end it, empty, and
        # ignore the answer (RFC 2920 3.1).
        conn.message(b"")
        await s.one()
        s.clean = True
        return results
    conn.message(message)
    try:
        final = await s.one(s.options.data_timeout)
    except _CONNECTION_ERRORS as e:
        why = f"{_describe(e)} after the end of the message was sent (it may have arrived)"
        log.warning("%s: %s", host, why)
        for rcpt in accepted:
            results[rcpt] = Result("deferred", "4.4.2", why, host, _now_us())
        return results
    s.clean = True
    for rcpt in accepted:
        results[rcpt] = _result(final, host)
    return results


def _result(r: Response, host: str) -> Result:
    status = "sent" if r.is_positive else "failed" if r.is_permanent else "deferred"
    return Result(status, r.enhanced or _default_code(r.code), str(r), host, _now_us())


__all__ = ["ClientOptions", "ConnectionCache", "HostFailure", "client_tls_context",
           "send_to_host"]
