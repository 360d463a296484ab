"""The delivery worker pool: ``ams worker``.

Theory of operation
-------------------
One process runs ``count`` workers under trio.  Each registers with the
spool (its own heartbeat and claims dir, queue ``in``) and runs three kinds
of task:

- the **work loop**: every ``lease/2`` (at most 10 s) it returns dead
  workers' claims (:meth:`Worker.reclaim_dead`); then it claims a batch from
  its own shards (rendezvous over the live workers) and hands it to
  :meth:`Deliverer.deliver` in one thread call.  When nothing is claimable
  it sleeps 50 ms, doubling to 1 s, or until :meth:`WorkerPool.wake`;
  so new mail is picked up within about a second with no help, and at once
  when an MX in the same process calls ``wake()``.
- the **heartbeat**: renews the lease every ``lease/3``.
- a **delayed release** per entry that failed temporarily: the claim is kept
  (the heartbeat keeps it ours) for ``retry_min * 2**attempts`` seconds, at
  most ``retry_max``, then released, which counts an attempt; so an outage
  of a few minutes does not burn ``limits.delivery_attempts`` in a second.
  An entry held up only by mailbox locks held elsewhere (a set-aside
  mailbox, see delivery._batch) waits ``retry_max`` and counts nothing.
  (The spool has no deferred queue yet; this is the stand-in.)

Every blocking store call runs in a thread, one logical operation per call
(claim a batch, deliver a batch, release one entry).  A thread call is never
abandoned: on SIGTERM or SIGINT the batch in hand is finished and settled,
then each worker's :meth:`Worker.close` returns what it still holds
(uncounted) and removes its claims dir and heartbeat, and the process exits
0.  On SIGKILL nothing runs; peers reclaim the claims once the lease expires.

If a worker loses its lease (the process stalled past it and a peer
reclaimed it), LockLost stops that worker's tasks; the delivery in hand
checks the lease before each append and stops too.  The worker closes and
registers again under a new id.  Anything it had filed is found by delivery
id when the entry is retried.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass
from typing import TypeVar

import trio

from ams.config import Config
from ams.errors import StoreError
from ams.store import ClaimLost, Disposition, Spool, Store, Worker
from delivery._batch import Deliverer, Job
from delivery._pool import SpoolPool, pool_main

log = logging.getLogger("delivery.worker")

T = TypeVar("T")


@dataclass(frozen=True)
class PoolOptions:
    #: Entries claimed (and delivered together) per batch.
    batch: int = 32
    #: Idle polling: the first sleep, doubled up to the last.
    idle_min: float = 0.05
    idle_max: float = 1.0
    #: Backoff before a temporarily failed entry is released.
    retry_min: float = 1.0
    retry_max: float = 60.0


class WorkerPool(SpoolPool):
    """Workers of one process; what :func:`serve_workers` reports when started."""

    queue = "in"
    role = "delivery worker"

    def __init__(self, config: Config, count: int, options: PoolOptions | None = None) -> None:
        self.config = config
        self.options = options or PoolOptions()
        self.store = Store(config)
        self.store.check()
        super().__init__(Spool(self.store), count)
        self.deliverer = Deliverer(self.store, self.spool)

    async def _work(self, worker: Worker, nursery: trio.Nursery) -> None:
        opts = self.options
        delay = opts.idle_min
        reclaim_every = max(min(self.spool.lease / 2, 10.0), 0.05)
        next_reclaim = trio.current_time() + random.uniform(0, reclaim_every)
        while True:
            if trio.current_time() >= next_reclaim:
                next_reclaim = trio.current_time() + reclaim_every
                await self._call(worker.reclaim_dead)
            claims = await self._call(worker.claim_batch, "in", opts.batch)
            if claims:
                delay = opts.idle_min
                jobs = await trio.to_thread.run_sync(self.deliverer.deliver, worker, claims)
                for job in jobs:
                    if not job.state:
                        nursery.start_soon(self._release_later, worker, job)
                continue
            event = self._wake
            with trio.move_on_after(delay) as cs:
                await event.wait()
            delay = min(delay * 2, opts.idle_max) if cs.cancelled_caught else opts.idle_min

    async def _release_later(self, worker: Worker, job: Job) -> None:
        """Back off, then release a temporarily failed entry, counted [S4];
        one that only waits for mailbox locks held elsewhere is released
        after ``retry_max``, uncounted (see delivery._batch)."""
        claim = job.claim
        opts = self.options
        reason = "; ".join(job.temporary) or "temporary failure"
        held = 0 < job.locked == len(job.temporary)
        if held:
            wait = opts.retry_max
            log.warning("%s waits for a mailbox lock held elsewhere, retry in %.1f s "
                        "(no attempt counted): %s", claim.entry_id, wait, reason)
        else:
            wait = min(opts.retry_min * 2 ** min(claim.attempts, 30), opts.retry_max)
            log.warning("temporary failure delivering %s (attempt %d of %d), retry in %.1f s: "
                        "%s", claim.entry_id, claim.attempts + 1, self.spool.max_attempts,
                        wait, reason)
        await trio.sleep(wait)
        while True:
            try:
                disp = await trio.to_thread.run_sync(
                    functools.partial(worker.release, claim, reason, count=not held))
            except ClaimLost:
                return
            except (OSError, StoreError) as e:
                log.warning("could not release %s: %s", claim.entry_id, e)
                await trio.sleep(opts.retry_max)
                continue
            if disp is Disposition.FAILED:
                log.error("gave up on %s after %d attempts: %s", claim.entry_id,
                          claim.attempts + 1, reason)
            return


async def serve_workers(config: Config, *, count: int = 1, options: PoolOptions | None = None,
                        task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Run ``count`` delivery workers until cancelled.

    Reports the :class:`WorkerPool` (its ``wake()`` hook) through
    ``task_status`` once every worker is registered.
    """
    pool = await trio.to_thread.run_sync(WorkerPool, config, count, options)
    await pool.run(task_status=task_status)


# -- the command -----------------------------------------------------------------------


def worker_main(config: Config, count: int) -> int:
    """``ams worker``: run ``count`` workers until SIGTERM or SIGINT; exit 0."""
    default_logging()
    return pool_main("worker", serve_workers, config, count,
                     leaving="finishing the messages in hand")


def default_logging() -> None:
    """The delivery log lines are the mail log: INFO unless AMS_LOG_LEVEL says."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("AMS_LOG_LEVEL", "WARNING").upper(),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if "AMS_LOG_LEVEL" not in os.environ:
        logging.getLogger("delivery").setLevel(logging.INFO)


__all__ = ["PoolOptions", "WorkerPool", "default_logging", "serve_workers", "worker_main"]
