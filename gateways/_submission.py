"""Message submission (RFC 6409): the store's users send mail.

Policy, on top of the generic driver (gateways._smtp_server) and its
sans-IO core, which already enforce the order of things: no MAIL before
AUTH (``530 5.7.0``), and no AUTH before STARTTLS (``538 5.7.11``) unless
``tls.allow_plaintext_auth``.

- **AUTH** PLAIN and LOGIN against the user registry (argon2).  A user may
  log in by name or as ``name@local.domain``; an authorization identity
  other than the user is refused.  Each failure is answered after a delay
  that doubles with the recent failures of that client address and of that
  user name (the IMAP bridge's throttle), so guessing is slow without
  locking anyone out.
- **MAIL FROM** must be one of the user's own addresses: the user's name or
  one of their aliases (with any ``+detail``), in a local domain.
  Anything else, the null sender included, is ``553 5.7.1``.
- **RCPT TO**: local recipients are checked at once as the MX checks them
  (``550 5.1.1`` for an unknown user; a members-only bboard checks the
  sender, which here is proven); any other domain is accepted, since the
  sender is authenticated.
- **End of data**: a ``Received:`` field is prepended and ``Message-ID`` and
  ``Date`` are added when the message lacks them (RFC 6409 8.2-8.3).  Then
  one spool entry for the local recipients (``in``, to the delivery
  workers) and one for the remote ones (``out``, to the outbound gateways)
  are both written and fsynced before either is queued, and only then is
  ``250`` sent (ams.store.spool [S1]).  With ``submission.save_sent``, a
  copy (``\\Seen``) is then filed into the sender's ``\\Sent`` mailbox; a
  failure there is logged, never turned into a refusal of a message
  already queued.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import secrets
import time
from collections.abc import Callable
from email.utils import formatdate

import trio

from ams.config import Config
from ams.errors import AMSError
from ams.protocols.smtp import AuthRequest, EndOfData, MailFrom, RcptTo, Reply
from ams.protocols.smtp import replies as R
from ams.store import Envelope, NewMessage, Spool, Store, UserRegistry
from ams.throttle import PASSWORD_CHECKS, Throttle
from delivery import Refusal, Resolver, parse_address
from delivery._filing import header_section, local_offset_minutes
from gateways._mx import mx_options
from gateways._smtp_server import Policy, ServerOptions, Session, SMTPServer, serve_smtp

log = logging.getLogger("gateways.submission")

SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address is not yours")
SUBMISSION_RECEIVED = "ESMTPSA"


class SubmissionPolicy(Policy):
    def __init__(self, config: Config, store: Store, *,
                 on_queued: Callable[[str], None] | None = None,
                 users: UserRegistry | None = None) -> None:
        self.config = config
        self.hostname = config.host.name
        self.store = store
        self.users = users or UserRegistry(store)
        self.resolver = Resolver(store, self.users)
        self.spool = Spool(store)
        self.on_queued = on_queued
        self.throttle = Throttle()
        self.password_checks = trio.CapacityLimiter(PASSWORD_CHECKS)

    # -- AUTH ----------------------------------------------------------------------

    def user_name(self, login: str) -> str:
        """The registry name a login means: ``alice`` or ``alice@local.domain``."""
        name = login.strip().lower()
        local, at, domain = name.rpartition("@")
        if at and domain.rstrip(".") in self.resolver.domains:
            return local
        return name

    async def auth(self, s: Session, ev: AuthRequest) -> bool:
        name = self.user_name(ev.username)
        keys = (f"addr:{s.peer.rsplit(':', 1)[0]}", f"user:{name}")
        ok = not ev.authzid or self.user_name(ev.authzid) == name
        if ok:
            ok = await trio.to_thread.run_sync(self.users.verify_password, name, ev.password,
                                               limiter=self.password_checks)
        if not ok:
            self.throttle.failed(*keys)
            await trio.sleep(self.throttle.delay(*keys))
            log.info("%s: failed AUTH %s for %r", s.peer, ev.mechanism, name)
            return False
        log.info("%s: %s authenticated (%s)", s.peer, name, ev.mechanism)
        return True

    # -- the envelope ----------------------------------------------------------------

    def owns(self, user: str, address: str) -> bool:
        """Whether ``address`` is one of ``user``'s own (name or alias, local domain)."""
        a = parse_address(address)
        if a is None or a.domain is None or not self.resolver.is_local(address):
            return False
        base = a.local
        delim = self.resolver.delimiter
        if delim and delim in base:
            base = base.split(delim, 1)[0]
        return any(u.name == user for u in self.users.resolve(base.lower()))

    async def mail_from(self, s: Session, ev: MailFrom) -> Reply | None:
        if s.user is None:
            return R.AUTH_REQUIRED
        user = self.user_name(s.user)
        try:
            owned = await trio.to_thread.run_sync(self.owns, user, ev.address)
        except (AMSError, OSError) as e:
            log.warning("%s: checking sender %s failed: %s", s.peer, ev.address, e)
            return R.LOCAL_ERROR
        if not owned:
            log.info("%s: %s may not send as <%s>", s.peer, user, ev.address)
            return SENDER_NOT_OWNED
        return None

    async def rcpt_to(self, s: Session, ev: RcptTo) -> Reply | None:
        if not self.resolver.is_local(ev.address):
            if parse_address(ev.address) is None:
                return R.BAD_RECIPIENT_SYNTAX
            return None
        # The sender is authenticated, so a members-only bboard may rely on it.
        result = await trio.to_thread.run_sync(self.resolver.resolve_for_rcpt, ev.address,
                                               s.mail_from)
        if isinstance(result, Refusal):
            spec = result.reply
            log.info("%s: RCPT %s refused: %s", s.peer, ev.address, result)
            return Reply(spec.code, spec.enhanced, spec.text)
        return None

    # -- the message -------------------------------------------------------------------

    async def message(self, s: Session, ev: EndOfData, data: bytes) -> Reply:
        assert s.user is not None  # the core allows no MAIL before AUTH
        user = self.user_name(s.user)
        data = complete_headers(data, ev.mail_from, self.hostname)
        queued = self._received(s) + data
        local = [r for r in ev.recipients if self.resolver.is_local(r)]
        remote = [r for r in ev.recipients if r not in local]
        client = {"peer": s.peer, "helo": s.helo, "tls": "yes" if s.tls else "no",
                  "auth": user}
        items = [(queue, Envelope(id="", mail_from=ev.mail_from, rcpt_to=tuple(rcpts),
                                  received_us=0, host="", client=client), queued)
                 for queue, rcpts in (("in", local), ("out", remote)) if rcpts]
        try:
            envs = await trio.to_thread.run_sync(self.spool.enqueue_many, items)
        except OSError as e:
            log.error("%s: could not spool a message: %s", s.peer, e)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return R.INSUFFICIENT_STORAGE
            return R.LOCAL_ERROR
        ids = " ".join(e.id for e in envs)
        log.info("%s: %s submitted %s from <%s>: %d local, %d remote recipients (%d bytes)",
                 s.peer, user, ids, ev.mail_from, len(local), len(remote), len(data))
        if self.config.submission.save_sent:
            await trio.to_thread.run_sync(self._save_sent, user, data, envs[0].id)
        if self.on_queued is not None:
            for queue, _env, _msg in items:
                self.on_queued(queue)
        return Reply(250, "2.0.0", f"OK: queued as {ids}")

    def _save_sent(self, user: str, message: bytes, entry_id: str) -> None:
        try:
            mbl = self.users.mailboxes(user)
            sent = next((i for i in mbl.list() if i.special_use == "\\Sent"), None)
            if sent is None:
                return
            now = time.time()
            self.store.log_at(sent.path, sent.id).append(
                [NewMessage(message, internal_date=int(now), tz_minutes=local_offset_minutes(now),
                            flags=("\\Seen",), delivery_id=f"{entry_id}/sent")])
        except (AMSError, OSError) as e:
            log.warning("could not file the Sent copy of %s for %s: %s", entry_id, user, e)

    def _received(self, s: Session) -> bytes:
        helo = "".join(c for c in s.helo if c.isprintable() and c not in "()")[:200]
        line = (f"Received: from {helo or 'unknown'} ({s.peer})\r\n"
                f"\tby {self.hostname} (AMS) with {SUBMISSION_RECEIVED};\r\n"
                f"\t{formatdate(localtime=True)}\r\n")
        return line.encode("utf-8", "replace")


