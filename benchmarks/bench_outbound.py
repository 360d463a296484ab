"""Outgoing mail, submission to a loopback sink, beside Postfix relaying the same mail.

Run from the repository root (as root, on Debian, for the peer)::

    python -m benchmarks.bench_outbound                 # default: about 2 minutes on 2 cores
    python -m benchmarks.bench_outbound --quick         # 300 messages, 1 run: a smoke test
    python -m benchmarks.bench_outbound --messages 5000 --sessions 16 --runs 5 --dir /var/tmp

What one run of one configuration does
--------------------------------------
The remote side is Postfix's ``smtp-sink`` on 127.0.0.1 (one for the whole
benchmark), which accepts everything and counts messages (``-c``); the
benchmark reads its counter.

AMS: a fresh store (``fsync = "always"``) with one user; ``ams submission``
as its own process (AUTH PLAIN over plaintext: ``tls.allow_plaintext_auth``,
no TLS anywhere, as for the peer); K outbound gateways as K separate
``ams gateway --count 1`` processes, whose static route sends
``remote.test`` to the sink.  Nothing but the store connects submission and
gateways: the gateways find new mail by polling the spool.

Postfix: one standalone instance for the whole benchmark (its own config
dir, queue and log under the temp dir; chroot off; ``relayhost`` the sink;
everything else Postfix's defaults, among them connection caching and a
destination concurrency of 20), accepting from 127.0.0.1 without AUTH.

The driver sends ``--messages`` copies of one ~1 KB message over
``--sessions`` concurrent SMTP sessions (a Python asyncio client, MAIL,
RCPT and DATA pipelined, one recipient per message; it authenticates first
with AMS), and times:

- throughput = messages / (every session open -> the sink has counted them all);
- accept rate = messages / (every session open -> the driver has every 250);
- session setup: connecting, EHLO and (AMS) AUTH for all sessions, before
  the clock starts.  AUTH is an argon2id verification per session with the
  product's default parameters (RFC 9106's low-memory profile): it is meant
  to be slow, and it is reported on its own rather than mixed into the
  relay throughput.

After each AMS run the outgoing and deferred queues must be empty and
nothing failed, or the run is reported as failed.  Configurations are
interleaved (Postfix, AMS with 1 gateway, with 2, rotated each run),
``--runs`` times; the table shows medians, the list under it every run.
Everything started is stopped and the temp dir removed at the end, also on
Ctrl-C or an error.  Without Postfix (or as non-root), AMS is reported alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ams.config import config_from_dict, render_config  # noqa: E402
from ams.store import Place, Spool, Store, UserRegistry  # noqa: E402
from ams.store.outqueue import DeferredQueue  # noqa: E402
from benchmarks.bench_delivery import Processes, machine, message_text  # noqa: E402
from benchmarks.bench_store import Progress, fmt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
USER, PASSWORD = "bench", "bench-pw"
SENDER = f"{USER}@example.test"
RCPT = "someone@remote.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("AMS_LOG_LEVEL", None)  # the product's default: a log line per message
    return e


# -- the sink ----------------------------------------------------------------------------------


class Sink:
    """smtp-sink with its counter read from stdout (``sess=N quit=N mesg=N``)."""

    def __init__(self, procs: Processes, port: int) -> None:
        cmd = [SMTP_SINK, *(["-u", "nobody"] if os.geteuid() == 0 else []), "-c",
               f"127.0.0.1:{port}", "256"]
        self.port = port
        self.count = 0
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        procs.procs.append(self.proc)  # type: ignore[arg-type]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            buf = (buf + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                with self.changed:
                    self.count = int(found[-1])
                    self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Wall-clock time when the counter reached ``count``; None on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.changed.wait(min(left, 0.5))
        return time.time()


# -- the driver -----------------------------------------------------------------------------


async def _reply(r: asyncio.StreamReader) -> int:
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            return int(line[:3])


async def _open(port: int, auth: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    if await _reply(r) != 220:
        raise ConnectionError("bad greeting")
    w.write(b"EHLO bench.client.test\r\n")
    await _reply(r)
    if auth:
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        w.write(f"AUTH PLAIN {token}\r\n".encode())
        if (code := await _reply(r)) != 235:
            raise ConnectionError(f"AUTH answered {code}")
    return r, w


async def _session(r: asyncio.StreamReader, w: asyncio.StreamWriter, count: int,
                   body: bytes) -> None:
    try:
        cmds = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
        for _ in range(count):
            w.write(cmds)
            codes = [await _reply(r) for _ in range(3)]
            if codes != [250, 250, 354]:
                raise ConnectionError(f"MAIL/RCPT/DATA answered {codes}")
            w.write(body)
            if (code := await _reply(r)) != 250:
                raise ConnectionError(f"end of data answered {code}")
        w.write(b"QUIT\r\n")
        await w.drain()
    finally:
        w.close()


@dataclass
class Driven:
    t0: float = 0.0         # wall clock: every session is open (and authenticated)
    t_accepted: float = 0.0  # the driver has every 250
    setup: float = 0.0      # seconds to open and authenticate the sessions
    error: str | None = None


def drive(port: int, messages: int, sessions: int, text: bytes, *, auth: bool,
          timeout: float) -> Driven:
    """Open ``sessions`` sessions (AUTH with ``auth``), then time ``messages`` over them.

    The sessions are set up before the clock starts: AUTH costs an argon2
    verification per session (deliberately slow), which is not what this
    benchmark measures; the setup time is reported on its own.
    """
    body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in text.rstrip(b"\n").split(b"\n")) + b".\r\n"
    shares = [messages // sessions + (i < messages % sessions) for i in range(sessions)]
    out = Driven()

    async def run_all() -> None:
        t = time.time()
        streams = await asyncio.gather(*(_open(port, auth) for n in shares if n))
        out.t0 = time.time()
        out.setup = out.t0 - t
        await asyncio.gather(*(_session(r, w, n, body)
                               for (r, w), n in zip(streams, [n for n in shares if n],
                                                    strict=True)))

    try:
        asyncio.run(asyncio.wait_for(run_all(), timeout))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out.error = f"driver: {type(e).__name__}: {e}"
    out.t_accepted = time.time()
    return out


# -- AMS --------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    rate: float = 0.0
    accept: float = 0.0
    setup: float = 0.0
    error: str | None = None


def _wait_line(path: Path, pattern: str, proc: subprocess.Popen[bytes],
               timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {path.read_text(errors='replace')[-500:]}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {pattern!r} in {path}")


def run_ams(args: argparse.Namespace, gateways: int, sink: Sink, base: Path,
            procs: Processes, text: bytes) -> RunResult:
    name = f"AMS, {gateways} gateway{'s' if gateways > 1 else ''}"
    d = Path(tempfile.mkdtemp(prefix="ams-", dir=base))
    cfg = config_from_dict({
        "store": {"root": str(d / "store"), "fsync": "always"},
        "host": {"name": "bench", "cache_dir": str(d / "cache")},
        "mail": {"domains": ["example.test"]},
        "tls": {"allow_plaintext_auth": True},
        "outbound": {"routes": {"remote.test": f"127.0.0.1:{sink.port}"}, "dns": False},
    })
    conf = d / "ams.toml"
    conf.write_text(render_config(cfg))
    store = Store.initialise(cfg)
    UserRegistry(store).add(USER, PASSWORD)  # the default argon2 parameters: no rehash
    ams = [sys.executable, "-m", "ams.cli", "--config", str(conf)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        sub_log = d / "submission.log"
        sub = procs.spawn([*ams, "submission", "--listen", "127.0.0.1:0"], stdout=sub_log,
                          stderr=d / "submission.err", env=_env())
        started.append(sub)
        port = int(_wait_line(sub_log, r"listening on 127\.0\.0\.1:(\d+)", sub)[1])
        spool = Spool(store)
        for i in range(gateways):
            started.append(procs.spawn([*ams, "gateway", "--count", "1"],
                                       stderr=d / f"gateway{i}.log", env=_env()))
        deadline = time.monotonic() + 30
        while len(spool.live_workers("out")) < gateways:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateways did not register")
            time.sleep(0.05)
        base_count = sink.count
        got = drive(port, args.messages, args.sessions, text, auth=True, timeout=args.timeout)
        if got.error:
            return RunResult(name, error=got.error)
        t_end = sink.wait_for(base_count + args.messages, args.timeout)
        if t_end is None:
            return RunResult(name, error=f"sink counted {sink.count - base_count} of "
                             f"{args.messages}")
        deferred = DeferredQueue(spool, bucket_seconds=cfg.outbound.bucket_seconds)

        def left() -> dict[str, int]:
            return {"out": spool.depth("out"), "claimed": spool.depth("out", Place.CLAIMED),
                    "failed": spool.depth("out", Place.FAILED), "deferred": deferred.depth()}

        # The sink counts a message at its 250; the gateway settles just after.
        deadline = time.monotonic() + 30
        while any(left().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if any(left().values()) or sink.count - base_count != args.messages:
            return RunResult(name, error=f"not clean after the run: {left()}, sink "
                             f"{sink.count - base_count}")
        return RunResult(name, args.messages / (t_end - got.t0),
                         args.messages / (got.t_accepted - got.t0), got.setup)
    except RuntimeError as e:
        return RunResult(name, error=str(e))
    finally:
        procs.stop(started)
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


# -- Postfix ----------------------------------------------------------------------------------

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {base}/log/postfix.log
maillog_file_prefixes = {base}
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
"""


