"""The client side of the callback protocol: one host's AFS cache manager.

:class:`CacheManager` keeps, for one meter (one simulated host), the
callbacks it holds (object → data version), the data it has cached (whole
directories, file chunks, each at the version it was fetched at) and the
files it has written since their last store, and talks to the coordinator
through :class:`Remote`: a fetch registers a callback, a change waits until
every other holder's callback is broken.  It knows objects (backing inode
numbers) only; :mod:`benchmarks.churn.meter` maps FUSE requests onto it.
See the meter's docstring for the rules it applies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import trio

from benchmarks.churn.coordinator import lines
from benchmarks.churn.model import CHUNK, chunk_bytes, chunk_span, dir_bytes


class Remote:
    """The meter's end of the coordinator's socket."""

    def __init__(self, stream: trio.SocketStream, on_break: Callable[[int, bool], None]) -> None:
        self.stream = stream
        self.on_break = on_break
        self.rid = 0
        self.waiting: dict[int, tuple[Callable[[Any], None], trio.Event]] = {}
        self._send, self._recv = trio.open_memory_channel[bytes](float("inf"))

    def post(self, msg: Sequence[Any]) -> None:
        self._send.send_nowait(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    async def call(self, msg: list[Any], apply: Callable[[Any], None]) -> None:
        """Send a request; ``apply(answer)`` runs in the reader, in socket order."""
        self.rid += 1
        rid = self.rid
        ev = trio.Event()
        self.waiting[rid] = (apply, ev)
        self.post([msg[0], rid, *msg[1:]])
        await ev.wait()

    async def writer(self) -> None:
        async for data in self._recv:
            await self.stream.send_all(data)

    async def reader(self) -> None:
        async for msg in lines(self.stream):
            if msg[0] == "A":
                apply, ev = self.waiting.pop(msg[1])
                apply(msg[2])
                ev.set()
            elif msg[0] == "B":
                self.on_break(int(msg[2]), bool(msg[3]))
                self.post(["K", msg[1]])
        raise RuntimeError("the coordinator closed the connection")


class FileChunks:
    """The chunks of one file cached at one data version; ``stale`` were cached at
    an older version (re-reading them is a refetch)."""

    __slots__ = ("version", "have", "stale")

    def __init__(self, version: int, have: set[int] | None = None,
                 stale: set[int] | None = None) -> None:
        self.version = version
        self.have = have if have is not None else set()
        self.stale = stale if stale is not None else set()


class CacheManager:
    """One host's callbacks and cached data; see the module docstring.

    ``on_drop(obj)`` is called whenever a callback on ``obj`` is broken, so the
    meter can drop what the kernel cached under it.
    """

    def __init__(self, on_drop: Callable[[int], None] | None = None) -> None:
        self.remote: Remote | None = None
        self.on_drop = on_drop
        self.cb: dict[int, int] = {}
        self.dirdata: dict[int, int] = {}
        self.chunks: dict[int, FileChunks] = {}
        self.dirty: dict[int, int] = {}  # object -> writes since its data was reported
        self.inflight: dict[int, trio.Event] = {}

    def on_break(self, obj: int, counted: bool) -> None:
        self.cb.pop(obj, None)
        if not counted:  # the object is gone
            self.dirdata.pop(obj, None)
            self.chunks.pop(obj, None)
        if self.on_drop is not None:
            self.on_drop(obj)

    async def status(self, obj: int) -> int:
        """The object's data version, under a callback (fetched if not held)."""
        v = self.cb.get(obj)
        if v is not None:
            return v
        while (ev := self.inflight.get(obj)) is not None:
            await ev.wait()
            v = self.cb.get(obj)
            if v is not None:
                return v
        ev = self.inflight[obj] = trio.Event()
        try:
            assert self.remote is not None

            def apply(version: int) -> None:
                self.cb[obj] = version

            await self.remote.call(["F", obj], apply)
        finally:
            del self.inflight[obj]
            ev.set()
        return self.cb.get(obj, -1)

    async def dir_data(self, obj: int, listing: Callable[[], list[str]]) -> None:
        """The directory's data, under a callback; fetched whole (``listing()``
        gives its names, so its size) unless cached at the current version."""
        v = await self.status(obj)
        cached = self.dirdata.get(obj)
        if cached == v:
            return
        names = listing()
        self.dirdata[obj] = v
        assert self.remote is not None
        self.remote.post(["N", dir_bytes(len(os.fsencode(n)) for n in names),
                          cached is not None, 0, 0])

    async def file_data(self, obj: int, off: int, size: int, file_size: int) -> None:
        """The chunks a read of ``size`` bytes at ``off`` covers, under a callback."""
        v = await self.status(obj)
        fc = self.chunks.get(obj)
        if fc is None:
            fc = self.chunks[obj] = FileChunks(v)
        elif fc.version != v:
            fc.stale |= fc.have
            fc.have = set()
            fc.version = v
        fetched = refetched = 0
        for k in chunk_span(off, size, file_size):
            if k in fc.have:
                continue
            n = chunk_bytes(k, file_size)
            fetched += n
            if k in fc.stale:
                refetched += n
                fc.stale.discard(k)
            fc.have.add(k)
        if fetched:
            assert self.remote is not None
            self.remote.post(["N", 0, False, fetched, refetched])

    async def change(self, objects: Sequence[tuple[int, bool, bool]], *,
                     acquire: Sequence[tuple[int, bool]] = (), drop: Sequence[int] = (),
                     created: int = 0, renamed: int = 0, removed: int = 0,
                     mailbox: bool = False) -> None:
        """Report a change and wait until every other holder's callback is broken.

        ``objects`` are (object, is_dir, data changed); ``acquire`` are
        (object, is_dir) of objects this client created.
        """
        assert self.remote is not None
        before = {o: self.cb.get(o) for o, _, _ in objects}
        kinds = {o: d for o, d, _ in objects}

        def apply(versions: dict[str, int]) -> None:
            for key, v in versions.items():
                o = int(key)
                old = before.get(o)
                self.cb[o] = v
                if o in kinds:
                    self._carry(o, kinds[o], old, v)
            for o, is_dir in acquire:
                v = versions.get(str(o), 0)
                self.cb[o] = v
                if is_dir:
                    self.dirdata[o] = v
                else:
                    self.chunks[o] = FileChunks(v)
            for o in drop:
                self.cb.pop(o, None)
                self.dirdata.pop(o, None)
                self.chunks.pop(o, None)

        await self.remote.call(["C", [[o, d, x] for o, d, x in objects],
                                [o for o, _ in acquire], list(drop), created, renamed,
                                removed, mailbox], apply)

    def _carry(self, obj: int, is_dir: bool, old: int | None, new: int) -> None:
        """Our own change: data cached at the version just before it stays good (an
        AFS client applies its own change to its cached copy); anything older is
        stale."""
        current = old is not None and new in (old, old + 1)
        if is_dir:
            cached = self.dirdata.get(obj)
            if cached is None or cached == new:
                return
            if current and cached == old:
                self.dirdata[obj] = new
            else:
                del self.dirdata[obj]
        else:
            fc = self.chunks.get(obj)
            if fc is None or fc.version == new:
                return
            if current and fc.version == old:
                fc.version = new
            else:
                fc.stale |= fc.have
                fc.have = set()
                fc.version = new

    async def wrote(self, obj: int, off: int, n: int) -> None:
        """``n`` bytes were written at ``off``: report the first write since the last
        store (and keep the written chunks cached)."""
        count = self.dirty.get(obj)
        if count is None:
            self.dirty[obj] = 0
            await self.change([(obj, False, True)])
        else:
            self.dirty[obj] = count + 1
        fc = self.chunks.get(obj)
        if fc is not None and fc.version == self.cb.get(obj):
            fc.have.update(range(off // CHUNK, (off + max(n, 1) - 1) // CHUNK + 1))

    async def stored(self, obj: int) -> None:
        """The file was stored (fsync, close)."""
        count = self.dirty.pop(obj, None)
        if count:  # written again after the first report: break whoever read in between
            await self.change([(obj, False, True)])


__all__ = ["CacheManager", "FileChunks", "Remote"]