def complete_headers(message: bytes, sender: str, hostname: str) -> bytes:
    """``message`` with ``Message-ID`` and ``Date`` added where missing (RFC 6409 8)."""
    names = set()
    for line in header_section(message).splitlines():
        name, colon, _ = line.partition(b":")
        if colon and name and not name[:1].isspace():
            names.add(name.strip().lower())
    eol = b"\r\n" if b"\r\n" in message[:2000] or not message else b"\n"
    add = b""
    if b"message-id" not in names:
        domain = sender.rpartition("@")[2] or hostname
        add += f"Message-ID: <{time.time_ns():x}.{secrets.token_hex(6)}@{domain}>".encode(
            "utf-8", "replace") + eol
    if b"date" not in names:
        add += f"Date: {formatdate(localtime=True)}".encode() + eol
    return add + message


def submission_options(config: Config) -> ServerOptions:
    base = mx_options(config)
    return dataclasses.replace(base, auth_enabled=True, require_auth=True,
                               allow_plaintext_auth=config.tls.allow_plaintext_auth)


async def serve_submission(config: Config, *, listen: str | None = None,
                           on_queued: Callable[[str], None] | None = None,
                           users: UserRegistry | None = None,
                           task_status: trio.TaskStatus[list[trio.SocketListener]]
                           = trio.TASK_STATUS_IGNORED) -> None:
    """Run SMTP submission until cancelled; ``task_status`` gets the listeners.

    ``on_queued(queue)`` is called after each message for each queue it went
    to (``in``, ``out``), so workers in the same process can wake at once.
    ``users`` replaces the user registry (tests pass one with cheap hashing).
    """
    store = Store(config)
    store.check()
    options = submission_options(config)
    if options.ssl_context is None and not config.tls.allow_plaintext_auth:
        log.warning("submission has no TLS certificate and tls.allow_plaintext_auth is off: "
                    "no client can authenticate")
    server = SMTPServer(options, SubmissionPolicy(config, store, on_queued=on_queued,
                                                  users=users))
    await serve_smtp(server, listen or config.listen.submission, task_status=task_status)


__all__ = ["SENDER_NOT_OWNED", "SubmissionPolicy", "complete_headers", "serve_submission",
           "submission_options"]
