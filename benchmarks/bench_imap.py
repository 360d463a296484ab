"""The IMAP bridge beside Dovecot's imap, on the same messages, in the same run.

Run from the repository root (as root, on Debian, for the peer)::

    python -m benchmarks.bench_imap                  # full size: 8-15 minutes on 2 cores
    python -m benchmarks.bench_imap --quick          # small sizes, 1 run: a smoke test
    python -m benchmarks.bench_imap --only fetch --runs 5
    python -m benchmarks.bench_imap --only idle --idle-connections 1000

Targets (issue #4, BRIEF.md): SELECT + ``UID FETCH 1:* (FLAGS)`` and
``FETCH 1:* (ENVELOPE)`` on a 100,000-message mailbox in at most 1.0× the
time Dovecot takes; one bridge with 1,000 connections in IDLE in at most
150 MB of RSS.  SEARCH TEXT on 10,000 messages is reported beside Dovecot's.

Theory of operation
-------------------
**The messages.**  :mod:`benchmarks.peers.mail_corpus` makes them,
deterministically: varied senders and recipients (some encoded words, some
groups), Subjects (some encoded words, a few raw UTF-8), Message-IDs,
replies, Dates in varied zones, plain and multipart bodies of about 300
bytes to 4 KB, 80% \\Seen.  About 1% contain the search word, some only
inside an encoded word or a base64 attachment.  The corpus knows the right
answers (flag counts, Message-ID counts, which messages hold the word) and
both servers are checked against them.

**Importing.**  Both stores get the same messages in the same order, each
in its own native form: AMS gets CRLF line ends (what its MX files from
SMTP), written with the store API (``MailboxLog.append`` of 1,000
``NewMessage`` per call: group commit, ``fsync = "always"``); Dovecot gets
LF line ends in ``Maildir/cur/`` files named as Dovecot names them, with
``S=``/``W=`` sizes and flag letters, and the internal date as mtime
(:class:`benchmarks.peers.dovecot.MaildirWriter`; far faster than LMTP or
``doveadm save`` for 100,000 messages).  On the wire both send the same bytes.
One user ``bench`` holds ``--messages`` messages in INBOX, a second user
``search`` the first ``--search-messages`` of the same corpus.

**Cold and warm.**  Neither server has an index at first: the first SELECT
of each mailbox builds it (our LMDB index from the log; Dovecot's
``dovecot-uidlist`` and ``dovecot.index*`` from ``cur/``).  That first
session is the *cold* pass and is reported on its own lines.  Both may also
keep what the first FETCH of ENVELOPE found, so that later passes are
cheaper: Dovecot puts the header fields an ENVELOPE is made of into its
``dovecot.index.cache`` (never the ENVELOPE itself: its default
``mail_never_cache_fields = imap.envelope``), the bridge what its local
index caches.
Every *timed* run after that is warm: a new connection and LOGIN
(untimed), then the measured commands, then LOGOUT; AMS and Dovecot
alternate, the first of the pair swapping each run.  All message files and
logs are in the page cache throughout (they were just written): these are
CPU and protocol figures, not disk figures.

**Timing.**  One client (:mod:`benchmarks.peers.imap_client`: a blocking
socket, one command at a time, no pipelining) talks to both servers.  A
time runs from just before the command is sent to the moment the client has
read every byte of the response up to and including the tagged OK.  The
client scans big responses with C loops (``bytes.count``/``find``) and skips
literals unseen; its CPU time per command is printed, so a client
bottleneck would show.  Checks on every pass: SELECT's EXISTS is the
message count; FETCH gives one response per message; the ``\\Seen`` and
``\\Flagged`` in the FLAGS responses and our Message-ID domain in the
ENVELOPE responses are as many as the corpus has; SEARCH finds exactly the
messages that hold the word; and a few sequence numbers are the same
message on both servers.

**IDLE.**  Per run, a fresh bridge process (so that its RSS is not what
earlier FETCHes left), then ``--idle-connections`` connections, each LOGIN,
SELECT INBOX of ``--idle-user`` and IDLE until ``+``, opened
``--login-concurrency`` at a time.  Then, over ``--idle-window`` seconds, the
bridge's VmRSS, VmHWM (``/proc/PID/status``) and PSS (``smaps_rollup``),
and its CPU time; the same for Dovecot as sums over all its processes (one
``imap`` process per session).  Finally every connection is sent DONE and
must answer OK: each session really was alive and in IDLE.

**Cleanup.**  Every process started is in its own process group and is
stopped at exit, also on Ctrl-C, SIGTERM or an error; the temp dir is
removed (``--keep`` keeps it).  If Dovecot cannot be installed or started,
the output says ``Dovecot: not available: <reason>`` and AMS is reported
alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ams.config import Config, config_from_dict, render_config  # noqa: E402
from ams.index._fstype import filesystem_type  # noqa: E402
from ams.store import NewMessage, Store, UserRegistry  # noqa: E402
from benchmarks.bench_delivery import (  # noqa: E402
    FAST_HASHER,
    Processes,
    cpu_seconds,
    machine,
)
from benchmarks.bench_store import Progress  # noqa: E402
from benchmarks.peers import dovecot as dv  # noqa: E402
from benchmarks.peers.imap_client import ImapClient, ImapError, Reply  # noqa: E402
from benchmarks.peers.mail_corpus import (  # noqa: E402
    ABSENT,
    LOCAL_DOMAIN,
    MID_DOMAIN,
    WORD,
    Corpus,
    Truth,
)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"
BIG_USER = "bench"
SEARCH_USER = "search"
FLAGS_TARGET = 1.0
ENVELOPE_TARGET = 1.0
IDLE_RSS_TARGET_MB = 150.0
BATCH = 1000
SEEN, FLAGGED = b"\\Seen", b"\\Flagged"


# -- importing ---------------------------------------------------------------------------------


@dataclass
class Setup:
    base: Path
    config: Config
    conf_file: Path
    big: Truth
    small: Truth
    dovecot: dv.Dovecot | None = None
    dovecot_note: str | None = None  # why there is no peer
    import_s: dict[str, float] = field(default_factory=dict)


def ams_config(base: Path) -> Config:
    return config_from_dict({
        "store": {"root": str(base / "store"), "fsync": "always"},
        "host": {"name": "bench", "cache_dir": str(base / "cache")},
        "mail": {"domains": [LOCAL_DOMAIN]},
        "listen": {"imap": "127.0.0.1:0"},
        "tls": {"allow_plaintext_auth": True},
    })


def import_all(args: argparse.Namespace, setup: Setup, progress: Progress) -> None:
    """Write messages 0..max-1 of the corpus into both systems, for both users."""
    n_big = args.messages if args.need_big else 0
    n_small = args.search_messages if "search" in args.only else 0
    total = max(n_big, n_small)
    store = Store.initialise(setup.config)
    reg = UserRegistry(store, hasher=FAST_HASHER)
    logs = {}
    writers = {}
    for user, n in ((BIG_USER, n_big), (SEARCH_USER, n_small)):
        reg.add(user, PASSWORD)
        if n:
            logs[user] = reg.mailboxes(user).open("INBOX")
            if setup.dovecot is not None:
                writers[user] = setup.dovecot.maildir(user)
    corpus = Corpus()
    pending: dict[str, list[NewMessage]] = {u: [] for u in logs}
    t_ams = t_dv = 0.0
    t0 = time.perf_counter()
    for i in range(total):
        m = corpus.message(i)
        crlf = m.crlf
        for user, n, truth in ((BIG_USER, n_big, setup.big), (SEARCH_USER, n_small, setup.small)):
            if i >= n:
                continue
            truth.add(i, m)
            pending[user].append(NewMessage(crlf, internal_date=m.date, tz_minutes=m.tz_minutes,
                                            flags=m.flags))
            if user in writers:
                t = time.perf_counter()
                writers[user].add(m.lf, flags=m.flags, date=m.date)
                t_dv += time.perf_counter() - t
        if (i + 1) % BATCH == 0 or i + 1 == total:
            t = time.perf_counter()
            for user, batch in pending.items():
                if batch:
                    logs[user].append(batch)
                    batch.clear()
            t_ams += time.perf_counter() - t
            el = time.perf_counter() - t0
            progress(f"importing: {i + 1:,}/{total:,} messages into both stores "
                     f"({(i + 1) / el:,.0f}/s)", force=(i + 1) % 10_000 == 0 or i + 1 == total)
    setup.import_s = {"AMS": t_ams, "Dovecot": t_dv, "total": time.perf_counter() - t0}


# -- servers ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("AMS_LOG_LEVEL", None)  # the product's default logging
    return e


class Bridge:
    """``ams imap`` as its own process on 127.0.0.1:<free port>."""

    def __init__(self, setup: Setup, procs: Processes, name: str) -> None:
        self.setup = setup
        self.procs = procs
        self.log = setup.base / f"{name}.log"
        out = setup.base / f"{name}.out"
        out.unlink(missing_ok=True)
        self.proc = procs.spawn([sys.executable, "-m", "ams.cli", "--config",
                                 str(setup.conf_file), "imap", "--listen", "127.0.0.1:0"],
                                stdout=out, stderr=self.log, env=_env())
        deadline = time.monotonic() + 60
        while True:
            text = out.read_text(errors="replace") if out.exists() else ""
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ams imap exited with status {self.proc.returncode}: "
                                   f"{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError("ams imap did not start listening within 60 s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.procs.stop([self.proc])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    bad = [ln for ln in text if "ERROR" in ln or "Traceback" in ln or "Error" in ln]
    return " / ".join((bad or text)[-lines:]) or "(empty log)"


# -- memory and CPU of processes ---------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2:].split()
        if int(rest[2]) == pgid:
            out.append(int(name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Timed:
    """One timed command (or two, for SELECT + UID FETCH)."""

    wall: float
    cpu: float  # the client's
    nbytes: int


@dataclass
class Series:
    """Every run of one operation on one server."""

    runs: list[Timed] = field(default_factory=list)
    error: str | None = None

    def median(self) -> float | None:
        return statistics.median(t.wall for t in self.runs) if self.runs and not self.error \
            else None


@dataclass
class Results:
    ops: dict[tuple[str, str], Series] = field(default_factory=dict)  # (op, server)
    cold: dict[tuple[str, str], Timed] = field(default_factory=dict)
    idle: dict[str, list[IdleRun]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peer_version: str = ""
    dovecot_note: str | None = None  # why there is no peer figure
    search_hits: int = 0  # messages that hold the search word
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def series(self, op: str, server: str) -> Series:
        return self.ops.setdefault((op, server), Series())


OP_FLAGS = "SELECT + UID FETCH 1:* (FLAGS)"
OP_SELECT = "  of which SELECT"
OP_UIDFETCH = "  of which UID FETCH 1:* (FLAGS)"
OP_ENVELOPE = "FETCH 1:* (ENVELOPE)"
OP_SEARCH = f'SEARCH TEXT "{WORD}"'
OP_SEARCH_NONE = f'SEARCH TEXT "{ABSENT}" (no match)'


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ImapError(what)


def fetch_pass(port: int, truth: Truth) -> dict[str, Timed]:
    """One session: SELECT, UID FETCH 1:* (FLAGS), FETCH 1:* (ENVELOPE); checked."""
    c = ImapClient(port)
    try:
        c.login(BIG_USER, PASSWORD)
        sel, exists = c.select()
        _check(exists == truth.n, f"SELECT says {exists:,} messages, {truth.n:,} imported")
        fl = c.check(b"UID FETCH 1:* (FLAGS)", needles=(SEEN, FLAGGED))
        _check(fl.untagged == truth.n, f"UID FETCH (FLAGS): {fl.untagged:,} responses for "
               f"{truth.n:,} messages")
        seen, flagged = fl.counts[SEEN], fl.counts[FLAGGED]
        _check(seen == truth.seen and flagged == truth.flagged,
               f"UID FETCH (FLAGS): {seen:,} \\Seen and {flagged:,} \\Flagged, the corpus "
               f"has {truth.seen:,} and {truth.flagged:,}")
        env = c.check(b"FETCH 1:* (ENVELOPE)", needles=(f"@{MID_DOMAIN}>".encode(),))
        _check(env.untagged == truth.n, f"FETCH (ENVELOPE): {env.untagged:,} responses for "
               f"{truth.n:,} messages")
        got = env.counts[f"@{MID_DOMAIN}>".encode()]
        _check(got == truth.mid_refs, f"FETCH (ENVELOPE): {got:,} Message-ID/In-Reply-To "
               f"values, the corpus has {truth.mid_refs:,}")
        c.logout()
    finally:
        c.close()
    return {OP_SELECT: Timed(sel.wall, sel.cpu, sel.nbytes),
            OP_UIDFETCH: Timed(fl.wall, fl.cpu, fl.nbytes),
            OP_FLAGS: Timed(sel.wall + fl.wall, sel.cpu + fl.cpu, sel.nbytes + fl.nbytes),
            OP_ENVELOPE: Timed(env.wall, env.cpu, env.nbytes)}


def _search_numbers(r: Reply) -> list[int]:
    out: list[int] = []
    for line in r.lines:
        if line.startswith(b"* SEARCH"):
            out += [int(x) for x in line[8:].split()]
    return out


def search_pass(port: int, truth: Truth) -> dict[str, Timed]:
    c = ImapClient(port)
    try:
        c.login(SEARCH_USER, PASSWORD)
        sel, exists = c.select()
        _check(exists == truth.n, f"SELECT says {exists:,} messages, {truth.n:,} imported")
        hit = c.check(f"SEARCH TEXT {WORD}".encode(), keep=True)
        found = sorted(_search_numbers(hit))
        if found != truth.word:
            missing = sorted(set(truth.word) - set(found))[:5]
            extra = sorted(set(found) - set(truth.word))[:5]
            raise ImapError(f"SEARCH TEXT {WORD}: {len(found)} found, the corpus has "
                            f"{len(truth.word)} (missing e.g. {missing}, extra e.g. {extra})")
        none = c.check(f"SEARCH TEXT {ABSENT}".encode(), keep=True)
        _check(_search_numbers(none) == [], f"SEARCH TEXT {ABSENT} found messages")
        c.logout()
    finally:
        c.close()
    return {"select": Timed(sel.wall, sel.cpu, sel.nbytes),
            OP_SEARCH: Timed(hit.wall, hit.cpu, hit.nbytes),
            OP_SEARCH_NONE: Timed(none.wall, none.cpu, none.nbytes)}


def check_same_order(ports: dict[str, int], n: int) -> None:
    """Sequence number k is the same message on both servers (a few samples)."""
    if len(ports) < 2 or n == 0:
        return
    picks = sorted({1, n, (n + 1) // 2, max(1, n // 7), max(1, n - n // 3)})
    seen: dict[str, list[bytes]] = {}
    for server, port in ports.items():
        c = ImapClient(port)
        try:
            c.login(BIG_USER, PASSWORD)
            c.select()
            ids = []
            for k in picks:
                r = c.check(f"FETCH {k} (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])".encode(),
                            keep=True)
                m = re.search(rb"<[^>]+>", b"".join(r.lines))
                ids.append(m.group(0) if m else b"?")
            seen[server] = ids
            c.logout()
        finally:
            c.close()
    a, b = seen.values()
    _check(a == b, f"messages are not in the same order on both servers: {seen}")


# -- IDLE --------------------------------------------------------------------------------------


@dataclass
class IdleRun:
    connections: int = 0
    setup_s: float = 0.0  # to open, log in, select and IDLE every connection
    rss_mb: float = 0.0  # AMS: the bridge's VmRSS; Dovecot: sum over its processes
    hwm_mb: float = 0.0  # AMS: VmHWM; Dovecot: sum of VmHWM
    pss_mb: float = 0.0  # sum over the processes
    base_rss_mb: float = 0.0  # before the first connection
    cpu_pct: float = 0.0  # CPU while the connections idle, % of one core
    processes: int = 0
    error: str | None = None


def open_idle(port: int, user: str, n: int, concurrency: int,
              progress: Callable[[str, bool], None]) -> list[ImapClient]:
    """n connections, each logged in, INBOX selected, in IDLE.

    On any failure (or Ctrl-C) every connection made so far is aborted, which
    also wakes the threads still waiting on the server."""
    opened: list[ImapClient] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(_: int) -> ImapClient:
        if stop.is_set():
            raise ImapError("stopped")
        c = ImapClient(port, timeout=120)
        with lock:
            opened.append(c)
        c.login(user, PASSWORD)
        c.select()
        c.send(b"IDLE")
        line = c._line()
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE answered {line[:80]!r}")
        return c

    done: list[ImapClient] = []
    ex = concurrent.futures.ThreadPoolExecutor(concurrency)
    try:
        futures = [ex.submit(one, i) for i in range(n)]
        for f in concurrent.futures.as_completed(futures):
            done.append(f.result())
            progress(f"{len(done):,}/{n:,} connections in IDLE", len(done) % 100 == 0)
    except BaseException:
        stop.set()
        with lock:
            for c in opened:
                c.abort()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return done


def close_idle(clients: list[ImapClient]) -> int:
    """DONE on every connection; how many answered OK.  Then LOGOUT and close."""
    for c in clients:
        c.sock.sendall(b"DONE\r\n")
    ok = 0
    for c in clients:
        try:
            line = c._line()
            while line.startswith(b"* "):
                line = c._line()
            ok += line.split(b" ", 2)[1:2] == [b"OK"]
        except (OSError, ImapError):
            pass
    for c in clients:
        try:
            c.sock.sendall(b"a9999 LOGOUT\r\n")
        except OSError:
            pass
        c.close()
    return ok


def idle_run(args: argparse.Namespace, server: str, port: int, pids: Callable[[], list[int]],
             progress: Progress, label: str) -> IdleRun:
    res = IdleRun()
    before = pids()
    res.base_rss_mb = sum(_status_kb(p, "VmRSS") for p in before) / 1024
    t0 = time.perf_counter()
    clients: list[ImapClient] = []
    try:
        clients = open_idle(port, args.idle_user, args.idle_connections, args.login_concurrency,
                            lambda s, f: progress(f"{label}: {s}", force=f))
        res.setup_s = time.perf_counter() - t0
        res.connections = len(clients)
        progress(f"{label}: {len(clients):,} in IDLE after {res.setup_s:.0f} s; measuring "
                 f"for {args.idle_window:.0f} s", force=True)
        ps = pids()
        c0 = cpu_seconds(ps)
        t1 = time.perf_counter()
        time.sleep(args.idle_window)
        ps = pids()
        res.cpu_pct = 100 * (cpu_seconds(ps) - c0) / (time.perf_counter() - t1)
        res.processes = len(ps)
        res.rss_mb = sum(_status_kb(p, "VmRSS") for p in ps) / 1024
        res.hwm_mb = sum(_status_kb(p, "VmHWM") for p in ps) / 1024
        res.pss_mb = sum(_pss_kb(p) for p in ps) / 1024
        ok = close_idle(clients)
        clients = []
        if ok != res.connections:
            res.error = f"only {ok:,} of {res.connections:,} connections answered DONE with OK"
    except (OSError, ImapError, RuntimeError) as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        for c in clients:
            c.close()
    return res


def wait_sessions_gone(d: dv.Dovecot, timeout: float = 120.0) -> None:
    """Until Dovecot's imap processes of the last run have exited."""
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while any(_comm(p) == "imap" for p in group_pids(d.proc.pid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Dovecot's imap processes still running after {timeout:.0f} s")
        time.sleep(0.2)


# -- the run ---------------------------------------------------------------------------------


def start_dovecot(args: argparse.Namespace, base: Path, progress: Progress,
                  ) -> tuple[dv.Dovecot | None, str | None]:
    """A standalone Dovecot with IMAP, or (None, why not)."""
    if not args.peer:
        return None, SKIPPED
    why = dv.unavailable(imap=True)
    if why and args.install and shutil.which("dpkg-query"):
        missing = dv.missing_packages(dv.PACKAGES)
        if missing:
            progress(f"installing {' '.join(missing)} with apt-get (no service is started)",
                     force=True)
            failed = dv.apt_install(missing)
            why = f"{why} (install failed: {failed})" if failed else dv.unavailable(imap=True)
    elif why:
        why += " (not installed; --no-install given)" if not args.install else ""
    if why:
        return None, why
    # Its own temp dir, reachable by Dovecot's unprivileged processes.
    d = dv.Dovecot(Path(tempfile.mkdtemp(prefix="ams-bench-dovecot-", dir=args.dir)),
                   [BIG_USER, SEARCH_USER], imap=True,
                   imap_connections=args.idle_connections + 20, password=PASSWORD)
    try:
        progress("starting Dovecot", force=True)
        d.start()
    except (OSError, RuntimeError) as e:
        d.stop()
        shutil.rmtree(d.base, ignore_errors=True)
        return None, f"could not start: {e}"
    return d, None


SKIPPED = "skipped (--no-peer)"


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"--idle-connections needs {needed:,} open files, the hard limit "
                         f"is {hard:,} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run(args: argparse.Namespace, procs: Processes, progress: Progress, res: Results) -> None:
    """Everything, filling ``res`` as it goes (so an interrupted run still reports)."""
    res.load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="ams-bench-imap-", dir=args.dir))
    setup = Setup(base=base, config=ams_config(base), conf_file=base / "ams.toml",
                  big=Truth(), small=Truth())
    setup.conf_file.write_text(render_config(setup.config))
    d: dv.Dovecot | None = None
    bridge: Bridge | None = None
    try:
        d, setup.dovecot_note = start_dovecot(args, args.dir, progress)
        res.dovecot_note = setup.dovecot_note
        setup.dovecot = d
        if d is not None:
            res.peer_version = dv.version()
        import_all(args, setup, progress)
        boxes = [f"{t.n:,} messages ({t.bytes_lf / 1e6:,.0f} MB with LF line ends) for "
                 f"`{u}`" for u, t in ((BIG_USER, setup.big), (SEARCH_USER, setup.small)) if t.n]
        res.notes.append(
            f"Import: {' and '.join(boxes)} in {setup.import_s['total']:.0f} s, of which AMS "
            f"`MailboxLog.append` {setup.import_s['AMS']:.1f} s and Maildir files "
            f"{setup.import_s['Dovecot']:.1f} s (the rest is making the messages).")
        res.search_hits = len(setup.small.word)
        servers: dict[str, int] = {}
        if {"fetch", "search"} & set(args.only):
            bridge = Bridge(setup, procs, "bridge")
            servers["AMS"] = bridge.port
            if d is not None:
                servers["Dovecot"] = d.imap_port
        if "fetch" in args.only:
            run_fetch(args, setup, servers, res, progress)
        if "search" in args.only:
            run_search(args, setup, servers, res, progress)
        if bridge is not None:
            bridge.stop()
            bridge = None
        if "idle" in args.only:
            run_idle(args, setup, procs, res, progress)
    finally:
        if bridge is not None:
            bridge.stop()
        if d is not None:
            d.stop()
            if not args.keep:
                shutil.rmtree(d.base, ignore_errors=True)
        if args.keep:
            progress(f"kept {base}" + (f" and {d.base}" if d else ""), force=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
    progress.done()


def _order(servers: dict[str, int], run_no: int) -> list[tuple[str, int]]:
    items = list(servers.items())
    return items if run_no % 2 else items[::-1]


def run_fetch(args: argparse.Namespace, setup: Setup, servers: dict[str, int], res: Results,
              progress: Progress) -> None:
    n = setup.big.n
    for server, port in servers.items():
        progress(f"fetch, cold pass (first SELECT builds the index), {server}", force=True)
        try:
            for op, t in fetch_pass(port, setup.big).items():
                res.cold[(op, server)] = t
        except (OSError, ImapError) as e:
            res.series(OP_FLAGS, server).error = f"{type(e).__name__}: {e}"
    ok = {s: p for s, p in servers.items() if not res.series(OP_FLAGS, s).error}
    try:
        check_same_order(ok, n)
    except (OSError, ImapError) as e:
        res.notes.append(f"Order check failed: {e}")
    for i in range(1, args.runs + 1):
        for server, port in _order(ok, i):
            progress(f"fetch, run {i}/{args.runs}, {server}", force=True)
            try:
                for op, t in fetch_pass(port, setup.big).items():
                    res.series(op, server).runs.append(t)
            except (OSError, ImapError) as e:
                res.series(OP_FLAGS, server).error = f"{type(e).__name__}: {e}"
            s = res.series(OP_FLAGS, server)
            if s.runs and not s.error:
                progress(f"fetch, run {i}/{args.runs}, {server}: SELECT + UID FETCH (FLAGS) "
                         f"{s.runs[-1].wall:.3f} s, FETCH (ENVELOPE) "
                         f"{res.series(OP_ENVELOPE, server).runs[-1].wall:.3f} s", force=True)


def run_search(args: argparse.Namespace, setup: Setup, servers: dict[str, int], res: Results,
               progress: Progress) -> None:
    for server, port in servers.items():
        progress(f"search, cold pass (first SELECT builds the index), {server}", force=True)
        try:
            for op, t in search_pass(port, setup.small).items():
                res.cold[(f"search {op}", server)] = t
        except (OSError, ImapError) as e:
            res.series(OP_SEARCH, server).error = f"{type(e).__name__}: {e}"
    ok = {s: p for s, p in servers.items() if not res.series(OP_SEARCH, s).error}
    for i in range(1, args.runs + 1):
        for server, port in _order(ok, i):
            progress(f"search, run {i}/{args.runs}, {server}", force=True)
            try:
                for op, t in search_pass(port, setup.small).items():
                    if op != "select":
                        res.series(op, server).runs.append(t)
            except (OSError, ImapError) as e:
                res.series(OP_SEARCH, server).error = f"{type(e).__name__}: {e}"


def run_idle(args: argparse.Namespace, setup: Setup, procs: Processes, res: Results,
             progress: Progress) -> None:
    d = setup.dovecot
    servers = ["AMS"] + (["Dovecot"] if d is not None else [])
    for i in range(1, args.runs + 1):
        for server in (servers if i % 2 else servers[::-1]):
            label = f"idle, run {i}/{args.runs}, {server}"
            progress(f"{label}: starting", force=True)
            if server == "AMS":
                try:
                    bridge = Bridge(setup, procs, f"bridge-idle-{i}")
                except RuntimeError as e:
                    r = IdleRun(error=str(e))
                else:
                    try:
                        r = idle_run(args, server, bridge.port, lambda b=bridge: [b.pid],
                                     progress, label)
                    finally:
                        bridge.stop()
                    if r.error:
                        r.error += f"; bridge log: {_tail(bridge.log)}"
            else:
                assert d is not None and d.proc is not None
                r = idle_run(args, server, d.imap_port,
                             lambda pgid=d.proc.pid: group_pids(pgid), progress, label)
                try:
                    wait_sessions_gone(d)
                except RuntimeError as e:
                    r.error = (r.error + "; " if r.error else "") + str(e)
            res.idle.setdefault(server, []).append(r)
            progress(f"{label}: " + (f"FAILED: {r.error}" if r.error else
                                     f"RSS {r.rss_mb:,.0f} MB, PSS {r.pss_mb:,.0f} MB, "
                                     f"CPU {r.cpu_pct:.0f}%, set up in {r.setup_s:.0f} s"),
                     force=True)


# -- report ----------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _ratio_cells(ours: float | None, peer: float | None, target: float | None,
                 lower_is_better: bool = True) -> tuple[str, str]:
    if ours is None or not peer:
        return "—", (f"≤ {target:.1f}× (no figure)" if target else "—")
    ratio = ours / peer
    if target is None:
        return f"{ratio:.2f}×", "—"
    met = ratio <= target if lower_is_better else ratio >= target
    return f"{ratio:.2f}×", f"≤ {target:.1f}× ({'met' if met else 'MISSED'})"


