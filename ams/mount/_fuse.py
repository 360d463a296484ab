"""The FUSE driver: pyfuse3 under trio, over the tree model in ams.mount._tree.

Theory of operation
-------------------
Every request becomes one call into :class:`~ams.mount._tree.MountTree` in a
worker thread (the tree reads the store and the local index, which block);
an :class:`~ams.mount._posts.FsError` becomes the errno the caller sees, and
any other failure is logged and answered EIO, since an exception escaping a
pyfuse3 handler would end the mount.

After each request the :class:`_Keeper` task gets a nudge.  It passes the
tree's queued invalidations to the kernel (``invalidate_entry`` for names
that went away, ``invalidate_inode`` for attributes that changed) from a
worker thread, never from inside a request handler, where they could
deadlock.  It also starts a follower for each folder the kernel has newly
heard of: the follower registers the folder's log with the shared
:class:`ams.imap._watch.Watcher` (one probe of every watched log per
interval, in one thread hop), refreshes the folder when the log changes,
and ends once the kernel's caches of it have run out
(:meth:`MountTree.watch_left`).  A slower loop re-reads the mailbox lists
and the board registry the kernel heard of lately.

Kernel caching: names and file attributes live ENTRY_TTL seconds, directory
attributes DIR_ATTR_TTL; message pages are kept across opens (``keep_cache``:
a UID's bytes never change).  Files being posted are ``direct_io`` and
never cached.  Directory listings are not cached by the kernel at all.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from ams.config import Config
from ams.errors import AMSError
from ams.imap._watch import Watcher
from ams.index import Index
from ams.mount._mountpoint import prepare_mountpoint
from ams.mount._posts import FsError
from ams.mount._tree import Attr, Folder, Forget, Invalidation, MountTree, Touch
from ams.store import Store

log = logging.getLogger(__name__)

#: Seconds between probes of the watched logs (as the IMAP bridge's IDLE).
WATCH_INTERVAL = 0.2
#: Seconds between re-reads of the mailbox lists and board registry in use.
LISTS_INTERVAL = 1.0

T = TypeVar("T")


def mount_options(*, everyone: bool) -> set[str]:
    """``default_permissions``: the kernel checks modes, as on any file system.
    ``allow_other`` only for a mount of everything (root), whose modes and
    owners say who may read what; a one-user mount is for its owner only."""
    opts = set(pyfuse3.default_options) | {"fsname=ams", "subtype=ams", "nosuid", "nodev",
                                           "noexec", "noatime"}
    if everyone:
        opts.add("allow_other")
    return opts


def _entry(a: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino  # type: ignore[assignment]
    e.generation = 0
    e.entry_timeout = a.entry_ttl
    e.attr_timeout = a.attr_ttl
    e.st_mode = a.mode  # type: ignore[assignment]
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_size = a.size
    e.st_blksize = 4096
    e.st_blocks = (a.size + 511) // 512
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
    return e


class Operations(pyfuse3.Operations):
    """pyfuse3's request handlers, each one tree call in a worker thread."""

    def __init__(self, tree: MountTree, nudge: Callable[[], None]) -> None:
        super().__init__()
        self.tree = tree
        self._nudge = nudge
        self._listings: dict[int, list[tuple[bytes, Attr]]] = {}
        self._next_listing = 1

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except (AMSError, OSError) as e:
            log.warning("%s: %s", getattr(fn, "__name__", fn), e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", getattr(fn, "__name__", fn))
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self._nudge()

    async def lookup(self, parent_inode: Any, name: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        return _entry(await self._call(self.tree.lookup, parent_inode, name))

    async def getattr(self, inode: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        return _entry(await self._call(self.tree.getattr, inode))

    async def setattr(self, inode: Any, attr: Any, fields: Any, fh: Any,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        size = attr.st_size if fields.update_size else None
        return _entry(await self._call(self.tree.setattr, inode, size))

    async def opendir(self, inode: Any, ctx: Any) -> Any:
        # Listed once per open, so the offsets readdir hands out stay valid.
        entries = await self._call(self.tree.listdir, inode)
        fh = self._next_listing
        self._next_listing += 1
        self._listings[fh] = entries
        return fh

    async def readdir(self, fh: Any, start_id: int, token: Any) -> None:
        entries = self._listings.get(fh, [])
        for i in range(start_id, len(entries)):
            name, attr = entries[i]
            if not pyfuse3.readdir_reply(token, name, _entry(attr), i + 1):
                break

    async def releasedir(self, fh: Any) -> None:
        self._listings.pop(fh, None)

    async def open(self, inode: Any, flags: Any, ctx: Any) -> pyfuse3.FileInfo:
        write = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        fh = await self._call(functools.partial(self.tree.open, write=write), inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)  # type: ignore[arg-type]

    async def read(self, fh: Any, off: int, size: int) -> bytes:
        return await self._call(self.tree.read, fh, off, size)

    async def create(self, parent_inode: Any, name: Any, mode: Any, flags: Any,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = await self._call(self.tree.create, parent_inode, name)
        return pyfuse3.FileInfo(fh=fh, direct_io=True), _entry(attr)  # type: ignore[arg-type]

    async def write(self, fh: Any, off: int, buf: bytes) -> int:
        return await self._call(self.tree.write, fh, off, buf)

    async def flush(self, fh: Any) -> None:
        # Closing a message read posts nothing: answer without a thread hop.
        if self.tree.is_post(fh):
            await self._call(self.tree.flush, fh)

    async def fsync(self, fh: Any, datasync: bool) -> None:
        return None  # a post is made, durably, when it is closed

    async def release(self, fh: Any) -> None:
        await self._call(self.tree.release, fh)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    async def _refuse(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    # Nothing is removed, renamed, linked or made here but posts.
    unlink = rmdir = mkdir = mknod = symlink = link = rename = _refuse  # type: ignore[assignment]


class _Keeper:
    """Tells the kernel what changed, and keeps watching what it caches."""

    def __init__(self, tree: MountTree, watcher: Watcher, nursery: trio.Nursery) -> None:
        self.tree = tree
        self.watcher = watcher
        self.nursery = nursery
        self._following: set[str] = set()
        self._event = trio.Event()

    def nudge(self) -> None:
        self._event.set()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event = trio.Event()
            for f in self.tree.take_activated():
                if f.log_id not in self._following:
                    self._following.add(f.log_id)
                    self.nursery.start_soon(self._follow, f)
            todo = self.tree.take_invalidations()
            if todo:
                await trio.to_thread.run_sync(_invalidate, todo)

    async def lists(self) -> None:
        while True:
            await trio.sleep(LISTS_INTERVAL)
            try:
                await trio.to_thread.run_sync(self.tree.refresh_lists)
            except Exception:
                log.exception("re-reading the mailbox lists")
            self.nudge()

    async def _follow(self, f: Folder) -> None:
        try:
            with self.watcher.watch(f.log_id, f.log) as w:
                seen = w.version
                while True:
                    left = self.tree.watch_left(f)
                    if left <= 0 or f.gone:
                        break  # no await from here to the discard below
                    with trio.move_on_after(left):
                        await w.changed(seen)
                    if w.version != seen:
                        seen = w.version
                        try:
                            await trio.to_thread.run_sync(
                                functools.partial(self.tree.refresh, f, force=True))
                        except Exception:
                            log.exception("refreshing %s", f.log.path)
                        self.nudge()
        finally:
            self._following.discard(f.log_id)


def _invalidate(todo: list[Invalidation]) -> None:
    """Pass invalidations to the kernel (blocking: run in a worker thread)."""
    touched: set[int] = set()
    for inv in todo:
        try:
            if isinstance(inv, Forget):
                # A directory is only dropped (``deleted`` on a directory the
                # kernel still has children of would be refused); a message
                # is gone for good, which ``deleted`` tells inotify watchers.
                deleted = inv.ino if inv.ino >= 1 << 32 else 0
                pyfuse3.invalidate_entry(inv.parent, inv.name, deleted)  # type: ignore[arg-type]
            elif isinstance(inv, Touch) and inv.ino not in touched:
                touched.add(inv.ino)
                pyfuse3.invalidate_inode(inv.ino, attr_only=True)  # type: ignore[arg-type]
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBUSY, errno.ENOTEMPTY):
                log.warning("invalidating %s: %s", inv, e)


async def serve_mount(config: Config, mountpoint: Path, *, user: str | None = None,
                      task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Mount the view at ``mountpoint`` and serve it until it is unmounted
    (or :func:`stop_mount` is called); reports the mount point once mounted."""
    where = await trio.to_thread.run_sync(prepare_mountpoint, mountpoint)
    store = Store(config)
    store.check()
    index = Index(config)
    tree: MountTree | None = None
    try:
        tree = MountTree(store, index, user=user)
        watcher = Watcher(index, WATCH_INTERVAL)
        async with trio.open_nursery() as nursery:
            keeper = _Keeper(tree, watcher, nursery)
            try:
                pyfuse3.init(Operations(tree, keeper.nudge), str(where),
                             mount_options(everyone=user is None))
            except RuntimeError as e:
                raise AMSError(f"cannot mount at {where}: {e}") from None
            try:
                nursery.start_soon(watcher.run)
                nursery.start_soon(keeper.run)
                nursery.start_soon(keeper.lists)
                task_status.started(where)
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()
                pyfuse3.close(unmount=True)
    finally:
        if tree is not None:
            tree.close()
        index.close()


def stop_mount() -> None:
    """End :func:`serve_mount` (call from the trio thread); it unmounts."""
    pyfuse3.terminate()


__all__ = ["LISTS_INTERVAL", "WATCH_INTERVAL", "Operations", "mount_options", "serve_mount",
           "stop_mount"]
