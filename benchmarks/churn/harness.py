"""One measured run of one scenario: the steps every scenario shares.

A run (:func:`run`) is:

1. ``prepare``: the store on the backing directory, directly (not through a
   meter): users, mailboxes, and ``prefill`` messages in each mailbox;
2. ``start``: a :class:`~benchmarks.churn.cluster.Cluster` (coordinator and
   one meter per host) and the scenario's processes, each with its store
   root inside its own host's mount and its local state (caches, indexes,
   runtime dirs) outside every mount;
3. wait until every reader host has every user's mailbox open (IDLE);
4. warm-up: one message per user, delivered and seen by every reader, so
   one-time work (directories made on first use, first index builds) stays
   out of the window;
5. an idle baseline: counters over ``baseline`` seconds with no mail (it
   should be zero: held callbacks cost nothing);
6. the measured window: ``messages`` messages, round-robin over the users,
   sent at ``rate`` per second (0: as fast as they are taken), until every
   reader host has been told of every one; then two reader poll intervals
   more, so trailing refetches are counted;
7. stop every process, unmount, remove the temp dirs.

The scenarios (:mod:`side_ams`, :mod:`side_maildir`, :mod:`side_classic`)
fill in ``prepare``, ``start`` and ``send``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench_delivery import (
    DOMAIN,
    Processes,
    cpu_seconds,
    message_text,
    smtp_open,
    smtp_quit,
    smtp_send,
)
from benchmarks.churn.cluster import Cluster
from benchmarks.churn.model import Counters

ROOT = Path(__file__).resolve().parent.parent.parent
PASSWORD = "churn-password"
MESSAGE_BYTES = 1024


@dataclass(frozen=True)
class Spec:
    scenario: str
    users: int
    messages: int
    prefill: int = 0
    rate: float = 0.0
    writers: int = 2
    readers: int = 3
    poll: float = 1.0
    baseline: float = 3.0
    timeout: float = 1800.0
    #: seconds the kernel may cache names and attributes (dropped at every break); 0: off
    kernel_cache: float = 10.0

    @property
    def label(self) -> str:
        pre = f", prefill {self.prefill:,}" if self.prefill else ""
        return f"{self.scenario} ({self.users} users, {self.messages:,} messages{pre})"


@dataclass
class Result:
    spec: Spec
    roles: dict[str, str] = field(default_factory=dict)  # host -> role
    window: dict[str, Counters] = field(default_factory=dict)
    baseline: dict[str, Counters] = field(default_factory=dict)
    warmup: dict[str, Counters] = field(default_factory=dict)
    seconds: float = 0.0  # first message sent -> every reader told of the last
    send_seconds: float = 0.0
    prepare_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each step
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the window
    error: str | None = None

    def total(self, role: str | None = None) -> Counters:
        out = Counters()
        for host, c in self.window.items():
            if role is None or self.roles.get(host) == role:
                out.add(c)
        return out


class Failed(Exception):
    pass


def users(n: int) -> list[str]:
    return [f"user{i:03d}" for i in range(1, n + 1)]


class Scenario:
    """What a scenario provides; see the module docstring for when each is called."""

    name = ""
    #: Directories (relative to the backing dir) that are a mailbox's own.
    mailbox_re = ""
    reader_role = "reader"

    def __init__(self, spec: Spec, work: Path, procs: Processes, progress: Callable[..., None]
                 ) -> None:
        self.spec = spec
        self.work = work
        self.backing = work / "backing"
        self.local = work / "local"
        self.procs = procs
        self.progress = progress
        self.users = users(spec.users)
        self.roles: dict[str, str] = {}
        self.status_files: list[Path] = []  # one per reader host
        self.message = message_text(MESSAGE_BYTES)
        self.message_file = work / "message.eml"
        self.started: list[subprocess.Popen[bytes]] = []

    # -- to be provided -----------------------------------------------------------------------

    def prepare(self) -> None:
        raise NotImplementedError

    def start(self, cluster: Cluster) -> None:
        raise NotImplementedError

    def send(self, rcpts: Sequence[str], rate: float) -> None:
        """Deliver one message to each of ``rcpts`` (user names), in order, paced."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise Failed if a process this scenario depends on died."""
        for p in self.started:
            if p.poll() is not None:
                raise Failed(f"{' '.join(map(str, p.args[:4]))}… exited with status "
                             f"{p.returncode}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the scenario's processes, by role."""
        return {}

    def stop(self) -> None:
        """Stop what ``start`` started beyond :meth:`spawn`\ ed processes."""

    # -- shared helpers -----------------------------------------------------------------------

    def mount(self, cluster: Cluster, host: str, role: str) -> Path:
        self.roles[host] = role
        return cluster.mount(host)

    def spawn(self, cmd: Sequence[str], name: str, *, stdin: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        e = env or {**os.environ, "PYTHONPATH": str(ROOT)}
        if not stdin:
            p = self.procs.spawn(cmd, stdout=self.work / f"{name}.out",
                                 stderr=self.work / f"{name}.log", env=e)
        else:
            out = open(self.work / f"{name}.out", "ab")  # noqa: SIM115
            err = open(self.work / f"{name}.log", "ab")  # noqa: SIM115
            try:
                p = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                     cwd=ROOT, env=e, start_new_session=True)
            finally:
                out.close()
                err.close()
            self.procs.procs.append(p)
        self.started.append(p)
        return p

    def wait_line(self, proc: subprocess.Popen[bytes], name: str, needle: str,
                  timeout: float = 60.0) -> str:
        """The first line of ``name.out`` containing ``needle``."""
        out = self.work / f"{name}.out"
        deadline = time.monotonic() + timeout
        while True:
            text = out.read_text(errors="replace") if out.exists() else ""
            for line in text.splitlines():
                if needle in line:
                    return line
            if proc.poll() is not None:
                raise Failed(f"{name} exited with status {proc.returncode}: {tail(self.work, name)}")
            if time.monotonic() > deadline:
                raise Failed(f"{name}: no {needle!r} after {timeout:.0f} s: {tail(self.work, name)}")
            time.sleep(0.05)

    def idle_clients(self, host: str, port: int) -> None:
        status = self.work / f"status-{host}.json"
        self.status_files.append(status)
        self.spawn([sys.executable, "-m", "benchmarks.churn.idle", "--port", str(port),
                    "--password", PASSWORD, "--status", str(status), *self.users],
                   f"idle-{host}")

    def reader_status(self) -> list[dict[str, object]]:
        out = []
        for f in self.status_files:
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                out.append({"idle": 0, "new": 0, "errors": 0, "error": ""})
        return out


def tail(work: Path, name: str, lines: int = 3) -> str:
    try:
        text = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in text if "Error" in ln or "ERROR" in ln or "Traceback" in ln
              or "Fatal" in ln or "Panic" in ln]
    return " / ".join(errors[:lines] or text[-lines:]) or "(empty log)"


