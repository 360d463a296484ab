"""The inbound MX: SMTP for the local domains, into the sharded spool.

Policy, on top of the generic driver (gateways._smtp_server):

- RCPT is checked against the store at once: a local user, alias,
  ``user+detail`` or forwarding address is accepted; an unknown user gets
  ``550 5.1.1``; any other domain ``550 5.7.1`` (never an open relay); a
  store that cannot be read ``451 4.3.0``.  Answers are reused for
  ``RCPT_CACHE_SECONDS``; the worker resolves again when it files, so a
  user removed meanwhile gets nothing filed, only a late refusal.
- A bboard posting address (``bb+NAME@domain``) is accepted when the board
  exists (``550 5.1.1`` if not) and, for a members-only board, the envelope
  sender is a local member (``550 5.7.1`` if not); its cached answer is
  kept per sender.  Moderated boards take the mail into their pending log.
- At the end of DATA a Received: header is prepended and the message and
  its envelope are written to this host's staging dir, fsynced and renamed
  into a spool shard (ams.store.spool).  Only then is ``250`` sent.  A full
  disk answers ``452 4.3.1``, any other I/O error ``451 4.3.0``; the spool
  cleans its staging file, so nothing half-written becomes visible.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Callable
from email.utils import formatdate

import trio

from ams.config import Config
from ams.protocols.smtp import EndOfData, MailFrom, RcptTo, Reply
from ams.protocols.smtp import replies as R
from ams.store import Spool, Store
from delivery import Refusal, Resolution, Resolver
from gateways._smtp_server import Policy, ServerOptions, Session, SMTPServer, serve_smtp

log = logging.getLogger(__name__)


#: How long an RCPT answer is reused.  Only the answer at RCPT time is
#: cached: the worker resolves every recipient again when it files.
RCPT_CACHE_SECONDS = 5.0
RCPT_CACHE_ENTRIES = 10_000


class MXPolicy(Policy):
    def __init__(self, config: Config, store: Store, *,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.config = config
        self.hostname = config.host.name
        self.store = store
        self.resolver = Resolver(store)
        self.spool = Spool(store)
        self.on_queued = on_queued
        self._rcpt_cache: dict[str, tuple[float, Resolution | Refusal]] = {}

    async def mail_from(self, s: Session, ev: MailFrom) -> Reply | None:
        return None

    async def _resolve(self, address: str, sender: str) -> Resolution | Refusal:
        """Resolve, reusing a fresh answer without a trip to a worker thread."""
        key = address.lower()
        if self.resolver.is_bboard(address):  # a bboard's answer depends on the sender
            key += "\0" + sender.lower()
        now = trio.current_time()
        hit = self._rcpt_cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await trio.to_thread.run_sync(self.resolver.resolve_for_rcpt, address, sender)
        if isinstance(result, Refusal) and not result.permanent:
            return result  # a temporary failure is not remembered
        if len(self._rcpt_cache) >= RCPT_CACHE_ENTRIES:
            self._rcpt_cache.clear()
        self._rcpt_cache[key] = (now + RCPT_CACHE_SECONDS, result)
        return result

    async def rcpt_to(self, s: Session, ev: RcptTo) -> Reply | None:
        result = await self._resolve(ev.address, s.mail_from)
        if isinstance(result, Refusal):
            spec = result.reply
            log.info("%s: RCPT %s refused: %s", s.peer, ev.address, result)
            return Reply(spec.code, spec.enhanced, spec.text)
        return None

    async def message(self, s: Session, ev: EndOfData, data: bytes) -> Reply:
        received = self._received(s, ev)
        try:
            env = await trio.to_thread.run_sync(self._enqueue, s, ev, received + data)
        except OSError as e:
            log.error("%s: could not spool a message: %s", s.peer, e)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return R.INSUFFICIENT_STORAGE
            return R.LOCAL_ERROR
        log.info("%s: queued %s from <%s> to %d recipients (%d bytes)", s.peer, env.id,
                 ev.mail_from, len(ev.recipients), ev.size)
        if self.on_queued is not None:
            self.on_queued()
        return Reply(250, "2.0.0", f"OK: queued as {env.id}")

    def _enqueue(self, s: Session, ev: EndOfData, message: bytes):  # type: ignore[no-untyped-def]
        return self.spool.enqueue("in", mail_from=ev.mail_from, rcpt_to=list(ev.recipients),
                                  message=message,
                                  client={"peer": s.peer, "helo": s.helo,
                                          "tls": "yes" if s.tls else "no"})

    def _received(self, s: Session, ev: EndOfData) -> bytes:
        proto = "ESMTPS" if s.tls else "ESMTP"
        helo = "".join(c for c in s.helo if c.isprintable() and c not in "()")[:200]
        for_ = f"\r\n\tfor <{ev.recipients[0]}>" if len(ev.recipients) == 1 else ""
        line = (f"Received: from {helo or 'unknown'} ({s.peer})\r\n"
                f"\tby {self.hostname} (AMS) with {proto}{for_};\r\n"
                f"\t{formatdate(localtime=True)}\r\n")
        return line.encode("utf-8", "replace")


def mx_options(config: Config) -> ServerOptions:
    lim = config.limits
    return ServerOptions(
        hostname=config.host.name, max_size=lim.max_message_bytes, max_line=lim.max_line_bytes,
        max_recipients=lim.max_recipients, max_bad_commands=lim.max_bad_commands,
        max_connections=lim.max_connections, command_timeout=lim.command_timeout,
        data_timeout=lim.data_timeout, ssl_context=server_ssl_context(config))


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.certificate is None or config.tls.key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(config.tls.certificate), str(config.tls.key))
    return ctx


async def serve_mx(config: Config, *, listen: str | None = None,
                   on_queued: Callable[[], None] | None = None,
                   task_status: trio.TaskStatus[list[trio.SocketListener]]
                   = trio.TASK_STATUS_IGNORED) -> None:
    """Run the MX until cancelled; ``task_status`` gets the bound listeners."""
    store = Store(config)
    store.check()
    server = SMTPServer(mx_options(config), MXPolicy(config, store, on_queued=on_queued))
    await serve_smtp(server, listen or config.listen.smtp, task_status=task_status)
