"""The mount point: checks before mounting, and the remains of a crashed mount.

A FUSE file system whose process died stays mounted, and every access to it
fails with ENOTCONN ("Transport endpoint is not connected") until someone
unmounts it.  ``ams mount`` does that for its own mount point: a ``stat``
or ``statvfs`` that says ENOTCONN (or ECONNABORTED, for a connection aborted
through /sys/fs/fuse/connections) is answered with a lazy unmount,
``fusermount3 -u -z``, and the mount goes ahead.  A live mount at the point
is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from ams.errors import AMSError, UsageError

log = logging.getLogger(__name__)

_DEAD = (errno.ENOTCONN, errno.ECONNABORTED)


def prepare_mountpoint(path: Path) -> Path:
    """Check ``path`` can be mounted on, cleaning up a crashed mount of it first."""
    path = Path(os.path.abspath(path))
    if is_dead_mount(path):
        log.warning("%s: a crashed mount is still there; unmounting it", path)
        lazy_unmount(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mount point {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"something is mounted at {path} already "
                         f"(fusermount3 -u {path} unmounts an AMS view)")
    return path


def is_dead_mount(path: Path) -> bool:
    """Whether ``path`` is a FUSE mount whose process is gone.

    ``stat`` alone can miss it: the kernel may answer from attributes it
    cached before the process died.  ``statvfs`` always asks the file system.
    """
    for probe in (os.stat, os.statvfs):
        try:
            probe(path)
        except OSError as e:
            if e.errno in _DEAD:
                return True
            return False
    return False


def lazy_unmount(path: Path) -> None:
    """Detach the mount at ``path`` now (it goes once nothing uses it)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "-z", str(path)] if tool else ["umount", "-l", str(path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AMSError(f"cannot unmount the crashed mount at {path}: {e}") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise AMSError(f"cannot unmount the crashed mount at {path}: {why}")


__all__ = ["is_dead_mount", "lazy_unmount", "prepare_mountpoint"]
