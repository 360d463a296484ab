"""What every pool of spool workers shares: delivery workers (``in``) and
outbound gateways (``out``).

A :class:`SpoolPool` registers ``count`` workers for its queue and runs,
for each, a supervisor: a heartbeat task renewing the lease every
``lease/3``, and the subclass's work loop (:meth:`SpoolPool._work`).  If a
worker loses its lease (LockLost), the supervisor closes it and registers a
new one.  On cancellation each worker is closed, which returns what it still
holds, uncounted.  :func:`pool_main` is the command around it: run until
SIGTERM or SIGINT, exit 0; one line and exit 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, Protocol, TypeVar

import trio

from ams.config import Config
from ams.errors import AMSError, LockLost, StoreError, UsageError
from ams.store import Spool, Worker

log = logging.getLogger("delivery.pool")

T = TypeVar("T")
P = TypeVar("P", bound="SpoolPool")


class _Options(Protocol):
    @property
    def idle_max(self) -> float: ...


class SpoolPool:
    """``count`` workers of one queue in one process (subclass: ``_work``)."""

    #: The spool queue the workers serve, and what the log calls one.
    queue: ClassVar[str]
    role: ClassVar[str]
    options: _Options

    def __init__(self, spool: Spool, count: int) -> None:
        if count < 1:
            raise UsageError(f"a pool needs at least one {self.role}")
        self.spool = spool
        self.count = count
        self._workers: list[Worker | None] = [None] * count
        self._wake = trio.Event()

    @property
    def worker_ids(self) -> list[str]:
        """The ids the workers are registered under now."""
        return [w.id for w in self._workers if w is not None]

    def wake(self) -> None:
        """New mail is in the queue: stop idling now (call from the trio thread)."""
        self._wake.set()
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        workers: list[Worker] = []
        try:
            for _ in range(self.count):
                workers.append(await trio.to_thread.run_sync(self.spool.register_worker,
                                                             (self.queue,)))
        except BaseException:
            with trio.CancelScope(shield=True):
                for w in workers:
                    await trio.to_thread.run_sync(self._close, w)
            raise
        await self._started(workers)
        log.info("%d %ss up: %s", len(workers), self.role, " ".join(w.id for w in workers))
        try:
            async with trio.open_nursery() as nursery:
                for slot, w in enumerate(workers):
                    self._workers[slot] = w
                    nursery.start_soon(self._supervise, slot, w)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self._stopped()

    async def _started(self, workers: list[Worker]) -> None:
        """Hook: every worker is registered, none is working yet."""

    async def _stopped(self) -> None:
        """Hook: every worker has stopped (runs shielded)."""

    async def _work(self, worker: Worker, nursery: trio.Nursery) -> None:
        raise NotImplementedError

    async def _supervise(self, slot: int, worker: Worker) -> None:
        while True:
            self._workers[slot] = worker
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, worker)
                    await self._work(worker, nursery)
            except* LockLost as eg:
                log.warning("%s %s lost its lease (%s); registering again", self.role,
                            worker.id, eg.exceptions[0])
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._close, worker)
                self._workers[slot] = None
            worker = await self._register()

    async def _register(self) -> Worker:
        delay = 1.0
        while True:
            try:
                return await trio.to_thread.run_sync(self.spool.register_worker, (self.queue,))
            except (OSError, StoreError) as e:
                log.warning("could not register a %s (%s); retrying in %.0f s", self.role, e,
                            delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _heartbeat(self, worker: Worker) -> None:
        interval = max(self.spool.lease / 3, 0.01)
        while True:
            await trio.sleep(interval)
            try:
                await trio.to_thread.run_sync(partial(worker.heartbeat, force=True))
            except OSError as e:  # LockLost propagates: the lease is gone
                log.warning("could not renew the heartbeat of %s: %s", worker.id, e)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """A spool call whose failure is logged and retried by the loop."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except (OSError, StoreError) as e:
            log.warning("%s failed: %s", getattr(fn, "__name__", fn), e)
            await trio.sleep(self.options.idle_max)
            return None

    def _close(self, worker: Worker) -> None:
        try:
            worker.close()
        except OSError as e:
            log.warning("could not close %s %s cleanly: %s", self.role, worker.id, e)


async def _run_until_signalled(serve: Callable[..., Awaitable[None]], config: Config,
                               count: int, leaving: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, config, count=count))
            async for signum in signals:
                log.info("%s: %s, then exiting", signal.Signals(signum).name, leaving)
                nursery.cancel_scope.cancel()
                break


def pool_main(command: str, serve: Callable[..., Awaitable[None]], config: Config,
              count: int, *, leaving: str) -> int:
    """``ams <command>``: run ``serve`` with ``count`` workers until SIGTERM or
    SIGINT; exit 0."""
    try:
        if count < 1:
            raise UsageError("--count must be at least 1")
        try:
            trio.run(_run_until_signalled, serve, config, count, leaving)
        except BaseExceptionGroup as eg:
            raise _sole(eg) from None
    except UsageError as e:
        print(f"ams {command}: {e}", file=sys.stderr)
        return 2
    except (AMSError, OSError) as e:
        print(f"ams {command}: {e}", file=sys.stderr)
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


__all__ = ["SpoolPool", "pool_main"]
