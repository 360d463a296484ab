"""One poller per watched mailbox, shared by every IDLE session of a bridge.

Theory of operation
-------------------
A session in IDLE needs to learn, within a fraction of a second, that its
mailbox's log grew (a delivery, another client's flag change, an expunge,
from any host).  Polling per session would cost one worker-thread hop per
session per interval: a thousand idle clients, five thousand hops a second.
Instead the bridge runs one :class:`Watcher` task; sessions register the log
they idle on, and every ``interval`` the watcher probes each registered log
once, in a single thread hop for all of them, however many sessions share
it.  A session on a bboard also registers the user's flags file for that
board (bboard._state), probed the same way, so that a flag change by the
same user from another session or host wakes it too.

The probe is the log's *signature*: identity and size of the ``head`` file
and the size of the segment the local index has read up to, each taken by
``open`` + ``fstat`` (on NFS, opening revalidates cached attributes: close-
to-open consistency).  Appends grow the segment; a rollover writes a NEXT
record into it; compaction replaces ``head``.  Nothing lists a directory and
nothing reads log bytes until the signature changes.  Then the watcher
brings the index up to date from the log tail (so the segment to watch next
is known) and wakes the sessions of that log, which each run their own
refresh (``Selected.refresh``) and report what they find.

:meth:`Watcher.poke` wakes a log's sessions at once: a session of this
bridge that wrote to a log calls it, so other local sessions hear of the
change without waiting for the next probe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from ams.errors import AMSError
from ams.index import Index
from ams.store.log import MailboxLog

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]


class Watched:
    """One log under watch; sessions wait on :meth:`changed`."""

    def __init__(self, log_id: str, mailbox_log: MailboxLog | None,
                 path: Path | None = None) -> None:
        self.log_id = log_id
        self.log = mailbox_log
        #: A plain file watched by identity and size (no log): a user's
        #: bboard flags.
        self.path = path
        self.sessions = 0
        self.version = 0
        self.signature: Signature | None = None
        self.segment: Path | None = None
        self._event = trio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def changed(self, since: int) -> None:
        """Return once :attr:`version` differs from ``since``."""
        while self.version == since:
            await self._event.wait()


class Watcher:
    """The bridge's poller; run :meth:`run` in the bridge's nursery."""

    def __init__(self, index: Index, interval: float) -> None:
        self.index = index
        self.interval = interval
        self._watched: dict[str, Watched] = {}

    @contextmanager
    def watch(self, log_id: str, mailbox_log: MailboxLog | None,
              path: Path | None = None) -> Iterator[Watched]:
        """Register interest in a log (or, with ``path`` and no log, in a
        plain file, under the key ``log_id``) for the duration of the block."""
        w = self._watched.get(log_id)
        if w is None:
            w = self._watched[log_id] = Watched(log_id, mailbox_log, path)
        w.sessions += 1
        try:
            yield w
        finally:
            w.sessions -= 1
            if w.sessions == 0 and self._watched.get(log_id) is w:
                del self._watched[log_id]

    def poke(self, log_id: str) -> None:
        w = self._watched.get(log_id)
        if w is not None:
            w.bump()

    @property
    def watched(self) -> int:
        return len(self._watched)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            if not self._watched:
                continue
            items = list(self._watched.values())
            changed = await trio.to_thread.run_sync(self._probe_all, items)
            for w in changed:
                w.bump()

    def _probe_all(self, items: list[Watched]) -> list[Watched]:
        changed = []
        for w in items:
            try:
                if self._probe(w):
                    changed.append(w)
            except (AMSError, OSError) as e:
                # The session's own refresh will meet (and report) the problem.
                log.warning("watching %s: %s", w.log.path if w.log else w.path, e)
                changed.append(w)
        return changed

    def _probe(self, w: Watched) -> bool:
        """Did the log change since the last probe?  The first probe of a new
        watch says yes: a session refreshes after registering, and a change
        between that refresh and this probe must not go unnoticed."""
        if w.log is None:
            assert w.path is not None
            sig = (*_stat(w.path), 0, 0)
            changed, w.signature = sig != w.signature, sig
            return changed
        sig = _signature(w.log.path / "head", w.segment)
        if sig == w.signature:
            return False
        self.index.update(w.log)
        st = self.index.status(w.log_id)
        if st is not None:
            w.segment = w.log.segment_path(st.position.generation, st.position.seq)
        w.signature = _signature(w.log.path / "head", w.segment)
        return True


def _signature(head: Path, segment: Path | None) -> Signature:
    a = _stat(head)
    b = _stat(segment) if segment is not None else (0, 0)
    return (*a, *b)


def _stat(path: Path) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return (0, -1)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_ino, st.st_size)


__all__ = ["Watched", "Watcher"]
