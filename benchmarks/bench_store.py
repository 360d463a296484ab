"""Store and index benchmarks: append throughput against Maildir, index speed.

Run from the repository root::

    python -m benchmarks.bench_store            # about 2 minutes
    python -m benchmarks.bench_store --quick    # smaller sizes, seconds
    python benchmarks/bench_store.py --runs 5 --dir /var/tmp

What is measured (each repeated ``--runs`` times; medians are reported):

(a) Appending ~1 KB messages with fsync on, each run on a fresh store:
    one message per ``MailboxLog.append`` call (one fsync each), and group
    commit (``--group`` messages per call, one fsync per call).  The peer,
    measured in the same run by the same Python, is Maildir delivery done
    properly: write the file in ``tmp/``, fsync it, rename it into ``new/``,
    fsync ``new/``.
(b) Index tail-apply: an index that is up to date, then 100,000 small
    records arrive (80% APPEND of ~200-byte messages, 15% FLAGS, 5% EXPUNGE);
    time ``Index.update`` over them (records/s).
(c) Index rebuild of a 100,000-message mailbox of ~1 KB messages: into an
    empty index (a new host, ``ams reindex``) and over an existing one
    (``Index.rebuild``, as after a compaction), in messages/s.

The log files are in the page cache when the index reads them (they were
just written): these are CPU figures for the index, not disk figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ams.config import Config, config_from_dict
from ams.index import Index
from ams.index._fstype import filesystem_type
from ams.store import FlagOp, MailboxLog, NewMessage, Store, create_log

TAIL_TARGET = 50_000
REBUILD_TARGET = 20_000


# -- progress and results --------------------------------------------------------------


class Progress:
    """One line on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self.last > 0.2:
                sys.stderr.write("\r\x1b[K" + text)
                sys.stderr.flush()
                self.last = now
        elif force:
            sys.stderr.write(text + "\n")

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclass
class Row:
    what: str
    unit: str
    ours: list[float]
    peer: list[float] | None = None
    peer_name: str = ""
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.ours)


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


# -- fixtures -----------------------------------------------------------------------------


def make_config(base: Path, *, fsync: bool) -> Config:
    return config_from_dict({
        "store": {"root": str(base / "store"), "fsync": "always" if fsync else "never"},
        "host": {"name": "bench", "cache_dir": str(base / "cache")},
    })


def make_log(config: Config, name: str = "inbox") -> MailboxLog:
    store = Store.initialise(config)
    parent = store.user_dir("bench-user")
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / name
    create_log(path, log_id=f"bench-{name}", uidvalidity=1, sync=store.fsync)
    return store.log_at(path)


def message(i: int, size: int) -> bytes:
    head = (f"From: sender{i % 97}@example.test\r\nTo: bench@example.test\r\n"
            f"Subject: message {i}\r\nMessage-ID: <{i}.bench@example.test>\r\n\r\n").encode()
    body = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40)
    return head + body[:max(0, size - len(head) - 2)] + b"\r\n"


def fresh_dir(parent: Path, label: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"ams-bench-{label}-", dir=parent))


# -- (a) appends --------------------------------------------------------------------------


def bench_ams_append(parent: Path, count: int, per_call: int, size: int,
                     progress: Progress, label: str) -> float:
    progress(label, force=True)
    base = fresh_dir(parent, "append")
    try:
        log = make_log(make_config(base, fsync=True))
        batches = [[NewMessage(message(i + j, size), internal_date=1_700_000_000 + i + j)
                    for j in range(min(per_call, count - i))] for i in range(0, count, per_call)]
        done = 0
        t = time.perf_counter()
        for batch in batches:
            log.append(batch)
            done += len(batch)
            progress(f"{label}: {done}/{count}")
        return count / (time.perf_counter() - t)
    finally:
        shutil.rmtree(base)


def bench_maildir(parent: Path, count: int, size: int, progress: Progress, label: str) -> float:
    progress(label, force=True)
    base = fresh_dir(parent, "maildir")
    try:
        md = base / "Maildir"
        for d in ("tmp", "new", "cur"):
            (md / d).mkdir(parents=True)
        new_dir = os.open(md / "new", os.O_RDONLY | os.O_DIRECTORY)
        host = platform.node() or "localhost"
        bodies = [message(i, size) for i in range(count)]
        try:
            t = time.perf_counter()
            for i, body in enumerate(bodies):
                name = f"{int(time.time())}.P{os.getpid()}Q{i}.{host}"
                tmp = md / "tmp" / name
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, body)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, md / "new" / name)
                os.fsync(new_dir)
                progress(f"{label}: {i + 1}/{count}")
            return count / (time.perf_counter() - t)
        finally:
            os.close(new_dir)
    finally:
        shutil.rmtree(base)


