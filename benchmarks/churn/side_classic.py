"""Scenario C: the original AMS layout, a folder directory and its index per user.

Hosts (one meter mount each): ``filer1`` and ``filer2`` each run one
:mod:`benchmarks.churn.classic` writer (the message server filing mail into
folders); ``reader1``… each run one reader checking every user's folder at
the reader poll interval.  Folders are ``classic/USER/mail``; the writers'
folder locks are ``flock``\\ s on local files (AFS keeps such locks on the
fileserver, out of every directory).  The driver hands every other message
to each writer, on its stdin.

Mailbox directories: ``classic/USER/mail``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from benchmarks.bench_delivery import cpu_seconds
from benchmarks.churn import classic
from benchmarks.churn.cluster import Cluster
from benchmarks.churn.harness import Failed, Scenario, writer_of


class ClassicScenario(Scenario):
    name = "classic AMS"
    mailbox_re = r"classic/[^/]+/mail"
    reader_role = "reader"

    def prepare(self) -> None:
        body = self.message.encode()
        for i, u in enumerate(self.users):
            classic.prefill(self.backing, u, self.spec.prefill, body)
            self.progress(f"{self.spec.label}: {i + 1}/{len(self.users)} users prepared")
        (self.local / "locks").mkdir()

    def start(self, cluster: Cluster) -> None:
        py = sys.executable
        self.writers = []
        self.filed = 0
        for i in range(1, self.spec.writers + 1):
            host = f"filer{i}"
            root = self.mount(cluster, host, "filer")
            self.writers.append(self.spawn(
                [py, "-m", "benchmarks.churn.classic", "write", "--root", str(root),
                 "--lockdir", str(self.local / "locks"), "--tag", f"f{i}",
                 "--message", str(self.message_file)], host, stdin=True))
        self.readers = []
        for i in range(1, self.spec.readers + 1):
            host = f"reader{i}"
            root = self.mount(cluster, host, "reader")
            status = self.work / f"status-{host}.json"
            self.status_files.append(status)
            self.readers.append(self.spawn(
                [py, "-m", "benchmarks.churn.classic", "read", "--root", str(root),
                 "--status", str(status), "--interval", str(self.spec.poll), *self.users],
                host))

    def send(self, rcpts: Sequence[str], rate: float) -> None:
        t0 = time.monotonic()
        for i, user in enumerate(rcpts):
            if rate > 0:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            w = self.writers[writer_of(i, len(self.users), len(self.writers))]
            assert w.stdin is not None
            try:
                w.stdin.write(user.encode() + b"\n")
                w.stdin.flush()
            except BrokenPipeError:
                raise Failed(f"a writer exited: {w.args}") from None
        self.filed += len(rcpts)

    def cpu(self) -> dict[str, float]:
        return {"writers": cpu_seconds([p.pid for p in self.writers]),
                "readers": cpu_seconds([p.pid for p in self.readers])}

    def stop(self) -> None:
        for w in getattr(self, "writers", []):
            if w.stdin is not None:
                try:
                    w.stdin.close()
                except OSError:
                    pass
