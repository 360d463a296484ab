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
   forwarding loop) are logged; if the envelope sender is not null and is
   a local user, a plain-text notice listing them is filed into that user's
   mailbox, exactly once (delivery id ``SPOOLID/notice``).  A remote sender
   gets nothing yet: bounces through the outbound gateway are a later issue.
4. the claim is completed, and one log line says what happened.

A mailbox whose lock another writer holds past ``store.lock_timeout`` (a
host cut off from the filesystem with the lock in hand, a stuck process) is
**set aside**: later batches wait only ``ASIDE_WAIT`` for its lock, so one
stuck mailbox costs one full timeout per worker process, not one per batch,
and the rest of the mail keeps flowing.  Its entries are released after the
usual backoff *without* counting an attempt: a held lock delays mail, it
never makes it fail.  The first append that gets the lock again puts the
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

from ams.errors import CorruptionError, LockLost, LockTimeout
from ams.store import Appended, Claim, ClaimLost, Entry, Spool, Store, Worker
from delivery._filing import (
    Filer,
    Filing,
    Plan,
    delivery_prefix,
    failure_notice,
    group_by_mailbox,
    local_offset_minutes,
    plan_message,
)
from delivery._resolve import TEMPORARY_ERRORS, Mailbox, Refusal, Resolution, Resolver
from delivery._resolve import _describe as describe

log = logging.getLogger("delivery.worker")

BATCH_BYTES = 32 * 1024 * 1024
#: How long a batch waits for the lock of a mailbox that is set aside.
ASIDE_WAIT = 0.5


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
        #: Mailboxes set aside (log dir → since when, monotonic); shared by
        #: this process's workers (single dict operations only).
        self.aside: dict[Path, float] = {}

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
            except LockTimeout as e:
                for f in group:
                    job = owner[id(f)]
                    job.temporary.append(f"{f.recipient} -> {target}: {describe(e)}")
                    job.locked += 1
                continue
            except TEMPORARY_ERRORS as e:
                for f in group:
                    owner[id(f)].temporary.append(f"{f.recipient} -> {target}: {describe(e)}")
                continue
            for f, a in zip(group, results, strict=True):
                job = owner[id(f)]
                job.filed += 1
                job.duplicates += a.duplicate

    def _append(self, target: Mailbox, group: list[Filing], since: int) -> list[Appended]:
        """One group commit; a lock held past the timeout sets ``target``
        aside, and a set-aside mailbox is waited for only ``ASIDE_WAIT``."""
        key = target.path
        aside = key in self.aside
        try:
            results = self.filer.append(target, group, dedupe_since_us=since,
                                        lock_timeout=ASIDE_WAIT if aside else None)
        except LockTimeout:
            if not aside:
                self.aside[key] = time.monotonic()
                log.warning("mailbox %s set aside: its lock is held elsewhere; its mail "
                            "waits, the rest goes on", target)
            raise
        if aside:
            began = self.aside.pop(key, None)
            if began is not None:
                log.info("mailbox %s is back after %.0f s set aside", target,
                         time.monotonic() - began)
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
        """Log permanent failures; tell a local sender in a notice, once."""
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
                job.temporary.append(f"notice to {env.mail_from}: {sender}")
            else:
                log.info("no notice for %s: sender <%s> is not local (bounces come later)",
                         env.id, env.mail_from)
            return
        domain = env.mail_from.rpartition("@")[2] or self.notice_domain
        notice = failure_notice(entry_id=env.id, sender=env.mail_from,
                                failures=job.plan.permanent, original=job.entry.message,
                                domain=domain)
        now = time.time()
        for t in sender.targets:
            if not isinstance(t, Mailbox):
                log.info("no notice for %s: sender <%s> forwards elsewhere", env.id,
                         env.mail_from)
                continue
            f = Filing(env.mail_from, t, delivery_prefix("", env.mail_from, notice), notice,
                       f"{env.id}/notice", int(now), local_offset_minutes(now))
            worker.check()
            try:
                self._append(t, [f], env.received_us)
            except TEMPORARY_ERRORS as e:
                job.temporary.append(f"notice to {env.mail_from}: {describe(e)}")
                job.locked += isinstance(e, LockTimeout)

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
