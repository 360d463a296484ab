"""The checks one host runs alone, in its own scratch directory.

Each returns raw measurements (JSON-able dicts); judging them is
:mod:`ams.doctor._verdict`'s job, so a run on one host and the verdict on
another agree.  Failures of the operation under test are recorded, not
raised: an errno name in place of "ok".
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ams.store import _fs


def errname(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def attempt(fn: Callable[[], object]) -> str:
    """"ok", or the errno name ``fn`` failed with."""
    try:
        fn()
    except OSError as e:
        return errname(e)
    return "ok"


def write_new(path: Path, data: bytes, *, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _fs.write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def check_fsync(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    p = d / "fsync"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        times = []
        for i in range(5):
            os.pwrite(fd, b"x" * 4096, i * 4096)
            t0 = time.monotonic()
            res = attempt(lambda: os.fsync(fd))
            times.append(round((time.monotonic() - t0) * 1000, 3))
            out["file"] = res
            if res != "ok":
                break
        out["fsync_ms"] = times
        out["fdatasync"] = attempt(lambda: os.fdatasync(fd))
    finally:
        os.close(fd)
    out["dir"] = attempt(lambda: _fs.fsync_dir(d))
    return out


def check_excl_local(d: Path) -> dict[str, Any]:
    p = d / "excl"

    def create() -> None:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    return {"first": attempt(create), "second": attempt(create)}


_CHILD = """
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def check_fcntl_local(d: Path) -> dict[str, Any]:
    """Hold a POSIX lock; a second process on this host must be refused."""
    p = d / "lock"
    write_new(p, b"")
    fd = os.open(p, os.O_RDWR)
    try:
        held = attempt(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
        try:
            r = subprocess.run([sys.executable, "-c", _CHILD, str(p)], capture_output=True,
                               text=True, timeout=30)
            child = r.stdout.strip() or f"child failed: {r.stderr.strip()[-200:]}"
        except subprocess.TimeoutExpired:
            child = "child timed out"
    finally:
        os.close(fd)
    return {"hold": held, "child": child}


def check_mtime(d: Path) -> dict[str, Any]:
    samples = []
    for i in range(5):
        p = d / f"mtime{i}"
        write_new(p, b"x")
        samples.append(os.stat(p).st_mtime_ns)
        time.sleep(0.003)
    return {"samples_ns": samples}


def check_clock_fs(d: Path) -> dict[str, Any]:
    """This host's clock against the mtimes the filesystem stamps."""
    samples = []
    for i in range(3):
        p = d / f"clock{i}"
        t0 = time.time_ns()
        write_new(p, b"x")
        t1 = time.time_ns()
        samples.append([t0, t1, os.stat(p).st_mtime_ns])
    return {"samples": samples}


LOCAL_CHECKS: tuple[tuple[str, Callable[[Path], dict[str, Any]]], ...] = (
    ("fsync", check_fsync),
    ("excl_local", check_excl_local),
    ("fcntl_local", check_fcntl_local),
    ("mtime_granularity", check_mtime),
    ("clock_fs", check_clock_fs),
)


def run_local(d: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every single-host check in ``d``; {name: raw} (raw has "error" on a crash)."""
    out: dict[str, Any] = {}
    for name, fn in LOCAL_CHECKS:
        progress(name)
        try:
            out[name] = fn(d)
        except OSError as e:
            out[name] = {"error": f"{errname(e)} ({e.filename or ''})"}
    return out
