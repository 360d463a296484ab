"""Delivering a batch of claimed spool entries: the worker's synchronous core.

Theory of operation
-------------------
:meth:`Deliverer.deliver` is one thread call from the trio pool: read the
claimed entries, plan each (:func:`~delivery._filing.plan_message`), then
append to every mailbox once for the whole batch (group commit: several
messages, or several recipients of one message, for one mailbox share one
lock and one fsync), then settle each entry.  Entries are taken in chunks of
about ``batch_bytes`` of message so a batch of big messages never sits in
memory at once.

Settling an entry, in this order:

1. any recipient failed *temporarily* (I/O, lock timeout, store damage,
   including a user record whose mail dir is missing): the entry is left
   claimed and returned in the result; the pool releases it after a backoff,
   which counts an attempt (after ``limits.delivery_attempts`` the spool
   moves it to failed).  What was filed stays filed: the retry finds it by
   delivery id and files only the rest.
2. forwards are enqueued to ``out``, only now that every filing succeeded
   (see the at-least-once note in :mod:`delivery._filing`).
3. recipients refused *permanently* (unknown or disabled user, bboard,
   forwarding loop) are logged, and unless the envelope sender is null it
   gets a DSN (RFC 3464, :mod:`ams.dsn`) listing them: filed into a local
   sender's mailbox exactly once (delivery id ``SPOOLID/notice``), or
   queued to ``out`` from the null sender for a remote one, at least once
   (a crash before step 4 queues it again on the retry).
4. the claim is completed, and one log line says what happened.

A mailbox whose lock another writer holds past ``store.lock_timeout`` (a
host cut off from the filesystem with the lock in hand, a stuck process) is
**set aside**: its lock is tried again at most every ``ASIDE_PROBE``
seconds, for at most ``ASIDE_WAIT``, and other batches pass it over at once.
So one stuck mailbox costs one full timeout per worker process, not one per
batch, and the rest of the mail keeps flowing.  Its entries are released
after ``retry_max`` *without* counting an attempt: a held lock delays mail,
it never makes it fail.  The first append that gets the lock again puts the
mailbox back.  Set-aside marks are per process, in memory.

An entry that cannot be read (CorruptionError) goes to failed at once:
retrying cannot fix its bytes.  Before every append and every enqueue the
worker's lease is checked [S5]; LockLost propagates, and the pool stops
this worker: its claims are no longer its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ams.dsn import build_dsn
from ams.errors import CorruptionError, LockLost, LockTimeout
from ams.store import Appended, Claim, ClaimLost, Entry, Spool, Store, Worker
from ams.store.outqueue import Result
from delivery._filing import (
    Filer,
    Filing,
    Plan,
    delivery_prefix,
    group_by_mailbox,
    local_offset_minutes,
    plan_message,
)
from delivery._resolve import (
    TEMPORARY_ERRORS,
    Mailbox,
    Reason,
    Refusal,
    Resolution,
    Resolver,
)
from delivery._resolve import _describe as describe

log = logging.getLogger("delivery.worker")

BATCH_BYTES = 32 * 1024 * 1024
#: How long a batch waits for the lock of a mailbox that is set aside...
ASIDE_WAIT = 0.5
#: ...and how often one tries (meanwhile it is passed over without a try).
ASIDE_PROBE = 5.0


@dataclass
class Job:
    """One claimed entry on its way through a batch."""

    claim: Claim
    started: float = field(default_factory=time.monotonic)
    entry: Entry | None = None
    plan: Plan | None = None
    filed: int = 0
    duplicates: int = 0
    #: Why the entry must be retried (empty: it was settled, see ``state``).
    temporary: list[str] = field(default_factory=list)
    #: How many of those reasons are a mailbox lock held elsewhere: when
    #: all are, the retry counts no attempt.
    locked: int = 0
    #: "completed", "failed" (moved to failed), "lost" (reclaimed) or ""
    #: (still claimed: release it, counting an attempt, after a backoff).
    state: str = ""


def _delivery_id(entry_id: str, recipient: str) -> str:
    """Spool id + recipient as addressed: exactly once per recipient [W7]."""
    return f"{entry_id}/{recipient}"


class Deliverer:
    """Delivers claimed entries; shared by the workers of one process."""

    def __init__(self, store: Store, spool: Spool, *, resolver: Resolver | None = None,
                 filer: Filer | None = None, batch_bytes: int = BATCH_BYTES) -> None:
        self.store = store
        self.spool = spool
        self.resolver = resolver or Resolver(store)
        self.filer = filer or Filer(store)
        self.batch_bytes = batch_bytes
        domains = store.config.mail.domains
        self.notice_domain = domains[0] if domains else store.host
        #: Mailboxes set aside: log dir → (since when, next try), monotonic;
        #: shared by this process's workers (single dict operations only).
        self.aside: dict[Path, tuple[float, float]] = {}

    def deliver(self, worker: Worker, claims: Sequence[Claim]) -> list[Job]:
        """Deliver ``claims``; return every job, settled or to be released."""
        jobs: list[Job] = []
        chunk: list[Job] = []
        size = 0
        for claim in claims:
            job = self._open(worker, claim)
            jobs.append(job)
            if job.entry is None:
                continue
            chunk.append(job)
            size += len(job.entry.message)
            if size >= self.batch_bytes:
                self._deliver_chunk(worker, chunk)
                chunk, size = [], 0
        if chunk:
            self._deliver_chunk(worker, chunk)
        return jobs

    # -- steps ---------------------------------------------------------------------------

    def _open(self, worker: Worker, claim: Claim) -> Job:
        job = Job(claim)
        try:
            job.entry = worker.read(claim)
        except ClaimLost:
            job.state = "lost"
        except CorruptionError as e:
            log.error("spool entry %s is damaged, moving it to failed: %s", claim.entry_id, e)
            reason = f"damaged spool entry: {e}"
            self._settle(job, "failed", lambda: worker.fail(claim, reason))
        except TEMPORARY_ERRORS as e:
            job.temporary.append(f"reading the entry: {describe(e)}")
        return job

    def _deliver_chunk(self, worker: Worker, jobs: list[Job]) -> None:
        try:
            self._plan(jobs)
            self._file(worker, jobs)
            for job in jobs:
                if not job.temporary and not job.state:
                    self._finish(worker, job)
        except LockLost:
            raise  # our lease is gone: the pool stops this worker [S5]
        except Exception as e:  # a bug: keep the worker alive, retry (counted) later
            log.exception("internal error delivering a batch")
            for job in jobs:
                if not job.state and not job.temporary:
                    job.temporary.append(f"internal error: {type(e).__name__}: {e}")

    def _plan(self, jobs: list[Job]) -> None:
        memo: dict[tuple[str, str, str | None], Resolution | Refusal] = {}

        def resolve(address: str, sender: str, user: str | None) -> Resolution | Refusal:
            # Keyed by the exact address (+detail is case-sensitive), and for
            # a bboard by who posts: a members-only board admits again here,
            # by the authenticated user or else the envelope sender.
            key = (address, sender, user) if self.resolver.names_bboard(address) else (
                address, "", None)
            if key not in memo:
                memo[key] = self.resolver.resolve(address, sender=sender, user=user)
            return memo[key]

        for job in jobs:
            assert job.entry is not None
            env, message = job.entry.envelope, job.entry.message
            received = env.received_us / 1e6
            job.plan = plan_message(
                env.rcpt_to, partial(resolve, sender=env.mail_from,
                                     user=env.client.get("auth") or None),
                sender=env.mail_from, message=message,
                delivery_id=partial(_delivery_id, env.id),
                internal_date=int(received), tz_minutes=local_offset_minutes(received))
            job.temporary.extend(str(r) for r in job.plan.temporary)

    def _file(self, worker: Worker, jobs: list[Job]) -> None:
        """One append per mailbox for the whole chunk [W1, W7]."""
        owner: dict[int, Job] = {}
        filings: list[Filing] = []
        for job in jobs:
            assert job.plan is not None
            for f in job.plan.filings:
                owner[id(f)] = job
                filings.append(f)
        for group in group_by_mailbox(filings).values():
            target = group[0].target
            since = min(owner[id(f)].entry.envelope.received_us  # type: ignore[union-attr]
                        for f in group)
            worker.check()  # [S5] never file on a lapsed lease
            try:
                results = self._append(target, group, since)
            except TEMPORARY_ERRORS as e:
                for f in group:
                    job = owner[id(f)]
                    job.temporary.append(f"{f.recipient} -> {target}: {describe(e)}")
                    job.locked += isinstance(e, LockTimeout)
                continue
            for f, a in zip(group, results, strict=True):
                job = owner[id(f)]
                job.filed += 1
                job.duplicates += a.duplicate

    def _append(self, target: Mailbox, group: list[Filing], since: int) -> list[Appended]:
        """One group commit; a lock held past the timeout sets ``target``
        aside (see the module docstring)."""
        key = target.path
        aside = self.aside.get(key)
        now = time.monotonic()
        if aside is not None and now < aside[1]:
            raise LockTimeout(f"{target} is set aside: its lock is held elsewhere")
        try:
            results = self.filer.append(target, group, dedupe_since_us=since,
                                        lock_timeout=ASIDE_WAIT if aside else None)
        except LockTimeout:
            if aside is None:
                log.warning("mailbox %s set aside: its lock is held elsewhere; its mail "
                            "waits, the rest goes on", target)
            began = aside[0] if aside else now
            self.aside[key] = (began, time.monotonic() + ASIDE_PROBE)
            raise
        if aside is not None and self.aside.pop(key, None) is not None:
            log.info("mailbox %s is back after %.0f s set aside", target,
                     time.monotonic() - aside[0])
        return results

    def _finish(self, worker: Worker, job: Job) -> None:
        assert job.entry is not None and job.plan is not None
        env = job.entry.envelope
        for rcpt, fwd in job.plan.forwards:
            worker.check()
            try:
                self.spool.enqueue(
                    "out", mail_from=env.mail_from, rcpt_to=[fwd.address],
                    message=delivery_prefix(None, rcpt, job.entry.message) + job.entry.message,
                    extra={"forwarded_for": rcpt, "origin": env.id})
            except TEMPORARY_ERRORS as e:
                job.temporary.append(f"{rcpt} -> forward to {fwd.address}: {describe(e)}")
        if job.temporary:
            return
        if job.plan.permanent:
            self._notify(worker, job)
            if job.temporary:
                return
        if self._settle(job, "completed", lambda: worker.complete(job.claim)):
            self._log_delivered(job)

    def _notify(self, worker: Worker, job: Job) -> None:
        """Log permanent failures and tell the sender in a DSN (RFC 3464):
        filed into a local sender's mailbox exactly once, or queued to
        ``out`` for a remote sender."""
        assert job.entry is not None and job.plan is not None
        env = job.entry.envelope
        for r in job.plan.permanent:
            log.warning("undeliverable %s from=<%s> to=<%s>: %s", env.id, env.mail_from,
                        r.address, r.reason.value + (f" ({r.detail})" if r.detail else ""))
        if not env.mail_from:
            return  # the null sender is never answered
        sender = self.resolver.resolve(env.mail_from)
        if isinstance(sender, Refusal):
            if not sender.permanent:
                job.temporary.append(f"DSN to {env.mail_from}: {sender}")
            elif sender.reason is Reason.NOT_LOCAL:
                self._bounce_out(worker, job)
            else:
                log.info("no DSN for %s: sender <%s>: %s", env.id, env.mail_from, sender)
            return
        dsn = self._dsn(job, env.mail_from.rpartition("@")[2] or self.notice_domain)
        now = time.time()
        for t in sender.targets:
            if not isinstance(t, Mailbox):
                log.info("no DSN for %s: sender <%s> forwards elsewhere", env.id, env.mail_from)
                continue
            f = Filing(env.mail_from, t, delivery_prefix("", env.mail_from, dsn), dsn,
                       f"{env.id}/notice", int(now), local_offset_minutes(now))
            worker.check()
            try:
                self._append(t, [f], env.received_us)
            except TEMPORARY_ERRORS as e:
                job.temporary.append(f"DSN to {env.mail_from}: {describe(e)}")
                job.locked += isinstance(e, LockTimeout)

    def _bounce_out(self, worker: Worker, job: Job) -> None:
        """Queue the DSN for a remote sender to ``out``, from the null sender.
        At least once: a crash between this and completing the entry sends
        it again on the retry (as with forwards)."""
        assert job.entry is not None and job.plan is not None
        env = job.entry.envelope
        dsn = self._dsn(job, self.notice_domain)
        worker.check()
        try:
            queued = self.spool.enqueue("out", mail_from="", rcpt_to=[env.mail_from],
                                        message=dsn, extra={"dsn_for": env.id})
        except TEMPORARY_ERRORS as e:
            job.temporary.append(f"DSN to {env.mail_from}: {describe(e)}")
            return
        log.info("%s: DSN %s to <%s> for %d recipients", env.id, queued.id, env.mail_from,
                 len(job.plan.permanent))

    def _dsn(self, job: Job, domain: str) -> bytes:
        assert job.entry is not None and job.plan is not None
        now_us = int(time.time() * 1_000_000)
        failures = []
        for r in job.plan.permanent:
            spec = r.reply
            reply = f"{spec.code} {spec.enhanced} {spec.text}" + (f" ({r.detail})" if r.detail
                                                                  else "")
            failures.append((r.address, Result("failed", spec.enhanced, reply, "", now_us)))
        return build_dsn(envelope=job.entry.envelope, failures=failures,
                         original=job.entry.message, reporting_mta=self.store.host,
                         domain=domain, now_us=now_us)

    def _settle(self, job: Job, state: str, action: Callable[[], object]) -> bool:
        """Run ``action`` (complete or fail); True if it took effect."""
        try:
            action()
        except ClaimLost:
            log.warning("claim on %s was reclaimed before it was settled; a retry will "
                        "find what was filed", job.claim.entry_id)
            job.state = "lost"
            return False
        except TEMPORARY_ERRORS as e:
            job.temporary.append(f"settling the claim: {describe(e)}")
            return False
        job.state = state
        return True

    def _log_delivered(self, job: Job) -> None:
        assert job.entry is not None and job.plan is not None
        env = job.entry.envelope
        targets = ",".join(f"{r}={'+'.join(t)}" for r, t in job.plan.targets.items())
        refused = ",".join(f"{r.address}={r.reason.name}" for r in job.plan.permanent)
        log.info("delivered %s from=<%s> rcpts=%d filed=%d dup=%d targets=[%s]%s ms=%.1f",
                 env.id, env.mail_from, len(env.rcpt_to), job.filed, job.duplicates,
                 targets, f" refused=[{refused}]" if refused else "",
                 (time.monotonic() - job.started) * 1000)


__all__ = ["BATCH_BYTES", "Deliverer", "Job"]
