"""SMTP accept → filed, fsync on, beside Dovecot LMTP delivery of the same mail.

Run from the repository root (as root, on Debian, for the peer)::

    python -m benchmarks.bench_delivery              # default: 3-5 minutes on 2 cores
    python -m benchmarks.bench_delivery --quick      # 500 messages, 1 run: a smoke test
    python -m benchmarks.bench_delivery --runs 5 --users 20 --dir /var/tmp

The brief's target: SMTP-accept→filed throughput with fsync on is at least
1.0× Dovecot LMTP's on the same machine.

What one run of one configuration does
--------------------------------------
AMS: a fresh store (``fsync = "always"``) in a temp dir under ``--dir`` with
``--users`` users (default 1: every message to one INBOX, as in
peers-notes.md); the MX as its own process (``ams mx``, which is
:func:`gateways.serve_mx`) on 127.0.0.1:<free port>; K delivery workers as
separate processes (``ams worker --count 1``, K of them; ``--worker-mode
single`` runs one ``ams worker --count K`` instead).  The MX and the workers
share nothing but the store: no ``wake()`` crosses processes, so the workers
find new mail by polling the spool, as on a multi-host pool.  They log one
line per message at INFO, their default, into files in the temp dir.
Each run starts from a fresh store, so the spool's shard dirs are made on
first use, as in production.

The driver then sends ``--messages`` copies of one ~1 KB message over
``--sessions`` concurrent SMTP sessions: Postfix's ``smtp-source`` (one
transaction at a time per session, the connection reused, no pipelining)
when it is installed, else a Python asyncio client that pipelines MAIL, RCPT
and DATA.  With several users, the sessions and messages are split evenly
over them (one ``smtp-source`` per user).

- throughput = messages / (first connection → the last message filed);
- accept-only rate = messages / (first connection → the driver has every 250);
- accept→filed latency per message, from the store after the run: from the
  spool entry's creation (``received_us``, which the entry id carries; taken
  when the MX starts writing the entry, before its fsyncs and the 250) to
  the ``time_us`` of its APPEND record in the log (taken just before the
  record is written and fsynced).  Both ends leave out one fsync, so the
  figures are low by about a millisecond; p50 and p99 over all messages.
- every message must be filed exactly once (distinct delivery ids), or the
  run is reported as failed.

Dovecot: one standalone instance for the whole benchmark
(:mod:`benchmarks.peers.dovecot`: its own config and base_dir, Maildir,
``mail_fsync = optimized``, its default), warmed up with 10 messages per
session so its LMTP processes are forked before timing, a fresh user per
run, the same message, count and sessions, spoken as LMTP
(``smtp-source -L``).  LMTP answers after the message is delivered, so its
rate is messages / wall time until the driver has every reply, checked
against the files in the Maildir.  Ours is asynchronous (250 once durable in the spool, filed later):
the fair comparison is to the last filing, which is what the ratio uses.

Configurations are interleaved (Dovecot, 1, 2, 4 workers, rotated each run),
``--runs`` times; the table shows medians, the list under it every run.
Everything started is stopped and every temp dir removed at the end, also on
Ctrl-C or an error.  If Dovecot or smtp-source cannot be installed or
started, the output says so and reports AMS alone.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argon2  # noqa: E402

from ams.config import config_from_dict, render_config  # noqa: E402
from ams.index._fstype import filesystem_type  # noqa: E402
from ams.store import RecordType, Spool, Store, UserRegistry  # noqa: E402
from benchmarks.bench_store import Progress, fmt  # noqa: E402
from benchmarks.peers import dovecot as dv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.0
DOMAIN = "example.test"
SENDER = "sender@example.org"
SMTP_SOURCE = "smtp-source"
#: A user record is read at every RCPT; the hash only matters at login.
FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------


class Processes:
    """Every process this benchmark started, each in its own session (group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: Sequence[str], *, stdout: Path | None = None,
              stderr: Path | None = None, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
        try:
            p = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 cwd=ROOT, env=env, start_new_session=True)
        finally:
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()  # type: ignore[union-attr]
        self.procs.append(p)
        return p

    def stop(self, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
        """SIGTERM each (workers finish the batch in hand), then SIGKILL its group."""
        for p in procs:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self) -> None:
        self.stop(list(self.procs), timeout=5.0)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def cpu_seconds(pids: Sequence[int] = (), pgid: int | None = None) -> float:
    """utime + stime of these processes (or of every process in ``pgid``)."""
    if pgid is not None:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2:].split()
        if pgid is not None and int(rest[2]) != pgid:
            continue
        total += int(rest[11]) + int(rest[12])
    return total / CLK_TCK


