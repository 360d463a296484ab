"""How doctor runs on several hosts find each other, through files alone.

Theory of operation
-------------------
The hosts share nothing but the filesystem under test, so they meet in
``<root>/doctor/``.  Every name a host waits for is a name it already knows
(it opens or stats it); nothing is found by listing a directory, because
fresh listings are one of the things that may be broken::

    doctor/lead                  O_EXCL: the leader's run id, host, deadline
    doctor/run-ID/run.json       the run's creator
    doctor/run-ID/join-K         O_EXCL: follower slot K (1..peers)
    doctor/run-ID/roster         everyone's index, the rounds to run
    doctor/run-ID/abort          O_EXCL: why a host stopped early
    doctor/run-ID/sync/SCOPE/    barrier marks, NAME.INDEX
    doctor/run-ID/res/           published results, NAME.INDEX.json
    doctor/run-ID/tmp-INDEX/     each host's own staging directory

:class:`Rendezvous` is the state machine one host walks through::

    ELECTING --lead created--> LEADING --all slots taken--> READY
        |                         '--deadline------------> GAVE_UP
        '--lead exists--> JOINING --slot taken--> WAITING --roster--> READY
                             |  '--run gone / full--> ELECTING
                             '--------deadline-------> GAVE_UP

Every host first creates its own candidate run directory, then tries to
create ``lead`` naming it.  The one that succeeds leads (the others remove
their candidates); it waits for ``peers`` followers to take the slots
``join-1`` … ``join-N`` with O_EXCL, writes the roster, and removes
``lead`` so later arrivals start a run of their own.  A lead whose deadline
has passed (its leader died) is broken by renaming it aside.

Once READY, a :class:`Session` gives the checks barriers (each host creates
``NAME.INDEX``, then waits for everyone's) and a way to publish results
(staging, rename) and collect everyone's.  Every wait is bounded and also
watches for ``abort`` and for the run directory vanishing, so one host's
Ctrl-C ends the run on all of them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.store import _fs

#: A lead (or join file) still empty or unreadable this long is abandoned.
UNREADABLE_GRACE = 30.0
#: Run directories older than this are leftovers of killed runs.
LEFTOVER_AGE = 24 * 3600.0


GONE = "the run's directory is gone (the leader stopped)"


class Aborted(Exception):
    """The run ended early on another host, or a peer stopped answering."""


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def new_run_id(host: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:40]
    return f"run-{stamp}-{safe}-{secrets.token_hex(4)}"


def _read_json(path: Path) -> Any:
    """The parsed file; None when missing; ValueError when (still) unparseable."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return json.loads(raw)


class Board:
    """The file operations of the rendezvous, over ``<root>/doctor``."""

    def __init__(self, doctor_dir: Path) -> None:
        self.dir = doctor_dir
        self.lead = doctor_dir / "lead"

    def run_dir(self, run: str) -> Path:
        return self.dir / run

    # -- the lead file -----------------------------------------------------------

    def create_lead(self, info: dict[str, Any]) -> bool:
        return _fs.create_exclusive(self.lead, _fs.dump_json(info))

    def read_lead(self) -> tuple[dict[str, Any] | None, float | None]:
        """(info, None), or (None, mtime) while unreadable, or (None, None) if absent."""
        try:
            info = _read_json(self.lead)
        except ValueError:
            info = None
        if isinstance(info, dict):
            return info, None
        try:
            return None, os.stat(self.lead).st_mtime
        except FileNotFoundError:
            return None, None

    def remove_lead(self, run: str | None) -> None:
        """Remove ``lead`` if it names ``run`` (None: whatever it names)."""
        aside = self.dir / f"lead.old.{_fs.unique_suffix()}"
        if not _fs.rename_claim(self.lead, aside):
            return
        try:
            info = _read_json(aside)
        except ValueError:
            info = None
        if run is not None and isinstance(info, dict) and info.get("run") != run:
            try:  # not ours after all: put it back, never over a newer one
                os.link(aside, self.lead)
            except OSError:
                pass
        os.unlink(aside)

    # -- run directories -----------------------------------------------------------

    def make_run(self, run: str, info: dict[str, Any]) -> None:
        d = self.run_dir(run)
        os.mkdir(d)
        _fs.write_file_atomic(d / "run.json", _fs.dump_json(info), sync=False)

    def remove_run(self, run: str) -> None:
        shutil.rmtree(self.run_dir(run), ignore_errors=True)

    def join(self, run: str, slot: int, info: dict[str, Any]) -> str:
        """Take follower slot ``slot``: "ok", "taken" or "gone" (no such run)."""
        path = self.run_dir(run) / f"join-{slot}"
        try:
            return "ok" if _fs.create_exclusive(path, _fs.dump_json(info)) else "taken"
        except FileNotFoundError:
            return "gone"

    def read_join(self, run: str, slot: int) -> dict[str, Any] | None:
        try:
            info = _read_json(self.run_dir(run) / f"join-{slot}")
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def write_roster(self, run: str, roster: dict[str, Any]) -> None:
        d = self.run_dir(run)
        _fs.write_file_atomic(d / "roster", _fs.dump_json(roster), staging_dir=d / "tmp-0")

    def read_roster(self, run: str) -> dict[str, Any] | None:
        try:
            info = _read_json(self.run_dir(run) / "roster")
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def abort(self, run: str, host: str, why: str) -> None:
        try:
            _fs.create_exclusive(self.run_dir(run) / "abort",
                                 _fs.dump_json({"host": host, "reason": why}), sync=False)
        except OSError:
            pass  # the run is gone already, or another host aborted it first

    def aborted(self, run: str) -> bool:
        return os.path.lexists(self.run_dir(run) / "abort")

    def run_exists(self, run: str) -> bool:
        return self.run_dir(run).is_dir()

    def sweep_leftovers(self, now: float) -> list[str]:
        """Remove run directories of runs killed long ago; their names."""
        gone = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return gone
        for name in names:
            if not name.startswith("run-"):
                continue
            try:
                age = now - os.stat(self.dir / name / "run.json").st_mtime
            except FileNotFoundError:
                try:
                    age = now - os.stat(self.dir / name).st_mtime
                except FileNotFoundError:
                    continue
            if age > LEFTOVER_AGE:
                self.remove_run(name)
                gone.append(name)
        return gone


