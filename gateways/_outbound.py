"""The outbound gateway pool: ``ams gateway``.

Theory of operation
-------------------
A gateway is a spool worker of the ``out`` queue (ams.store.spool): it
registers a heartbeat, claims entries by rename from the shards rendezvous
hashing gives it, and dead gateways' claims return to the queue after their
lease, exactly as for delivery workers; none of that is repeated here.  One
process runs ``count`` gateways; each has, under trio:

- the **work loop**: claims up to ``outbound.concurrency`` entries at a
  time and starts a task per entry; every ``lease/2`` it returns dead
  workers' claims, and every second it promotes the deferred entries that
  are due in its own shards (ams.store.outqueue: time buckets, so nothing
  is looked at before it is due).  Idle, it polls from 50 ms up to 1 s, or
  wakes at once when a submission in the same process calls ``wake()``.
- the **heartbeat**, every ``lease/3``.
- a **task per entry**: read it, take the recipients still pending (the
  entry records per-recipient results), and deliver:

  * recipients in a local domain are handed to the ``in`` queue;
  * the others are grouped by domain; each domain's route (static route,
    smarthost, or MX through dnspython: gateways._routes) gives hosts, tried
    in order until one takes part in a transaction (gateways._smtp_client,
    STARTTLS when offered);
  * then the entry is settled in one thread call: DSNs for recipients that
    failed for good (never for a null sender) are enqueued first [D4]; if
    nothing is pending the claim is completed; otherwise the results are
    written into the entry and it moves to the deferred bucket of its next
    attempt, after ``outbound.retry_schedule[tries]`` (the last value
    repeating) [D1, D2].  An entry older than ``outbound.max_age`` gets one
    last attempt at that age; what is still pending then fails with
    ``4.4.7`` and is bounced.

Exactly once, per recipient: a recipient recorded as sent is never tried
again.  The exception is SMTP's own window: a crash (or SIGKILL) after the
remote's 250 and before the entry is settled leaves the entry as it was,
so those recipients get the message again when it is retried.  The settle
runs as soon as the answers are in, so the window is one thread hop.

Errors of our own store while settling (disk full, I/O) leave the entry
claimed; it is released (an attempt counted) after ``retry_local`` seconds
and tried again.  Losing the lease (LockLost) stops the gateway's tasks; it
closes and registers again under a new id, like a delivery worker.  On
SIGTERM the transactions in flight are abandoned and every claim is
returned uncounted.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ams.config import Config
from ams.dsn import build_dsn
from ams.errors import (
    CorruptionError,
    FormatVersionError,
    LockLost,
    UsageError,
)
from ams.store import Claim, ClaimLost, Entry, Spool, Store, Worker
from ams.store.outqueue import DeferredQueue, OutboundState, Result
from delivery import Resolver, default_logging
from delivery._pool import SpoolPool, pool_main
from delivery._resolve import TEMPORARY_ERRORS
from gateways._routes import Router, normal_domain
from gateways._smtp_client import (
    ClientOptions,
    ConnectionCache,
    HostFailure,
    client_tls_context,
    send_to_host,
)

log = logging.getLogger("gateways.outbound")

T = TypeVar("T")


@dataclass(frozen=True)
class GatewayOptions:
    #: Idle polling: the first sleep, doubled up to the last.
    idle_min: float = 0.05
    idle_max: float = 1.0
    #: How often due deferred buckets are looked at.
    promote_every: float = 1.0
    #: Backoff before an entry we could not settle (our own store failing)
    #: is released for another attempt.
    retry_local: float = 5.0


def _now_us() -> int:
    return time.time_ns() // 1000


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def _fmt(res: Result) -> str:
    return " ".join(res.reply.split())


class GatewayPool(SpoolPool):
    """The gateways of one process; what :func:`serve_gateways` reports when started."""

    queue = "out"
    role = "outbound gateway"

    def __init__(self, config: Config, count: int, options: GatewayOptions | None = None, *,
                 router: Router | None = None) -> None:
        self.config = config
        self.out = config.outbound
        self.options = options or GatewayOptions()
        self.store = Store(config)
        self.store.check()
        super().__init__(Spool(self.store), count)
        self.deferred = DeferredQueue(self.spool, bucket_seconds=self.out.bucket_seconds)
        try:
            self.router = router or Router(self.out)
        except ValueError as e:
            raise UsageError(f"outbound.routes: {e}") from None
        self.resolver = Resolver(self.store)
        self.hostname = self.out.helo_name or config.host.name
        domains = config.mail.domains
        self.dsn_domain = domains[0] if domains else self.hostname
        self.client_options = ClientOptions(
            helo_name=self.hostname, connect_timeout=self.out.connect_timeout,
            command_timeout=self.out.command_timeout, data_timeout=self.out.data_timeout,
            starttls=self.out.starttls,
            tls_context=client_tls_context(self.out.tls_verify) if self.out.starttls else None)
        self.cache = ConnectionCache()

    async def _stopped(self) -> None:
        await self.cache.aclose()

    async def _work(self, worker: Worker, nursery: trio.Nursery) -> None:
        opts = self.options
        slots = trio.Semaphore(self.out.concurrency)
        delay = opts.idle_min
        reclaim_every = max(min(self.spool.lease / 2, 10.0), 0.05)
        next_reclaim = next_promote = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_reclaim:
                next_reclaim = now + reclaim_every
                await self._call(worker.reclaim_dead)
            if now >= next_promote:
                next_promote = now + opts.promote_every
                await self._call(self._promote, worker)
            if slots.value == 0:
                await slots.acquire()  # wait for an entry in hand to finish
                slots.release()
                continue
            claims = await self._call(worker.claim_batch, "out", slots.value) or []
            for claim in claims:
                await slots.acquire()
                nursery.start_soon(self._handle, worker, claim, slots)
            if claims:
                delay = opts.idle_min
                continue
            event = self._wake
            wait = min(delay, max(next_promote - trio.current_time(), 0.0))
            with trio.move_on_after(wait) as cs:
                await event.wait()
            delay = min(delay * 2, opts.idle_max) if cs.cancelled_caught else opts.idle_min

    def _promote(self, worker: Worker) -> int:
        moved = self.deferred.promote_due(worker, worker.my_shards("out"))
        if moved:
            log.info("%d deferred entries are due again", moved)
        return moved

    # -- one entry -------------------------------------------------------------------

    async def _handle(self, worker: Worker, claim: Claim, slots: trio.Semaphore) -> None:
        try:
            entry = await trio.to_thread.run_sync(worker.read, claim)
            state = OutboundState.of(entry.envelope)
            outcomes = await self.attempt(entry, state.pending(entry.envelope))
            await trio.to_thread.run_sync(self._settle, worker, claim, entry, state, outcomes)
        except ClaimLost:
            log.warning("claim on %s was reclaimed before it was settled", claim.entry_id)
        except LockLost:
            raise  # our lease is gone: the supervisor stops this gateway [S5]
        except (CorruptionError, FormatVersionError) as e:
            log.error("outgoing entry %s cannot be read, moving it to failed: %s",
                      claim.entry_id, e)
            await self._settle_quietly(worker.fail, claim, f"damaged entry: {e}")
        except TEMPORARY_ERRORS as e:
            await self._release_later(worker, claim, str(e))
        except Exception as e:  # a bug: keep the gateway alive, retry (counted) later
            log.exception("internal error handling %s", claim.entry_id)
            await self._release_later(worker, claim, f"internal error: {type(e).__name__}")
        finally:
            slots.release()

    async def _settle_quietly(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            await trio.to_thread.run_sync(fn, *args)
        except ClaimLost:
            pass
        except TEMPORARY_ERRORS as e:
            log.warning("could not settle %s: %s", args[0], e)

    async def _release_later(self, worker: Worker, claim: Claim, reason: str) -> None:
        log.warning("local error on %s, retry in %.0f s: %s", claim.entry_id,
                    self.options.retry_local, reason)
        await trio.sleep(self.options.retry_local)
        await self._settle_quietly(worker.release, claim, reason)

    async def attempt(self, entry: Entry, pending: Sequence[str]) -> dict[str, Result]:
        """Try every pending recipient once; a result for each."""
        outcomes: dict[str, Result] = {}
        local = [r for r in pending if self.resolver.is_local(r)]
        by_domain: dict[str, list[str]] = {}
        for r in pending:
            if r in local:
                continue
            domain = r.rpartition("@")[2]
            if "@" not in r or not domain:
                outcomes[r] = Result("failed", "5.1.3", f"bad recipient address <{r}>", "",
                                     _now_us())
                continue
            by_domain.setdefault(normal_domain(domain), []).append(r)
        if local:
            outcomes.update(await self._to_local(entry, local))
        async with trio.open_nursery() as nursery:
            for domain, rcpts in by_domain.items():
                nursery.start_soon(self._deliver_domain, domain, rcpts, entry, outcomes)
        return outcomes

    async def _to_local(self, entry: Entry, rcpts: list[str]) -> dict[str, Result]:
        env = entry.envelope
        try:
            queued = await trio.to_thread.run_sync(functools.partial(
                self.spool.enqueue, "in", mail_from=env.mail_from, rcpt_to=rcpts,
                message=entry.message, extra={"origin": env.id}))
        except TEMPORARY_ERRORS as e:
            res = Result("deferred", "4.3.0", f"local spool: {e}", "", _now_us())
        else:
            res = Result("sent", "2.0.0", f"queued for local delivery as {queued.id}", "",
                         _now_us())
        return dict.fromkeys(rcpts, res)

    async def _deliver_domain(self, domain: str, rcpts: list[str], entry: Entry,
                              outcomes: dict[str, Result]) -> None:
        env = entry.envelope
        route = await self.router.route(domain)
        if route.failure is not None:
            outcomes.update(dict.fromkeys(rcpts, route.failure))
            return
        last: HostFailure | None = None
        for hop in route.hops:
            try:
                got = await send_to_host(hop.host, hop.port, mail_from=env.mail_from,
                                         recipients=rcpts, message=entry.message,
                                         options=self.client_options, cache=self.cache)
            except HostFailure as e:
                log.info("%s: %s: %s", env.id, hop, e.why + (f" ({e.response})"
                                                              if e.response else ""))
                last = e
                continue
            outcomes.update({r: _with_remote(res, hop) for r, res in got.items()})
            return
        assert last is not None
        code = last.code if last.code.startswith("4") else "4.4.1"
        res = Result("deferred", code, f"{last.host}: {last.reply}", last.host, _now_us())
        outcomes.update(dict.fromkeys(rcpts, res))

    # -- settling (one thread call) ----------------------------------------------------

    def _settle(self, worker: Worker, claim: Claim, entry: Entry, state: OutboundState,
                outcomes: Mapping[str, Result]) -> str:
        """Bounce what failed, then complete or defer the entry [D1, D2, D4]."""
        env = entry.envelope
        now = time.time()
        worker.check()  # [S5]: settle only while the lease holds
        new = state.updated(outcomes)
        pending = new.pending(env)
        expired: dict[str, Result] = {}
        if pending and now - env.received_us / 1e6 >= self.out.max_age:
            for r in pending:
                last = new.last.get(r)
                why = last.reply if last else "no attempt was made"
                expired[r] = Result("failed", "4.4.7", f"gave up after "
                                    f"{_duration(self.out.max_age)}: {why}",
                                    last.remote if last else "", _now_us())
            new = new.updated(expired)
            pending = []
        failed = [(r, res) for r, res in {**outcomes, **expired}.items()
                  if res.status == "failed"]
        if failed:
            self._bounce(worker, entry, failed)
        self._log(env.id, env.mail_from, {**outcomes, **expired})
        if not pending:
            worker.check()
            worker.complete(claim)
            return "completed"
        schedule = self.out.retry_schedule
        due = now + schedule[min(state.tries, len(schedule) - 1)]
        due = min(due, env.received_us / 1e6 + self.out.max_age)
        self.deferred.defer(worker, claim, entry, due, envelope=new.deferred().envelope(env))
        log.info("%s: deferred, %d recipients pending, next attempt %s", env.id,
                 len(pending), time.strftime("%H:%M:%S", time.localtime(due)))
        return "deferred"

    def _bounce(self, worker: Worker, entry: Entry, failed: list[tuple[str, Result]]) -> None:
        env = entry.envelope
        if not env.mail_from:
            log.info("%s: no DSN for %d failed recipients: the sender is null", env.id,
                     len(failed))
            return
        dsn = build_dsn(envelope=env, failures=failed, original=entry.message,
                        reporting_mta=self.hostname, domain=self.dsn_domain, now_us=_now_us())
        queue = "in" if self.resolver.is_local(env.mail_from) else "out"
        worker.check()
        queued = self.spool.enqueue(queue, mail_from="", rcpt_to=[env.mail_from], message=dsn,
                                    extra={"dsn_for": env.id})
        log.info("%s: DSN %s to <%s> for %d recipients", env.id, queued.id, env.mail_from,
                 len(failed))

    def _log(self, entry_id: str, sender: str, outcomes: Mapping[str, Result]) -> None:
        for rcpt, res in outcomes.items():
            log.info("%s: from=<%s> to=<%s> relay=%s status=%s (%s)", entry_id, sender, rcpt,
                     res.remote or "local", res.status, _fmt(res))


def _with_remote(res: Result, hop: object) -> Result:
    return res if res.remote else Result(res.status, res.code, res.reply, str(hop), res.at_us)


async def serve_gateways(config: Config, *, count: int = 1, options: GatewayOptions | None = None,
                         task_status: trio.TaskStatus[GatewayPool] = trio.TASK_STATUS_IGNORED,
                         ) -> None:
    """Run ``count`` outbound gateways until cancelled; reports the pool (``wake()``)."""
    pool = await trio.to_thread.run_sync(GatewayPool, config, count, options)
    await pool.run(task_status=task_status)


def gateway_main(config: Config, count: int) -> int:
    """``ams gateway``: run ``count`` gateways until SIGTERM or SIGINT; exit 0."""
    default_logging()
    logging.getLogger("gateways").setLevel(logging.getLogger("delivery").level)
    return pool_main("gateway", serve_gateways, config, count,
                     leaving="returning the messages in hand")


__all__ = ["GatewayOptions", "GatewayPool", "gateway_main", "serve_gateways"]
