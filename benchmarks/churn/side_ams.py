"""Scenario A: AMS itself, every role a real process on its own simulated host.

Hosts (one meter mount each): ``mx`` runs ``ams mx``; ``worker1`` and
``worker2`` run ``ams worker --count 1``; ``imap1``… run ``ams imap`` (its
IDLE probe interval, ``imap.idle_poll``, set to the benchmark's poll), each
with an IDLE client on every user's INBOX.  Every host's config has
``store.root`` inside its own mount, its own ``host.name`` and a
``host.cache_dir`` (the LMDB index) on local disk outside every mount;
``lock_method = "dotlock"`` (AFS has no byte-range locks, and FUSE does not
carry fcntl locks between mounts), ``fsync = "always"``, and
``require_doctor = false``: the mounts are a passthrough of one local disk,
coherent by construction, so no ``ams doctor`` verdict is needed to trust
them.  Mail comes in by
SMTP to the MX.

Mailbox directories: a user's mail directory ``store/mail/ab/cd/USERID`` and
each mailbox's directory below it.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ams.config import config_from_dict, render_config
from ams.store import NewMessage, Spool, Store, UserRegistry
from benchmarks.bench_delivery import DOMAIN, FAST_HASHER, cpu_seconds
from benchmarks.churn.cluster import Cluster
from benchmarks.churn.harness import PASSWORD, Failed, Scenario, send_smtp


class AmsScenario(Scenario):
    name = "AMS"
    mailbox_re = r"store/mail/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]+(/[^/]+)?"
    reader_role = "imap"

    def config(self, root: Path, host: str) -> Path:
        cfg = config_from_dict({
            # require_doctor off: the meter mounts are a passthrough of one local disk,
            # coherent by construction, and ams doctor's own traffic is not what is measured
            "store": {"root": str(root / "store"), "fsync": "always", "lock_method": "dotlock",
                      "require_doctor": False},
            "host": {"name": host, "cache_dir": str(self.local / f"cache-{host}")},
            "mail": {"domains": [DOMAIN]},
            "listen": {"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0"},
            "tls": {"allow_plaintext_auth": True},
            "imap": {"idle_poll": self.spec.poll}})
        path = self.local / f"{host}.toml"
        path.write_text(render_config(cfg))
        return path

    def prepare(self) -> None:
        cfg = config_from_dict({"store": {"root": str(self.backing / "store"), "fsync": "never",
                                          "lock_method": "dotlock"},
                                "host": {"name": "prepare",
                                         "cache_dir": str(self.local / "cache-prepare")}})
        store = Store.initialise(cfg)
        reg = UserRegistry(store, hasher=FAST_HASHER)
        msg = self.message.replace("\n", "\r\n").encode()
        now = int(time.time())
        for i, u in enumerate(self.users):
            reg.add(u, PASSWORD)
            n = self.spec.prefill
            log = reg.mailboxes(u).open("INBOX")
            for start in range(0, n, 1000):
                log.append([NewMessage(msg, internal_date=now, delivery_id=f"prefill/{u}/{j}")
                            for j in range(start, min(n, start + 1000))])
            self.progress(f"{self.spec.label}: {i + 1}/{len(self.users)} users prepared")

    def start(self, cluster: Cluster) -> None:
        py = sys.executable
        mx_root = self.mount(cluster, "mx", "mx")
        self.mx = self.spawn([py, "-m", "ams.cli", "mx", "--config",
                              str(self.config(mx_root, "mx"))], "mx")
        self.workers = []
        for i in range(1, self.spec.writers + 1):
            host = f"worker{i}"
            root = self.mount(cluster, host, "worker")
            self.workers.append(self.spawn([py, "-m", "ams.cli", "worker", "--config",
                                            str(self.config(root, host)), "--count", "1"], host))
        self.bridges = []
        for i in range(1, self.spec.readers + 1):
            host = f"imap{i}"
            root = self.mount(cluster, host, "imap")
            p = self.spawn([py, "-m", "ams.cli", "imap", "--config", str(self.config(root, host)),
                            "--listen", "127.0.0.1:0"], host)
            self.bridges.append(p)
            line = self.wait_line(p, host, "listening on")
            m = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not m:
                raise Failed(f"{host}: cannot read the port from {line!r}")
            self.idle_clients(host, int(m.group(1)))
        line = self.wait_line(self.mx, "mx", "listening on")
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            raise Failed(f"mx: cannot read the port from {line!r}")
        self.mx_port = int(m.group(1))
        spool = Spool(Store(config_from_dict({
            "store": {"root": str(self.backing / "store"), "lock_method": "dotlock"},
            "host": {"name": "watch", "cache_dir": str(self.local / "cache-watch")}})))
        deadline = time.monotonic() + 60
        while len(spool.live_workers("in")) < self.spec.writers:
            self.check()
            if time.monotonic() > deadline:
                raise Failed("the workers did not register within 60 s")
            time.sleep(0.1)

    def send(self, rcpts: Sequence[str], rate: float) -> None:
        send_smtp([(self.mx_port, False)], rcpts, self.message, rate, users=len(self.users),
                  sessions=4, timeout=self.spec.timeout)

    def cpu(self) -> dict[str, float]:
        return {"mx": cpu_seconds([self.mx.pid]),
                "workers": cpu_seconds([p.pid for p in self.workers]),
                "imap": cpu_seconds([p.pid for p in self.bridges])}
