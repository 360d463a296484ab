"""A host partitioned away while the pool files mail: a by-hand experiment.

Too slow for the suite (a partition must outlast leases and the
filesystem's own timeouts), so it is run by hand, and docs/deployment.md
reports what it showed::

    .venv/bin/python -m tests.distfs_partition moosefs fcntl --cut 90
    .venv/bin/python -m tests.distfs_partition glusterfs dotlock --cut 60 --scene worker

Hosts a, b, c on :mod:`tests.distfs`; the MX on a, two workers on b;
``--lease`` 10 s, ``--skew`` 1 s.  Scenes:

``lock`` (default)
    A process on host c takes user p00's INBOX lock and keeps it; c is cut
    off (its veth goes down); 200 messages to five users (40 to p00) are
    sent.  Every 10 s the per-user counts are printed.  Then c is healed,
    the holder lets go, and every message must be filed exactly once.
``worker``
    Host c runs two workers too and is cut off while 400 messages are being
    filed; the counts show whether b carried on, and after the heal the
    workers of c must find they lost their leases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ams.store import fold
from tests.distfs import open_pool
from tests.distfs_site import (
    ROOT,
    Site,
    check_exactly_once,
    expected_ids,
    plan_mail,
    roles,
    run_doctor,
    send_mail,
)

USERS = [f"p{i:02d}" for i in range(5)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.distfs_partition",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["moosefs", "glusterfs", "sshfs"])
    ap.add_argument("method", choices=["fcntl", "dotlock"])
    ap.add_argument("--scene", choices=["lock", "worker"], default="lock")
    ap.add_argument("--cut", type=float, default=90.0, help="seconds host c is cut off")
    ap.add_argument("--lease", type=float, default=10.0)
    ap.add_argument("--skew", type=float, default=1.0)
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def say(*what: object) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s]", *what, flush=True)

    with open_pool(args.kind, ("a", "b", "c")) as pool:
        verdicts = {h: r[1].get("verdict") for h, r in run_doctor(pool, "abc", rounds=10).items()}
        say("ams doctor:", verdicts)
        local = Path(tempfile.mkdtemp(prefix="ams-partition-"))
        site = Site(pool, local, lock_method=args.method, lease=args.lease, skew=args.skew)
        site.initialise(USERS)
        count = 200 if args.scene == "lock" else 400
        plans = plan_mail(count, USERS, tag="p-", second_every=0)
        reg = site.registry("a")

        def counts() -> list[int]:
            return [len(fold(reg.mailboxes(u).open("INBOX").reader()).messages) for u in USERS]

        with roles(site) as r:
            mx = r.mx("a")
            r.workers("b", 2)
            holder = None
            if args.scene == "lock":
                holder = subprocess.Popen(
                    [sys.executable, "-m", "tests.delivery_procs", "hold-lock",
                     json.dumps(site.config_dict("c")), "p00", "INBOX"], cwd=ROOT,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                assert holder.stdout is not None
                say("host c holds p00's INBOX lock:", holder.stdout.readline().strip())
                pool.cut("c")
                say("host c cut off; sending", count)
                errors = send_mail(mx.port, plans, sessions=4)
            else:
                r.workers("c", 2)
                errors = []
                sender = threading.Thread(
                    target=lambda: errors.extend(send_mail(mx.port, plans, sessions=4)))
                sender.start()
                while sum(counts()) < count // 4:
                    time.sleep(0.2)
                pool.cut("c")
                say("host c cut off with", sum(counts()), "filed")
                sender.join(120)
            say("sent; SMTP errors:", errors[:3])
            t_cut = time.monotonic()
            while time.monotonic() - t_cut < args.cut:
                time.sleep(min(10.0, args.cut))
                say("cut off; filed per user:", counts())
            pool.heal("c")
            say("healed")
            if holder is not None:
                assert holder.stdin is not None
                holder.stdin.close()
                say("the holder on c exited with", holder.wait(300))
            deadline = time.monotonic() + 300
            while sum(counts()) < count and time.monotonic() < deadline:
                time.sleep(1)
            say("filed per user:", counts())
            problems = check_exactly_once(reg, expected_ids(plans))
            say("exactly once:", "yes" if not problems else problems[:5])
            for role in r.running:
                if role.command == "worker":
                    notes = [ln for ln in role.log.read_text(errors="replace").splitlines()
                             if " WARNING " in ln and "recommends" not in ln]
                    say(f"worker on {role.host}: {len(notes)} warnings; first:",
                        notes[0][:200] if notes else "-")
        return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
