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

import logging
import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from ams.config import Config
from ams.errors import AMSError, LockLost, StoreError, UsageError
from ams.store import ClaimLost, Disposition, Spool, Store, Worker
from delivery._batch import Deliverer, Job

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


class WorkerPool:
    """Workers of one process; what :func:`serve_workers` reports when started."""

    def __init__(self, config: Config, count: int, options: PoolOptions | None = None) -> None:
        if count < 1:
            raise UsageError("a worker pool needs at least one worker")
        self.config = config
        self.count = count
        self.options = options or PoolOptions()
        self.store = Store(config)
        self.store.check()
        self.spool = Spool(self.store)
        self.deliverer = Deliverer(self.store, self.spool)
        self._workers: list[Worker | None] = [None] * count
        self._wake = trio.Event()

    @property
    def worker_ids(self) -> list[str]:
        """The ids the workers are registered under now."""
        return [w.id for w in self._workers if w is not None]

    def wake(self) -> None:
        """New mail is in the spool: stop idling now (call from the trio thread)."""
        self._wake.set()
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        workers: list[Worker] = []
        try:
            for _ in range(self.count):
                workers.append(await trio.to_thread.run_sync(self.spool.register_worker, ("in",)))
        except BaseException:
            with trio.CancelScope(shield=True):
                for w in workers:
                    await trio.to_thread.run_sync(_close, w)
            raise
        await trio.to_thread.run_sync(self.spool.clean_staging)
        log.info("%d delivery workers up: %s", len(workers), " ".join(w.id for w in workers))
        async with trio.open_nursery() as nursery:
            for slot, w in enumerate(workers):
                self._workers[slot] = w
                nursery.start_soon(self._supervise, slot, w)
            task_status.started(self)

    # -- one worker ------------------------------------------------------------------

    async def _supervise(self, slot: int, worker: Worker) -> None:
        while True:
            self._workers[slot] = worker
            try:
                await self._serve(worker)
            except* LockLost as eg:
                log.warning("worker %s lost its lease (%s); registering again", worker.id,
                            eg.exceptions[0])
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close, worker)
                self._workers[slot] = None
            worker = await self._register()

    async def _register(self) -> Worker:
        delay = 1.0
        while True:
            try:
                return await trio.to_thread.run_sync(self.spool.register_worker, ("in",))
            except (OSError, StoreError) as e:
                log.warning("could not register a worker (%s); retrying in %.0f s", e, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _serve(self, worker: Worker) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, worker)
            await self._work(worker, nursery)

    async def _heartbeat(self, worker: Worker) -> None:
        interval = max(self.spool.lease / 3, 0.01)
        while True:
            await trio.sleep(interval)
            try:
                await trio.to_thread.run_sync(partial(worker.heartbeat, force=True))
            except OSError as e:  # LockLost propagates: the lease is gone
                log.warning("could not renew the heartbeat of %s: %s", worker.id, e)

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

    async def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """A spool call whose failure is logged and retried by the loop."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except (OSError, StoreError) as e:
            log.warning("%s failed: %s", getattr(fn, "__name__", fn), e)
            await trio.sleep(self.options.idle_max)
            return None

    async def _release_later(self, worker: Worker, job: Job) -> None:
        """Back off, then release a temporarily failed entry (counted) [S4]."""
        claim = job.claim
        opts = self.options
        wait = min(opts.retry_min * 2 ** min(claim.attempts, 30), opts.retry_max)
        reason = "; ".join(job.temporary) or "temporary failure"
        log.warning("temporary failure delivering %s (attempt %d of %d), retry in %.1f s: %s",
                    claim.entry_id, claim.attempts + 1, self.spool.max_attempts, wait, reason)
        await trio.sleep(wait)
        while True:
            try:
                disp = await trio.to_thread.run_sync(worker.release, claim, reason)
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


def _close(worker: Worker) -> None:
    try:
        worker.close()
    except OSError as e:
        log.warning("could not close worker %s cleanly: %s", worker.id, e)


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


async def _run_until_signalled(config: Config, count: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_workers, config, count=count))
            async for signum in signals:
                log.info("%s: finishing the messages in hand, then exiting",
                         signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def worker_main(config: Config, count: int) -> int:
    """``ams worker``: run ``count`` workers until SIGTERM or SIGINT; exit 0."""
    default_logging()
    try:
        if count < 1:
            raise UsageError("--count must be at least 1")
        try:
            trio.run(_run_until_signalled, config, count)
        except BaseExceptionGroup as eg:
            raise _sole(eg) from None
    except UsageError as e:
        print(f"ams worker: {e}", file=sys.stderr)
        return 2
    except (AMSError, OSError) as e:
        print(f"ams worker: {e}", file=sys.stderr)
        return 1
    return 0


def _sole(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested groups, or the group if there are several."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(eg)
    return leaves[0] if len(leaves) == 1 else eg


def default_logging() -> None:
    """The delivery log lines are the mail log: INFO unless AMS_LOG_LEVEL says."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("AMS_LOG_LEVEL", "WARNING").upper(),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if "AMS_LOG_LEVEL" not in os.environ:
        logging.getLogger("delivery").setLevel(logging.INFO)


__all__ = ["PoolOptions", "WorkerPool", "default_logging", "serve_workers", "worker_main"]
