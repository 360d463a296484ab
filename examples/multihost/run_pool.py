"""The three-host pool of this directory, on one machine, over a real
distributed filesystem.

Run from the repository root, as root (after ``scripts/setup.sh``)::

    .venv/bin/python examples/multihost/run_pool.py --fs moosefs
    .venv/bin/python examples/multihost/run_pool.py --fs glusterfs --smoke 200

It brings up MooseFS or GlusterFS (``tests/distfs.py``: the servers on a
bridge address, each host's FUSE client in its own network namespace) and
mounts it once per host: mx1, mail2, mail3.  Each host gets the config of
this directory (``mx1.toml``, ``mail2.toml``, ``mail3.toml``) with only the
machine-specific lines rewritten: the store root becomes that host's own
mount, the cache directory a local one, the listen addresses the host's own
address, and TLS is replaced by plaintext logins (there is no certificate).
Then, as a site would: the store is created with a user, ``ams doctor`` runs
on the three hosts at once, and every role of the systemd units starts in
its host's namespace (``nsenter --net``): the MX, submission and gateways on
mx1, workers and an IMAP bridge on mail2 and mail3.

It prints where each host listens and waits for Ctrl-C, then stops every
role (SIGTERM) and tears the filesystem down.  ``--smoke N`` instead sends N
messages to the MX, waits until both IMAP bridges show all of them, and
exits 0 (1 if not).
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script: make the repo importable
    sys.path.insert(0, str(ROOT))

from ams.config import config_from_dict, render_config  # noqa: E402
from tests.distfs import SetupError, Unavailable, nsenter, open_pool  # noqa: E402

HERE = Path(__file__).resolve().parent
#: Host -> the roles its systemd units run (``ams`` subcommand and arguments).
ROLES = {
    "mx1": [["mx"], ["submission"], ["gateway", "--count", "1"]],
    "mail2": [["worker", "--count", "2"], ["imap"]],
    "mail3": [["worker", "--count", "2"], ["imap"]],
}
PORTS = {"smtp": 2525, "submission": 5587, "imap": 1143}
USER, PASSWORD = "demo", "demo-password"


def host_config(host: str, mount: Path, cache: Path, ip: str, offset: int) -> dict[str, object]:
    """This directory's config for ``host``, with the machine-specific lines rewritten."""
    data = tomllib.loads((HERE / f"{host}.toml").read_text())
    data["store"]["root"] = str(mount / "store")
    data["host"]["cache_dir"] = str(cache / host)
    data["listen"] = {k: f"{ip}:{p + offset}" for k, p in PORTS.items()}
    data["tls"] = {"allow_plaintext_auth": True}
    return data