# -- (b) tail apply and (c) rebuild ------------------------------------------------------------


def build_tail_workload(base: Path, records: int, progress: Progress) -> tuple[MailboxLog, Path]:
    """A log whose index template is up to date at the start, then ``records`` records."""
    progress(f"(b) writing the tail workload: {records:,} records", force=True)
    config = make_config(base, fsync=False)
    log = make_log(config, "tail")
    with Index(config, sync=False) as ix:
        ix.update(log)
    template = base / "index-template"
    shutil.copytree(Path(config.host.cache_dir) / "index", template)
    # Blocks of 20 records: 16 APPENDs in one call, 3 FLAGS, 1 EXPUNGE.
    uid = 0
    done = 0
    while done < records:
        n = min(16, records - done)
        log.append([NewMessage(message(uid + j, 200)[:200], internal_date=1_700_000_000 + uid + j)
                    for j in range(n)])
        uid += n
        done += n
        for k in range(3):
            if done < records:
                log.store_flags(FlagOp.ADD, ["\\Seen"], [uid - 15 + 5 * k])
                done += 1
        if done < records:
            log.expunge([uid - 1])
            done += 1
        progress(f"(b) writing the tail workload: {done}/{records} records")
    return log, template


def bench_tail(base: Path, log: MailboxLog, template: Path, records: int) -> float:
    cache = base / f"cache-{time.monotonic_ns()}"
    shutil.copytree(template, cache / "index")
    config = config_from_dict({"store": {"root": str(base / "store"), "fsync": "never"},
                               "host": {"name": "bench", "cache_dir": str(cache)}})
    try:
        with Index(config) as ix:
            t = time.perf_counter()
            r = ix.update(log)
            dt = time.perf_counter() - t
        if r.reset or r.records != records:
            raise SystemExit(f"tail workload went wrong: reset={r.reset} records={r.records}")
        return records / dt
    finally:
        shutil.rmtree(cache)


def build_mailbox(base: Path, messages: int, size: int, progress: Progress) -> MailboxLog:
    progress(f"(c) writing a {messages:,}-message mailbox", force=True)
    log = make_log(make_config(base, fsync=False), "big")
    flags = [(), ("\\Seen",), ("\\Seen", "\\Answered"), ("\\Seen",), ("\\Flagged", "$Work")]
    for i in range(0, messages, 1000):
        log.append([NewMessage(message(i + j, size), internal_date=1_700_000_000 + i + j,
                               flags=flags[(i + j) % len(flags)])
                    for j in range(min(1000, messages - i))])
        progress(f"(c) writing a {messages:,}-message mailbox: {i + 1000}/{messages}")
    return log


def bench_rebuild(base: Path, log: MailboxLog, messages: int, *, existing: bool) -> float:
    cache = base / f"cache-{time.monotonic_ns()}"
    config = config_from_dict({"store": {"root": str(base / "store"), "fsync": "never"},
                               "host": {"name": "bench", "cache_dir": str(cache)}})
    try:
        with Index(config) as ix:
            if existing:
                ix.update(log)
            t = time.perf_counter()
            r = ix.rebuild(log) if existing else ix.update(log)
            dt = time.perf_counter() - t
        if r.records != messages or not r.reset:
            raise SystemExit(f"rebuild went wrong: {r.records} records")
        return messages / dt
    finally:
        shutil.rmtree(cache)


# -- driver --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_store",
                                description="AMS store and index benchmarks.")
    p.add_argument("--runs", type=int, default=3, help="repetitions per measurement (median)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the fresh stores are made (a local disk; default %(default)s)")
    p.add_argument("--size", type=int, default=1024, help="message size for (a) and (c)")
    p.add_argument("--appends", type=int,
                   help="messages per run for (a), one per call (default 4,000; group commit "
                        "and Maildir use 8x and 1x that)")
    p.add_argument("--group", type=int, default=32, help="messages per append call, group commit")
    p.add_argument("--records", type=int, help="tail records for (b), default 100,000")
    p.add_argument("--messages", type=int, help="mailbox size for (c), default 100,000")
    return p


