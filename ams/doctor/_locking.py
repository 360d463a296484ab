"""Locks across hosts, tested with AMS's own lock and log code.

Three checks, from the raw primitive up to what the store does:

* fcntl exclusion: each host in turn holds a POSIX lock; every other host
  must be refused (EAGAIN/EACCES) while it does, and the next host must get
  the lock once it is released (the hand-off time is measured).
* counters: every host increments a number in a file N times, each time
  under :class:`ams.store.lock.Lock` (open, pread, pwrite, fsync, close), once
  with each lock method.  Lost increments mean the lock did not exclude or a
  holder read stale data under it.
* log appends: every host files messages into one real mailbox log
  (:class:`ams.store.log.MailboxLog`, small segments so it rolls over) under
  each lock method, first taking turns (each append right after another
  host's, where a stale tail would show), then all at once; afterwards
  every host reads the log back and checks that each message is there
  once, intact, with UIDs 1..N.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ams.config import LockMethod
from ams.doctor._local import attempt, errname, write_new
from ams.doctor._model import BOTH
from ams.doctor._rendezvous import Session
from ams.errors import AMSError
from ams.store.lock import Lock
from ams.store.log import LogOptions, LogReader, MailboxLog, NewMessage, create_log, fold

HANDOFF_DEADLINE = 10.0
COUNTER_WIDTH = 20
LOG_SEGMENT = 8192


def prepare(run_dir: Path, n: int) -> None:
    os.makedirs(run_dir / "fcntl")
    os.makedirs(run_dir / "sync" / "fcntl")
    write_new(run_dir / "fcntl" / "lock", b"", sync=True)
    for m in BOTH:
        c = run_dir / f"counter-{m}"
        os.makedirs(c)
        os.makedirs(run_dir / "sync" / f"counter-{m}")
        write_new(c / "value", b"0".ljust(COUNTER_WIDTH) + b"\n", sync=True)
        write_new(c / "lock", b"", sync=True)
        d = run_dir / f"log-{m}"
        os.makedirs(d)
        os.makedirs(run_dir / "sync" / f"log-{m}")
        create_log(d / "log", log_id=f"doctor-{m}", uidvalidity=1)


def _try_lock(fd: int) -> str:
    return attempt(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))


def fcntl_exclusion(sess: Session, run_dir: Path) -> dict[str, Any]:
    """Returns {"held": {h: result}, "tried": {h: result}, "handoff_ms": {h: ms|None}}
    for the turns this host took part in."""
    p = run_dir / "fcntl" / "lock"
    out: dict[str, dict[str, Any]] = {"held": {}, "tried": {}, "handoff_ms": {}}
    for h in sess.everyone:
        nxt = (h + 1) % sess.n
        tag = f"x{h}"
        if sess.me == h:
            fd = os.open(p, os.O_RDWR)
            try:
                out["held"][str(h)] = _try_lock(fd)
                sess.mark("fcntl", tag + ".held")
                sess.wait("fcntl", tag + ".tried", sess.others)
            finally:
                os.close(fd)  # drops the lock
            sess.mark("fcntl", tag + ".released")
            sess.wait("fcntl", tag + ".handoff", [nxt])
            continue
        sess.wait("fcntl", tag + ".held", [h])
        fd = os.open(p, os.O_RDWR)
        try:
            out["tried"][str(h)] = _try_lock(fd)
        finally:
            os.close(fd)
        sess.mark("fcntl", tag + ".tried")
        sess.wait("fcntl", tag + ".released", [h])
        if sess.me == nxt:
            out["handoff_ms"][str(h)] = _handoff(p)
            sess.mark("fcntl", tag + ".handoff")
    return out


def _handoff(p: Path) -> float | None:
    """Milliseconds until a just-released lock can be taken here."""
    fd = os.open(p, os.O_RDWR)
    try:
        t0 = time.monotonic()
        while True:
            if _try_lock(fd) == "ok":
                return round((time.monotonic() - t0) * 1000, 1)
            if time.monotonic() - t0 > HANDOFF_DEADLINE:
                return None
            time.sleep(0.001)
    finally:
        os.close(fd)


def _lock(sess: Session, method: str, fcntl_path: Path, dot_path: Path, *, host: str,
          lease: float, skew: float, timeout: float) -> Lock:
    # The lock's host name is unique per participant: two doctor runs on
    # one machine must not judge each other's dotlocks by pid.
    return Lock(method=cast(LockMethod, method), fcntl_path=fcntl_path, dot_path=dot_path, host=f"{host}.doctor{sess.me}", lease=lease, skew=skew,
                timeout=timeout)


def counter(sess: Session, run_dir: Path, method: str, rounds: int,
            **lock_args: Any) -> dict[str, Any]:
    d = run_dir / f"counter-{method}"
    lock = _lock(sess, method, d / "lock", d / "dot.lock", **lock_args)
    value = d / "value"
    scope = f"counter-{method}"
    sess.barrier(scope, "go")
    done, error, t0 = 0, None, time.monotonic()
    try:
        for _ in range(rounds):
            sess.alive()
            with lock:
                lock.check()
                fd = os.open(value, os.O_RDWR)
                try:
                    v = int(os.pread(fd, COUNTER_WIDTH, 0).strip(b" \0\n") or b"0")
                    os.pwrite(fd, str(v + 1).encode().ljust(COUNTER_WIDTH) + b"\n", 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            done += 1
    except (AMSError, OSError, ValueError) as e:
        error = f"{type(e).__name__}: {errname(e) if isinstance(e, OSError) else e}"
    seconds = round(time.monotonic() - t0, 3)
    sess.barrier(scope, "done")
    try:
        with open(value, "rb") as f:
            final: int | str = int(f.read().strip(b" \0\n") or b"0")
    except (OSError, ValueError) as e:
        final = f"unreadable: {e}"
    return {"done": done, "error": error, "seconds": seconds, "final": final}


def doctor_message(who: int, i: int) -> bytes:
    head = f"Subject: ams doctor {who} {i}\r\nMessage-ID: <doctor.{who}.{i}@ams>\r\n\r\n"
    return head.encode() + (f"{who}.{i} ".encode() * 80)[:500]


def log_append(sess: Session, run_dir: Path, method: str, count: int,
               **lock_args: Any) -> dict[str, Any]:
    d = run_dir / f"log-{method}"
    path = d / "log"
    lock = _lock(sess, method, path / "lock", d / "dot.lock", **lock_args)
    log = MailboxLog(path, lock, LogOptions(fsync=True, segment_bytes=LOG_SEGMENT,
                                            clock_skew=float(lock_args["skew"])))
    scope = f"log-{method}"
    sess.barrier(scope, "go")
    done, error, t0 = 0, None, time.monotonic()
    turns = count // 2
    for i in range(count):
        sess.alive()
        if i < turns:
            # Taking turns: each append comes right after another host's,
            # the moment a stale view of the tail would write over it.
            sess.wait(scope, f"t{i}", range(sess.me))
        if error is None:
            try:
                log.append([NewMessage(doctor_message(sess.me, i),
                                       internal_date=int(time.time()),
                                       delivery_id=f"doctor-{sess.me}-{i}")])
                done += 1
            except (AMSError, OSError) as e:
                error = f"{type(e).__name__}: {errname(e) if isinstance(e, OSError) else e}"
        if i < turns:
            sess.mark(scope, f"t{i}")
            sess.wait(scope, f"t{i}", range(sess.me + 1, sess.n))
    seconds = round(time.monotonic() - t0, 3)
    sess.barrier(scope, "done")
    return {"done": done, "error": error, "seconds": seconds, **read_back(log, sess.n)}


def read_back(log: MailboxLog, n: int) -> dict[str, Any]:
    """What this host finds in the log: counts per writer, damage, UID order."""
    per = [0] * n
    dups = bad = 0
    ids: set[str] = set()
    try:
        state = fold(LogReader(log.path))
        uids = sorted(state.messages)
        with log.message_reader() as reader:
            for uid in uids:
                m = state.messages[uid]
                parts = m.delivery_id.split("-")
                try:
                    who, i = int(parts[1]), int(parts[2])
                except (IndexError, ValueError):
                    bad += 1
                    continue
                if m.delivery_id in ids:
                    dups += 1
                ids.add(m.delivery_id)
                if 0 <= who < n and reader.read(m.location) == doctor_message(who, i):
                    per[who] += 1
                else:
                    bad += 1
        return {"per_writer": per, "dups": dups, "bad": bad,
                "uids_in_order": uids == list(range(1, len(uids) + 1)), "read_error": None}
    except (AMSError, OSError) as e:
        return {"per_writer": per, "dups": dups, "bad": bad, "uids_in_order": False,
                "read_error": f"{type(e).__name__}: {e}"}


LOCK_CHECKS: tuple[tuple[str, Callable[..., dict[str, Any]], str], ...] = (
    ("fcntl_counter", counter, "fcntl"),
    ("dotlock_counter", counter, "dotlock"),
    ("log_append_fcntl", log_append, "fcntl"),
    ("log_append_dotlock", log_append, "dotlock"),
)