class Site:
    def __init__(self, pool, scratch: Path) -> None:  # type: ignore[no-untyped-def]
        self.pool = pool
        self.scratch = scratch
        self.configs: dict[str, Path] = {}
        self.procs: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        self.addresses: dict[str, dict[str, str]] = {}

    def write_configs(self) -> None:
        for i, host in enumerate(ROLES):
            netns = self.pool.host_netns(host)
            # Hosts without their own namespace share 127.0.0.1: shift their ports.
            data = host_config(host, self.pool.mounts[host], self.scratch / "cache",
                               self.pool.host_ip(host), 0 if netns else 10 * i)
            path = self.scratch / f"{host}.toml"
            path.write_text(render_config(config_from_dict(data)))
            self.configs[host] = path
            self.addresses[host] = dict(data["listen"])  # type: ignore[arg-type]

    def ams(self, host: str, *args: str, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*nsenter(self.pool.host_netns(host)), sys.executable, "-m",
                               "ams.cli", "--config", str(self.configs[host]), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              input=stdin, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def create_store(self) -> None:
        """``ams init``'s store and one user, through mx1's mount."""
        from ams.config import load_config
        from ams.store import Store, UserRegistry

        users = UserRegistry(Store.initialise(load_config(self.configs["mx1"])))
        if not users.exists(USER):
            users.add(USER, PASSWORD)

    def doctor(self) -> None:
        """``ams doctor`` on every host at once; each role refuses to start without it."""
        procs = {h: subprocess.Popen(
            [*nsenter(self.pool.host_netns(h)), sys.executable, "-m", "ams.cli", "--config",
             str(self.configs[h]), "doctor", "--peers", str(len(ROLES) - 1), "--rounds", "20",
             "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for h in ROLES}
        for h, p in procs.items():
            out, err = p.communicate(timeout=300)
            try:
                report = json.loads(out)
            except ValueError:
                raise SystemExit(f"ams doctor on {h} failed: {err.strip()[-500:]}") from None
            method = report["lock_method"]
            print(f"{h}: ams doctor says {report['verdict']}"
                  + (f", lock_method = {method!r}" if method else ""))
            if p.returncode != 0:
                raise SystemExit(f"ams doctor on {h}: {'; '.join(report['reasons'])}")

    def start_roles(self) -> None:
        for host, roles in ROLES.items():
            for args in roles:
                log = open(self.scratch / f"{host}-{args[0]}.log", "ab")  # noqa: SIM115
                p = subprocess.Popen(
                    [*nsenter(self.pool.host_netns(host)), sys.executable, "-m", "ams.cli",
                     "--config", str(self.configs[host]), *args], cwd=ROOT,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                log.close()
                self.procs.append((host, args[0], p))
        for host, roles in ROLES.items():
            for args in roles:
                if args[0] in PORTS or args[0] == "mx":
                    key = "smtp" if args[0] == "mx" else args[0]
                    self._wait_listening(host, args[0], self.addresses[host][key])

    def _wait_listening(self, host: str, role: str, address: str) -> None:
        log = self.scratch / f"{host}-{role}.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "listening on" in log.read_text(errors="replace"):
                return
            for h, r, p in self.procs:
                if (h, r) == (host, role) and p.poll() is not None:
                    raise SystemExit(f"{role} on {host} exited: "
                                     f"{log.read_text(errors='replace').strip()[-500:]}")
            time.sleep(0.1)
        raise SystemExit(f"{role} on {host} did not start listening on {address}")

    def stop_roles(self) -> None:
        for _, _, p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for _, _, p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def smoke(self, count: int) -> bool:
        """Send ``count`` messages to the MX; True once both bridges show them all."""
        host, port = self.addresses["mx1"]["smtp"].rsplit(":", 1)
        with smtplib.SMTP(host, int(port), timeout=60) as s:
            for i in range(count):
                s.sendmail("someone@far.example", [f"{USER}@example.org"],
                           f"Subject: smoke {i}\r\nMessage-ID: <smoke{i}@far.example>\r\n\r\n"
                           f"message {i}\r\n".encode())
        print(f"sent {count} messages to the MX on mx1 ({host}:{port})")
        ok = True
        for bridge in ("mail2", "mail3"):
            h, p = self.addresses[bridge]["imap"].rsplit(":", 1)
            deadline = time.monotonic() + 120
            seen = 0
            while time.monotonic() < deadline:
                c = imaplib.IMAP4(h, int(p), timeout=60)
                c.login(USER, PASSWORD)
                seen = int(c.select("INBOX")[1][0] or 0)
                c.logout()
                if seen >= count:
                    break
                time.sleep(0.5)
            print(f"IMAP bridge on {bridge} ({h}:{p}): {seen} of {count} messages")
            ok = ok and seen >= count
        return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fs", choices=["moosefs", "glusterfs"], default="moosefs")
    ap.add_argument("--smoke", type=int, metavar="N", default=0,
                    help="send N messages, check both bridges show them, exit")
    args = ap.parse_args(argv)
    if args.smoke < 0:
        ap.error("--smoke must not be negative")
    scratch = Path(tempfile.mkdtemp(prefix="ams-multihost-"))
    try:
        with open_pool(args.fs, list(ROLES)) as pool:
            site = Site(pool, scratch)
            site.write_configs()
            for host in ROLES:
                print(f"{host}: {args.fs} mounted at {pool.mounts[host]}, address "
                      f"{pool.host_ip(host)}"
                      + (f" (network namespace {pool.host_netns(host)})"
                         if pool.host_netns(host) else ""))
            site.create_store()
            site.doctor()
            try:
                site.start_roles()
                a = site.addresses
                print(f"MX on mx1: {a['mx1']['smtp']}; submission: {a['mx1']['submission']}")
                for h in ("mail2", "mail3"):
                    print(f"IMAP on {h}: {a[h]['imap']}")
                print(f"user {USER}@example.org, password {PASSWORD}; configs and logs in "
                      f"{scratch}")
                if args.smoke:
                    return 0 if site.smoke(args.smoke) else 1
                print("Ctrl-C stops everything.", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    threading.Event().wait()
            finally:
                site.stop_roles()
    except (Unavailable, SetupError) as e:
        print(f"run_pool: {e}", file=sys.stderr)
        return 1
    finally:
        print(f"stopped; configs and logs kept in {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
