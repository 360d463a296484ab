"""Filesystem primitives every store module builds on.

Only the operations the brief lets us rely on across hosts are used here:
rename within one filesystem (atomic, one winner), O_CREAT|O_EXCL (exclusive),
fsync of files and directories, and close-to-open consistency.  Nothing here
lists a directory to find news, uses O_APPEND, mmap or cross-directory links.

Publishing a file is always: write it under a staging name in a directory
this process alone writes to, fsync the file, rename it into place, fsync the
destination directory.  A crash at any step leaves either no file or the
whole file at the destination, never a partial one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

#: errnos a distributed filesystem returns to the loser of an O_EXCL race
#: (sshfs answers EPERM where a local filesystem says EEXIST).
EXISTS_ERRNOS = frozenset({errno.EEXIST, errno.EPERM, errno.EACCES})
#: errnos for "the source of my rename is gone": someone else won.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: How often :func:`makedirs` starts again when a directory it saw made vanished.
MKDIR_ATTEMPTS = 5


def makedirs(path: str | os.PathLike[str], *, sync: bool = True) -> None:
    """mkdir -p, fsyncing each parent that gained an entry.

    Hosts may make the same directories at once.  The loser of a mkdir race
    normally sees EEXIST (EPERM on sshfs), but GlusterFS 10 can answer EEXIST
    to *both* creators and leave no directory at all (tests/test_distfs.py
    catches it about once in a few hundred races), so the next mkdir below
    it fails with ENOENT.  A path still missing afterwards is made again.
    """
    p = Path(path)
    for attempt in range(MKDIR_ATTEMPTS):
        if attempt:
            time.sleep(0.005 * attempt)
        if p.is_dir():
            return
        missing: list[Path] = []
        q = p
        while not q.is_dir():
            missing.append(q)
            q = q.parent
        try:
            for d in reversed(missing):
                try:
                    os.mkdir(d)
                except OSError as e:
                    if e.errno == errno.EEXIST or (e.errno in EXISTS_ERRNOS and d.is_dir()):
                        continue
                    raise
                if sync:
                    fsync_dir(d.parent)
        except FileNotFoundError:
            if attempt == MKDIR_ATTEMPTS - 1:
                raise
            continue
        if p.is_dir():
            return
    raise FileNotFoundError(errno.ENOENT, "directory made but not there after "
                            f"{MKDIR_ATTEMPTS} attempts", str(p))


def unique_suffix() -> str:
    return f"{os.getpid()}.{secrets.token_hex(6)}"


def write_file_atomic(
    dest: str | os.PathLike[str],
    data: bytes,
    *,
    staging_dir: str | os.PathLike[str] | None = None,
    sync: bool = True,
) -> None:
    """Publish ``data`` at ``dest`` all at once (staging, fsync, rename, fsync dir)."""
    dest = Path(dest)
    staging = Path(staging_dir) if staging_dir is not None else dest.parent
    tmp = staging / f".tmp.{dest.name}.{unique_suffix()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if sync:
        fsync_dir(dest.parent)


def create_exclusive(path: str | os.PathLike[str], data: bytes, *, sync: bool = True) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist.

    Returns False when another creator won.  The data is written before the
    function returns True; a reader may see the file empty for an instant
    while it is being written, so readers of such files must tolerate that.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as e:
        # EEXIST: another creator won (its file may already be gone again).
        # EPERM/EACCES: sshfs's answer to the loser, but also a real
        # permission problem; only a file that is there tells them apart.
        if e.errno == errno.EEXIST or (e.errno in EXISTS_ERRNOS and _exists(path)):
            return False
        raise
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync:
        fsync_dir(Path(path).parent)
    return True


def _exists(path: str | os.PathLike[str]) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def rename_claim(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
    """rename(src, dst); False if src was already gone (another claimer won)."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in GONE_ERRNOS:
            return False
        raise
    return True


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset``; shorter only at end of file."""
    chunks: list[bytes] = []
    while size > 0:
        b = os.pread(fd, size, offset)
        if not b:
            break
        chunks.append(b)
        size -= len(b)
        offset += len(b)
    return b"".join(chunks)


def _unlink_quiet(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def shard_of(key: str, width: int = 2) -> str:
    """Stable hex shard for ``key``: sha256 prefix of ``width`` hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:width]


def shard_path(key: str) -> Path:
    """Two levels of 256 (``ab/cd``), so no level passes 256 entries."""
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return Path(h[:2]) / h[2:4]


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode()


def now_us() -> int:
    return time.time_ns() // 1000