def wait_readers(sc: Scenario, *, idle: int | None = None, new: int | None = None,
                 timeout: float, what: str) -> None:
    """Until every reader host reports ``idle`` mailboxes open and ``new`` messages seen."""
    deadline = time.monotonic() + timeout
    last_change, last = time.monotonic(), None
    shown = time.monotonic()
    while True:
        st = sc.reader_status()
        for s in st:
            if s.get("errors"):
                raise Failed(f"a reader lost a connection: {s.get('error')}")
        ok = all((idle is None or s.get("idle") == idle) and (new is None or s.get("new") == new)
                 for s in st)
        if ok:
            return
        sc.check()
        seen = [(s.get("idle"), s.get("new")) for s in st]
        now = time.monotonic()
        sc.progress(f"{sc.spec.label}: {what}: (open, seen) per reader host {seen}",
                    force=now - shown > 15)
        if now - shown > 15:
            shown = now
        if seen != last:
            last, last_change = seen, now
        if now > deadline or now - last_change > 120:
            raise Failed(f"{what}: readers at (open, seen) {seen} after "
                         f"{now - last_change:.0f} s without progress")
        time.sleep(0.1)


def run(spec: Spec, scenario_cls: type[Scenario], base_dir: Path, procs: Processes,
        progress: Callable[..., None], *, keep: bool = False) -> Result:
    res = Result(spec)
    work = Path(tempfile.mkdtemp(prefix=f"ams-churn-{spec.scenario}-", dir=base_dir))
    work.chmod(0o755)  # services running as other users reach their mounts through it
    sc = scenario_cls(spec, work, procs, progress)
    cluster = Cluster(work / "cluster", sc.backing, mailbox_re=sc.mailbox_re,
                      cache_timeout=spec.kernel_cache)
    t = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        res.phases[name] = now - t
        t = now

    try:
        sc.backing.mkdir()
        sc.local.mkdir()
        sc.message_file.write_text(sc.message)
        progress(f"{spec.label}: preparing", force=True)
        sc.prepare()
        phase("prepare")
        res.prepare_seconds = res.phases["prepare"]
        cluster.start()
        progress(f"{spec.label}: starting hosts", force=True)
        sc.start(cluster)
        res.roles = dict(sc.roles)
        phase("start")
        wait_readers(sc, idle=spec.users, timeout=900, what="opening mailboxes")
        phase("open")
        s0 = cluster.snapshot()
        progress(f"{spec.label}: warm-up, one message per user", force=True)
        sc.send(sc.users, spec.rate)
        wait_readers(sc, new=spec.users, timeout=600, what="warm-up")
        time.sleep(2 * spec.poll)
        s1 = cluster.snapshot()
        res.warmup = {h: c.minus(s0.get(h, Counters())) for h, c in s1.items()}
        phase("warm-up")
        time.sleep(spec.baseline)
        s2 = cluster.snapshot()
        res.baseline = {h: c.minus(s1.get(h, Counters())) for h, c in s2.items()}
        phase("baseline")
        rcpts = [sc.users[i % spec.users] for i in range(spec.messages)]
        cpu0 = sc.cpu()
        meter0 = cpu_seconds([p.pid for p, _ in cluster.meters.values()])
        progress(f"{spec.label}: sending", force=True)
        t0 = time.monotonic()
        sc.send(rcpts, spec.rate)
        res.send_seconds = time.monotonic() - t0
        wait_readers(sc, new=spec.users + spec.messages, timeout=spec.timeout,
                     what="delivering")
        res.seconds = time.monotonic() - t0
        time.sleep(2 * spec.poll)
        res.window = cluster.delta(s2)
        res.cpu = {role: secs - cpu0.get(role, 0.0) for role, secs in sc.cpu().items()}
        res.cpu["meters"] = cpu_seconds([p.pid for p, _ in cluster.meters.values()]) - meter0
        phase("window")
        progress(f"{spec.label}: done in {res.seconds:.0f} s", force=True)
    except Failed as e:
        res.error = str(e)
    finally:
        progress(f"{spec.label}: stopping", force=False)
        procs.stop(list(reversed(sc.started)))
        sc.stop()
        cluster.close()
        if keep:
            progress(f"{spec.label}: logs kept in {work}", force=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
        phase("stop")
    return res


# -- a paced SMTP / LMTP sender --------------------------------------------------------------


def smtp_body(text: str) -> bytes:
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in text.encode().rstrip(b"\n").split(b"\n")) + b".\r\n"