class State(enum.Enum):
    ELECTING = "electing"
    LEADING = "leading"
    JOINING = "joining"
    WAITING = "waiting"
    READY = "ready"
    GAVE_UP = "gave up"


@dataclass
class Roster:
    run: str
    me: int
    #: One dict per participant (index = position): host, pid, …
    hosts: list[dict[str, Any]]
    rounds: int

    @property
    def leader(self) -> bool:
        return self.me == 0


class Rendezvous:
    """One host's way to a roster.  Call :meth:`step` until READY or GAVE_UP.

    Each step does a few file operations and returns the new state; the
    caller sleeps between steps and owns the clock (``now`` is wall time,
    because deadlines are compared across hosts).
    """

    def __init__(self, board: Board, *, host: str, peers: int, wait: float, rounds: int,
                 now: float, extra: dict[str, Any] | None = None, skew: float = 5.0,
                 prepare: Callable[[Path], None] | None = None) -> None:
        self.board = board
        self.host = host
        self.peers = peers
        self.rounds = rounds
        self.deadline = now + wait
        self.skew = skew
        self.prepare = prepare
        self.me_info = {"host": host, "pid": os.getpid(), "token": secrets.token_hex(8),
                        "started": now, **(extra or {})}
        self.state = State.ELECTING
        self.run = ""            # the run we lead or joined
        self.candidate = ""      # our own run directory, while electing
        self.slots = 0           # the leader's peer count
        self.slot = 0            # the follower slot we took
        self.roster: Roster | None = None
        self.joined: dict[int, dict[str, Any]] = {}
        self.note = ""           # what the last step saw, for progress

    # -- the machine -------------------------------------------------------------

    def step(self, now: float) -> State:
        handler = {State.ELECTING: self._elect, State.LEADING: self._lead,
                   State.JOINING: self._join, State.WAITING: self._wait}.get(self.state)
        if handler is not None:
            self.state = handler(now)
        return self.state

    def _elect(self, now: float) -> State:
        if now >= self.deadline:
            return self._give_up("no run to join or lead before the deadline")
        if not self.candidate:
            self.candidate = new_run_id(self.host)
            self.board.make_run(self.candidate, {**self.me_info, "run": self.candidate})
        lead = {"run": self.candidate, "host": self.host, "pid": os.getpid(),
                "peers": self.peers, "expires": self.deadline}
        with _uninterrupted():  # a lead of ours must be known to cancel()
            won = self.board.create_lead(lead)
            if won:
                self.state = State.LEADING
                self.run, self.candidate = self.candidate, ""
        if won:
            os.mkdir(self.board.run_dir(self.run) / "tmp-0")
            self.board.sweep_leftovers(now)
            self.note = f"leading {self.run}"
            return State.LEADING
        info, mtime = self.board.read_lead()
        if info is None:
            if mtime is not None and now - mtime > UNREADABLE_GRACE + self.skew:
                self.board.remove_lead(None)  # a leader died while writing it
            return State.ELECTING
        if float(info.get("expires", 0)) + self.skew < now:
            self.note = f"broke the abandoned lead of {info.get('host')}"
            self.board.remove_lead(str(info.get("run")))
            return State.ELECTING
        self.board.remove_run(self.candidate)
        self.candidate = ""
        self.run = str(info["run"])
        self.slots = int(info.get("peers", self.peers))
        self.note = f"joining {info.get('host')}'s run"
        return State.JOINING

    def _lead(self, now: float) -> State:
        if self.board.aborted(self.run):
            # A follower left before the run began: start over.
            self.board.remove_lead(self.run)
            self.board.remove_run(self.run)
            self.run, self.joined = "", {}
            return State.ELECTING
        for slot in range(1, self.peers + 1):
            if slot not in self.joined:
                info = self.board.read_join(self.run, slot)
                if info is not None:
                    self.joined[slot] = info
        self.note = f"{len(self.joined)} of {self.peers} peers joined"
        if len(self.joined) == self.peers:
            hosts = [{**self.me_info, "index": 0}]
            hosts += [{**self.joined[s], "index": s} for s in range(1, self.peers + 1)]
            if self.prepare is not None:
                self.prepare(self.board.run_dir(self.run))
            self.board.write_roster(self.run, {"run": self.run, "hosts": hosts,
                                               "rounds": self.rounds})
            self.board.remove_lead(self.run)
            self.roster = Roster(self.run, 0, hosts, self.rounds)
            return State.READY
        if now >= self.deadline:
            return self._give_up(f"{len(self.joined)} of {self.peers} peers joined")
        return State.LEADING

    def _join(self, now: float) -> State:
        if now >= self.deadline:
            return self._give_up("the run found was full or gone")
        for slot in range(1, self.slots + 1):
            with _uninterrupted():
                got = self.board.join(self.run, slot, self.me_info)
                if got == "ok":
                    self.slot = slot
                    self.state = State.WAITING
            if got == "ok":
                return State.WAITING
            if got == "gone":
                break
        # Full (its leader will drop ``lead`` soon) or gone: elect again.
        self.run = ""
        return State.ELECTING

    def _wait(self, now: float) -> State:
        roster = self.board.read_roster(self.run)
        if roster is not None:
            hosts = list(roster.get("hosts", []))
            mine = hosts[self.slot] if self.slot < len(hosts) else {}
            if mine.get("token") != self.me_info["token"]:
                return self._give_up("the leader's roster does not list this host")
            self.roster = Roster(self.run, self.slot, hosts, int(roster["rounds"]))
            return State.READY
        if not self.board.run_exists(self.run):
            self.run = ""
            return State.ELECTING  # the leader gave up: try again, perhaps leading
        if now >= self.deadline:
            return self._give_up("joined a run whose other peers never came")
        self.note = "joined; waiting for the other peers"
        return State.WAITING

    def _give_up(self, why: str) -> State:
        self.cancel(why)
        self.note = why
        return State.GAVE_UP

    def cancel(self, why: str = "interrupted") -> None:
        """Undo what this host holds (given up, or interrupted before READY)."""
        if self.candidate:
            self.board.remove_run(self.candidate)
            self.candidate = ""
        if self.state is State.LEADING and self.run:
            self.board.remove_lead(self.run)
            self.board.remove_run(self.run)
        elif self.state is State.WAITING and self.run:
            # The leader counts us in: tell it, or it would wait for us.
            self.board.abort(self.run, self.host, why)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM (until the block ends) around a file
    operation and the state change that records it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- a running session -----------------------------------------------------------------


