"""Races between hosts (rename, O_EXCL, mkdir, O_APPEND) and their clocks.

Every racer goes through the same names in the same order right after a
common barrier, so hosts running at similar speeds collide for real; the
checks hold whoever wins each round.  Each host then reports what it sees
(which names exist, what a created file holds), because a race whose
outcome two hosts see differently is as bad as one with two winners.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ams.doctor._local import attempt, write_new
from ams.doctor._rendezvous import Session

#: O_APPEND records are this long, newline included.
RECORD = 64


def prepare(run_dir: Path, n: int, rounds: int) -> None:
    for scope in ("rename", "excl", "mkdir", "o_append", "clock"):
        os.makedirs(run_dir / "sync" / scope)
    for name in ("rename", "excl", "mkdir", "o_append"):
        os.makedirs(run_dir / name)
    for i in range(rounds):
        write_new(run_dir / "rename" / f"s{i}", f"source {i}".encode())
    write_new(run_dir / "o_append" / "file", b"")


def _exists(p: Path) -> bool:
    try:
        os.stat(p)
    except OSError:
        return False
    return True


def _each(sess: Session, rounds: int, op: Callable[[int], object]) -> list[str]:
    """op(0) … op(rounds - 1), each "ok" or the errno it failed with."""
    out = []
    for i in range(rounds):
        sess.alive()
        out.append(attempt(lambda: op(i)))  # noqa: B023 - called at once
    return out


def rename_race(sess: Session, run_dir: Path, rounds: int) -> dict[str, Any]:
    d = run_dir / "rename"
    sess.barrier("rename", "go")
    results = _each(sess, rounds, lambda i: os.rename(d / f"s{i}", d / f"s{i}.{sess.me}"))
    sess.barrier("rename", "done")
    # What this host sees afterwards: "1" where a name exists, source first.
    final = ["".join("1" if _exists(p) else "0"
                     for p in [d / f"s{i}", *(d / f"s{i}.{j}" for j in sess.everyone)])
             for i in range(rounds)]
    return {"results": results, "final": final}


def excl_race(sess: Session, run_dir: Path, rounds: int) -> dict[str, Any]:
    d = run_dir / "excl"
    tag = f"host {sess.me}".encode()

    def create(i: int) -> None:
        fd = os.open(d / f"e{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, tag)
        finally:
            os.close(fd)

    sess.barrier("excl", "go")
    results = _each(sess, rounds, create)
    sess.barrier("excl", "done")
    contents = []
    for i in range(rounds):
        try:
            with open(d / f"e{i}", "rb") as f:
                contents.append(f.read().decode("ascii", "replace"))
        except OSError:
            contents.append(None)
    return {"results": results, "contents": contents}


def mkdir_race(sess: Session, run_dir: Path, rounds: int) -> dict[str, Any]:
    d = run_dir / "mkdir"
    sess.barrier("mkdir", "go")
    results = _each(sess, rounds, lambda i: os.mkdir(d / f"m{i}"))
    return {"results": results}


def o_append(sess: Session, run_dir: Path, rounds: int) -> dict[str, Any]:
    """Each host appends ``rounds`` records through one O_APPEND descriptor."""
    p = run_dir / "o_append" / "file"
    sess.barrier("o_append", "go")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(rounds):
            sess.alive()
            rec = f"{sess.me}:{i:08d}:".encode()
            os.write(fd, rec.ljust(RECORD - 1, b"x") + b"\n")
    finally:
        os.close(fd)
    sess.barrier("o_append", "done")
    with open(p, "rb") as f:
        data = f.read()
    return summarize_appends(data, sess.n)


def summarize_appends(data: bytes, n: int) -> dict[str, Any]:
    counts = [0] * n
    seen: set[tuple[int, int]] = set()
    malformed = dups = 0
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        parts = line.split(b":")
        try:
            who, seq = int(parts[0]), int(parts[1])
            ok = len(line) == RECORD - 1 and 0 <= who < n and parts[2].strip(b"x") == b""
        except (ValueError, IndexError):
            ok = False
        if not ok:
            malformed += 1
            continue
        if (who, seq) in seen:
            dups += 1
        seen.add((who, seq))
        counts[who] += 1
    return {"bytes": len(data), "counts": counts, "malformed": malformed, "dups": dups}


def clock_peers(sess: Session, pings: int = 5) -> dict[str, Any]:
    """NTP over files: the leader pings each peer; returns the leader's samples.

    A sample is [t1, t2, t3, t4]: leader sends at t1, the peer sees it at t2
    and answers at t3 (its clock), the leader sees the answer at t4.
    """
    samples: dict[str, list[list[float]]] = {}
    if sess.me == 0:
        for f in sess.others:
            samples[str(f)] = []
            for k in range(pings):
                t1 = time.time()
                sess.publish(f"ping.{f}.{k}", t1)
                t2, t3 = sess.collect(f"pong.{f}.{k}", [f])[f]
                samples[str(f)].append([t1, t2, t3, time.time()])
    else:
        for k in range(pings):
            sess.collect(f"ping.{sess.me}.{k}", [0])
            t2 = time.time()
            sess.publish(f"pong.{sess.me}.{k}", [t2, time.time()])
    return {"samples": samples}


RACES: tuple[tuple[str, Callable[[Session, Path, int], dict[str, Any]]], ...] = (
    ("rename_race", rename_race),
    ("excl_race", excl_race),
    ("mkdir_race", mkdir_race),
)
