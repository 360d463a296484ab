"""Locks: exclusion, stale-lock breaking, leases and takeover detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ams.errors import LockLost, LockTimeout
from ams.store.lock import DOTLOCK_SIZE, Lock


def make(tmp_path: Path, method: str = "dotlock", *, host: str = "h1", lease: float = 30.0,
         skew: float = 0.0, timeout: float = 5.0) -> Lock:
    return Lock(method=method, fcntl_path=tmp_path / "lockfile", dot_path=tmp_path / "x.lock",
                host=host, lease=lease, skew=skew, timeout=timeout)  # type: ignore[arg-type]


def write_foreign(path: Path, *, host: str, pid: int, expires: float, token: str = "t") -> None:
    body = json.dumps({"host": host, "pid": pid, "start": "", "token": token,
                       "expires": expires}).encode()
    path.write_bytes(body.ljust(DOTLOCK_SIZE - 1) + b"\n")


def test_dotlock_file_holds_holder_and_lease(tmp_path: Path) -> None:
    lk = make(tmp_path)
    with lk:
        info = json.loads((tmp_path / "x.lock").read_bytes())
        assert info["host"] == "h1" and info["pid"] == os.getpid()
        assert info["expires"] > time.time() + 20
        assert (tmp_path / "x.lock").stat().st_size == DOTLOCK_SIZE
    assert not (tmp_path / "x.lock").exists()


def test_live_foreign_lock_is_not_broken(tmp_path: Path) -> None:
    write_foreign(tmp_path / "x.lock", host="other", pid=1, expires=time.time() + 60)
    with pytest.raises(LockTimeout):
        make(tmp_path, timeout=0.3).acquire()
    assert json.loads((tmp_path / "x.lock").read_bytes())["host"] == "other"


def test_expired_foreign_lock_is_broken_after_skew(tmp_path: Path) -> None:
    write_foreign(tmp_path / "x.lock", host="other", pid=1, expires=time.time() - 1)
    with pytest.raises(LockTimeout):  # still within the allowed clock skew
        make(tmp_path, skew=30, timeout=0.3).acquire()
    with make(tmp_path, skew=0.5, timeout=5) as lk:
        assert json.loads((tmp_path / "x.lock").read_bytes())["token"] == lk._token


def test_lock_of_dead_local_process_is_broken_at_once(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    write_foreign(tmp_path / "x.lock", host="h1", pid=int(p.stdout), expires=time.time() + 600)
    t0 = time.monotonic()
    with make(tmp_path, timeout=5):
        assert time.monotonic() - t0 < 2


def test_takeover_is_detected_before_writing(tmp_path: Path) -> None:
    lk = make(tmp_path)
    lk.acquire()
    lk.check()
    write_foreign(tmp_path / "x.lock", host="other", pid=1, expires=time.time() + 60,
                  token="someone-else")
    with pytest.raises(LockLost):
        lk.check()
    lk.release()
    # Release must not delete the new holder's file.
    assert json.loads((tmp_path / "x.lock").read_bytes())["token"] == "someone-else"


def test_expired_lease_refuses_commit_and_renews_when_due(tmp_path: Path) -> None:
    lk = make(tmp_path, lease=1.0)
    lk.acquire()
    lk._expires = time.time() + 0.4  # under half the lease left: check renews
    lk.check()
    assert lk._expires > time.time() + 0.9
    assert json.loads((tmp_path / "x.lock").read_bytes())["expires"] == pytest.approx(
        lk._expires, abs=0.01)
    lk._expires = time.time() - 0.1
    with pytest.raises(LockLost):
        lk.check()
    lk.release()


@pytest.mark.parametrize("method", ["fcntl", "dotlock"])
def test_threads_in_one_process_are_serialised(tmp_path: Path, method: str) -> None:
    inside = 0
    worst = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, worst
        for _ in range(50):
            with make(tmp_path, method):
                with guard:
                    inside += 1
                    worst = max(worst, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert worst == 1


def test_fcntl_lock_excludes_another_process(tmp_path: Path) -> None:
    code = ("import sys,time; from pathlib import Path; from ams.store.lock import Lock;"
            "l=Lock(method='fcntl', fcntl_path=Path(sys.argv[1])/'lockfile',"
            " dot_path=Path(sys.argv[1])/'x.lock', host='h2', lease=30, skew=0, timeout=0.3)\n"
            "try:\n l.acquire(); print('got')\nexcept Exception as e: print(type(e).__name__)")
    with make(tmp_path, "fcntl"):
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, timeout=30)
        assert p.stdout.strip() == "LockTimeout"
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert p.stdout.strip() == "got"
