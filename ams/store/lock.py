"""Per-object locks that work across hosts sharing one filesystem.

Two methods, chosen by ``store.lock_method``:

``fcntl``
    A POSIX record lock on a file that exists for the object's whole life
    (for a mailbox, ``<mailbox dir>/lock``).  Taking it changes no directory.
    Only safe where the filesystem honours fcntl locks between clients
    (``ams doctor`` tells); sshfs, for one, does not.

``dotlock``
    ``<root>/locks/<shard>/<name>.lock`` created with O_CREAT|O_EXCL, holding
    the holder's host, pid, a random token and a lease expiry.  The lock
    files live in their own sharded tree so taking a mailbox lock never
    changes the mailbox's directory.

Invariants (cited in the code as ``[L1]`` … ``[L4]``):

L1. At most one holder per name at a time, given that every holder stops
    writing once its lease has expired: a holder renews its lease at the
    latest halfway through it and checks, before every commit, that its
    lock file still carries its token and an unexpired lease
    (:meth:`Lock.check`).
L2. A lock is only judged stale when its lease expired more than
    ``clock_skew`` ago, or its holder is a process on *this* host that no
    longer exists.  A lock file still being written (empty or unparseable)
    is stale only once its mtime is older than lease + skew.
L3. Breaking a stale lock is a rename of the lock file to a unique name
    (exactly one breaker wins), followed by a check that the renamed file is
    the one judged stale.  If it is not (the stale holder released and a new
    holder took the lock in between), it is put back with link(2), which
    cannot overwrite; if that too is impossible the new holder's own
    :meth:`Lock.check` sees its token gone and aborts before writing.
L4. Within one process, a per-name mutex serialises threads first: fcntl
    locks belong to the process, so two threads would otherwise both "hold"
    one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ams.errors import LockLost, LockTimeout
from ams.store import _fs

log = logging.getLogger(__name__)

#: A dotlock file is written as exactly this many bytes (JSON padded with
#: spaces), so renewing it in place never changes its size.
DOTLOCK_SIZE = 256

_mutexes: dict[str, threading.Lock] = {}
_mutexes_guard = threading.Lock()


def _mutex(key: str) -> threading.Lock:
    with _mutexes_guard:
        m = _mutexes.get(key)
        if m is None:
            m = _mutexes[key] = threading.Lock()
        return m


def _proc_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (guards against pid reuse), or ''."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22, counted after the parenthesised command name.
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


_my_start: tuple[int, str] = (0, "")


def _own_start() -> str:
    """Our own start time, recomputed after a fork."""
    global _my_start
    pid = os.getpid()
    if _my_start[0] != pid:
        _my_start = (pid, _proc_start(pid))
    return _my_start[1]


class Lock:
    """One lock, taken with :meth:`acquire` or as a context manager.

    ``fcntl_path`` is the long-lived file for the fcntl method; ``dot_path``
    the lock file for the dotlock method.  Both are given so the caller's
    layout, not this class, decides where locks live.
    """

    def __init__(
        self,
        *,
        method: Literal["fcntl", "dotlock"],
        fcntl_path: Path,
        dot_path: Path,
        host: str,
        lease: float,
        skew: float,
        timeout: float,
    ) -> None:
        self.method = method
        self.fcntl_path = fcntl_path
        self.dot_path = dot_path
        self.host = host
        self.lease = lease
        self.skew = skew
        self.timeout = timeout
        self._mutex = _mutex(str(dot_path))
        self._fd: int | None = None
        self._token = ""
        self._expires = 0.0
        self.held = False

    # -- public ------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (None: the
        lock's own timeout), else LockTimeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._mutex.acquire(timeout=timeout):
            raise LockTimeout(f"timed out waiting for {self.dot_path.name} in this process")
        try:
            if self.method == "fcntl":
                self._acquire_fcntl(deadline)
            else:
                self._acquire_dot(deadline)
        except BaseException:
            self._mutex.release()
            raise
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if self.method == "fcntl":
                assert self._fd is not None
                os.close(self._fd)  # closing drops the record lock
                self._fd = None
            else:
                self._release_dot()
        finally:
            self._mutex.release()

    def check(self) -> None:
        """Raise LockLost unless we still hold the lock with lease to spare [L1].

        Renews a dotlock lease once half of it has passed.
        """
        if not self.held:
            raise LockLost("lock not held")
        if self.method == "fcntl":
            return
        now = time.time()
        if now >= self._expires - self.skew:
            raise LockLost(f"lease on {self.dot_path} ran out")
        info = self._read_dot(self.dot_path)
        if info is None or info.get("token") != self._token:
            raise LockLost(f"{self.dot_path} was broken by another host")
        if self._expires - now < self.lease / 2:
            self._renew()

    @contextmanager
    def waiting(self, timeout: float | None) -> Iterator[Lock]:
        """The lock as a context manager that waits at most ``timeout``
        seconds for it (None: the lock's own timeout)."""
        self.acquire(timeout)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- fcntl ---------------------------------------------------------------

    def _acquire_fcntl(self, deadline: float) -> None:
        try:
            fd = os.open(self.fcntl_path, os.O_RDWR | os.O_CREAT, 0o640)
        except FileExistsError:
            # A plain O_CREAT (no O_EXCL) that raced another host's create of
            # the same file: the kernel's lookup missed it, the server's create
            # found it, and MooseFS answers EEXIST.  It is there now: open it.
            fd = os.open(self.fcntl_path, os.O_RDWR)
        delay = 0.0005
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"timed out waiting for the lock on {self.fcntl_path}")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    # -- dotlock -------------------------------------------------------------

    def _payload(self) -> bytes:
        body = json.dumps({
            "host": self.host,
            "pid": os.getpid(),
            "start": _own_start(),
            "token": self._token,
            "expires": round(self._expires, 3),
        }).encode()
        if len(body) > DOTLOCK_SIZE - 1:
            raise ValueError("dotlock payload too large")
        return body.ljust(DOTLOCK_SIZE - 1) + b"\n"

    def _acquire_dot(self, deadline: float) -> None:
        delay = 0.001
        while True:
            self._token = secrets.token_hex(16)
            self._expires = time.time() + self.lease
            try:
                if _fs.create_exclusive(self.dot_path, self._payload()):
                    return
            except FileNotFoundError:
                _fs.makedirs(self.dot_path.parent)
                continue
            self._maybe_break()
            if time.monotonic() >= deadline:
                holder = self._read_dot(self.dot_path) or {}
                raise LockTimeout(
                    f"timed out waiting for {self.dot_path.name} "
                    f"(held by {holder.get('host', '?')} pid {holder.get('pid', '?')})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _renew(self) -> None:
        self._expires = time.time() + self.lease
        fd = os.open(self.dot_path, os.O_WRONLY)
        try:
            _fs.pwrite_all(fd, self._payload(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _release_dot(self) -> None:
        # Remove our file only if it is still ours: rename it aside first so
        # a file that a breaker replaced is never deleted by mistake [L3].
        aside = self.dot_path.with_name(f"{self.dot_path.name}.rel.{_fs.unique_suffix()}")
        if not _fs.rename_claim(self.dot_path, aside):
            log.warning("dotlock %s was gone at release (broken by another host?)", self.dot_path)
            return
        info = self._read_dot(aside)
        if info is None or info.get("token") != self._token:
            self._restore(aside)
            log.warning("dotlock %s had been taken over; left to its new holder", self.dot_path)
            return
        os.unlink(aside)

    def _maybe_break(self) -> None:
        info = self._read_dot(self.dot_path)
        if not self._is_stale(info):
            return
        victim = self.dot_path.with_name(f"{self.dot_path.name}.broken.{_fs.unique_suffix()}")
        if not _fs.rename_claim(self.dot_path, victim):
            return  # released meanwhile, or another breaker won
        now_info = self._read_dot(victim)
        same = (info is None and now_info is None) or (
            info is not None and now_info is not None and now_info.get("token") == info.get("token")
        )
        if same:
            log.warning("broke stale lock %s held by %s", self.dot_path, info)
            os.unlink(victim)
        else:
            self._restore(victim)

    def _restore(self, aside: Path) -> None:
        """Put a lock file we moved by mistake back, never over another [L3]."""
        try:
            os.link(aside, self.dot_path)
        except OSError as e:
            log.error("could not restore lock file %s (%s); its holder will see it lost",
                      self.dot_path, errno.errorcode.get(e.errno or 0, e.errno))
        try:
            os.unlink(aside)
        except FileNotFoundError:
            pass

    def _is_stale(self, info: dict[str, Any] | None) -> bool:
        """[L2]"""
        if info is None:
            try:
                st = os.stat(self.dot_path)
            except FileNotFoundError:
                return False
            return time.time() - st.st_mtime > self.lease + self.skew
        if time.time() > float(info.get("expires", 0)) + self.skew:
            return True
        if info.get("host") == self.host:
            pid = int(info.get("pid", 0))
            if pid <= 0:
                return True
            start = _proc_start(pid)
            if not start:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                except PermissionError:
                    return False
                return False
            return bool(info.get("start")) and start != info.get("start")
        return False

    @staticmethod
    def _read_dot(path: Path) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                raw = f.read(DOTLOCK_SIZE * 2)
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            return None
        return info if isinstance(info, dict) else None
