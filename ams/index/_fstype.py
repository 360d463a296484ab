"""Where an index may live: local disk only, never the shared store [brief rule 6].

LMDB memory-maps its file and relies on coherent mmap, POSIX locks on its
lock file and write ordering.  Network and cluster filesystems (NFS, SMB,
Ceph, AFS, Lustre, GPFS, …) and FUSE break one or more of these, silently:
readers see stale pages, two hosts' writers corrupt the tree.  So before an
environment is opened we find the filesystem its directory lives on and
refuse the ones we know to be shared, and we refuse a cache directory inside
the store root whatever the filesystem.

Finding the filesystem: Linux's ``os.statvfs`` has no ``f_type``, so we read
``/proc/self/mountinfo`` (or ``/proc/mounts``) and take the longest mount
point that contains the path, which also gives the filesystem's name.  If
``/proc`` is not there we fall back to statfs(2) through ctypes and map the
magic number.  Elsewhere (BSD, macOS) we cannot tell cheaply and say so in
the log.

The parsing and classifying functions are pure so tests can feed them sample
mountinfo lines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ams.errors import ConfigError

log = logging.getLogger(__name__)

#: Filesystems shared between hosts (or with a hypervisor's host), by the name
#: the kernel gives them in mountinfo.
SHARED_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "ceph", "glusterfs", "afs", "openafs",
    "coda", "9p", "lustre", "gpfs", "beegfs", "gfs2", "ocfs2", "orangefs", "pvfs2",
    "davfs", "virtiofs", "vboxsf", "prl_fs", "vmhgfs", "panfs", "cvfs", "quobyte",
})

#: statfs(2) f_type magic numbers of the same (include/uapi/linux/magic.h and
#: the filesystems' own headers), for when /proc is not mounted.
_SHARED_MAGIC = {
    0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb3", 0x517B: "smbfs",
    0x564C: "ncpfs", 0x00C36400: "ceph", 0x5346414F: "afs", 0x6B414653: "afs",
    0x73757245: "coda", 0x01021997: "9p", 0x0BD00BD0: "lustre", 0x47504653: "gpfs",
    0x01161970: "gfs2", 0x7461636F: "ocfs2", 0x20030528: "orangefs", 0x6A656A63: "virtiofs",
    0x786F4256: "vboxsf", 0x65735546: "fuse",
}


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        digits = field[i + 1:i + 4]
        if c == "\\" and len(digits) == 3 and all(d in "01234567" for d in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/self/mountinfo (see proc(5)); malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def parse_proc_mounts(text: str) -> list[Mount]:
    """Parse /proc/mounts (fstab format: source mountpoint fstype options …)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(_unescape(fields[1]), fields[2], _unescape(fields[0])))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds absolute, resolved ``path``: the longest containing
    mount point, the later one winning when two are stacked on one point."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        inside = mp == "/" or path == mp or path.startswith(mp + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")):
            best = m
    return best


def shared_fs_reason(fstype: str) -> str | None:
    """Why an index must not live on ``fstype``, or None when it may."""
    t = fstype.lower()
    if t == "fuse" or t == "fuseblk" or t.startswith("fuse.") or t.startswith("fuseblk."):
        return "a FUSE filesystem"
    base = t.split(".", 1)[0]
    if t in SHARED_FSTYPES or base in SHARED_FSTYPES:
        return "a network or cluster filesystem"
    return None


def _mount_table(proc: str, parse: Callable[[str], list[Mount]]) -> list[Mount] | None:
    try:
        with open(proc, encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read())
    except OSError:
        return None


def mounts() -> list[Mount]:
    """This process's mounts, from /proc/self/mountinfo ([] if unreadable).
    Reading the table never touches a mount, so a hung one cannot block it."""
    return _mount_table("/proc/self/mountinfo", parse_mountinfo) or []


def mount_holding(path: str | Path) -> Mount | None:
    """The mount that holds ``path`` (resolved), from the kernel's mount
    tables; None if they cannot be read."""
    real = os.path.realpath(path)
    for proc, parse in (("/proc/self/mountinfo", parse_mountinfo),
                        ("/proc/mounts", parse_proc_mounts)):
        table = _mount_table(proc, parse)
        m = mount_of(real, table) if table is not None else None
        if m is not None:
            return m
    return None


def filesystem_type(path: Path) -> tuple[str, str] | None:
    """(mount point, fs type) of the existing ``path``, or None if unknown."""
    m = mount_holding(path)
    if m is not None:
        return m.mountpoint, m.fstype
    real = os.path.realpath(path)
    magic = _statfs_magic(real)
    if magic is not None:
        return real, _SHARED_MAGIC.get(magic, f"0x{magic:x}")
    return None


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type is the first word.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 160)]


def _statfs_magic(path: str) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = _StatFs()
        if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
            return None
        return int(buf.f_type) & 0xFFFFFFFF
    except (OSError, AttributeError):
        return None


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_index_location(path: Path, store_root: Path | None = None) -> None:
    """Refuse an index directory on a shared filesystem or inside the store.

    ``path`` need not exist yet: its nearest existing ancestor is checked,
    which is where it will be created.  Raises ConfigError naming the path
    and the filesystem type.
    """
    real = Path(os.path.realpath(path))
    if store_root is not None:
        root = Path(os.path.realpath(store_root))
        if _is_within(real, root) or _is_within(root, real):
            raise ConfigError(
                f"index directory {path} is inside the store root {store_root}: indexes are "
                "local to a host and must live outside the shared store (set host.cache_dir "
                "to a local directory)")
    where = _existing_ancestor(real)
    found = filesystem_type(where)
    if found is None:
        log.warning("cannot tell the filesystem type of %s on %s; make sure it is a local disk",
                    path, sys.platform)
        return
    mountpoint, fstype = found
    reason = shared_fs_reason(fstype)
    if reason is not None:
        raise ConfigError(
            f"index directory {path} is on {reason} ({fstype}, mounted at {mountpoint}); "
            "LMDB needs a local disk: set host.cache_dir to a local directory")
