"""Periodic expiry under ``ams serve``: :func:`serve_expiry`.

Every ``bboard.expire_interval`` seconds it runs :meth:`Bboards.expire_all`
in a worker thread (the store API is synchronous).  Several hosts may run it
at once: each board's expunge and compaction happen under the board's log
lock, and a run that comes second finds nothing left to expire (the scan
stops at the first post that is not expired), so the work is not repeated.
A failure is logged and the next run tries again; it never stops the other
roles.
"""

from __future__ import annotations

import logging

import trio

from ams.config import Config
from ams.store import Store
from bboard._boards import Bboards

log = logging.getLogger("bboard.expiry")


async def serve_expiry(config: Config, *, interval: float | None = None,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Expire every board now and then every ``interval`` seconds, until cancelled.

    ``interval`` defaults to ``bboard.expire_interval``; 0 disables expiry
    (the task then just waits to be cancelled).
    """
    every = config.bboard.expire_interval if interval is None else interval
    store = Store(config)
    store.check()
    boards = Bboards(store)
    task_status.started()
    if every <= 0:
        await trio.sleep_forever()
    while True:
        try:
            results = await trio.to_thread.run_sync(boards.expire_all)
            n = sum(r.expired + r.pending_expired for r in results)
            if n:
                log.info("expired %d posts on %d boards", n,
                         sum(1 for r in results if r.expired + r.pending_expired))
        except Exception:  # a bug or a damaged board: say so, try again next time
            log.exception("bboard expiry run failed")
        await trio.sleep(every)


__all__ = ["serve_expiry"]
