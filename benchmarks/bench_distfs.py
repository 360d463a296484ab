"""Delivery over a distributed filesystem, with 1, 2 and 3 worker hosts,
beside the same run on a local directory; and IMAP new-mail latency across
hosts.

Run from the repository root, as root (after ``scripts/setup.sh``)::

    python -m benchmarks.bench_distfs                   # local, GlusterFS, MooseFS: ~15-30 min
    python -m benchmarks.bench_distfs --quick           # 300 messages, 1 run: a smoke test
    python -m benchmarks.bench_distfs --fs local,moosefs --runs 5 --messages 2000

What one filesystem's part does
-------------------------------
``tests/distfs.py`` brings the filesystem up with four client mounts, hosts
a-d, each its own FUSE client in its own network namespace (``local``: the
four "mounts" are one local directory).  ``ams doctor`` runs on the four at
once against the store root, as a site does before starting roles (the
roles refuse a FUSE filesystem without a verdict).  Then, for each run and
each K in ``--workers`` (rotated from run to run):

- ``--users`` fresh users in the one store (``fsync = "always"``,
  ``lock_method = "fcntl"``, lease 30 s);
- ``ams mx`` on host a, and one ``ams worker --count --per-host`` process
  on each of K hosts (b, c, d), all separate processes sharing only the
  filesystem (the workers find mail by polling the spool);
- ``--messages`` copies of one ~1 KB message over ``--sessions`` SMTP
  sessions, split evenly over the users, with the delivery benchmark's
  driver (``benchmarks/bench_delivery.py``: Postfix's smtp-source if
  installed, else its pipelining Python client);
- throughput = messages / (first connection -> the last APPEND's
  ``time_us`` in the logs), and every message must be filed exactly once.

Then IMAP latency, ``--latency-samples`` times each: an IDLE client on the
bridge of host b, and (1) one message sent to the MX on a and filed by the
one worker, on host c; (2) one message appended through the IMAP bridge of
host c.  The time is from the moment the trigger starts (before the SMTP
transaction or the APPEND) until the IDLE client reads EXISTS.

The report (Markdown on stdout) gives medians, every run, and each
filesystem's throughput as a ratio of the local directory's with the same K.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ams.store import RecordType, Spool  # noqa: E402
from benchmarks.bench_delivery import (  # noqa: E402
    SMTP_SOURCE,
    Processes,
    machine,
    message_text,
    plan,
    send,
)
from benchmarks.bench_store import Progress, fmt  # noqa: E402
from tests.distfs import KINDS, SetupError, Unavailable, open_pool  # noqa: E402
from tests.distfs_site import (  # noqa: E402
    DOMAIN,
    Site,
    idle_latency,
    imap_login,
    plan_mail,
    roles,
    run_doctor,
    send_mail,
)

HOSTS = ("a", "b", "c", "d")
WORKER_HOSTS = ("b", "c", "d")


@dataclass
class FsResult:
    kind: str
    note: str = ""  # why it could not run, if it did not
    rates: dict[int, list[float]] = field(default_factory=dict)
    #: messages / (first connection -> the MX's last 250): the MX alone
    accepts: dict[int, list[float]] = field(default_factory=dict)
    errors: dict[int, list[str]] = field(default_factory=dict)
    idle_from_worker: list[float] = field(default_factory=list)
    idle_from_bridge: list[float] = field(default_factory=list)
    doctor: str = ""


def one_run(site: Site, k: int, args: argparse.Namespace, msg_file: Path, tag: str,
            procs: Processes, progress: Progress, label: str) -> tuple[float, float]:
    """One throughput run with K worker hosts: (filed, accepted) messages/s, or
    raises RuntimeError."""
    users = [f"{tag}u{i:02d}" for i in range(args.users)]
    site.initialise(users)
    with roles(site) as r:
        mx = r.mx("a")
        workers = [r.workers(h, args.per_host) for h in WORKER_HOSTS[:k]]
        spool = Spool(site.store("a"))
        deadline = time.monotonic() + 60
        while len(spool.live_workers("in")) < k * args.per_host:
            if time.monotonic() > deadline or any(w.proc.poll() is not None for w in workers):
                raise RuntimeError(f"workers did not register: {workers[0].tail()}")
            time.sleep(0.1)
        reg = site.registry("a")
        readers = [reg.mailboxes(u).open("INBOX").reader() for u in users]
        shares = plan(args.sessions, args.messages, [f"{u}@{DOMAIN}" for u in users])
        progress(f"{label}: sending {args.messages:,} messages", force=True)
        sent = send(args.driver, mx.port, shares, msg_file, lmtp=False, procs=procs,
                    logdir=site.local, timeout=args.timeout)
        if sent.error:
            raise RuntimeError(f"{sent.error}; MX: {mx.tail()}")
        ids: set[str] = set()
        records = 0
        last_us = 0
        deadline = time.monotonic() + args.timeout
        while len(ids) < args.messages:
            for rd in readers:
                for rec in rd.poll().records:
                    if rec.header.type == RecordType.APPEND:
                        records += 1
                        ids.add(rec.body.delivery_id)  # type: ignore[union-attr]
                        last_us = max(last_us, rec.header.time_us)
            progress(f"{label}: {len(ids):,}/{args.messages:,} filed")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ids):,} of {args.messages:,} filed in "
                                   f"{args.timeout:.0f} s; worker: {workers[0].tail()}")
            time.sleep(0.1)
        if records != len(ids):
            raise RuntimeError(f"{records} APPEND records for {len(ids)} delivery ids: "
                               "not exactly once")
        for w in workers:
            r.stop(w)
        return (args.messages / (last_us / 1e6 - sent.t0),
                args.messages / (sent.t_end - sent.t0))


def latency(site: Site, args: argparse.Namespace, res: FsResult) -> None:
    user = "latency"
    site.initialise([user])
    with roles(site) as r:
        mx = r.mx("a")
        r.workers("c", 1)
        bridge_b, bridge_c = r.imap("b"), r.imap("c")
        c = imap_login(bridge_c.port, user)
        try:
            for i in range(args.latency_samples):
                plans = plan_mail(1, [user], tag=f"lat{i}-", second_every=0)
                res.idle_from_worker.append(idle_latency(
                    bridge_b.port, user, lambda p=plans: _send(mx.port, p)))
                res.idle_from_bridge.append(idle_latency(
                    bridge_b.port, user, lambda: c.append(
                        "INBOX", None, None, b"Subject: via c\r\n\r\nappended on c\r\n")))
        finally:
            c.logout()


def _send(port: int, plans: list[tuple[str, list[str]]]) -> None:
    errors = send_mail(port, plans, sessions=1)
    if errors:
        raise RuntimeError(f"SMTP: {errors}")


def run_fs(kind: str, args: argparse.Namespace, msg_file: Path, procs: Processes,
           progress: Progress) -> FsResult:
    res = FsResult(kind, rates={k: [] for k in args.workers},
                   accepts={k: [] for k in args.workers}, errors={k: [] for k in args.workers})
    local = Path(tempfile.mkdtemp(prefix=f"ams-bench-distfs-{kind}-"))
    try:
        progress(f"{kind}: bringing it up", force=True)
        with open_pool(kind, HOSTS) as pool:
            if kind != "local":
                progress(f"{kind}: ams doctor on {len(HOSTS)} hosts", force=True)
                reports = run_doctor(pool, HOSTS)
                rc, report, err = reports["a"]
                res.doctor = (f"{report.get('verdict')}, lock_method "
                              f"{report.get('lock_method')}" if report else f"failed: {err}")
                if rc != 0:
                    res.note = f"ams doctor: {res.doctor}"
                    return res
            site = Site(pool, local, name="store", lock_method="fcntl", lease=30.0, skew=5.0)
            for i in range(1, args.runs + 1):
                shift = (i - 1) % len(args.workers)
                for k in args.workers[shift:] + args.workers[:shift]:
                    label = f"{kind}, {_hosts(k)}, run {i}/{args.runs}"
                    try:
                        rate, accept = one_run(site, k, args, msg_file, f"r{i}k{k}", procs,
                                               progress, label)
                    except RuntimeError as e:
                        res.errors[k].append(str(e))
                        progress(f"{label}: FAILED: {e}", force=True)
                        continue
                    res.rates[k].append(rate)
                    res.accepts[k].append(accept)
                    progress(f"{label}: {fmt(rate)} msg/s filed, {fmt(accept)} msg/s accepted",
                             force=True)
            progress(f"{kind}: IMAP new-mail latency, {args.latency_samples} samples",
                     force=True)
            latency(site, args, res)
    except (Unavailable, SetupError) as e:
        res.note = str(e)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return res


# -- report ------------------------------------------------------------------------------------


def _med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _hosts(k: int) -> str:
    return f"{k} worker host{'s' if k != 1 else ''}"


def _fs_name(r: FsResult) -> str:
    return "local directory" if r.kind == "local" else r.kind


def _per_k_header(args: argparse.Namespace) -> list[str]:
    """A table's first two lines: the filesystem, then a column per K."""
    return ["| filesystem | " + " | ".join(_hosts(k) for k in args.workers) + " |",
            "|---|" + "---:|" * len(args.workers)]


