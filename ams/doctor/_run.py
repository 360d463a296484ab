"""One doctor run on this host: meet the peers, run every check, judge.

The order is fixed so that every host runs the same steps: rendezvous, the
single-host checks (each in ``<run>/host-<index>``), the cross-host checks,
then an exchange of everything measured, which every host judges alike.
The leader removes the run directory once all hosts have said they are
done, or at once when the run is aborted (Ctrl-C, SIGTERM, a peer that
stopped answering).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.doctor import _locking, _races, _visibility
from ams.doctor._local import run_local
from ams.doctor._model import VIS_KINDS, Report, Verdict
from ams.doctor._rendezvous import (
    GONE,
    Aborted,
    Board,
    Rendezvous,
    Roster,
    Session,
    State,
    new_run_id,
)
from ams.doctor._startup import fs_identity, write_verdict
from ams.doctor._verdict import decide, judge_all
from ams.store import _fs

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    root: Path
    host: str
    peers: int = 1
    wait: float = 60.0
    rounds: int = 100
    #: From the config (or the defaults): what the verdict compares against.
    lease: float = 30.0
    skew: float = 5.0
    lock_timeout: float = 60.0
    #: How long one visibility trial waits for a change to show.
    deadline: float = 10.0
    #: A host whose heartbeat has not changed for this long is given up on.
    silence: float = 120.0


def trials_for(rounds: int) -> int:
    """Visibility trials per kind and writer for ``rounds``."""
    return max(2, min(rounds // 10, 10))


def log_messages_for(rounds: int) -> int:
    return max(4, rounds // 5)


def prepare_run(run_dir: Path, n: int, rounds: int) -> None:
    """What the leader creates before the roster: every shared directory and
    starting file, so no two hosts ever race to create one."""
    os.makedirs(run_dir / "res")
    os.makedirs(run_dir / "sync" / "done")
    _visibility.prepare(run_dir, n)
    _races.prepare(run_dir, n, rounds)
    _locking.prepare(run_dir, n)


def _incomplete(opts: Options, run: str, error: str, peers: list[dict[str, Any]]) -> Report:
    v = Verdict("incomplete", None, (), {}, "cross-host")
    return Report(v, [], peers, str(opts.root), run, fs_identity(opts.root), error)


def meet(board: Board, opts: Options, progress: Progress) -> Roster | str:
    """The rendezvous loop: a roster, or why there is none."""
    rv = Rendezvous(board, host=opts.host, peers=opts.peers, wait=opts.wait, rounds=opts.rounds,
                    now=time.time(), skew=opts.skew,
                    extra={"lease": opts.lease, "skew": opts.skew},
                    prepare=lambda d: prepare_run(d, opts.peers + 1, opts.rounds))
    delay = 0.005
    try:
        while True:
            state = rv.step(time.time())
            if state is State.READY:
                assert rv.roster is not None
                return rv.roster
            if state is State.GAVE_UP:
                n = opts.peers
                return (f"{'no peer' if n == 1 else f'not all {n} peers'} joined within "
                        f"{opts.wait:g} s ({rv.note}); start 'ams doctor' on the other "
                        f"host{'s' if n > 1 else ''} at the same time, with the same root")
            progress(f"waiting for {opts.peers} peer{'s' if opts.peers > 1 else ''}: "
                     f"{rv.note}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    except BaseException:
        rv.cancel()
        raise


def run_doctor(opts: Options, progress: Progress = lambda s: None) -> Report:
    board = Board(opts.root / "doctor")
    _fs.makedirs(board.dir, sync=False)
    if opts.peers == 0:
        run = new_run_id(opts.host)
        board.make_run(run, {"host": opts.host, "pid": os.getpid(), "run": run})
        roster = Roster(run, 0, [{"host": opts.host, "pid": os.getpid(), "index": 0}],
                        opts.rounds)
    else:
        got = meet(board, opts, progress)
        if isinstance(got, str):
            return _incomplete(opts, "", got, [])
        roster = got
    run_dir = board.run_dir(roster.run)
    peers = [{"index": i, "host": h.get("host"), "leader": i == 0, "me": i == roster.me}
             for i, h in enumerate(roster.hosts)]
    sess: Session | None = None
    try:
        if opts.peers:
            sess = Session(run_dir, roster, silence=opts.silence)
        report = _checks(opts, roster, run_dir, sess, peers, progress)
    except Aborted as e:
        report = _incomplete(opts, roster.run, str(e), peers)
    except BaseException as e:
        if isinstance(e, OSError) and not run_dir.is_dir():
            # The leader removed the run under our feet: it stopped.
            report = _incomplete(opts, roster.run, GONE, peers)
        else:
            if sess is not None:
                sess.abort(opts.host, "interrupted" if isinstance(e, KeyboardInterrupt)
                           else f"{type(e).__name__}: {e}")
            raise
    finally:
        if roster.leader:
            shutil.rmtree(run_dir, ignore_errors=True)
    if report.verdict.verdict != "incomplete":
        write_verdict(opts.root, opts.host, report, report.filesystem)
    return report


def _checks(opts: Options, roster: Roster, run_dir: Path, sess: Session | None,
            peers: list[dict[str, Any]], progress: Progress) -> Report:
    rounds = roster.rounds
    host_dir = run_dir / f"host-{roster.me}"
    os.mkdir(host_dir)
    local = run_local(host_dir, lambda name: progress(f"checking {name} on this host"))
    cross = None
    everyone_local = {0: local}
    if sess is not None:
        cross = run_cross(sess, run_dir, opts, rounds, progress)
        progress("exchanging results")
        everyone_local = dict(enumerate(sess.exchange("local", local)))
    hosts = [str(h.get("host")) for h in roster.hosts]
    checks = judge_all(everyone_local, cross, hosts, rounds=rounds, deadline=opts.deadline,
                       clock_skew=opts.skew)
    verdict = decide(checks, lease=opts.lease, skew=opts.skew, cross_host=sess is not None)
    if sess is not None:
        sess.barrier("done", "done")
    return Report(verdict, checks, peers, str(opts.root), roster.run, fs_identity(opts.root))


def run_cross(sess: Session, run_dir: Path, opts: Options, rounds: int,
              progress: Progress) -> dict[str, list[Any]]:
    """Every cross-host check; {name: [raw result of each host]}."""
    out: dict[str, list[Any]] = {}

    def step(name: str, fn: Callable[[], Any]) -> None:
        progress(f"checking {name.replace('_', ' ')}")
        out[name] = sess.exchange(name, fn())

    step("clock_peers", lambda: _races.clock_peers(sess))
    vis = _visibility.run(sess, run_dir, trials=trials_for(rounds), deadline=opts.deadline,
                          progress=progress)
    seen = sess.exchange("vis", vis)
    for kind in VIS_KINDS:
        out[f"vis_{kind}"] = [{kind: s[kind]} for s in seen]
    for name, race in _races.RACES:
        step(name, lambda race=race: race(sess, run_dir, rounds))
    step("fcntl_exclusion", lambda: _locking.fcntl_exclusion(sess, run_dir))
    lock_args = {"host": opts.host, "lease": opts.lease, "skew": opts.skew,
                 "timeout": min(opts.lock_timeout, 60.0)}
    for name, fn, method in _locking.LOCK_CHECKS:
        count = rounds if fn is _locking.counter else log_messages_for(rounds)
        step(name, lambda fn=fn, method=method, count=count:
             fn(sess, run_dir, method, count, **lock_args))
    step("o_append", lambda: _races.o_append(sess, run_dir, rounds))
    return out