def _env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("AMS_LOG_LEVEL", None)  # the product's default logging: a line per message
    return e


# -- the message and the drivers ---------------------------------------------------------------


def message_text(size: int) -> str:
    """One message of about ``size`` bytes, LF line ends (smtp-source adds CR)."""
    head = (f"From: {SENDER}\nTo: bench@{DOMAIN}\nSubject: delivery benchmark\n"
            "Message-ID: <delivery-bench@example.org>\n"
            "Date: Thu, 26 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=us-ascii\n\n")
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusm\n"
    body = ""
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + body


@dataclass
class Share:
    rcpt: str
    sessions: int
    messages: int


def plan(sessions: int, messages: int, rcpts: Sequence[str]) -> list[Share]:
    """Sessions and messages split evenly over the recipients."""
    n = len(rcpts)
    return [Share(r, sessions // n + (i < sessions % n), messages // n + (i < messages % n))
            for i, r in enumerate(rcpts)]


@dataclass
class Sent:
    t0: float  # wall clock, just before the first connection
    t_end: float  # the driver has every reply
    error: str | None = None


def send(driver: str, port: int, shares: list[Share], msg_file: Path, *, lmtp: bool,
         procs: Processes, logdir: Path, timeout: float) -> Sent:
    if driver == "python":
        return _send_python(port, shares, msg_file.read_bytes(), lmtp=lmtp, timeout=timeout)
    cmds = [[SMTP_SOURCE, *(["-L"] if lmtp else []), "-s", str(s.sessions),
             "-m", str(s.messages), "-d", "-F", str(msg_file), "-f", SENDER, "-t", s.rcpt,
             f"127.0.0.1:{port}"] for s in shares if s.messages]
    log = logdir / "smtp-source.log"
    t0 = time.time()
    running = [procs.spawn(c, stdout=log, stderr=log) for c in cmds]
    deadline = time.monotonic() + timeout
    error = None
    for p in running:
        try:
            rc = p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            error = f"smtp-source still running after {timeout:.0f} s"
            break
        if rc != 0 and error is None:
            error = f"smtp-source exited with status {rc}: {_tail(log)}"
    t_end = time.time()
    procs.stop(running, timeout=1.0)
    return Sent(t0, t_end, error)


def _send_python(port: int, shares: list[Share], text: bytes, *, lmtp: bool,
                 timeout: float) -> Sent:
    body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in text.rstrip(b"\n").split(b"\n")) + b".\r\n"
    t0 = time.time()
    try:
        asyncio.run(asyncio.wait_for(_python_client(port, shares, body, lmtp), timeout))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return Sent(t0, time.time(), f"python client: {type(e).__name__}: {e}")
    return Sent(t0, time.time())


async def _python_client(port: int, shares: list[Share], body: bytes, lmtp: bool) -> None:
    jobs = []
    for s in shares:
        for i in range(s.sessions):
            n = s.messages // s.sessions + (i < s.messages % s.sessions)
            if n:
                jobs.append(_python_session(port, s.rcpt, n, body, lmtp))
    await asyncio.gather(*jobs)


