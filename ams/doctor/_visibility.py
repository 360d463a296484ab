"""Close-to-open visibility across hosts, measured as a latency.

Theory of operation
-------------------
The contract is causal: what one host wrote and closed is visible to another
host that opens the file *after learning the write happened*.  So each trial
goes: the writer sets up the old state and marks ``.s``; each observer waits
until it sees that old state (priming its caches with it: a read, an fstat,
a listing) and marks ``.p``; the writer changes the file and marks ``.a``;
each observer, on seeing ``.a``, looks for the change and records how long
it took.  0 means "seen on the first look", which is what a coherent
filesystem gives every time; anything else is a window in which a host
acts on stale data.  A trial gives up after ``deadline`` seconds, and an
observer that had to give up once skips the remaining trials of that kind
from that writer (so a 20 s directory cache costs one deadline, not ten).

The kinds mirror what AMS does: a new file opened by name, a new name in a
listing (spool shards), an append seen by re-reading or by fstat (how a log
writer finds the tail), a same-size overwrite (dotlock renewal), a rename
over an existing file (every publish), and an unlink.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ams.doctor._local import write_new
from ams.doctor._model import VIS_KINDS
from ams.doctor._rendezvous import Session

POLL = 0.002
A = b"a" * 100
B = b"b" * 100


def prepare(run_dir: Path, n: int) -> None:
    for w in range(n):
        os.makedirs(run_dir / "vis" / str(w) / "ls")
        os.makedirs(run_dir / "sync" / f"vis-{w}")


def _content(which: str, kind: str, w: int, k: int) -> bytes:
    return f"{which}:{kind}:{w}:{k}".ljust(48, ".").encode()


def _read(p: Path) -> bytes | None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _fstat_size(p: Path) -> int:
    fd = os.open(p, os.O_RDONLY)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _gone(p: Path) -> bool:
    try:
        os.close(os.open(p, os.O_RDONLY))
    except FileNotFoundError:
        return True
    return False


def poll(pred: Callable[[], bool], deadline: float) -> float | None:
    """Milliseconds until ``pred()`` holds (0.0: at once), None after ``deadline`` s."""
    t0 = time.monotonic()
    first = True
    while True:
        try:
            ok = pred()
        except OSError:
            ok = False
        if ok:
            return 0.0 if first else round((time.monotonic() - t0) * 1000, 1)
        first = False
        if time.monotonic() - t0 > deadline:
            return None
        time.sleep(POLL)


class _Trial:
    """One trial of one kind: the paths and the old and new contents."""

    def __init__(self, d: Path, kind: str, w: int, k: int) -> None:
        self.kind = kind
        self.path = d / f"{kind}{k}"
        self.listed = d / "ls"
        self.name = f"n{k}"
        self.old = _content("old", kind, w, k)
        self.new = _content("new", kind, w, k)

    def setup(self) -> None:
        if self.kind in ("append_reopen", "append_fstat"):
            write_new(self.path, A, sync=True)
        elif self.kind in ("overwrite", "rename_over", "unlink"):
            write_new(self.path, self.old, sync=True)

    def prime(self, deadline: float) -> bool:
        """Look at the old state (filling this host's caches) once it is there."""
        k, p = self.kind, self.path
        if k == "new_file":
            _read(p)  # a failed lookup: a negative entry, if this host caches them
            return True
        if k == "new_name_listed":
            os.listdir(self.listed)
            return True
        if k == "append_reopen":
            return poll(lambda: _read(p) == A, deadline) is not None
        if k == "append_fstat":
            return poll(lambda: _fstat_size(p) == len(A), deadline) is not None
        return poll(lambda: _read(p) == self.old, deadline) is not None

    def act(self) -> None:
        k, p = self.kind, self.path
        if k == "new_file":
            write_new(p, self.new)
        elif k == "new_name_listed":
            write_new(self.listed / self.name, b"x")
        elif k in ("append_reopen", "append_fstat", "overwrite"):
            data, offset = (B, len(A)) if k != "overwrite" else (self.new, 0)
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)  # where a log writer writes: never O_APPEND
                os.fsync(fd)
            finally:
                os.close(fd)
        elif k == "rename_over":
            tmp = p.with_name(p.name + ".tmp")
            write_new(tmp, self.new, sync=True)
            os.rename(tmp, p)
        elif k == "unlink":
            os.unlink(p)

    def observe(self, deadline: float) -> float | None:
        k, p = self.kind, self.path
        preds: dict[str, Callable[[], bool]] = {
            "new_file": lambda: _read(p) == self.new,
            "new_name_listed": lambda: self.name in os.listdir(self.listed),
            "append_reopen": lambda: _read(p) == A + B,
            "append_fstat": lambda: _fstat_size(p) == len(A) + len(B),
            "overwrite": lambda: _read(p) == self.new,
            "rename_over": lambda: _read(p) == self.new,
            "unlink": lambda: _gone(p),
        }
        return poll(preds[k], deadline)


def run(sess: Session, run_dir: Path, *, trials: int, deadline: float,
        progress: Callable[[str], None]) -> dict[str, list[Any]]:
    """This host's part: write for its turn, observe the others'.

    Returns {kind: [[writer, ms | None | "setup" | "skipped"], …]} of what
    this host observed (empty lists on the writer's own turn).
    """
    seen: dict[str, list[Any]] = {k: [] for k in VIS_KINDS}
    for w in sess.everyone:
        scope = f"vis-{w}"
        d = run_dir / "vis" / str(w)
        for kind in VIS_KINDS:
            progress(f"visibility of {kind.replace('_', ' ')}, written by {sess.host(w)}")
            gave_up = False
            for k in range(trials):
                t = _Trial(d, kind, w, k)
                tag = f"{kind}.{k}"
                if sess.me == w:
                    t.setup()
                    sess.mark(scope, tag + ".s")
                    sess.wait(scope, tag + ".p", sess.others)
                    t.act()
                    sess.mark(scope, tag + ".a")
                    continue
                sess.wait(scope, tag + ".s", [w])
                primed = gave_up or t.prime(deadline)
                sess.mark(scope, tag + ".p")
                sess.wait(scope, tag + ".a", [w])
                if gave_up:
                    seen[kind].append([w, "skipped"])
                elif not primed:
                    seen[kind].append([w, "setup"])
                    gave_up = True
                else:
                    ms = t.observe(deadline)
                    seen[kind].append([w, ms])
                    gave_up = ms is None
    return seen
