"""Bboard benchmark: many posts while many readers follow the board.

Run from the repository root::

    python -m benchmarks.bench_bboard               # 10,000 posts, 20 readers, 3 runs
    python -m benchmarks.bench_bboard --quick       # 1,000 posts, 5 readers, 1 run
    python -m benchmarks.bench_bboard --runs 5 --dir /var/tmp

Each run, on a fresh store with ``fsync = "always"``:

- ``--readers`` reader processes follow the board the way the IMAP bridge
  does: a ``LogReader`` on the posts log, polled every ``--poll`` seconds
  (open the segment it knows, read from its offset to the end; no directory
  listing), and every new post is marked ``\\Seen`` in the reader's own
  per-user state (``UserState.store``, one record and one fsync per poll
  that found something);
- ``--posters`` poster processes post ``--posts`` ~1 KB posts between them
  through ``Bboards.post`` (one append and one fsync per post), all starting
  at one signal.

Measured: posts/s (first post started → last post acknowledged); the
directory entries changed in the board's directories (``BOARD/``,
``posts/``, ``pending/``), from their listings and their mtime/ctime before
and after (any create, rename or unlink in a directory changes its mtime);
how long a post took to reach each reader (acknowledged → seen), p50 and
p99 over every (post, reader) pair; and what the readers' own state came to.

The peer, in the same run with the same processes and poll interval, is the
board as the original AMS kept it: one file per post in the board's
directory (written in ``tmp/``, fsynced, renamed in, the directory
fsynced), readers finding news by listing the directory.

A last figure is the command line: ``--cli-posts`` posts each made by its
own ``ams bboard post`` process, two at a time (process start-up dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BOARD = "bench.general"


# -- the roles, run as separate processes ----------------------------------------------------


def _store(cfg: dict[str, Any]) -> Any:
    from ams.config import config_from_dict
    from ams.store import Store
    return Store(config_from_dict(cfg))


def post_body(i: int, size: int) -> bytes:
    head = (f"From: poster@example.test\r\nSubject: post {i}\r\n"
            f"Message-ID: <{i}.bench@example.test>\r\n\r\n").encode()
    body = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40
    return head + body[:max(0, size - len(head) - 2)] + b"\r\n"


def role_poster(cfg: dict[str, Any], kind: str, first: int, count: int, size: int,
                out: str) -> None:
    """Wait for a line on stdin, post ``count`` posts; write when each was acknowledged.

    Posts are keyed as the readers will see them: the UID, or the file name.
    """
    bodies = [post_body(first + i, size) for i in range(count)]
    if kind == "ams":
        from bboard import Bboards
        boards = Bboards(_store(cfg))
        info = boards.lookup(BOARD)
    else:
        board = Path(cfg["store"]["root"]).parent / "peer-board"
        host = platform.node() or "localhost"
        dfd = os.open(board, os.O_RDONLY | os.O_DIRECTORY)
    print("ready", flush=True)
    sys.stdin.readline()
    done: list[tuple[str, float]] = []
    start = time.time()
    for i, body in enumerate(bodies):
        if kind == "ams":
            r = boards.post(info, body, user="poster")
            done.append((str(r.uid), time.time()))
        else:
            name = f"{time.time_ns()}.P{os.getpid()}Q{i}.{host}"
            tmp = board.parent / "peer-tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, board / name)
            os.fsync(dfd)
            done.append((name, time.time()))
    Path(out).write_text(json.dumps({"start": start, "done": done}))


def role_reader(cfg: dict[str, Any], kind: str, user: str, total: int, poll: float,
                out: str, deadline: float) -> None:
    """Follow the board until ``total`` posts were seen; write when each was seen."""
    seen: dict[str, float] = {}
    polls = listed = 0
    if kind == "ams":
        from ams.store import FlagOp, LogReader
        from ams.store.format import Append
        from bboard import Bboards
        boards = Bboards(_store(cfg))
        info = boards.lookup(BOARD)
        state = boards.user_state(user)
        reader = LogReader(info.posts_path)
        print("ready", flush=True)
        while len(seen) < total and time.time() < deadline:
            batch = reader.poll()
            polls += 1
            new = [rec.uid for rec in batch.records if isinstance(rec.body, Append)]
            if new:
                now = time.time()
                for uid in new:
                    seen[str(uid)] = now
                state.store(info.id, FlagOp.ADD, ["\\Seen"], new)
            else:
                time.sleep(poll)
    else:
        board = Path(cfg["store"]["root"]).parent / "peer-board"
        print("ready", flush=True)
        while len(seen) < total and time.time() < deadline:
            names = os.listdir(board)  # how a file-per-post reader finds news
            polls += 1
            listed += len(names)
            now = time.time()
            fresh = [n for n in names if n not in seen]
            for n in fresh:
                seen[n] = now
            if not fresh:
                time.sleep(poll)
    Path(out).write_text(json.dumps({"seen": seen, "polls": polls, "listed": listed}))


# -- the driver ------------------------------------------------------------------------------


@dataclass
class RunResult:
    kind: str
    posts: int
    rate: float
    #: Directory entries added or removed, and directories whose mtime/ctime moved.
    entries_changed: int
    dirs_touched: int
    lat_p50: float
    lat_p99: float
    reader_polls: int
    reader_listed: int
    state_files: int = 0
    state_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def snapshot(dirs: list[Path]) -> dict[str, tuple[frozenset[str], int, int]]:
    out = {}
    for d in dirs:
        st = os.stat(d)
        out[str(d)] = (frozenset(os.listdir(d)), st.st_mtime_ns, st.st_ctime_ns)
    return out


def churn(before: dict[str, tuple[frozenset[str], int, int]],
          after: dict[str, tuple[frozenset[str], int, int]]) -> tuple[int, int]:
    entries = touched = 0
    for d, (names, mtime, ctime) in before.items():
        names2, mtime2, ctime2 = after[d]
        entries += len(names ^ names2)
        touched += int((mtime, ctime) != (mtime2, ctime2))
    return entries, touched


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _spawn(role: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.bench_bboard", "--role", *role],
                            cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


def setup(base: Path, readers: int) -> tuple[dict[str, Any], Any]:
    import argon2

    from ams.config import config_from_dict
    from ams.store import Store, UserRegistry
    from bboard import Bboards
    cfg = {"store": {"root": str(base / "store"), "fsync": "always"},
           "host": {"name": "bench", "cache_dir": str(base / "cache")},
           "mail": {"domains": ["example.test"]}}
    store = Store.initialise(config_from_dict(cfg))
    users = UserRegistry(store, hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8,
                                                             parallelism=1))
    for name in ["poster", *(f"reader{i}" for i in range(readers))]:
        users.add(name, "pw")
    info = Bboards(store, users).create(BOARD, description="benchmark")
    (base / "peer-board").mkdir()
    (base / "peer-tmp").mkdir()
    return cfg, info


def one_run(kind: str, args: argparse.Namespace, progress: Any) -> RunResult:
    base = Path(tempfile.mkdtemp(prefix=f"ams-bench-bboard-{kind}-", dir=args.dir))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cfg, info = setup(base, args.readers)
        cj = json.dumps(cfg)
        if kind == "ams":
            watched = [info.path, info.posts_path, info.pending_path]
        else:
            watched = [base / "peer-board"]
        deadline = time.time() + args.timeout
        readers = [_spawn(["reader", cj, kind, f"reader{i}", str(args.posts), str(args.poll),
                           str(base / f"r{i}.json"), str(deadline)])
                   for i in range(args.readers)]
        share = [args.posts // args.posters + (i < args.posts % args.posters)
                 for i in range(args.posters)]
        posters = []
        first = 1
        for i, n in enumerate(share):
            posters.append(_spawn(["poster", cj, kind, str(first), str(n), str(args.size),
                                   str(base / f"p{i}.json")]))
            first += n
        procs = readers + posters
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("a benchmark process failed to start")
        before = snapshot(watched)
        progress(f"{kind}: posting {args.posts} posts with {args.readers} readers",
                 force=True)
        for p in posters:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        for p in procs:
            if p.wait(timeout=args.timeout + 60) != 0:
                raise RuntimeError(f"a benchmark process exited with {p.returncode}")
        after = snapshot(watched)
        entries, touched = churn(before, after)
        pdata = [json.loads((base / f"p{i}.json").read_text()) for i in range(args.posters)]
        rdata = [json.loads((base / f"r{i}.json").read_text()) for i in range(args.readers)]
        start = min(d["start"] for d in pdata)
        end = max(t for d in pdata for _, t in d["done"])
        posted = {key: t for d in pdata for key, t in d["done"]}
        lat = [t - posted[k] for r in rdata for k, t in r["seen"].items() if k in posted]
        result = RunResult(kind, args.posts, args.posts / (end - start), entries, touched,
                           percentile(lat, 50) * 1000, percentile(lat, 99) * 1000,
                           sum(r["polls"] for r in rdata), sum(r["listed"] for r in rdata))
        missing = [i for i, r in enumerate(rdata) if len(r["seen"]) != args.posts]
        if missing:
            result.notes.append(f"readers {missing} did not see every post")
        if kind == "ams":
            from ams.config import config_from_dict
            from ams.store import Store
            from bboard import Bboards
            boards = Bboards(Store(config_from_dict(cfg)))
            if [p.uid for p in boards.posts(info)] != list(range(1, args.posts + 1)):
                result.notes.append("the board does not hold posts 1..N exactly")
            for i in range(args.readers):
                s = boards.user_state(f"reader{i}")
                files = os.listdir(s.dir)
                result.state_files += len(files)
                result.state_bytes += sum(os.path.getsize(s.dir / f) for f in files)
                if len(s.seen(info.id)) != args.posts:
                    result.notes.append(f"reader{i} has not every post \\Seen")
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(base, ignore_errors=True)


def cli_rate(args: argparse.Namespace, progress: Any) -> float:
    base = Path(tempfile.mkdtemp(prefix="ams-bench-bboard-cli-", dir=args.dir))
    try:
        cfg, _info = setup(base, 0)
        toml = base / "ams.toml"
        toml.write_text(f'[store]\nroot = "{cfg["store"]["root"]}"\nfsync = "always"\n'
                        f'[host]\nname = "bench"\ncache_dir = "{cfg["host"]["cache_dir"]}"\n'
                        '[mail]\ndomains = ["example.test"]\n')
        env = {**_env(), "AMS_CONFIG": str(toml)}
        cmd = [sys.executable, "-m", "ams.cli", "bboard", "post", BOARD, "--as", "poster",
               "--subject", "cli post"]
        progress(f"cli: {args.cli_posts} posts, one process each", force=True)
        t = time.perf_counter()
        running: list[subprocess.Popen[bytes]] = []

        def reap(p: subprocess.Popen[bytes]) -> None:
            if p.wait(timeout=60) != 0:
                raise RuntimeError(f"ams bboard post exited with {p.returncode}")

        for _ in range(args.cli_posts):
            if len(running) >= 2:
                reap(running.pop(0))
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
            assert p.stdin is not None
            p.stdin.write(b"body\n")
            p.stdin.close()
            running.append(p)
        for p in running:
            reap(p)
        return args.cli_posts / (time.perf_counter() - t)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} × {cpu}, "
            f"Python {platform.python_version()}")


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks.bench_bboard", *(shlex.quote(a) for a in argv)])


def report(ams: list[RunResult], peer: list[RunResult], cli: list[float],
           args: argparse.Namespace, argv: list[str], elapsed: float) -> str:
    from ams.index._fstype import filesystem_type
    fs = filesystem_type(args.dir)
    med = statistics.median

    def m(rs: list[RunResult], attr: str) -> float:
        return med(getattr(r, attr) for r in rs) if rs else float("nan")

    n = args.posts
    out = [
        "## Bboards: posting while readers follow (issue: bulletin boards)",
        "",
        f"Command: `{command_line(argv)}`",
        "",
        f"Machine: {machine()}; stores under `{args.dir}` on "
        f"{fs[1] + ' (mounted at ' + fs[0] + ')' if fs else 'unknown'}; load average "
        f"{os.getloadavg()[0]:.1f} at the end. Medians of {args.runs} "
        f"run{'s' if args.runs != 1 else ''}; whole run {elapsed:.0f} s.",
        "",
        f"Workload: {n:,} posts of {args.size:,} bytes from {args.posters} poster processes "
        f"(one append and one fsync per post, `fsync = \"always\"`), {args.readers} reader "
        f"processes polling every {args.poll * 1000:.0f} ms and marking each new post "
        "\\Seen in their own state.",
        "",
        "| measurement | AMS (log + per-user state) | one file per post (original AMS) | "
        "target |",
        "|---|---:|---:|---|",
        f"| directory entries changed in the board's directories, per post | "
        f"{m(ams, 'entries_changed') / n:.4f} ({m(ams, 'entries_changed'):.0f} in all; "
        f"{m(ams, 'dirs_touched'):.0f} of 3 directories' mtime changed) | "
        f"{m(peer, 'entries_changed') / n:.4f} | 0 "
        f"({'met' if ams and m(ams, 'entries_changed') == 0 else 'MISSED'}) |",
        f"| posts/s | {m(ams, 'rate'):,.0f} | {m(peer, 'rate'):,.0f} | — |",
        f"| post acknowledged → seen by a reader, p50 / p99 | {m(ams, 'lat_p50'):.0f} / "
        f"{m(ams, 'lat_p99'):.0f} ms | {m(peer, 'lat_p50'):.0f} / "
        f"{m(peer, 'lat_p99'):.0f} ms | — |",
        f"| directory entries the readers listed, in all | 0 | "
        f"{m(peer, 'reader_listed'):,.0f} | — |",
        f"| readers' own state after the run (files, bytes, all readers) | "
        f"{m(ams, 'state_files'):.0f} files, {m(ams, 'state_bytes'):,.0f} bytes | — | — |",
    ]
    if cli:
        out.append(f"| `ams bboard post`, one process per post, 2 at a time | "
                   f"{med(cli):,.1f} posts/s | — | — |")
    out += ["", "All runs:", ""]
    for r in ams + peer:
        who = "AMS" if r.kind == "ams" else "file per post"
        out.append(f"- {who}: {r.rate:,.0f} posts/s, entries changed {r.entries_changed}, "
                   f"dirs touched {r.dirs_touched}, latency p50/p99 {r.lat_p50:.0f}/"
                   f"{r.lat_p99:.0f} ms, reader polls {r.reader_polls:,}"
                   + (f"; {'; '.join(r.notes)}" if r.notes else ""))
    if cli:
        out.append("- `ams bboard post`: " + ", ".join(f"{x:,.1f}" for x in cli) + " posts/s")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


class Progress:
    def __call__(self, text: str, *, force: bool = False) -> None:
        if force:
            print(text, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_bboard",
                                description="Bboard posting with readers, beside a "
                                            "file-per-post board.")
    p.add_argument("--posts", type=int, default=10_000)
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--posters", type=int, default=2)
    p.add_argument("--size", type=int, default=1024, help="bytes per post")
    p.add_argument("--poll", type=float, default=0.05, help="readers' poll interval, seconds")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cli-posts", type=int, default=100,
                   help="posts made by separate ams bboard post processes (0: skip)")
    p.add_argument("--no-peer", action="store_true", help="skip the file-per-post board")
    p.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--quick", action="store_true",
                   help="1,000 posts, 5 readers, 1 run, 20 command-line posts")
    p.add_argument("--role", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.role:
        role, cj, *rest = args.role
        cfg = json.loads(cj)
        if role == "poster":
            kind, first, count, size, out = rest
            role_poster(cfg, kind, int(first), int(count), int(size), out)
        else:
            kind, user, total, poll, out, deadline = rest
            role_reader(cfg, kind, user, int(total), float(poll), out, float(deadline))
        return 0
    if args.quick:
        args.posts, args.readers, args.runs, args.cli_posts = 1000, 5, 1, 20
    if min(args.posts, args.posters, args.runs) < 1 or args.readers < 0:
        print("--posts, --posters and --runs must be at least 1", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    t = time.perf_counter()
    ams: list[RunResult] = []
    peer: list[RunResult] = []
    cli: list[float] = []
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}", force=True)
        ams.append(one_run("ams", args, progress))
        if not args.no_peer:
            peer.append(one_run("peer", args, progress))
        if args.cli_posts:
            cli.append(cli_rate(args, progress))
    print(report(ams, peer, cli, args, argv, time.perf_counter() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