def run(args: argparse.Namespace, progress: Progress) -> list[Row]:
    appends = args.appends or (300 if args.quick else 4000)
    grouped = appends * 8
    records = args.records or (10_000 if args.quick else 100_000)
    messages = args.messages or (10_000 if args.quick else 100_000)
    # One Maildir measurement per run is the peer of both append rows: Maildir
    # has no group commit, a delivery is a file whatever the batch.
    maildir: list[float] = []
    peer = "Maildir delivery (tmp/, fsync, rename to new/, fsync dir)"
    rows = [
        Row(f"append ~{args.size} B, fsync, 1 message per call", "messages/s", [], maildir,
            peer),
        Row(f"append ~{args.size} B, fsync, group commit {args.group} per call", "messages/s",
            [], maildir, peer),
        Row(f"index tail-apply, {records:,} records", "records/s", [], target=TAIL_TARGET),
        Row(f"index rebuild, {messages:,} messages, empty index", "messages/s", [],
            target=REBUILD_TARGET),
        Row(f"index rebuild, {messages:,} messages, over existing entries", "messages/s", [],
            target=REBUILD_TARGET),
    ]
    n = args.runs
    for i in range(1, n + 1):
        tag = f"run {i}/{n}"
        rows[0].ours.append(bench_ams_append(args.dir, appends, 1, args.size, progress,
                                             f"(a) AMS append, 1 per call, {tag}"))
        maildir.append(bench_maildir(args.dir, appends, args.size, progress,
                                     f"(a) Maildir delivery, {tag}"))
        rows[1].ours.append(bench_ams_append(args.dir, grouped, args.group, args.size, progress,
                                             f"(a) AMS append, {args.group} per call, {tag}"))
    base = fresh_dir(args.dir, "index")
    try:
        log, template = build_tail_workload(base, records, progress)
        for i in range(1, n + 1):
            progress(f"(b) index tail-apply, run {i}/{n}", force=True)
            rows[2].ours.append(bench_tail(base, log, template, records))
        big = build_mailbox(base, messages, args.size, progress)
        for i in range(1, n + 1):
            progress(f"(c) index rebuild into an empty index, run {i}/{n}", force=True)
            rows[3].ours.append(bench_rebuild(base, big, messages, existing=False))
            progress(f"(c) index rebuild over existing entries, run {i}/{n}", force=True)
            rows[4].ours.append(bench_rebuild(base, big, messages, existing=True))
    finally:
        shutil.rmtree(base)
    progress.done()
    return rows


def command_line(argv: list[str]) -> str:
    """The command as it was typed: module form, or the script's path."""
    prog = "python -m benchmarks.bench_store"
    if __name__ == "__main__" and (__spec__ is None or __spec__.name != "benchmarks.bench_store"):
        prog = "python " + shlex.quote(os.path.relpath(sys.argv[0]))
    return " ".join([prog, *(shlex.quote(a) for a in argv)])


def report(rows: list[Row], args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    fs = filesystem_type(args.dir)
    fs_text = f"{fs[1]} (mounted at {fs[0]})" if fs else "unknown"
    out = [
        "## Store and index benchmarks",
        "",
        f"Command: `{command_line(argv)}`",
        "",
        f"Machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; stores under `{args.dir}` on {fs_text}. "
        f"Medians of {args.runs} run{'s' if args.runs != 1 else ''}; "
        f"whole run {elapsed:.0f} s.",
        "",
        "| measurement | AMS | peer | peer figure | AMS ÷ peer | target |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.peer:
            pm = statistics.median(r.peer)
            peer = (r.peer_name, f"{fmt(pm)} {r.unit}", f"{r.median / pm:.2f}×")
        else:
            peer = ("—", "—", "—")
        target = "—"
        if r.target is not None:
            ok = "met" if r.median >= r.target else "MISSED"
            target = f"≥ {r.target:,} ({ok}, {r.median / r.target:.1f}×)"
        out.append(f"| {r.what} | {fmt(r.median)} {r.unit} | {peer[0]} | {peer[1]} | "
                   f"{peer[2]} | {target} |")
    out += ["", "All runs (AMS; peer in brackets):", ""]
    for r in rows:
        runs = ", ".join(fmt(x) for x in r.ours)
        if r.peer:
            runs += " [" + ", ".join(fmt(x) for x in r.peer) + "]"
        out.append(f"- {r.what}: {runs}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rows = run(args, Progress())
    print(report(rows, args, argv, time.perf_counter() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
