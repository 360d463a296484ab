"""``ams doctor``: arguments, progress and the report; the work is in ams.doctor."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from ams.cli._progress import Progress
from ams.config import StoreConfig, load_config
from ams.errors import UsageError

if TYPE_CHECKING:  # the checks load only when ``ams doctor`` runs
    from ams.doctor import Options, Report

#: Plain (non-terminal) progress starts only after this long, so quick runs
#: and failures print nothing but their result.
QUIET_START = 5.0


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR",
                   help="directory on the shared filesystem (default: the store root)")
    p.add_argument("--host", metavar="NAME", help="this host's name (default: host.name)")
    p.add_argument("--peers", type=int, default=1, metavar="N",
                   help="other hosts to wait for (default 1; 0: single-host checks only)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the peers (default 60)")
    p.add_argument("--rounds", type=int, default=100, metavar="N",
                   help="rounds of each race and counter (default 100)")
    p.add_argument("--json", action="store_true", help="machine-readable report")


class _Stages(Progress):
    """Progress as the name of the current step."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__("ams doctor", stream=stream)
        self.text = ""
        self.shown = ""

    def stage(self, text: str) -> None:
        self.text = text
        now = time.monotonic()
        if self.tty:
            if now - self._last >= self.interval:
                self._last = now
                self.stream.write(f"\r\x1b[K{self.label}: {text}")
                self.stream.flush()
        elif (now - self.start >= QUIET_START and text != self.shown
              and now - self._last >= self.interval):
            self._last = now
            self.shown = text
            self.stream.write(f"{self.label}: {text}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def options_from_args(args: argparse.Namespace) -> Options:
    if args.peers < 0:
        raise UsageError("--peers must be 0 or more")
    if not args.wait > 0:
        raise UsageError("--wait must be positive")
    if not 1 <= args.rounds <= 100_000:
        raise UsageError("--rounds must be between 1 and 100000")
    host = args.host
    if args.config or not args.root:
        cfg = load_config(args.config)
        store = cfg.store
        host = host or cfg.host.name
        root = Path(args.root) if args.root else store.root
    else:
        root = Path(args.root)
        store = StoreConfig(root=root)  # the defaults
    if not root.is_dir():
        raise UsageError(f"doctor: {root} is not a directory (give --root DIR on the shared "
                         "filesystem)")
    host = host or socket.gethostname().split(".")[0]
    if "/" in host or host.startswith(".") or not host:
        raise UsageError(f"--host {host!r} is not a usable host name")
    from ams.doctor import Options

    return Options(root=root.resolve(), host=host, peers=args.peers, wait=args.wait,
                   rounds=args.rounds, lease=store.lease_seconds, skew=store.clock_skew,
                   lock_timeout=store.lock_timeout)


STATUS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}


def format_report(r: Report) -> str:
    fs = r.filesystem
    where = f"{fs.get('fstype')} {fs.get('source')} at {fs.get('mountpoint')}" if fs else "?"
    hosts = ", ".join(f"{p['host']}{' (leader)' if p['leader'] else ''}" for p in r.peers)
    lines = [f"ams doctor: {r.root} on {where}", f"hosts: {hosts} (run {r.run})"]
    width = max(len(c.name) for c in r.checks)
    for c in r.checks:
        extra = f" [rules out {', '.join(c.rules_out)}]" if c.rules_out else ""
        lines.append(f"{STATUS[c.status]:<5} {c.name:<{width}}  {c.detail}{extra}")
    v = r.verdict
    if v.verdict == "safe":
        scope = "" if v.scope == "cross-host" else (
            " for this host alone: the cross-host checks were not run (--peers 0)")
        lines.append(f"verdict: safe{scope}; use these settings on every host:")
        lines.append("  [store]")
        s = v.settings
        lines.append(f"  lock_method = \"{s['lock_method']}\"")
        lines.append(f"  lease_seconds = {s['lease_seconds']:g}")
        lines.append(f"  clock_skew = {s['clock_skew']:g}")
    else:
        lines.append("verdict: UNSAFE: neither lock method can be trusted on this filesystem "
                     "as it is mounted; fix what the FAIL lines say and run ams doctor again")
    return "\n".join(lines)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_doctor(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    stages = _Stages()
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        from ams.doctor import run_doctor

        report = run_doctor(opts, stages.stage)
    finally:
        signal.signal(signal.SIGTERM, old)
        stages.finish()
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    if report.verdict.verdict == "incomplete":
        print(f"ams: doctor: {report.error}", file=sys.stderr)
    elif not args.json:
        print(format_report(report))
    return report.exit_code
