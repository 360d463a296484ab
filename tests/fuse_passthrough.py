"""A passthrough FUSE filesystem for tests: one backing directory, many mounts.

``python tests/fuse_passthrough.py BACKING MOUNTPOINT [--stat-cache S]``

Each mount is its own client with its own kernel caches, like a second host
mounting a network filesystem.  Two faults come with it, on purpose:

* it implements no lock operations, so the kernel keeps POSIX locks per
  mount: a lock taken through one mount does not exclude a process using
  another (what sshfs does);
* with ``--stat-cache S`` the daemon answers a file's attributes from its
  own cache for S seconds, as GlusterFS's md-cache does with its default
  options: a host sees another host's append (a size change) up to S
  seconds late, while its own writes refresh the cache at once.  The
  default, 0, is coherent.

Inodes are the backing files' inode numbers; names are resolved afresh
every time (kernel entry and attribute timeouts are 0).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import time
from pathlib import Path

import pyfuse3
import trio


class Passthrough(pyfuse3.Operations):
    def __init__(self, backing: str, stat_cache: float) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: backing}
        self.root_ino = os.lstat(backing).st_ino
        self.stat_cache = stat_cache
        self.cached: dict[int, tuple[float, os.stat_result]] = {}
        self.fh_ino: dict[int, int] = {}

    # -- helpers ---------------------------------------------------------------------

    def _path(self, inode: int, name: bytes | None = None) -> str:
        try:
            base = self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        return base if name is None else os.path.join(base, os.fsdecode(name))

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        ino = self._ino(st)
        self.paths[ino] = path
        if self.stat_cache and stat.S_ISREG(st.st_mode):
            now = time.monotonic()
            hit = self.cached.get(ino)
            if hit is not None and now - hit[0] < self.stat_cache:
                st = hit[1]
            else:
                self.cached[ino] = (now, st)
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = 0
        e.attr_timeout = 0
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(e, field, getattr(st, field))
        e.st_blksize = 4096
        e.st_blocks = (st.st_size + 511) // 512
        return e

    @staticmethod
    def _call(fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None

    # -- names -----------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):  # type: ignore[no-untyped-def]
        return self._entry(self._path(parent_inode, name))

    async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        return self._entry(self._path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        path = self._path(inode)
        self.cached.pop(inode, None)
        if fields.update_size:
            if fh is not None:
                self._call(os.ftruncate, fh, attr.st_size)
            else:
                self._call(os.truncate, path, attr.st_size)
        if fields.update_mode:
            self._call(os.chmod, path, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            a = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            m = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            self._call(os.utime, path, None, ns=(a, m))
        return self._entry(path)

    async def mkdir(self, parent_inode, name, mode, ctx):  # type: ignore[no-untyped-def]
        path = self._path(parent_inode, name)
        self._call(os.mkdir, path, mode)
        return self._entry(path)

    async def rmdir(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        self._call(os.rmdir, self._path(parent_inode, name))

    async def unlink(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        self._call(os.unlink, self._path(parent_inode, name))

    async def rename(self, p_old, name_old, p_new, name_new, flags, ctx):  # type: ignore[no-untyped-def]
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        new = self._path(p_new, name_new)
        self._call(os.rename, self._path(p_old, name_old), new)
        self._entry(new)

    async def link(self, inode, new_parent, new_name, ctx):  # type: ignore[no-untyped-def]
        new = self._path(new_parent, new_name)
        self._call(os.link, self._path(inode), new)
        return self._entry(new)

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        self._path(inode)
        return inode

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        base = self._path(fh)
        names = sorted(self._call(os.listdir, base))
        for i, name in enumerate(names[start_id:], start_id):
            try:
                entry = self._entry(os.path.join(base, name))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, i + 1):
                break

    async def releasedir(self, fh):  # type: ignore[no-untyped-def]
        pass

    async def fsyncdir(self, fh, datasync):  # type: ignore[no-untyped-def]
        fd = self._call(os.open, self._path(fh), os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._call(os.fsync, fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx):  # type: ignore[no-untyped-def]
        sv = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(out, f, getattr(sv, f))
        return out

    # -- files -----------------------------------------------------------------------

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        fd = self._call(os.open, self._path(inode), flags & ~(os.O_CREAT | os.O_EXCL))
        self.fh_ino[fd] = inode
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent_inode, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
        path = self._path(parent_inode, name)
        fd = self._call(os.open, path, flags | os.O_CREAT, mode)
        entry = self._entry(path)
        self.fh_ino[fd] = entry.st_ino
        return pyfuse3.FileInfo(fh=fd), entry

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        return self._call(os.pread, fh, size, off)

    async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
        n = self._call(os.pwrite, fh, buf, off)
        self.cached.pop(self.fh_ino.get(fh, 0), None)  # our own writes show at once
        return n

    async def flush(self, fh):  # type: ignore[no-untyped-def]
        pass

    async def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
        self._call(os.fdatasync if datasync else os.fsync, fh)

    async def release(self, fh):  # type: ignore[no-untyped-def]
        self.fh_ino.pop(fh, None)
        os.close(fh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--stat-cache", type=float, default=0.0)
    args = ap.parse_args()
    ops = Passthrough(str(Path(args.backing).resolve()), args.stat_cache)
    options = set(pyfuse3.default_options) | {"fsname=amstest", "subtype=passthrough"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
