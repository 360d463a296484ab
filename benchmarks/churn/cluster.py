"""A coordinator and one meter mount per simulated host, over one backing directory.

Used by the benchmark and by tests/test_churn_meter.py::

    with Cluster(workdir, backing, mailbox_re=r"mail/[^/]+") as cl:
        a = cl.mount("mx")          # a path: the host "mx" sees the store here
        b = cl.mount("imap1")
        before = cl.snapshot()      # {host: Counters}
        ...
        delta = cl.delta(before)

Every meter and the coordinator is its own process in its own session;
:meth:`Cluster.close` (also on an exception, Ctrl-C included) stops them
with SIGTERM, then SIGKILL, and lazily unmounts any mount left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ams.index._fstype import mounts
from benchmarks.churn.model import Counters

ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 30.0


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (from /proc/self/mountinfo: no stat of it,
    which would hang on a dead FUSE mount)."""
    target = os.path.realpath(path)
    return any(m.mountpoint == target for m in mounts())


def unmount(path: Path) -> None:
    """Unmount lazily if mounted; quiet if not."""
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30,
                       check=False)
        if mounted(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                           check=False)


class Cluster:
    def __init__(self, workdir: Path, backing: Path, *, mailbox_re: str | None = None,
                 cache_timeout: float = 0.0) -> None:
        self.workdir = workdir
        self.cache_timeout = cache_timeout
        self.backing = backing
        self.mailbox_re = mailbox_re
        self.socket = workdir / "coordinator.sock"
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.meters: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        out = open(self.workdir / f"{name}.out", "wb")  # noqa: SIM115
        err = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                                    start_new_session=True)
        finally:
            out.close()
            err.close()

    def _wait_ready(self, proc: subprocess.Popen[bytes], name: str) -> None:
        out = self.workdir / f"{name}.out"
        deadline = time.monotonic() + START_TIMEOUT
        while b"ready" not in out.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}: "
                                   f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {START_TIMEOUT:.0f} s: "
                                   f"{self.log_tail(name)}")
            time.sleep(0.02)

    def log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(text[-lines:]) or "(empty log)"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.coordinator = self._spawn(["benchmarks.churn.coordinator", "--socket",
                                        str(self.socket)], "coordinator")
        self._wait_ready(self.coordinator, "coordinator")

    def mount(self, host: str) -> Path:
        """Mount the backing dir for a new host; returns its mount point."""
        mp = self.workdir / "mnt" / host
        mp.mkdir(parents=True, exist_ok=True)
        args = ["benchmarks.churn.meter", "--backing", str(self.backing), "--mountpoint",
                str(mp), "--client", host, "--coordinator", str(self.socket)]
        if self.mailbox_re:
            args += ["--mailbox-re", self.mailbox_re]
        if self.cache_timeout:
            args += ["--cache-timeout", str(self.cache_timeout)]
        proc = self._spawn(args, f"meter-{host}")
        self.meters[host] = (proc, mp)
        self._wait_ready(proc, f"meter-{host}")
        deadline = time.monotonic() + START_TIMEOUT
        while not mounted(mp):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"meter {host} did not mount {mp}: "
                                   f"{self.log_tail(f'meter-{host}')}")
            time.sleep(0.02)
        return mp

    def pids(self, host: str) -> list[int]:
        return [self.meters[host][0].pid]

    def snapshot(self) -> dict[str, Counters]:
        """Every host's counters as the coordinator has them now."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.socket))
            s.sendall(b'["S"]\n')
            buf = b""
            while not buf.endswith(b"\n"):
                data = s.recv(1 << 16)
                if not data:
                    raise RuntimeError("the coordinator closed the connection")
                buf += data
        kind, snap = json.loads(buf)
        assert kind == "S"
        return {name: Counters.from_dict(d) for name, d in snap.items()}

    def delta(self, before: dict[str, Counters]) -> dict[str, Counters]:
        now = self.snapshot()
        return {name: c.minus(before.get(name, Counters())) for name, c in now.items()}

    def close(self) -> None:
        procs = [p for p, _ in self.meters.values()]
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL, group=True)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for _, mp in self.meters.values():
            unmount(mp)
        self.meters.clear()
        if self.coordinator is not None:
            _signal(self.coordinator, signal.SIGTERM)
            try:
                self.coordinator.wait(10)
            except subprocess.TimeoutExpired:
                _signal(self.coordinator, signal.SIGKILL, group=True)
                self.coordinator.wait(5)
            self.coordinator = None


def _signal(p: subprocess.Popen[bytes], sig: int, *, group: bool = False) -> None:
    if p.poll() is not None:
        return
    try:
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["Cluster", "mounted", "unmount"]
