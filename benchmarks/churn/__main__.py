"""The churn benchmark: callback breaks and directory refetches per delivered message.

Run from the repository root, as root, on Debian (FUSE, and Dovecot for
scenario B)::

    python -m benchmarks.churn                  # the issue's scale; see README.md for timings
    python -m benchmarks.churn --quick          # a smoke run, a few minutes
    python -m benchmarks.churn --messages 2000 --prefill 1000 --scenarios ams,maildir

Progress goes to stderr; the result is Markdown on stdout (for
docs/benchmarks.md) and a plot file.  benchmarks/churn/README.md says what is
measured and how.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from benchmarks.bench_delivery import Processes, machine
from benchmarks.bench_store import Progress
from benchmarks.churn import harness, report
from benchmarks.churn.harness import Result, Spec
from benchmarks.churn.side_ams import AmsScenario
from benchmarks.churn.side_classic import ClassicScenario
from benchmarks.churn.side_maildir import MaildirScenario
from benchmarks.peers import dovecot as dv

SCENARIOS: dict[str, type[harness.Scenario]] = {
    "ams": AmsScenario, "maildir": MaildirScenario, "classic": ClassicScenario}
PLOT = Path(__file__).resolve().parent / "churn"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line, exit status 2 (no usage dump)."""
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m benchmarks.churn",
        description="Callback breaks, directory refetches and directory entries changed per "
                    "delivered message, for AMS, Maildir (Dovecot) and the classic AMS layout, "
                    "each host on its own metered FUSE mount of one store.")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 20 users and 400 messages, then 100 messages to 10 "
                         "users prefilled with 100 and with 1,000")
    ap.add_argument("--messages", type=int, default=10_000,
                    help="messages in the main run (default 10,000)")
    ap.add_argument("--users", type=int, default=100, help="users in the main run (default 100)")
    ap.add_argument("--prefill", default="1000,10000",
                    help="messages per mailbox before the growth runs, comma-separated "
                         "(default 1000,10000; 0 or empty: no growth runs)")
    ap.add_argument("--growth-users", type=int, default=20,
                    help="users (mailboxes) in each growth run (default 20)")
    ap.add_argument("--growth-messages", type=int, default=300,
                    help="messages delivered in each growth run (default 300)")
    ap.add_argument("--scenarios", default="ams,maildir,classic",
                    help="which of ams, maildir, classic (default all three)")
    ap.add_argument("--rate", type=float, default=20.0,
                    help="messages per second offered in the main run (default 20; 0: as fast "
                         "as taken)")
    ap.add_argument("--growth-rate", type=float, default=None,
                    help="messages per second offered in the growth runs (default: growth "
                         "users / (2 × poll), so a mailbox gets a message every second check)")
    ap.add_argument("--poll", type=float, default=1.0,
                    help="every reader's check interval in seconds (default 1: Dovecot's "
                         "smallest mailbox_idle_check_interval)")
    ap.add_argument("--kernel-cache", type=float, default=10.0,
                    help="seconds the kernel may cache names and attributes, dropped at every "
                         "callback break (default 10; 0 turns kernel caching off)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the temp dirs go (a local disk)")
    ap.add_argument("--plot", type=Path, default=PLOT,
                    help="plot file, without suffix: .png (matplotlib) or .svg "
                         f"(default {os.path.relpath(PLOT)})")
    ap.add_argument("--no-install", action="store_true",
                    help="install nothing (Dovecot from apt, matplotlib from PyPI)")
    ap.add_argument("--keep", action="store_true", help="keep each run's temp dir and logs")
    return ap


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:
        args.messages, args.users = 400, 20
        args.prefill, args.growth_users, args.growth_messages = "100,1000", 10, 100
    try:
        args.prefill_sizes = sorted({int(x) for x in args.prefill.split(",") if x.strip()} - {0})
    except ValueError:
        ap.error(f"--prefill: not a list of numbers: {args.prefill!r}")
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenario_list if s not in SCENARIOS]
    if bad or not args.scenario_list:
        ap.error(f"--scenarios: unknown {', '.join(bad) or '(none given)'}; "
                 f"choose from {', '.join(SCENARIOS)}")
    for name in ("messages", "users", "growth_users", "growth_messages"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate < 0 or args.poll <= 0 or args.kernel_cache < 0 or (args.growth_rate or 0) < 0:
        ap.error("--rate, --growth-rate and --kernel-cache must be >= 0, --poll > 0")
    if args.growth_rate is None:
        args.growth_rate = args.growth_users / (2 * args.poll)
    if os.geteuid() != 0:
        ap.error("needs root (FUSE mounts with allow_other, services as other users)")
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        ap.error("needs FUSE 3 (/dev/fuse and fusermount3)")
    return args


def peer_setup(args: argparse.Namespace, progress: Progress) -> str | None:
    """Why scenario B cannot run here, or None."""
    if "maildir" not in args.scenario_list:
        return None
    missing = dv.missing_packages(dv.PACKAGES)
    if missing and not args.no_install:
        progress(f"installing {' '.join(missing)} with apt-get", force=True)
        why = dv.apt_install(missing)
        if why:
            return why
    return dv.unavailable(imap=True)


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks.churn", *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    progress = Progress()
    procs = Processes()
    started = time.monotonic()
    load0 = os.getloadavg()[0]
    runs: dict[str, Result] = {}
    growth: dict[int, dict[str, Result]] = {}
    peer_note = None
    try:
        peer_note = peer_setup(args, progress)
        order = [s for s in args.scenario_list if not (s == "maildir" and peer_note)]
        common = dict(poll=args.poll, kernel_cache=args.kernel_cache)
        for s in order:
            spec = Spec(s, users=args.users, messages=args.messages, rate=args.rate, **common)
            runs[s] = harness.run(spec, SCENARIOS[s], args.dir, procs, progress, keep=args.keep)
        for p in args.prefill_sizes:
            for s in order:
                spec = Spec(s, users=args.growth_users, messages=args.growth_messages, prefill=p,
                            rate=args.growth_rate, **common)
                growth.setdefault(p, {})[s] = harness.run(spec, SCENARIOS[s], args.dir, procs,
                                                          progress, keep=args.keep)
    except KeyboardInterrupt:
        progress.done()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - started
    plot_file = report.plot(growth, args.plot, install=not args.no_install) if growth else None
    progress.done()
    print(render(args, argv, runs, growth, peer_note, plot_file, elapsed, load0))
    failed = [r for r in [*runs.values(), *(r for g in growth.values() for r in g.values())]
              if r.error]
    return 1 if failed else 0


def render(args: argparse.Namespace, argv: list[str], runs: dict[str, Result],
           growth: dict[int, dict[str, Result]], peer_note: str | None, plot_file: Path | None,
           elapsed: float, load0: float) -> str:
    out = [f"Command: `{command_line(argv)}`", ""]
    out.append(f"Machine: {machine()}; load average {load0:.1f} before, "
               f"{os.getloadavg()[0]:.1f} after; whole run {elapsed / 60:.0f} min; "
               f"Python FUSE (pyfuse3) meters, kernel caching "
               + (f"{args.kernel_cache:g} s, dropped at every break." if args.kernel_cache
                  else "off."))
    if "maildir" in args.scenario_list:
        out.append("")
        out.append(f"Dovecot: {'not available: ' + peer_note if peer_note else dv.version()}.")
    out += ["", f"Main run: {args.users} users, {args.messages:,} messages round-robin over "
            f"them, {args.poll:g} s reader checks, "
            + (f"offered at {args.rate:g} msg/s." if args.rate else "offered as fast as taken."),
            ""]
    out += report.main_table(runs)
    if growth:
        out += ["", f"Growth: {args.growth_users} users whose INBOX held "
                + " / ".join(f"{p:,}" for p in sorted(growth))
                + f" messages before the window (written straight into the backing store), "
                f"then {args.growth_messages:,} messages delivered through the meters, offered at "
                f"{args.growth_rate:g} msg/s.", ""]
        out += report.growth_table(growth)
    out += ["", "Targets:", ""]
    out += report.targets(runs, growth)
    if plot_file is not None:
        out += ["", f"Plot: `{os.path.relpath(plot_file)}`"]
    out += ["", "Every run, per host:", ""]
    for res in [*runs.values(), *(r for p in sorted(growth) for r in growth[p].values())]:
        head = (f"- {report.NAMES[res.spec.scenario]}, {res.spec.users} users, "
                f"{res.spec.messages:,} messages"
                + (f", prefill {res.spec.prefill:,}" if res.spec.prefill else ""))
        if res.error:
            out.append(f"{head}: FAILED: {res.error}")
            continue
        out.append(f"{head}: {res.seconds:.0f} s to deliver and be seen "
                   f"({res.send_seconds:.0f} s sending); steps "
                   + ", ".join(f"{k} {v:.0f} s" for k, v in res.phases.items()))
        out += report.host_lines(res)
    out.append("")
    out.append(f"Python {platform.python_version()}.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