def report(results: list[FsResult], args: argparse.Namespace, argv: list[str], elapsed: float,
           load: tuple[float, float]) -> str:
    base = next((r for r in results if r.kind == "local"), None)
    sessions = f"{args.sessions} SMTP sessions"
    out = [
        "## Many hosts: delivery and IMAP over GlusterFS and MooseFS (issue #8)",
        "",
        "Command: `" + " ".join(["python -m benchmarks.bench_distfs",
                                 *(shlex.quote(a) for a in argv)]) + "`",
        "",
        f"Machine: {machine()}; load average {load[0]:.1f} before, {load[1]:.1f} after; "
        f"whole run {elapsed:.0f} s. Medians of {args.runs} run{'s' if args.runs != 1 else ''}.",
        "",
        f"Workload: {args.messages:,} messages of ~1 KB to {args.users} users over {sessions} "
        f"({args.driver_text}), `fsync = \"always\"`, `lock_method = \"fcntl\"`. `ams mx` on "
        f"host a; K worker hosts (b, c, d), each one `ams worker --count {args.per_host}`; "
        "on a distributed filesystem every host has its own FUSE client mount in its own "
        "network namespace; the local directory is one directory for all. Throughput is "
        "messages / (first SMTP connection → last message filed); every message is checked "
        "filed exactly once.",
        "",
        *_per_k_header(args),
    ]
    for r in results:
        cells = []
        for k in args.workers:
            m = _med(r.rates.get(k, []))
            if m is None:
                cells.append("FAILED" if r.errors.get(k) else "—")
                continue
            ref = _med(base.rates.get(k, [])) if base is not None and r is not base else None
            cells.append(f"{fmt(m)} msg/s" + (f" ({m / ref:.2f}× local)" if ref else ""))
        name = _fs_name(r)
        out.append(f"| {name} | " + " | ".join(cells) + " |" if not r.note else
                   f"| {name} | not run: {r.note} |" + " |" * (len(args.workers) - 1))
    out += [
        "",
        "IMAP new mail seen by an IDLE client on host b's bridge (seconds from the start of "
        f"the trigger to EXISTS; median / max of {args.latency_samples}):",
        "",
        "| filesystem | sent to the MX on a, filed by a worker on c | appended through the "
        "bridge on c |",
        "|---|---:|---:|",
    ]
    for r in results:
        if r.idle_from_worker:
            out.append(f"| {_fs_name(r)} | "
                       f"{statistics.median(r.idle_from_worker):.2f} / "
                       f"{max(r.idle_from_worker):.2f} | "
                       f"{statistics.median(r.idle_from_bridge):.2f} / "
                       f"{max(r.idle_from_bridge):.2f} |")
    out += [
        "",
        "The MX alone (first connection → its last 250, while the workers file), median "
        "messages/s:",
        "",
        *_per_k_header(args),
    ]
    for r in results:
        if any(r.accepts.get(k) for k in args.workers):
            out.append(f"| {_fs_name(r)} | " + " | ".join(
                fmt(statistics.median(r.accepts[k])) if r.accepts.get(k) else "—"
                for k in args.workers) + " |")
    out += ["", "All runs (messages/s filed / accepted):", ""]
    for r in results:
        for k in args.workers:
            runs = [f"{fmt(x)} / {fmt(y)}" for x, y in zip(r.rates.get(k, []),
                                                           r.accepts.get(k, []), strict=True)] + [
                f"FAILED ({e})" for e in r.errors.get(k, [])]
            if runs:
                out.append(f"- {r.kind}, {_hosts(k)}: "
                           + ", ".join(runs))
        if r.doctor:
            out.append(f"- {r.kind}: ams doctor said {r.doctor}")
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_distfs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--fs", default="local,glusterfs,moosefs",
                   help="comma-separated, from: " + ", ".join(KINDS))
    p.add_argument("--workers", default="1,2,3", help="worker host counts (at most 3)")
    p.add_argument("--per-host", type=int, default=1, help="workers per worker host")
    p.add_argument("--messages", type=int, default=0, help="per run (default 1,000)")
    p.add_argument("--runs", type=int, default=0, help="runs per configuration (default 3)")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--latency-samples", type=int, default=0, help="(default 10)")
    p.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    p.add_argument("--quick", action="store_true", help="300 messages, 1 run, 3 samples")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.messages = args.messages or (300 if args.quick else 1000)
    args.latency_samples = args.latency_samples or (3 if args.quick else 10)
    kinds = [k.strip() for k in args.fs.split(",") if k.strip()]
    try:
        args.workers = [int(k) for k in args.workers.split(",")]
    except ValueError:
        args.workers = []
    problems = [f"unknown filesystem {k!r}" for k in kinds if k not in KINDS]
    if not args.workers or not all(1 <= k <= len(WORKER_HOSTS) for k in args.workers):
        problems.append(f"--workers must be counts from 1 to {len(WORKER_HOSTS)}")
    if min(args.runs, args.messages, args.users, args.sessions, args.per_host,
           args.latency_samples) < 1 or args.users > args.sessions:
        problems.append("--runs, --messages, --users, --sessions, --per-host and "
                        "--latency-samples must be positive, and --users at most --sessions")
    if problems:
        print(f"bench_distfs: {'; '.join(problems)}", file=sys.stderr)
        return 2
    args.driver = "smtp-source" if shutil.which(SMTP_SOURCE) else "python"
    args.driver_text = ("Postfix smtp-source" if args.driver == "smtp-source" else
                        "the delivery benchmark's pipelining Python client")
    procs = Processes()
    progress = Progress()

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    t = time.perf_counter()
    load0 = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="ams-bench-distfs-"))
    results = []
    try:
        msg_file = scratch / "message.txt"
        msg_file.write_text(message_text(1024))
        for kind in kinds:
            results.append(run_fs(kind, args, msg_file, procs, progress))
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
    progress.done()
    print(report(results, args, argv, time.perf_counter() - t, (load0, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
