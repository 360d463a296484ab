"""Helpers for tests that run ``ams mount`` as a real process on a real FUSE mount."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ams.mount import is_dead_mount, lazy_unmount
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent


def is_mounted(mountpoint: Path) -> bool:
    """Whether /proc/self/mountinfo lists ``mountpoint`` (touches no FUSE file)."""
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def start_mount(config: Path, mountpoint: Path, *args: str,
                log: Path | None = None) -> subprocess.Popen[bytes]:
    """``ams mount`` in its own process; returns once it says it is mounted."""
    err = open(log or os.devnull, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ams.cli", "--config", str(config), "mount",
             str(mountpoint), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT), "AMS_LOG_LEVEL": "INFO"})
    finally:
        err.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline().decode() if ready else ""
    if "mounted" not in line:
        stop(proc, mountpoint)
        detail = log.read_text() if log is not None and log.exists() else ""
        raise AssertionError(f"ams mount did not come up: {line!r} {detail}")
    return proc


def stop(proc: subprocess.Popen[bytes], mountpoint: Path, sig: int = signal.SIGTERM,
         ) -> int | None:
    """Stop the mount process (SIGTERM by default) and make sure nothing stays mounted."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        rc = proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    if is_mounted(mountpoint):
        lazy_unmount(mountpoint)
    return rc


def crash(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the mount process and leave its dead mount behind."""
    proc.kill()
    proc.wait(WAIT)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def mounted(config: Path, mountpoint: Path, *args: str,
            log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_mount(config, mountpoint, *args, log=log)
    try:
        yield proc
    finally:
        stop(proc, mountpoint)


def wait_for(cond: object, timeout: float) -> float | None:
    """Poll ``cond()`` until true; return the seconds it took, None on timeout."""
    start = time.monotonic()
    while True:
        if cond():  # type: ignore[operator]
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(0.01)


__all__ = ["crash", "is_dead_mount", "is_mounted", "mounted", "start_mount", "stop", "wait_for"]
