"""Chaos: worker processes SIGKILLed and restarted at random while mail flows.

The brief's promise: 0 lost, 0 duplicated.  Every message is checked in
every recipient's mailbox by delivery id, and the spool must end empty.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ams.store import Place, Spool
from tests.delivery_procs import (
    config_dict,
    delivery_ids,
    setup_store,
    spawn,
    spool_idle,
    stop,
)

USERS = [f"user{i:02d}" for i in range(50)]
MESSAGES = 5000
#: The whole run, kills included, must end within this.
BUDGET = 55.0


@pytest.mark.slow
def test_sigkill_chaos_every_message_exactly_once(tmp_path: Path) -> None:
    rnd = random.Random(20240610)
    cfg = config_dict(tmp_path, lease=2.0, skew=0.2, attempts=1000)
    _config, store, reg = setup_store(cfg, USERS)
    spool = Spool(store)
    expected: dict[str, Counter[str]] = {u: Counter() for u in USERS}
    plans = [rnd.sample(USERS, rnd.randint(1, 3)) for _ in range(MESSAGES)]

    def enqueue(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            body = f"Subject: chaos {i}\r\nMessage-ID: <c{i}@far.test>\r\n\r\n{i}\r\n".encode()
            env = spool.enqueue("in", mail_from=f"s{i}@far.test", message=body,
                                rcpt_to=[f"{u}@example.test" for u in plans[i]])
            for u in plans[i]:
                expected[u][f"{env.id}/{u}@example.test"] += 1

    enqueue(0, MESSAGES // 2)
    feeder = threading.Thread(target=enqueue, args=(MESSAGES // 2, MESSAGES))
    n_logs = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal n_logs
        n_logs += 1
        return spawn("worker", cfg, "2", log=tmp_path / f"worker{n_logs}.log")

    procs = [start(), start()]
    deadline = time.monotonic() + BUDGET
    kills = 0
    added = False
    try:
        feeder.start()
        while True:
            time.sleep(rnd.uniform(0.3, 0.9))
            assert time.monotonic() < deadline, (
                f"not done in time: {spool.depth('in')} queued, "
                f"{spool.depth('in', Place.CLAIMED)} claimed, {kills} kills")
            busy = not spool_idle(spool)
            if not busy and not feeder.is_alive():
                break
            if busy and kills < 10:
                victim = rnd.randrange(len(procs))
                stop(procs[victim], signal.SIGKILL)
                procs[victim] = start()
                kills += 1
            if not added and (kills >= 5 or not feeder.is_alive()):
                procs.append(start())  # a worker joins half way
                added = True
    finally:
        feeder.join(30)
        for p in procs:
            stop(p, signal.SIGTERM)
    assert [p.returncode for p in procs] == [0] * len(procs)
    assert kills >= 5 and added
    assert spool.depth("in") == 0 and spool.depth("in", Place.CLAIMED) == 0
    assert spool.depth("in", Place.FAILED) == 0
    # Workers stopped by SIGTERM deregister.  (One SIGKILLed in the last
    # second or two may still be within its lease: that is checked below.)
    stopped = {p.pid for p in procs}
    assert [w for w in spool.live_workers() if w.pid in stopped] == []
    # Killed workers leave heartbeats until a live worker reclaims them after
    # their lease; do what the next worker to start would do, then check.
    time.sleep(2.0 + 0.2 + 0.1)  # lease + skew of this test's config: a wait the protocol needs
    with spool.register_worker() as w:
        w.reclaim_dead()
        assert [x.id for x in spool.list_workers()] == [w.id]
    assert spool.list_workers() == []
    for u in USERS:
        got = delivery_ids(reg, u)
        assert got == expected[u], (u, len(got), len(expected[u]),
                                    [k for k, v in got.items() if v > 1][:3])