class Postfix:
    """A standalone Postfix relaying everything to the sink."""

    def __init__(self, base: Path, sink_port: int) -> None:
        self.base = base
        self.conf = base / "conf"
        self.port = free_port()
        for sub in ("conf", "queue", "data", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(base / "data", "postfix")
        (self.conf / "main.cf").write_text(MAIN_CF.format(base=base, sink=sink_port))
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if line.startswith("maildrop"):
                break  # the pipe services that follow are not needed
            line = re.sub(r"^smtp(\s+)inet", rf"127.0.0.1:{self.port}\1inet", line)
            # chroot (the 5th column) off: the temp dir is not set up as a jail
            line = re.sub(r"^(\S+\s+(?:unix|inet|unix-dgram|fifo|pass)\s+[-yn]\s+[-yn]\s+)y",
                          r"\1n", line)
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        self._postfix("start")

    def _postfix(self, action: str) -> None:
        # Postfix logs only to syslog when stderr is not a terminal: script(1) gives it one.
        r = subprocess.run(["script", "-qc", f"{POSTFIX} -c {self.conf} {action}", "/dev/null"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix {action}: {r.stdout.strip()} {r.stderr.strip()}")

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("postfix did not start listening")

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "hold"):
            d = self.base / "queue" / sub
            if d.is_dir() and any(os.scandir(d)):
                for _root, _dirs, files in os.walk(d):
                    if files:
                        return False
        return True


def run_postfix(args: argparse.Namespace, pf: Postfix, sink: Sink, text: bytes) -> RunResult:
    base_count = sink.count
    got = drive(pf.port, args.messages, args.sessions, text, auth=False, timeout=args.timeout)
    if got.error:
        return RunResult("Postfix", error=got.error)
    t_end = sink.wait_for(base_count + args.messages, args.timeout)
    if t_end is None:
        return RunResult("Postfix", error=f"sink counted {sink.count - base_count}")
    return RunResult("Postfix", args.messages / (t_end - got.t0),
                     args.messages / (got.t_accepted - got.t0), got.setup)


def postfix_usable() -> str | None:
    if not (shutil.which(POSTFIX) and Path(SMTP_SINK).exists()):
        return "Postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a standalone Postfix needs root"
    return None


# -- the run and the report -------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    peer_note: str | None = None


def run(args: argparse.Namespace, procs: Processes, progress: Progress, base: Path) -> Results:
    res = Results()
    text = message_text(args.size).encode()
    sink = Sink(procs, free_port())
    postfix = None
    res.peer_note = postfix_usable()
    if res.peer_note is None:
        try:
            postfix = Postfix(base / "postfix", sink.port)
            postfix.wait_ready()
            run_postfix(argparse.Namespace(**{**vars(args), "messages": 20, "sessions": 2}),
                        postfix, sink, text)  # warm up: its processes forked before timing
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            res.peer_note = f"Postfix could not be started: {e}"
            if postfix is not None:
                postfix.stop()
            postfix = None
    configs: list[str | int] = (["postfix"] if postfix else []) + list(args.gateways)
    try:
        for r in range(args.runs):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for c in order:
                progress(f"run {r + 1}/{args.runs}: {c}", force=True)
                if c == "postfix":
                    assert postfix is not None
                    got = run_postfix(args, postfix, sink, text)
                else:
                    got = run_ams(args, int(c), sink, base, procs, text)
                res.runs.setdefault(got.name, []).append(got)
                progress(f"run {r + 1}/{args.runs}: {got.name}: "
                         f"{got.error or fmt(got.rate) + ' msg/s'}", force=True)
    finally:
        if postfix is not None:
            postfix.stop()
    return res


def report(res: Results, args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    out = ["## Outgoing mail: submission to a loopback sink, beside Postfix", "",
           f"`{command_line(argv)}`  ", f"{machine()}  ",
           f"{args.messages} messages of ~{args.size} bytes, {args.sessions} sessions, "
           f"{args.runs} runs, {elapsed:.0f} s in all.", ""]
    if res.peer_note:
        out += [f"Peer: not measured ({res.peer_note}).", ""]
    peer = [r.rate for r in res.runs.get("Postfix", []) if not r.error]
    peer_med = statistics.median(peer) if peer else None
    out += ["| configuration | to the sink, msg/s | accept, msg/s | vs Postfix | "
            "session setup, s |", "|---|---|---|---|---|"]
    for name, runs in res.runs.items():
        ok = [r for r in runs if not r.error]
        if not ok:
            out.append(f"| {name} | failed | | |")
            continue
        rate = statistics.median(r.rate for r in ok)
        acc = statistics.median(r.accept for r in ok)
        setup = statistics.median(r.setup for r in ok)
        ratio = f"{rate / peer_med:.2f}×" if peer_med and name != "Postfix" else ""
        out.append(f"| {name} | {fmt(rate)} | {fmt(acc)} | {ratio} | {setup:.2f} |")
    out += ["", "Every run:", ""]
    for name, runs in res.runs.items():
        out.append(f"- {name}: " + ", ".join(r.error or f"{fmt(r.rate)} ({fmt(r.accept)})"
                                             for r in runs))
    return "\n".join(out) + "\n"


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks.bench_outbound", *(shlex.quote(a) for a in argv)])


def _gateways(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError("a list like 1,2") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("gateway counts must be at least 1")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_outbound",
                                description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--size", type=int, default=1000, help="message size in bytes")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--gateways", type=_gateways, default=[1, 2],
                   help="gateway counts to measure (default 1,2)")
    p.add_argument("--dir", default=None, help="where the temp dirs go (a local disk)")
    p.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    p.add_argument("--keep", action="store_true", help="keep each run's store")
    p.add_argument("--quick", action="store_true", help="300 messages, 1 run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.quick:
        args.messages, args.runs = 300, 1
    if args.messages < 1 or args.sessions < 1 or args.runs < 1:
        print("bench_outbound: --messages, --sessions and --runs must be positive",
              file=sys.stderr)
        return 2
    if not Path(SMTP_SINK).exists():
        print(f"bench_outbound: {SMTP_SINK} is needed (apt-get install postfix)",
              file=sys.stderr)
        return 1
    procs = Processes()
    base = Path(tempfile.mkdtemp(prefix="ams-bench-outbound-", dir=args.dir))
    os.chmod(base, 0o755)

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    progress = Progress()
    start = time.monotonic()
    try:
        res = run(args, procs, progress, base)
    except KeyboardInterrupt:
        print("bench_outbound: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        progress.done()
        shutil.rmtree(base, ignore_errors=True)
    print(report(res, args, argv, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