def revision() -> str:
    """The commit the code under test is at, and whether ams/ has changes beside it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return f"{ROOT} (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "ams"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes in ams/" if dirty
                                               else "")


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks.bench_imap", *(shlex.quote(a) for a in argv)])


def report(res: Results, args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    fs = filesystem_type(args.dir)
    fs_text = f"{fs[1]} (mounted at {fs[0]})" if fs else "unknown"
    note = res.dovecot_note
    peer = (f"Dovecot {res.peer_version} standalone (Maildir, imap-login high-performance "
            "mode, one imap process per session)" if not note else
            f"Dovecot: {note}" if note == SKIPPED else f"Dovecot: not available: {note}")
    out = [
        "## IMAP bridge vs Dovecot",
        "",
        f"Command: `{command_line(argv)}`",
        "",
        f"Machine: {machine()}; temp dirs under `{args.dir}` on {fs_text}; load average "
        f"{res.load_before[0]:.1f} before, {res.load_after[0]:.1f} after. Medians of "
        f"{args.runs} warm run{'s' if args.runs != 1 else ''}; whole run {elapsed:.0f} s. "
        f"Source: {revision()}. Peer: {peer}.",
        "",
        "| operation | AMS | Dovecot | AMS ÷ Dovecot | target |",
        "|---|---:|---:|---:|---|",
    ]
    rows: list[tuple[str, str, float | None]] = []
    if "fetch" in args.only:
        n = f"{args.messages:,} messages"
        rows += [(f"{OP_FLAGS}, {n}", OP_FLAGS, FLAGS_TARGET),
                 (OP_SELECT, OP_SELECT, None), (OP_UIDFETCH, OP_UIDFETCH, None),
                 (f"{OP_ENVELOPE}, {n}", OP_ENVELOPE, ENVELOPE_TARGET)]
    if "search" in args.only:
        n = f"{args.search_messages:,} messages"
        rows += [(f"{OP_SEARCH} ({res.search_hits:,} matches), {n}", OP_SEARCH, None),
                 (f"{OP_SEARCH_NONE}, {n}", OP_SEARCH_NONE, None)]
    for label, op, target in rows:
        a, b = res.ops.get((op, "AMS")), res.ops.get((op, "Dovecot"))
        ours = a.median() if a else None
        theirs = b.median() if b else None
        ratio, tcell = _ratio_cells(ours, theirs, target)
        acell = "FAILED" if a and a.error else _s(ours)
        bcell = ("FAILED" if b and b.error else _s(theirs)) if not note else "—"
        out.append(f"| {label} | {acell} | {bcell} | {ratio} | {tcell} |")
    idle_ams = [r for r in res.idle.get("AMS", []) if not r.error]
    idle_dv = [r for r in res.idle.get("Dovecot", []) if not r.error]
    if "idle" in args.only:
        k = f"{args.idle_connections:,} connections in IDLE"
        box = args.messages if args.idle_user == BIG_USER else args.search_messages
        out.append(f"| *IDLE sessions select the {box:,}-message INBOX of `{args.idle_user}`* "
                   "| | | | |")
        rss = statistics.median(r.rss_mb for r in idle_ams) if idle_ams else None
        pss_dv = statistics.median(r.pss_mb for r in idle_dv) if idle_dv else None
        rss_dv = statistics.median(r.rss_mb for r in idle_dv) if idle_dv else None
        met = ("—" if rss is None else
               f"≤ {IDLE_RSS_TARGET_MB:.0f} MB ({'met' if rss <= IDLE_RSS_TARGET_MB else 'MISSED'})")
        out.append(f"| memory, {k} (AMS: the bridge's VmRSS; Dovecot: PSS summed over its "
                   f"processes) | {_mb(rss)} | {_mb(pss_dv)} | "
                   f"{_ratio_cells(rss, pss_dv, None)[0]} | {met} |")
        out.append(f"| memory, {k}, RSS summed over processes | {_mb(rss)} | {_mb(rss_dv)} | "
                   f"{_ratio_cells(rss, rss_dv, None)[0]} | — |")
        cpu = statistics.median(r.cpu_pct for r in idle_ams) if idle_ams else None
        cpu_dv = statistics.median(r.cpu_pct for r in idle_dv) if idle_dv else None
        out.append(f"| CPU while {k} (% of one core) | {_pct(cpu)} | {_pct(cpu_dv)} | "
                   f"{_ratio_cells(cpu, cpu_dv, None)[0]} | — |")
        su = statistics.median(r.setup_s for r in idle_ams) if idle_ams else None
        su_dv = statistics.median(r.setup_s for r in idle_dv) if idle_dv else None
        out.append(f"| time to open {k} ({args.login_concurrency} at a time: LOGIN, SELECT, "
                   f"IDLE) | {_s(su)} | {_s(su_dv)} | {_ratio_cells(su, su_dv, None)[0]} | — |")
    cold = [(op, s, t) for (op, s), t in res.cold.items()]
    if cold:
        out += ["", "Cold pass (each server's first session after the import; the first "
                "SELECT builds its index), wall time:", ""]
        ops = list(dict.fromkeys(op for op, _, _ in cold))
        for op in ops:
            cells = [f"{s} {_s(t.wall)}" for o, s, t in cold if o == op]
            out.append(f"- {op.strip()}: " + ", ".join(cells))
    out += ["", "All warm runs (wall ms; the client's CPU ms in brackets; response size):",
            ""]
    for _label, op, _ in rows:
        for server in ("AMS", "Dovecot"):
            s = res.ops.get((op, server))
            if s is None:
                continue
            if s.error:
                out.append(f"- {op.strip()}, {server}: FAILED: {s.error}")
                continue
            cells = [f"{t.wall * 1000:,.1f} ({t.cpu * 1000:,.1f})" for t in s.runs]
            size = f"; {s.runs[-1].nbytes / 1e6:,.1f} MB" if s.runs else ""
            out.append(f"- {op.strip()}, {server}: {', '.join(cells)}{size}")
    for server, runs in res.idle.items():
        cells = []
        for r in runs:
            if r.error:
                cells.append(f"FAILED ({r.error})")
            else:
                per = (r.rss_mb - r.base_rss_mb) * 1024 / max(1, r.connections)
                cells.append(f"RSS {r.rss_mb:,.0f} MB (at start {r.base_rss_mb:,.0f}: "
                             f"{per:,.0f} KB per connection), HWM "
                             f"{r.hwm_mb:,.0f} MB, PSS {r.pss_mb:,.0f} MB, {r.processes:,} "
                             f"process{'es' if r.processes != 1 else ''}, CPU "
                             f"{r.cpu_pct:.0f}%, {r.connections:,} connections in "
                             f"{r.setup_s:.0f} s")
        out.append(f"- IDLE, {server}: " + "; ".join(cells))
    if note and note != SKIPPED:
        out.append(f"- Dovecot: not available: {note}")
    worst = max(((t.cpu / t.wall, op, srv) for (op, srv), s in res.ops.items()
                 for t in s.runs if t.wall > 0), default=None)
    if worst:
        out += ["", f"Client CPU: at most {100 * worst[0]:.0f}% of a command's wall time "
                f"({worst[1].strip()}, {worst[2]}), so the client is not what is measured."]
    out += [""] + [f"{n_}" for n_ in res.notes]
    return "\n".join(out)


def _mb(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MB"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}%"


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_imap",
        description="The IMAP bridge beside Dovecot: FETCH on a big mailbox, SEARCH TEXT, "
                    "and memory with many connections in IDLE.")
    p.add_argument("--runs", type=int, help="warm runs of each measurement (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (2,000 / 1,000 messages, 50 connections), 1 run")
    p.add_argument("--messages", type=int, help="messages in the big INBOX (default 100,000)")
    p.add_argument("--search-messages", type=int,
                   help="messages in the mailbox SEARCH runs on (default 10,000)")
    p.add_argument("--idle-connections", type=int,
                   help="connections in IDLE (default 1,000)")
    p.add_argument("--idle-user", choices=[BIG_USER, SEARCH_USER], default=BIG_USER,
                   help=f"whose INBOX the IDLE connections select: {BIG_USER} (--messages, the "
                        f"default) or {SEARCH_USER} (--search-messages)")
    p.add_argument("--idle-window", type=float, default=5.0,
                   help="seconds over which idle CPU is measured (default 5)")
    p.add_argument("--login-concurrency", type=int, default=4,
                   help="IDLE connections opened at a time (default 4)")
    p.add_argument("--only", action="append", choices=["fetch", "search", "idle"],
                   help="run only this part (repeatable; default all)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Dovecot")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="never apt-get install dovecot when missing")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (stores, logs)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temp dirs go (a local disk; default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    q = args.quick
    args.runs = args.runs if args.runs is not None else (1 if q else 3)
    args.messages = args.messages if args.messages is not None else (2000 if q else 100_000)
    args.search_messages = (args.search_messages if args.search_messages is not None
                            else (1000 if q else 10_000))
    args.idle_connections = (args.idle_connections if args.idle_connections is not None
                             else (50 if q else 1000))
    args.only = args.only or ["fetch", "search", "idle"]
    for name in ("runs", "messages", "search_messages", "idle_connections", "login_concurrency"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.idle_window <= 0:
        print("--idle-window must be positive", file=sys.stderr)
        return 2
    args.need_big = "fetch" in args.only or ("idle" in args.only and args.idle_user == BIG_USER)
    if "idle" in args.only and args.idle_user == SEARCH_USER and "search" not in args.only:
        args.only.append("search")  # its mailbox must be imported; cheap beside IDLE
    args.dir.mkdir(parents=True, exist_ok=True)
    args.dir = args.dir.resolve()
    raise_fd_limit(args.idle_connections + 256)
    procs = Processes()

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    t = time.perf_counter()
    res = Results()
    status = 0
    try:
        run(args, procs, Progress(), res)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        res.notes.append("**Interrupted: the figures above are what was measured before.**")
        status = 130
    finally:
        procs.stop_all()
    res.load_after = os.getloadavg()
    print(report(res, args, argv, time.perf_counter() - t))
    return status


if __name__ == "__main__":
    sys.exit(main())
