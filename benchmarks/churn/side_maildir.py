"""Scenario B: Maildir, written by Dovecot's LMTP and read by Dovecot's imap.

Hosts (one meter mount each): ``lmtp1`` and ``lmtp2`` each run a standalone
Dovecot with only LMTP (Debian's ``dovecot-lmtpd``); ``imap1``… each run one
with only IMAP, and an IDLE client on every user's INBOX.  All of them have
the users' homes (``dovecot/USER``, ``mail_location = maildir:~/Maildir``)
inside their own mount, so the Maildirs and their ``dovecot-uidlist`` (which
gives every host the same UIDs) are shared; the index files are not
(``INDEX=`` a directory on local disk per host), as AMS keeps its index
local.  ``mailbox_idle_check_interval`` is the reader poll interval (1 s, its
smallest), ``mmap_disable = yes`` (the shared files are never mapped), fsync
as Dovecot's default (``mail_fsync = optimized``).  Mail comes in by LMTP,
every other message to each writer host.

The configuration is :mod:`benchmarks.peers.dovecot`'s, with those settings
added at the end (a later setting overrides an earlier one in Dovecot's
config).

Mailbox directories: ``dovecot/USER/Maildir`` and its ``cur``, ``new`` and
``tmp``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.bench_delivery import Processes, cpu_seconds
from benchmarks.churn.cluster import Cluster
from benchmarks.churn.harness import PASSWORD, Failed, Scenario, Spec, send_smtp
from benchmarks.peers import dovecot as dv

EXTRA = """
# churn benchmark: homes on this host's mount, index files on its local disk
mail_location = maildir:~/Maildir:INDEX={index}/%u
mailbox_idle_check_interval = {poll} secs
mmap_disable = yes
"""


def unavailable() -> str | None:
    return dv.unavailable(imap=True)


class HostDovecot(dv.Dovecot):
    """A standalone Dovecot whose homes live on one host's mount."""

    def __init__(self, base: Path, homes: Path, users: Sequence[str], *, imap: bool,
                 poll: int, connections: int) -> None:
        super().__init__(base, users, imap=imap, imap_connections=connections,
                         password=PASSWORD)
        self.homes = homes
        self.poll = poll

    def home(self, user: str) -> Path:
        return self.homes / user

    def start(self, timeout: float = 60.0) -> None:
        b = self.base
        for d in ("run", "state", "log", "index"):
            (b / d).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            b.chmod(0o755)
            os.chown(b / "index", self.uid, self.gid)
        self.port = dv.free_port()
        imap_config = ""
        if self.imap:
            self.imap_port = dv.free_port()
            n = self.imap_connections
            imap_config = dv.IMAP_CONFIG.format(connections=n, port=self.imap_port,
                                                processes=n + 50)
        self.conf.write_text(dv.CONFIG.format(
            base=b, instance=f"{os.getpid()}-{b.name}", internal_user=self.internal_user,
            login_user=self.login_user, uid=self.uid, gid=self.gid, port=self.port,
            protocols="imap" if self.imap else "lmtp", process_limit=1024, client_limit=4096,
            imap_config=imap_config) + EXTRA.format(index=b / "index", poll=self.poll))
        (b / "users").write_text("".join(
            f"{u}:{{PLAIN}}{self.password}:{self.uid}:{self.gid}::{self.home(u)}::\n"
            for u in self.users))
        out = open(b / "log" / "master.out", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen([dv.DOVECOT, "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        if self.imap:
            self._wait_greeting("IMAP", self.imap_port, b"* OK", deadline)
        else:
            self._wait_greeting("LMTP", self.port, b"220", deadline)


class MaildirScenario(Scenario):
    name = "Maildir"
    mailbox_re = r"dovecot/[^/]+/Maildir(/(cur|new|tmp))?"
    reader_role = "imap"

    def __init__(self, spec: Spec, work: Path, procs: Processes,
                 progress: Callable[..., None]) -> None:
        super().__init__(spec, work, procs, progress)
        self.instances: list[HostDovecot] = []

    def prepare(self) -> None:
        why = unavailable()
        if why:
            raise Failed(f"Dovecot: not available: {why}")
        homes = self.backing / "dovecot"
        homes.mkdir()
        probe = HostDovecot(self.local / "probe", homes, [], imap=False, poll=1, connections=1)
        os.chown(homes, probe.uid, probe.gid)
        text = self.message.encode()
        now = int(time.time()) - self.spec.prefill - 10
        for i, u in enumerate(self.users):
            w = dv.MaildirWriter(homes / u, probe.uid, probe.gid)
            for j in range(self.spec.prefill):
                w.add(text, date=now + j)
            self.progress(f"{self.spec.label}: {i + 1}/{len(self.users)} users prepared")

    def start(self, cluster: Cluster) -> None:
        poll = max(1, round(self.spec.poll))
        self.writers: list[HostDovecot] = []
        for i in range(1, self.spec.writers + 1):
            host = f"lmtp{i}"
            root = self.mount(cluster, host, "lmtp")
            d = HostDovecot(self.local / f"dovecot-{host}", root / "dovecot", self.users,
                            imap=False, poll=poll, connections=10)
            self.instances.append(d)
            self.writers.append(d)
            d.start()
        for i in range(1, self.spec.readers + 1):
            host = f"imap{i}"
            root = self.mount(cluster, host, "imap")
            d = HostDovecot(self.local / f"dovecot-{host}", root / "dovecot", self.users,
                            imap=True, poll=poll, connections=len(self.users) + 10)
            self.instances.append(d)
            d.start()
            self.idle_clients(host, d.imap_port)

    def send(self, rcpts: Sequence[str], rate: float) -> None:
        send_smtp([(d.port, True) for d in self.writers], rcpts, self.message, rate,
                  users=len(self.users), sessions=2, timeout=self.spec.timeout)

    def check(self) -> None:
        super().check()
        for d in self.instances:
            if d.proc is None or d.proc.poll() is not None:
                raise Failed(f"a Dovecot instance exited: {d.log_tail(3)}")

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {"lmtp": 0.0, "imap": 0.0}
        for d in self.instances:
            if d.proc is not None:
                out["imap" if d.imap else "lmtp"] += cpu_seconds(pgid=d.proc.pid)
        return out

    def stop(self) -> None:
        for d in self.instances:
            d.stop()