def writer_of(i: int, users: int, writers: int) -> int:
    """Which writer host delivers message ``i`` when messages go round-robin over
    ``users`` users: every user's messages alternate between the writers (one
    round to the first, the next round to the second...), as mail for one user
    reaches any delivery host."""
    users = max(1, users)
    return (i % users + i // users) % writers


def send_smtp(targets: Sequence[tuple[int, bool]], rcpts: Sequence[str], text: str, rate: float,
              *, users: int, sessions: int = 2, timeout: float = 1800.0) -> None:
    """One message per recipient (``user`` → ``user@DOMAIN``), message i to target
    :func:`writer_of` (port, lmtp), not before ``i / rate`` seconds after the
    start; ``sessions`` connections per target."""
    body = smtp_body(text)
    try:
        asyncio.run(asyncio.wait_for(_send_all(targets, rcpts, body, rate, sessions, users),
                                     timeout))
    except Exception as e:  # noqa: BLE001 - one line for the report
        raise Failed(f"sending: {type(e).__name__}: {e}") from None


async def _send_all(targets: Sequence[tuple[int, bool]], rcpts: Sequence[str], body: bytes,
                    rate: float, sessions: int, users: int) -> None:
    queues: list[asyncio.Queue[tuple[int, str] | None]] = [asyncio.Queue() for _ in targets]
    for i, r in enumerate(rcpts):
        queues[writer_of(i, users, len(targets))].put_nowait((i, r))
    for q in queues:
        for _ in range(sessions):
            q.put_nowait(None)
    t0 = time.monotonic()
    await asyncio.gather(*(_session(port, lmtp, q, body, rate, t0)
                           for (port, lmtp), q in zip(targets, queues, strict=True)
                           for _ in range(sessions)))


async def _session(port: int, lmtp: bool, q: asyncio.Queue[tuple[int, str] | None],
                   body: bytes, rate: float, t0: float) -> None:
    r, w, _ = await smtp_open(port, lmtp, "churn.example.org")
    try:
        while (job := await q.get()) is not None:
            i, user = job
            if rate > 0:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            # One command at a time, as the recorded figures were made.
            await smtp_send(r, w, f"{user}@{DOMAIN}", body, pipelining=False)
        await smtp_quit(w)
    finally:
        w.close()