SPIN = 0.0005      # first polling interval of a wait
BACKOFF_MAX = 0.02
BEAT = 2.0         # seconds between heartbeats


class Session:
    """Barriers and result exchange among the hosts of one run.

    A host is given up on only after ``silence`` seconds in which its
    heartbeat file (``beat-INDEX``, touched every few seconds by
    :meth:`alive`, which every wait and long loop calls) did not change: a
    slow filesystem makes a run long, not incomplete.
    """

    def __init__(self, run_dir: Path, roster: Roster, *, silence: float) -> None:
        self.dir = run_dir
        self.roster = roster
        self.me = roster.me
        self.n = len(roster.hosts)
        self.silence = silence
        self._alive_at = self._beat_at = time.monotonic()
        self._beats: dict[int, tuple[int | None, float]] = {}
        self.staging = run_dir / f"tmp-{self.me}"
        if not self.staging.is_dir():
            os.mkdir(self.staging)
        self._beat()

    @property
    def everyone(self) -> range:
        return range(self.n)

    @property
    def others(self) -> list[int]:
        return [i for i in range(self.n) if i != self.me]

    def host(self, i: int) -> str:
        return str(self.roster.hosts[i].get("host", f"#{i}"))

    def sync_dir(self, scope: str) -> Path:
        return self.dir / "sync" / scope

    # -- marks and barriers --------------------------------------------------------

    def mark(self, scope: str, name: str) -> None:
        path = self.sync_dir(scope) / f"{name}.{self.me}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise Aborted(GONE) from None
        except FileExistsError:
            # A plain O_CREAT can still meet EEXIST on a distributed
            # filesystem (a racing create seen late): the mark is there.
            if not path.exists():
                raise
            return
        os.close(fd)

    def wait(self, scope: str, name: str, who: Iterable[int]) -> None:
        """Wait until each host in ``who`` has made mark ``name``."""
        d = self.sync_dir(scope)
        self._wait_paths({i: d / f"{name}.{i}" for i in who}, f"{scope}/{name}")

    def barrier(self, scope: str, name: str) -> None:
        self.mark(scope, name)
        self.wait(scope, name, self.others)

    def _wait_paths(self, paths: dict[int, Path], what: str) -> None:
        missing = dict(paths)
        start = time.monotonic()
        delay = SPIN
        while True:
            for i, p in list(missing.items()):
                if _exists(p):
                    del missing[i]
            if not missing:
                return
            now = time.monotonic()
            if now - self._alive_at >= 0.5:
                self.alive()
                _revalidate(p.parent)
                silent = [i for i in missing if self._silent_for(i, now) > self.silence]
                if silent:
                    who = ", ".join(self.host(i) for i in silent)
                    raise Aborted(f"{who} stopped answering (no sign of life for "
                                  f"{self.silence:g} s, waiting at {what})")
            time.sleep(delay)
            if now - start > 0.2:
                delay = min(delay * 2, BACKOFF_MAX)

    # -- liveness --------------------------------------------------------------------

    def alive(self) -> None:
        """Beat our heart; raise Aborted if the run has ended elsewhere.

        Cheap enough for any loop: it looks at most twice a second.
        """
        now = time.monotonic()
        if now - self._alive_at < 0.5:
            return
        self._alive_at = now
        self._check_alive()
        if now - self._beat_at >= BEAT:
            self._beat_at = now
            self._beat()

    def _beat(self) -> None:
        p = self.dir / f"beat-{self.me}"
        try:
            with open(p, "ab") as f:
                f.write(b".")
        except FileNotFoundError:
            raise Aborted(GONE) from None

    def _silent_for(self, i: int, now: float) -> float:
        """Seconds since host ``i``'s heartbeat last changed (as seen here)."""
        try:
            size: int | None = os.stat(self.dir / f"beat-{i}").st_size
        except OSError:
            size = None
        last = self._beats.get(i)
        if last is None or last[0] != size:
            self._beats[i] = (size, now)
            return 0.0
        return now - last[1]

    def _check_alive(self) -> None:
        try:
            info = _read_json(self.dir / "abort")
        except ValueError:
            info = {}
        if info is not None:
            raise Aborted(f"{info.get('host', 'a peer')} stopped the run: "
                          f"{info.get('reason', 'no reason given')}")
        if not self.dir.is_dir():
            raise Aborted(GONE)

    # -- results -------------------------------------------------------------------

    def publish(self, name: str, obj: Any) -> None:
        try:
            _fs.write_file_atomic(self.dir / "res" / f"{name}.{self.me}.json",
                                  json.dumps(obj).encode(), staging_dir=self.staging, sync=False)
        except FileNotFoundError:
            raise Aborted(GONE) from None

    def collect(self, name: str, who: Iterable[int] | None = None) -> dict[int, Any]:
        who = list(self.everyone if who is None else who)
        paths = {i: self.dir / "res" / f"{name}.{i}.json" for i in who}
        self._wait_paths(paths, f"results of {name}")
        out: dict[int, Any] = {}
        for i, p in paths.items():
            with open(p, "rb") as f:
                out[i] = json.loads(f.read())
        return out

    def exchange(self, name: str, obj: Any) -> list[Any]:
        """Publish ``obj`` and return everyone's, by index."""
        self.publish(name, obj)
        got = self.collect(name)
        return [got[i] for i in self.everyone]

    def abort(self, host: str, reason: str) -> None:
        Board(self.dir.parent).abort(self.dir.name, host, reason)


def _exists(p: Path) -> bool:
    try:
        os.stat(p)
    except FileNotFoundError:
        return False
    except OSError as e:  # ESTALE and friends: not there yet, as far as we can tell
        if e.errno in (errno.ESTALE, errno.ENOTDIR):
            return False
        raise
    return True


def _revalidate(d: Path) -> None:
    """Open a directory: NFS revalidates it on open, dropping stale negative entries."""
    try:
        os.close(os.open(d, os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        pass