async def read_reply(r: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """One SMTP/LMTP reply: its code and each line's text."""
    lines = []
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        lines.append(line[4:].rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def smtp_open(port: int, lmtp: bool, helo: str,
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Connect, read the greeting, say EHLO (LHLO): reader, writer, and
    whether the server offers PIPELINING."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        code, text = await read_reply(r)
        if code != 220:
            raise ConnectionError(f"greeting {code} {text!r}")
        w.write(f"{'LHLO' if lmtp else 'EHLO'} {helo}\r\n".encode())
        _, ext = await read_reply(r)
    except BaseException:
        w.close()
        raise
    return r, w, any(e.upper() == b"PIPELINING" for e in ext)


async def smtp_send(r: asyncio.StreamReader, w: asyncio.StreamWriter, rcpt: str, body: bytes,
                    pipelining: bool) -> None:
    """One transaction: MAIL, RCPT, DATA (pipelined when offered), then ``body``
    (ending with the dot line); ConnectionError on any other answer."""
    cmds = [f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{rcpt}>\r\n".encode(),
            b"DATA\r\n"]
    if pipelining:
        w.write(b"".join(cmds))
        codes = [(await read_reply(r))[0] for _ in cmds]
    else:
        codes = []
        for c in cmds:
            w.write(c)
            codes.append((await read_reply(r))[0])
    if codes != [250, 250, 354]:
        raise ConnectionError(f"MAIL/RCPT/DATA answered {codes}")
    w.write(body)
    code, text = await read_reply(r)
    if code != 250:
        raise ConnectionError(f"end of data answered {code} {text!r}")


async def smtp_quit(w: asyncio.StreamWriter) -> None:
    w.write(b"QUIT\r\n")
    await w.drain()


async def _python_session(port: int, rcpt: str, count: int, body: bytes, lmtp: bool) -> None:
    r, w, pipelining = await smtp_open(port, lmtp, "bench.example.org")
    try:
        for _ in range(count):
            await smtp_send(r, w, rcpt, body, pipelining)
        await smtp_quit(w)
    finally:
        w.close()


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log; its first error lines instead, if it has any."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in text if " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln]
    return " / ".join(errors[:lines] or text[-lines:]) or "(empty log)"


# -- AMS -------------------------------------------------------------------------------------


@dataclass
class AmsRun:
    rate: float = 0.0  # messages / (t0 -> last filed)
    accept_rate: float = 0.0  # messages / (t0 -> every 250)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    drain_s: float = 0.0  # last 250 -> last filed
    cpu_mx: float = 0.0  # CPU seconds during the run
    cpu_workers: float = 0.0
    error: str | None = None


def ams_users(n: int) -> list[str]:
    return ["bench"] if n == 1 else [f"bench{i:02d}" for i in range(1, n + 1)]


def run_ams(args: argparse.Namespace, workers: int, msg_file: Path, procs: Processes,
            progress: Progress, label: str) -> AmsRun:
    base = Path(tempfile.mkdtemp(prefix="ams-bench-delivery-", dir=args.dir))
    started: list[subprocess.Popen[bytes]] = []
    try:
        progress(f"{label}: setting up", force=True)
        cfg = config_from_dict({
            "store": {"root": str(base / "store"), "fsync": "always"},
            "host": {"name": "bench", "cache_dir": str(base / "cache")},
            "mail": {"domains": [DOMAIN]},
            "listen": {"smtp": "127.0.0.1:0"}})
        conf = base / "ams.toml"
        conf.write_text(render_config(cfg))
        store = Store.initialise(cfg)
        reg = UserRegistry(store, hasher=FAST_HASHER)
        users = ams_users(args.users)
        for u in users:
            reg.add(u, "bench-password")
        readers = [reg.mailboxes(u).open("INBOX").reader() for u in users]
        spool = Spool(store)
        py = sys.executable
        mx = procs.spawn([py, "-m", "ams.cli", "mx", "--config", str(conf)],
                         stdout=base / "mx.out", stderr=base / "mx.log", env=_env())
        started.append(mx)
        if args.worker_mode == "single":
            cmds = [[py, "-m", "ams.cli", "worker", "--config", str(conf),
                     "--count", str(workers)]]
        else:
            cmds = [[py, "-m", "ams.cli", "worker", "--config", str(conf), "--count", "1"]
                    for _ in range(workers)]
        wprocs = [procs.spawn(c, stderr=base / f"worker{i}.log", env=_env())
                  for i, c in enumerate(cmds)]
        started += wprocs
        port = _wait_mx(mx, base)
        _wait_until(lambda: len(spool.live_workers("in")) >= workers, 60,
                    f"{workers} workers did not register", wprocs, base)

        progress(f"{label}: sending {args.messages:,} messages", force=True)
        shares = plan(args.sessions, args.messages, [f"{u}@{DOMAIN}" for u in users])
        cpu0 = (cpu_seconds([mx.pid]), cpu_seconds([p.pid for p in wprocs]))
        sent = send(args.driver, port, shares, msg_file, lmtp=False, procs=procs, logdir=base,
                    timeout=args.timeout)
        if sent.error:
            return AmsRun(error=f"{sent.error}; MX log: {_tail(base / 'mx.log')}")
        # Wait for the last filing; the times come from the log, not from here.
        lat: list[int] = []
        ids: set[str] = set()
        last_us = 0
        records = 0
        deadline = time.monotonic() + args.timeout
        stalled_since = time.monotonic()
        while True:
            before = records
            for rd in readers:
                batch = rd.poll()
                for rec in batch.records:
                    if rec.header.type != RecordType.APPEND:
                        continue
                    records += 1
                    did = rec.body.delivery_id  # type: ignore[union-attr]
                    ids.add(did)
                    received_us = int(did[:16], 16)  # the entry id starts with it
                    lat.append(rec.header.time_us - received_us)
                    last_us = max(last_us, rec.header.time_us)
            progress(f"{label}: {len(ids):,}/{args.messages:,} filed")
            if len(ids) >= args.messages:
                break
            now = time.monotonic()
            if records != before:
                stalled_since = now
            if now > deadline or now - stalled_since > 60:
                dead = [p.args for p in wprocs if p.poll() is not None]
                return AmsRun(error=f"only {len(ids):,} of {args.messages:,} filed after "
                              f"{now - stalled_since:.0f} s without progress"
                              f"{'; workers exited: ' + str(dead) if dead else ''}; worker log: "
                              f"{_tail(base / 'worker0.log')}")
            time.sleep(0.1)
        cpu1 = (cpu_seconds([mx.pid]), cpu_seconds([p.pid for p in wprocs]))
        if records != len(ids) or len(ids) != args.messages:
            return AmsRun(error=f"{records} APPEND records for {len(ids)} delivery ids, "
                          f"{args.messages} sent: not exactly once")
        lat.sort()
        filed_s = last_us / 1e6 - sent.t0
        return AmsRun(rate=args.messages / filed_s,
                      accept_rate=args.messages / (sent.t_end - sent.t0),
                      p50_ms=percentile(lat, 50) / 1000, p99_ms=percentile(lat, 99) / 1000,
                      drain_s=max(0.0, last_us / 1e6 - sent.t_end),
                      cpu_mx=cpu1[0] - cpu0[0], cpu_workers=cpu1[1] - cpu0[1])
    except _Failed as e:
        return AmsRun(error=str(e))
    finally:
        progress(f"{label}: stopping", force=False)
        procs.stop(list(reversed(started)))
        shutil.rmtree(base, ignore_errors=True)


class _Failed(Exception):
    pass


def _wait_mx(mx: subprocess.Popen[bytes], base: Path) -> int:
    out = base / "mx.out"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace") if out.exists() else ""
        if "listening on" in text:
            return int(text.split("listening on", 1)[1].split()[0].rsplit(":", 1)[1])
        if mx.poll() is not None:
            raise _Failed(f"the MX exited with status {mx.returncode}: {_tail(base / 'mx.log')}")
        time.sleep(0.05)
    raise _Failed("the MX did not start listening within 60 s")


def _wait_until(cond, timeout: float, what: str,  # type: ignore[no-untyped-def]
                watch: Sequence[subprocess.Popen[bytes]], base: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if any(p.poll() is not None for p in watch):
            raise _Failed(f"{what}: a worker exited: {_tail(base / 'worker0.log')}")
        if time.monotonic() > deadline:
            raise _Failed(f"{what} within {timeout:.0f} s")
        time.sleep(0.05)


def percentile(sorted_values: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return float(sorted_values[k])


# -- Dovecot ---------------------------------------------------------------------------------


@dataclass
class PeerRun:
    rate: float = 0.0
    cpu: float = 0.0
    error: str | None = None


def dovecot_users(n: int, run: int) -> list[str]:
    return [f"r{run}bench" if n == 1 else f"r{run}bench{i:02d}" for i in range(1, n + 1)]


def run_dovecot(args: argparse.Namespace, d: dv.Dovecot, run: int, msg_file: Path,
                procs: Processes, logdir: Path, progress: Progress, label: str) -> PeerRun:
    users = dovecot_users(args.users, run)
    try:
        progress(f"{label}: sending {args.messages:,} messages by LMTP", force=True)
        shares = plan(args.sessions, args.messages, [f"{u}@{DOMAIN}" for u in users])
        assert d.proc is not None
        cpu0 = cpu_seconds(pgid=d.proc.pid)
        sent = send(args.driver, d.port, shares, msg_file, lmtp=True, procs=procs,
                    logdir=logdir, timeout=args.timeout)
        cpu = cpu_seconds(pgid=d.proc.pid) - cpu0
        if sent.error:
            return PeerRun(error=f"{sent.error}; Dovecot log: {d.log_tail(2)}")
        got = sum(d.delivered(u) for u in users)
        if got != args.messages:
            return PeerRun(error=f"{got:,} of {args.messages:,} messages in the Maildirs "
                           f"after LMTP said 250 to all")
        return PeerRun(rate=args.messages / (sent.t_end - sent.t0), cpu=cpu)
    finally:
        for u in users:
            d.remove_home(u)


WARMUP_USER = "warmup"


def warm_up(args: argparse.Namespace, d: dv.Dovecot, msg_file: Path, procs: Processes,
            logdir: Path) -> None:
    """A few messages over every session first, so that Dovecot has forked its LMTP
    processes before the first timed run (AMS's processes are up before timing, too)."""
    n = args.sessions * 10
    sent = send(args.driver, d.port, plan(args.sessions, n, [f"{WARMUP_USER}@{DOMAIN}"]),
                msg_file, lmtp=True, procs=procs, logdir=logdir, timeout=60)
    got = d.delivered(WARMUP_USER)
    d.remove_home(WARMUP_USER)
    if sent.error or got != n:
        raise RuntimeError(f"warm-up delivery failed ({got} of {n} delivered): "
                           f"{sent.error or d.log_tail(2)}")


# -- availability --------------------------------------------------------------------------


def prepare_tools(args: argparse.Namespace, progress: Progress) -> tuple[str, str | None, str]:
    """(driver, why Dovecot is unavailable or None, what the driver is)."""
    wanted: list[str] = []
    if args.driver in ("auto", "smtp-source") and shutil.which(SMTP_SOURCE) is None:
        wanted.append("postfix")
    if args.peer and dv.unavailable():
        wanted += [p for p in dv.PACKAGES if p not in wanted]
    install_note = ""
    if wanted:
        missing = dv.missing_packages(wanted) if shutil.which("dpkg-query") else wanted
        if missing and args.install:
            progress(f"installing {' '.join(missing)} with apt-get (no service is started)",
                     force=True)
            why = dv.apt_install(missing)
            if why:
                install_note = f" (install failed: {why})"
        elif missing:
            install_note = " (not installed; --no-install given)"
    driver = args.driver
    if driver == "auto":
        driver = "smtp-source" if shutil.which(SMTP_SOURCE) else "python"
    elif driver == "smtp-source" and shutil.which(SMTP_SOURCE) is None:
        raise SystemExit(f"smtp-source is not available{install_note}")
    if driver == "smtp-source":
        what = (f"Postfix smtp-source {_deb_version('postfix')} (`-d`: connection reused, "
                "one transaction at a time per session, no pipelining)")
    else:
        what = ("the benchmark's Python asyncio client (MAIL, RCPT and DATA pipelined, one "
                "transaction at a time per session)")
        if args.driver == "auto":
            what += f"; smtp-source not available{install_note}"
    peer_missing = None
    if args.peer:
        why = dv.unavailable()
        if why:
            peer_missing = why + install_note
    else:
        peer_missing = SKIPPED
    return driver, peer_missing, what


def _deb_version(pkg: str) -> str:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# -- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    driver: str = ""
    driver_text: str = ""
    peer_note: str | None = None  # why there is no peer figure
    peer_version: str = ""
    ams: dict[int, list[AmsRun]] = field(default_factory=dict)
    peer: list[PeerRun] = field(default_factory=list)
    message_bytes: int = 0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def run(args: argparse.Namespace, procs: Processes, progress: Progress) -> Results:
    res = Results()
    res.driver, res.peer_note, res.driver_text = prepare_tools(args, progress)
    args.driver = res.driver
    res.load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="ams-bench-delivery-", dir=args.dir))
    d: dv.Dovecot | None = None
    try:
        msg_file = scratch / "message.txt"
        msg_file.write_text(message_text(args.size))
        res.message_bytes = len(msg_file.read_bytes().replace(b"\n", b"\r\n"))
        if res.peer_note is None:
            # Its own temp dir: Dovecot's unprivileged processes must reach it.
            d = dv.Dovecot(Path(tempfile.mkdtemp(prefix="ams-bench-dovecot-", dir=args.dir)),
                           [WARMUP_USER, *(u for r in range(1, args.runs + 1)
                                           for u in dovecot_users(args.users, r))])
            try:
                progress("starting Dovecot", force=True)
                d.start()
                res.peer_version = dv.version()
                warm_up(args, d, msg_file, procs, scratch)
            except (OSError, RuntimeError) as e:
                res.peer_note = f"could not start: {e}"
                d.stop()
                shutil.rmtree(d.base, ignore_errors=True)
                d = None
        configs: list[int | None] = [None, *args.workers] if d is not None else [*args.workers]
        res.ams = {k: [] for k in args.workers}
        for i in range(1, args.runs + 1):
            shift = (i - 1) % len(configs)
            for c in configs[shift:] + configs[:shift]:
                tag = f"run {i}/{args.runs}"
                if c is None:
                    assert d is not None
                    r = run_dovecot(args, d, i, msg_file, procs, scratch, progress,
                                    f"Dovecot LMTP, {tag}")
                    res.peer.append(r)
                    what = (f"{fmt(r.rate)} msg/s" if not r.error else f"FAILED: {r.error}")
                    progress(f"Dovecot LMTP, {tag}: {what}", force=True)
                else:
                    label = f"AMS, {c} worker{'s' if c != 1 else ''}, {tag}"
                    a = run_ams(args, c, msg_file, procs, progress, label)
                    res.ams[c].append(a)
                    what = (f"{fmt(a.rate)} msg/s filed, {fmt(a.accept_rate)} msg/s accepted, "
                            f"p50 {a.p50_ms:.0f} ms, p99 {a.p99_ms:.0f} ms"
                            if not a.error else f"FAILED: {a.error}")
                    progress(f"{label}: {what}", force=True)
    finally:
        if d is not None:
            d.stop()
            shutil.rmtree(d.base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    res.load_after = os.getloadavg()
    progress.done()
    return res


# -- report --------------------------------------------------------------------------------


SKIPPED = "skipped (--no-peer)"


def peer_unavailable(note: str) -> str:
    return f"Dovecot: {note}" if note == SKIPPED else f"Dovecot: not available: {note}"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
                break
    except OSError:
        pass
    distro = ""
    try:
        distro = "Debian " + Path("/etc/debian_version").read_text().strip() + ", "
    except OSError:
        pass
    return (f"{distro}{platform.system()} {platform.release()}, {os.cpu_count()} × {cpu}"
            f"{mem}, Python {platform.python_version()}")


def command_line(argv: list[str]) -> str:
    prog = "python -m benchmarks.bench_delivery"
    if __name__ == "__main__" and (__spec__ is None
                                   or __spec__.name != "benchmarks.bench_delivery"):
        prog = "python " + shlex.quote(os.path.relpath(sys.argv[0]))
    return " ".join([prog, *(shlex.quote(a) for a in argv)])


def report(res: Results, args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    fs = filesystem_type(args.dir)
    fs_text = f"{fs[1]} (mounted at {fs[0]})" if fs else "unknown"
    peer_ok = [r.rate for r in res.peer if not r.error]
    peer_med = _median(peer_ok)
    if res.peer_note:
        peer_line = f"{peer_unavailable(res.peer_note)}."
    else:
        peer_line = (f"Peer: Dovecot {res.peer_version} standalone, LMTP on loopback into "
                     f"Maildir, `mail_fsync = optimized` (its default), a fresh user per run.")
    wm = ("K separate `ams worker --count 1` processes" if args.worker_mode == "processes"
          else "one `ams worker --count K` process")
    users = ("1 user (every message to one INBOX)" if args.users == 1
             else f"{args.users} users (sessions and messages split evenly)")
    out = [
        "## Delivery: SMTP accept → filed, vs Dovecot LMTP",
        "",
        f"Command: `{command_line(argv)}`",
        "",
        f"Machine: {machine()}; temp dirs under `{args.dir}` on {fs_text}; load average "
        f"{res.load_before[0]:.1f} before, {res.load_after[0]:.1f} after. "
        f"Medians of {args.runs} run{'s' if args.runs != 1 else ''}; whole run "
        f"{elapsed:.0f} s.",
        "",
        f"Workload: {args.messages:,} messages of {res.message_bytes:,} bytes to {users}, "
        f"{args.sessions} concurrent sessions, driven by {res.driver_text}. AMS: fresh store "
        f"with `fsync = \"always\"` per run, `ams mx` plus {wm} (no cross-process wake: "
        f"workers poll the spool), default logging. {peer_line}",
        "",
        "| configuration | AMS accept→filed | AMS accept only | p50 accept→filed | "
        "p99 accept→filed | Dovecot LMTP | AMS ÷ Dovecot | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k in args.workers:
        ok = [a for a in res.ams[k] if not a.error]
        name = f"MX + {k} worker{'s' if k != 1 else ''}"
        if not ok:
            out.append(f"| {name} | FAILED | | | | | | |")
            continue
        rate = statistics.median(a.rate for a in ok)
        acc = statistics.median(a.accept_rate for a in ok)
        p50 = statistics.median(a.p50_ms for a in ok)
        p99 = statistics.median(a.p99_ms for a in ok)
        if peer_med:
            ratio = rate / peer_med
            peer_cell, ratio_cell = f"{fmt(peer_med)} msg/s", f"{ratio:.2f}×"
            target = f"≥ {TARGET:.1f}× ({'met' if ratio >= TARGET else 'MISSED'})"
        else:
            peer_cell = ("skipped" if res.peer_note == SKIPPED else
                         "not available" if res.peer_note else "FAILED")
            ratio_cell = "—"
            target = f"≥ {TARGET:.1f}× (no peer figure)"
        out.append(f"| {name} | {fmt(rate)} msg/s | {fmt(acc)} msg/s | {p50:,.0f} ms | "
                   f"{p99:,.0f} ms | {peer_cell} | {ratio_cell} | {target} |")
    cpu_lines = []
    for k in args.workers:
        ok = [a for a in res.ams[k] if not a.error]
        if ok:
            mx = statistics.median(a.cpu_mx for a in ok) / args.messages * 1000
            wk = statistics.median(a.cpu_workers for a in ok) / args.messages * 1000
            cpu_lines.append(f"{k} worker{'s' if k != 1 else ''} {mx + wk:.2f} "
                             f"(MX {mx:.2f} + workers {wk:.2f})")
    peer_cpu = [r.cpu for r in res.peer if not r.error]
    if cpu_lines:
        out += ["", "CPU time per message (user + system, medians): AMS " + "; ".join(cpu_lines)
                + " ms" + (f"; Dovecot {statistics.median(peer_cpu) / args.messages * 1000:.2f}"
                           " ms (all its processes)" if peer_cpu else "") + "."]
    out += [
        "",
        "AMS ÷ Dovecot compares time to the last message *filed* (ours is asynchronous: "
        "250 once durable in the spool) with time to the last LMTP 250 (Dovecot's is "
        "synchronous). Latency: from the spool entry's creation (`received_us`) to the "
        "APPEND record's `time_us`, over every message of a run.",
        "",
        "All runs (AMS: filed msg/s, accepted msg/s, p50/p99 ms, drain = last 250 → last "
        "filed, CPU seconds of MX / workers; Dovecot: msg/s, CPU seconds of all its "
        "processes):",
        "",
    ]
    for k in args.workers:
        cells = []
        for a in res.ams[k]:
            if a.error:
                cells.append(f"FAILED ({a.error})")
            else:
                cells.append(f"{fmt(a.rate)} / {fmt(a.accept_rate)}, {a.p50_ms:,.0f}/"
                             f"{a.p99_ms:,.0f} ms, drain {a.drain_s:.1f} s, CPU "
                             f"{a.cpu_mx:.1f}/{a.cpu_workers:.1f} s")
        out.append(f"- AMS, {k} worker{'s' if k != 1 else ''}: " + "; ".join(cells))
    if res.peer:
        out.append("- Dovecot LMTP: " + "; ".join(
            f"FAILED ({r.error})" if r.error else f"{fmt(r.rate)} msg/s, CPU {r.cpu:.1f} s"
            for r in res.peer))
    elif res.peer_note:
        out.append(f"- {peer_unavailable(res.peer_note)}")
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------


def _workers_list(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of worker counts") from None
    ks = list(dict.fromkeys(ks))
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_delivery",
        description="SMTP accept → filed (AMS MX + workers, fsync on) beside Dovecot LMTP.")
    p.add_argument("--runs", type=int, help="repetitions of each configuration (default 3)")
    p.add_argument("--quick", action="store_true", help="500 messages, 1 run: a smoke test")
    p.add_argument("--messages", type=int, help="messages per run (default 10,000)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--users", type=int, default=1,
                   help="recipients, each its own user (default 1, as in peers-notes.md)")
    p.add_argument("--workers", type=_workers_list, default=[1, 2, 4],
                   help="worker counts to measure, comma-separated (default 1,2,4)")
    p.add_argument("--worker-mode", choices=["processes", "single"], default="processes",
                   help="K processes of one worker each (default), or one process of K")
    p.add_argument("--size", type=int, default=1024, help="message size in bytes (about)")
    p.add_argument("--driver", choices=["auto", "smtp-source", "python"], default="auto",
                   help="load generator (auto: smtp-source if installed)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip Dovecot")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="never apt-get install postfix/dovecot when missing")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a run may take before it is called failed")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temp dirs go (a local disk; default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.messages = args.messages or (500 if args.quick else 10_000)
    if args.runs < 1 or args.messages < 1 or args.sessions < 1:
        print("--runs, --messages and --sessions must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.users <= args.sessions:
        print("--users must be between 1 and --sessions", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    args.dir = args.dir.resolve()
    procs = Processes()

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    t = time.perf_counter()
    try:
        res = run(args, procs, Progress())
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    print(report(res, args, argv, time.perf_counter() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
