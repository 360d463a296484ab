"""One simulated AFS client: a FUSE passthrough mount that counts callback churn.

Run as ``python -m benchmarks.churn.meter --backing DIR --mountpoint MP
--client NAME --coordinator SOCK [--mailbox-re REGEX] [--cache-timeout S]``.
It mounts ``DIR`` at ``MP`` (``allow_other``), connects to the coordinator
(:mod:`benchmarks.churn.coordinator`), prints ``ready`` and serves until
SIGTERM or SIGINT, then unmounts.

Theory of operation
-------------------
Every mount is one host with one AFS cache manager.  Every ``readdir``,
``read`` and ``write`` reaches this process (direct I/O, no listing cache),
and so does every path walk and ``stat`` unless the kernel holds the name or
the attributes: with ``--cache-timeout 0`` it holds nothing; with a
timeout it holds what this meter answered under a callback, and the meter
drops it from the kernel when the callback breaks (:meth:`Meter.invalidate`),
so the next access comes here again, as an AFS client drops the kernel's
caches on a break.  Either way the meter sees every access that would cost
an AFS client something, passes it to the backing directory, and decides,
as an AFS client would, whether it needed the fileserver:

- a lookup in a directory needs the directory's data; a ``readdir`` too;
- a ``stat`` (and a lookup's answer) needs the object's status;
- a ``read`` needs the chunks it covers (:data:`benchmarks.churn.model.CHUNK`);
- a directory operation (create, mkdir, symlink, link, unlink, rmdir,
  rename) and a change of file data or status are *changes*.

Status needs a callback.  Held callbacks live in the meter's
:class:`~benchmarks.churn.client.CacheManager` (``cb``: object → data
version); fetching one is a round trip to the coordinator, which records the
holder and returns the object's data version.  Cached data (directory
listings and file chunks) carries the version it was fetched at; it is good
only while it equals the version of the callback held.  So after a break the
next access fetches the status again, and the data only if it changed: an
AFS client does the same with the DataVersion a FetchStatus returns.

A change is also a round trip: the coordinator breaks every other holder's
callback and answers only when they have all acknowledged.  File data is
reported at the first write after a store (the other clients' callbacks
break as soon as the data can be seen) and, when more writes followed, again
at the store (fsync, flush on close, release), which breaks whoever fetched
in between.  The changing client keeps its own cached data when it was
current: an AFS client applies its own directory operations to its cached
copy.

Objects are identified by the backing inode number, which is also the FUSE
inode (the root is FUSE inode 1).  The coordinator's replies are applied to
``cb`` by the one task that reads the socket, in the order they were sent,
so a break can never be overtaken by the answer to an earlier fetch.

Directories whose path (relative to the backing dir) matches
``--mailbox-re`` are mailbox directories: changes there are also counted on
their own.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import stat as stat_mod
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from benchmarks.churn._signals import cancel_on_signal
from benchmarks.churn.client import CacheManager, Remote

log = logging.getLogger("churn.meter")

ROOT = pyfuse3.ROOT_INODE


#: The FUSE operations a meter counts (requests served, reported to the coordinator).
OPERATIONS = ("lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "symlink",
              "link", "unlink", "rmdir", "rename", "open", "create", "read", "write", "flush",
              "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs",
              "access", "getxattr", "listxattr")


def counted(cls: type[Any]) -> type[Any]:
    """Wrap every FUSE operation of ``cls`` to count the requests it serves."""
    for name in OPERATIONS:
        fn = getattr(cls, name)

        async def op(self: Any, *args: Any, _fn: Any = fn, _name: str = name) -> Any:
            self.ops[_name] = self.ops.get(_name, 0) + 1
            return await _fn(self, *args)

        op.__name__ = name
        setattr(cls, name, op)
    return cls


@counted
class Meter(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, backing: Path, mailbox_re: str | None, cache_timeout: float = 0.0
                 ) -> None:
        super().__init__()
        self.timeout = cache_timeout
        #: names this mount's kernel may have cached in each directory (by inode)
        self.kids: dict[int, set[bytes]] = {}
        self.backing = str(backing)
        st = os.lstat(self.backing)
        self.root_obj = st.st_ino
        self.paths: dict[int, str] = {ROOT: self.backing}
        self.lookups: dict[int, int] = {ROOT: 1}
        self.mailbox = re.compile(mailbox_re) if mailbox_re else None
        self.cm = CacheManager(self.dropped if cache_timeout else None)
        self.fds: dict[int, int] = {}  # fh (the backing fd) -> inode
        self.open_fds: dict[int, set[int]] = {}  # inode -> its open fds
        self.dirs: dict[int, tuple[int, list[tuple[bytes, pyfuse3.EntryAttributes]] | None]] = {}
        self.next_dirfh = 1 << 40
        self.ops: dict[str, int] = {}
        self.reported = 0

    async def report_requests(self) -> None:
        """Tell the coordinator, twice a second, how many requests were served."""
        while True:
            await trio.sleep(0.5)
            n = sum(self.ops.values())
            if n != self.reported and self.cm.remote is not None:
                self.cm.remote.post(["R", n - self.reported])
                self.reported = n

    # -- helpers ---------------------------------------------------------------------------

    def obj(self, inode: int) -> int:
        return self.root_obj if inode == ROOT else inode

    def inode_of(self, st: os.stat_result) -> int:
        return ROOT if st.st_ino == self.root_obj else st.st_ino

    def path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.path(parent), os.fsdecode(name))

    def is_mailbox(self, inode: int) -> bool:
        if self.mailbox is None:
            return False
        rel = os.path.relpath(self.path(inode), self.backing)
        return self.mailbox.fullmatch(rel) is not None

    def attrs(self, st: os.stat_result, timeout: float | None = None
              ) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = self.inode_of(st)
        e.generation = 0
        e.entry_timeout = self.timeout if timeout is None else timeout
        e.attr_timeout = self.timeout if timeout is None else timeout
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def remember(self, inode: int, path: str, parent: int | None = None,
                 name: bytes | None = None) -> None:
        self.paths[inode] = path
        self.lookups[inode] = self.lookups.get(inode, 0) + 1
        if self.timeout and parent is not None and name is not None:
            self.kids.setdefault(parent, set()).add(name)

    def forget_name(self, parent: int, name: bytes) -> None:
        kids = self.kids.get(parent)
        if kids is not None:
            kids.discard(name)

    def dropped(self, obj: int) -> None:
        """A callback on ``obj`` broke: drop what the kernel cached under it."""
        self.invalidate(ROOT if obj == self.root_obj else obj)

    def invalidate(self, inode: int) -> None:
        """Drop what this mount's kernel cached under the callback just broken: the
        object's attributes and, for a directory, every name looked up in it (so the
        next lookup there comes here and refetches the directory), as an AFS cache
        manager drops the kernel's caches on a callback break."""
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError:
            pass  # the kernel does not have it
        for name in self.kids.pop(inode, ()):
            pyfuse3.invalidate_entry_async(inode, name, ignore_enoent=True)

    # -- the callback protocol, by inode -----------------------------------------------------

    async def status(self, obj: int) -> int:
        return await self.cm.status(obj)

    async def need_dir(self, inode: int) -> None:
        def listing() -> list[str]:
            try:
                return os.listdir(self.path(inode))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

        await self.cm.dir_data(self.obj(inode), listing)

    async def need_chunks(self, inode: int, off: int, size: int, file_size: int) -> None:
        await self.cm.file_data(self.obj(inode), off, size, file_size)

    async def change(self, objects: Sequence[tuple[int, bool, bool]], **kw: Any) -> None:
        await self.cm.change(objects, **kw)

    async def dir_change(self, parents: Sequence[int], *, acquire: Sequence[tuple[int, bool]] = (),
                         drop: Sequence[int] = (), status: Sequence[int] = (),
                         created: int = 0, renamed: int = 0, removed: int = 0) -> None:
        objs = []
        for p in dict.fromkeys(parents):
            objs.append((self.obj(p), True, True))
        for o in status:
            objs.append((o, False, False))
        await self.change(objs, acquire=acquire, drop=drop, created=created, renamed=renamed,
                          removed=removed, mailbox=any(self.is_mailbox(p) for p in parents))

    async def wrote(self, inode: int, off: int, n: int) -> None:
        await self.cm.wrote(self.obj(inode), off, n)

    async def stored(self, inode: int) -> None:
        await self.cm.stored(self.obj(inode))

    # -- FUSE operations -------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        await self.need_dir(parent_inode)
        if name == b".":
            path = self.path(parent_inode)
        elif name == b"..":
            path = os.path.dirname(self.path(parent_inode))
        else:
            path = self.child(parent_inode, name)
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        await self.status(st.st_ino)
        inode = self.inode_of(st)
        self.remember(inode, path, parent_inode, name)
        return self.attrs(st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            left = self.lookups.get(inode, 0) - n
            if left > 0:
                self.lookups[inode] = left
            elif inode != ROOT:
                self.lookups.pop(inode, None)
                self.paths.pop(inode, None)
                self.kids.pop(inode, None)  # the kernel has nothing cached under it

    def _stat(self, inode: int) -> os.stat_result:
        """The inode's attributes: through an open fd when there is one (its path may
        name another file by now), else by path, refusing a path that does."""
        fds = self.open_fds.get(inode)
        try:
            if fds:
                return os.fstat(next(iter(fds)))
            st = os.lstat(self.path(inode))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        if st.st_ino != self.obj(inode):
            raise pyfuse3.FUSEError(errno.ESTALE)
        return st

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        await self.status(self.obj(inode))
        return self.attrs(self._stat(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> Any:
        fds = self.open_fds.get(inode)
        fd = fh if fh is not None else (next(iter(fds)) if fds else None)
        path = self.path(inode)
        try:
            if fields.update_size:
                if fd is not None:
                    os.ftruncate(fd, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            target: int | str = fd if fd is not None else path
            follow = fd is not None
            if fields.update_mode:
                os.chmod(target, stat_mod.S_IMODE(attr.st_mode), follow_symlinks=follow)
            if fields.update_uid or fields.update_gid:
                os.chown(target, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1, follow_symlinks=follow)
            if fields.update_atime or fields.update_mtime:
                st = self._stat(inode)
                at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                os.utime(target, ns=(at, mt), follow_symlinks=follow)
            st = self._stat(inode)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        obj = self.obj(inode)
        await self.change([(obj, stat_mod.S_ISDIR(st.st_mode), bool(fields.update_size))])
        return self.attrs(st)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        await self.status(self.obj(inode))
        try:
            return os.fsencode(os.readlink(self.path(inode)))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def _made(self, parent: int, name: bytes, ctx: Any, make: Callable[[], None]) -> Any:
        path = self.child(parent, name)
        await self.need_dir(parent)
        try:
            make()
            os.lchown(path, ctx.uid, ctx.gid)
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        inode = self.inode_of(st)
        self.remember(inode, path, parent, name)
        await self.dir_change([parent], acquire=[(st.st_ino, stat_mod.S_ISDIR(st.st_mode))],
                              created=1)
        return self.attrs(st)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> Any:
        path = self.child(parent_inode, name)
        return await self._made(parent_inode, name, ctx,
                                lambda: os.mknod(path, mode & ~ctx.umask, rdev))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self.child(parent_inode, name)
        return await self._made(parent_inode, name, ctx,
                                lambda: os.mkdir(path, mode & ~ctx.umask))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        path = self.child(parent_inode, name)
        return await self._made(parent_inode, name, ctx, lambda: os.symlink(target, path))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        await self.need_dir(new_parent_inode)
        path = self.child(new_parent_inode, new_name)
        try:
            os.link(self.path(inode), path, follow_symlinks=False)
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        self.remember(inode, path, new_parent_inode, new_name)
        await self.dir_change([new_parent_inode], status=[self.obj(inode)], created=1)
        return self.attrs(st)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.need_dir(parent_inode)
        path = self.child(parent_inode, name)
        try:
            st = os.lstat(path)
            os.unlink(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        self.forget_name(parent_inode, name)
        gone = st.st_nlink <= 1
        await self.dir_change([parent_inode], drop=[st.st_ino] if gone else [],
                              status=[] if gone else [st.st_ino], removed=1)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.need_dir(parent_inode)
        path = self.child(parent_inode, name)
        try:
            st = os.lstat(path)
            os.rmdir(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        self.forget_name(parent_inode, name)
        self.kids.pop(self.inode_of(st), None)
        await self.dir_change([parent_inode], drop=[st.st_ino], removed=1)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.need_dir(parent_inode_old)
        await self.need_dir(parent_inode_new)
        old = self.child(parent_inode_old, name_old)
        new = self.child(parent_inode_new, name_new)
        try:
            st = os.lstat(old)
            try:
                target: os.stat_result | None = os.lstat(new)
            except FileNotFoundError:
                target = None
            os.rename(old, new)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        inode = self.inode_of(st)
        self.forget_name(parent_inode_old, name_old)
        if self.timeout:
            self.kids.setdefault(parent_inode_new, set()).add(name_new)
        if inode in self.paths:
            self.paths[inode] = new
            if stat_mod.S_ISDIR(st.st_mode):
                prefix = old + os.sep
                for i, p in list(self.paths.items()):
                    if p.startswith(prefix):
                        self.paths[i] = new + p[len(old):]
        replaced = target is not None and target.st_ino != st.st_ino
        gone = replaced and target is not None and (target.st_nlink <= 1
                                                    or stat_mod.S_ISDIR(target.st_mode))
        await self.dir_change([parent_inode_old, parent_inode_new],
                              drop=[target.st_ino] if gone and target else [],
                              status=[target.st_ino] if replaced and not gone and target else [],
                              renamed=1, removed=1 if replaced else 0)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        await self.status(self.obj(inode))
        try:
            fd = os.open(self.path(inode), flags & ~os.O_CREAT)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        if os.fstat(fd).st_ino != self.obj(inode):  # the path names another file by now
            os.close(fd)
            raise pyfuse3.FUSEError(errno.ESTALE)
        self.fds[fd] = inode
        self.open_fds.setdefault(inode, set()).add(fd)
        if flags & os.O_TRUNC:
            await self.change([(self.obj(inode), False, True)])
        return pyfuse3.FileInfo(fh=fd, direct_io=True, keep_cache=False)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        await self.need_dir(parent_inode)
        path = self.child(parent_inode, name)
        try:
            existed = os.path.lexists(path)
            fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
            if not existed:
                os.fchown(fd, ctx.uid, ctx.gid)
            st = os.fstat(fd)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        inode = self.inode_of(st)
        self.remember(inode, path, parent_inode, name)
        self.fds[fd] = inode
        self.open_fds.setdefault(inode, set()).add(fd)
        if existed:
            await self.change([(st.st_ino, False, bool(flags & os.O_TRUNC))])
        else:
            await self.dir_change([parent_inode], acquire=[(st.st_ino, False)], created=1)
        return pyfuse3.FileInfo(fh=fd, direct_io=True, keep_cache=False), self.attrs(st)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        inode = self.fds[fh]
        try:
            file_size = os.fstat(fh).st_size
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        await self.need_chunks(inode, off, size, file_size)
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            n = os.pwrite(fh, buf, off)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        await self.wrote(self.fds[fh], off, n)
        return n

    async def flush(self, fh: int) -> None:
        await self.stored(self.fds[fh])

    async def release(self, fh: int) -> None:
        inode = self.fds.pop(fh, None)
        try:
            os.close(fh)
        except OSError:
            pass
        if inode is not None:
            fds = self.open_fds.get(inode)
            if fds is not None:
                fds.discard(fh)
                if not fds:
                    del self.open_fds[inode]
                    await self.stored(inode)

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        await self.stored(self.fds[fh])

    async def opendir(self, inode: int, ctx: Any) -> int:
        await self.status(self.obj(inode))
        self.next_dirfh += 1
        self.dirs[self.next_dirfh] = (inode, None)
        return self.next_dirfh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        inode, listing = self.dirs[fh]
        if listing is None or start_id == 0:
            await self.need_dir(inode)
            path = self.path(inode)
            listing = []
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        # not cached: a listing holds no callback on the entries
                        listing.append((os.fsencode(entry.name), self.attrs(st, 0)))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
            self.dirs[fh] = (inode, listing)
        base = self.path(inode)
        for i in range(start_id, len(listing)):
            name, attrs = listing[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                return
            self.remember(attrs.st_ino, os.path.join(base, os.fsdecode(name)))

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        inode, _ = self.dirs[fh]

        def sync() -> None:
            fd = os.open(self.path(inode), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            await trio.to_thread.run_sync(sync)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def statfs(self, ctx: Any) -> Any:
        sv = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, attr, getattr(sv, attr))
        return out

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        await self.status(self.obj(inode))
        return True

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return []


async def run(args: argparse.Namespace) -> None:
    meter = Meter(args.backing, args.mailbox_re, args.cache_timeout)
    stream = await trio.open_unix_socket(str(args.coordinator))
    remote = Remote(stream, meter.cm.on_break)
    meter.cm.remote = remote
    remote.post(["H", args.client])
    # No default_permissions: with it the kernel would fetch the attributes of every
    # directory on every path walk (attribute caching is off) to check permissions,
    # doubling the requests; permissions are not what is measured.
    options = {"allow_other", f"fsname=churn-{args.client}", "subtype=churnmeter"}
    pyfuse3.init(meter, str(args.mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.writer)
            nursery.start_soon(remote.reader)

            nursery.start_soon(cancel_on_signal, nursery.cancel_scope)
            nursery.start_soon(meter.report_requests)
            print("ready", flush=True)
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        print("requests: " + json.dumps(dict(sorted(meter.ops.items()))), file=sys.stderr,
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.churn.meter")
    ap.add_argument("--backing", type=Path, required=True)
    ap.add_argument("--mountpoint", type=Path, required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--coordinator", type=Path, required=True)
    ap.add_argument("--mailbox-re", default=None)
    ap.add_argument("--cache-timeout", type=float, default=0.0,
                    help="let the kernel cache names and attributes this long, dropping them "
                         "at every callback break (default 0: no kernel caching)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
