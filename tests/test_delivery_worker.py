"""The delivery worker pool: in-process end to end, failures, and real-process crashes.

Every wait is bounded (trio.fail_after, or a polling loop with a deadline).
"""

from __future__ import annotations

import email
import email.policy
import logging
import random
import signal
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import trio

from ams.config import Config
from ams.store import Place, Spool
from delivery import PoolOptions, WorkerPool, serve_workers
from tests.delivery_procs import (
    config_dict,
    delivery_ids,
    folded,
    messages,
    setup_store,
    spawn,
    spool_idle,
    stop,
)
from tests.waiting import WAIT, wait_for

FAST = PoolOptions(retry_min=0.01, retry_max=0.05)


def msg(tag: str) -> bytes:
    return (f"From: s@far.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@far.test>\r\n\r\n"
            f"body of {tag}\r\n").encode()


async def wait_idle(spool: Spool, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(spool_idle, spool):
            await trio.sleep(0.05)


async def run_until_idle(config: Config, spool: Spool, *, count: int = 1,
                         options: PoolOptions = FAST, timeout: float = WAIT) -> None:
    async with trio.open_nursery() as n:
        await n.start(partial(serve_workers, config, count=count, options=options))
        await wait_idle(spool, timeout)
        n.cancel_scope.cancel()


def assert_no_workers(spool: Spool) -> None:
    assert spool.list_workers() == []
    assert list((spool.root / "claims").iterdir()) == []


# -- in process ----------------------------------------------------------------------------


async def test_end_to_end_200_messages(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="delivery")
    users = ["ann", "ben", "cat", "dan", "eve"]
    config, store, reg = setup_store(config_dict(tmp_path), users)
    reg.mailboxes("ben").create("Lists")
    reg.add_alias("cat", "staff")
    reg.add_alias("dan", "staff")
    spool = Spool(store)
    rnd = random.Random(7)
    expected: dict[tuple[str, str], Counter[str]] = {}   # (user, mailbox) -> delivery ids
    sent: dict[str, tuple[str, str, bytes, int]] = {}    # delivery id -> envelope, message
    for i in range(200):
        rcpts = rnd.sample(["ann@example.test", "ben+Lists@example.test", "ben@example.test",
                            "staff@example.test", "eve@EXAMPLE.test"], rnd.randint(1, 3))
        body = msg(f"m{i}")
        env = spool.enqueue("in", mail_from=f"s{i}@far.test", rcpt_to=rcpts, message=body)
        for r in rcpts:
            did = f"{env.id}/{r}"
            sent[did] = (f"s{i}@far.test", r, body, env.received_us // 1_000_000)
            boxes = {"ann@example.test": [("ann", "INBOX")],
                     "ben+Lists@example.test": [("ben", "Lists")],
                     "ben@example.test": [("ben", "INBOX")],
                     "staff@example.test": [("cat", "INBOX"), ("dan", "INBOX")],
                     "eve@EXAMPLE.test": [("eve", "INBOX")]}[r]
            for user_box in boxes:
                expected.setdefault(user_box, Counter())[did] += 1
    await run_until_idle(config, spool, count=2)
    assert_no_workers(spool)
    assert spool.depth("in", Place.FAILED) == 0
    for (user, box), want in expected.items():
        assert delivery_ids(reg, user, box) == want, (user, box)
        st = folded(reg, user, box)
        lg = reg.mailboxes(user).open(box)
        for m in st.messages.values():
            sender, rcpt, body, date = sent[m.delivery_id]
            head = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode()
            assert lg.read_message(m.location) == head + body
            assert m.internal_date == date
    # One log line per delivered message.
    delivered = [r for r in caplog.records if r.getMessage().startswith("delivered ")]
    assert len(delivered) == 200
    assert any("staff@example.test=cat:INBOX+dan:INBOX" in r.getMessage() for r in delivered)


async def test_many_recipients_one_mailbox_and_group_commit(tmp_path: Path) -> None:
    config, store, reg = setup_store(config_dict(tmp_path), ["ann", "ben"])
    reg.add_alias("ann", "a1")
    reg.add_alias("ann", "a2")
    spool = Spool(store)
    # Three addresses that all mean ann's INBOX: filed once, under the first.
    env = spool.enqueue("in", mail_from="", rcpt_to=["a1@example.test", "ann@example.test",
                                                      "a2@example.test", "ben@example.test"],
                        message=msg("x"))
    for i in range(40):
        spool.enqueue("in", mail_from="s@far.test", rcpt_to=["ben@example.test"],
                      message=msg(f"b{i}"))
    await run_until_idle(config, spool)
    assert delivery_ids(reg, "ann") == Counter({f"{env.id}/a1@example.test": 1})
    assert len(delivery_ids(reg, "ben")) == 41
    # Group commit: one append per mailbox per batch (of 32), and records
    # written by one append share their time.
    assert len({m.time_us for m in folded(reg, "ben").messages.values()}) <= 3
    (first,) = messages(reg, "ann")
    assert first.startswith(b"Return-Path: <>\r\nDelivered-To: a1@example.test\r\n")
    # +detail is case-sensitive, also within one batch's resolutions.
    reg.mailboxes("ann").create("Lists")
    env2 = spool.enqueue("in", mail_from="", message=msg("y"),
                         rcpt_to=["ann+Lists@example.test", "ann+lists@example.test"])
    await run_until_idle(config, spool)
    assert delivery_ids(reg, "ann", "Lists") == Counter({f"{env2.id}/ann+Lists@example.test": 1})
    assert delivery_ids(reg, "ann")[f"{env2.id}/ann+lists@example.test"] == 1


async def test_wake_and_idle_pickup(tmp_path: Path) -> None:
    config, store, reg = setup_store(config_dict(tmp_path), ["ann"])
    spool = Spool(store)
    async with trio.open_nursery() as n:
        slow = PoolOptions(idle_min=0.05, idle_max=30.0)
        pool: WorkerPool = await n.start(partial(serve_workers, config, options=slow))
        assert len(pool.worker_ids) == 1
        await trio.sleep(1.0)  # let the idle backoff grow far past a second
        spool.enqueue("in", mail_from="", rcpt_to=["ann@example.test"], message=msg("w"))
        pool.wake()
        with trio.fail_after(1.0):
            await wait_idle(spool)
        n.cancel_scope.cancel()
    async with trio.open_nursery() as n:
        await n.start(partial(serve_workers, config))  # default options: no wake()
        await trio.sleep(2.0)
        spool.enqueue("in", mail_from="", rcpt_to=["ann@example.test"], message=msg("p"))
        t0 = trio.current_time()
        await wait_idle(spool, 5.0)
        assert trio.current_time() - t0 < 1.5  # idle polling is at most a second apart
        n.cancel_scope.cancel()
    assert len(delivery_ids(reg, "ann")) == 2


async def test_permanent_failures_do_not_block_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="delivery")
    config, store, reg = setup_store(config_dict(tmp_path), ["ann", "ben", "cat"])
    reg.set_disabled("cat", True)
    spool = Spool(store)
    original = msg("p")
    local = spool.enqueue("in", mail_from="ben@example.test", message=original,
                          rcpt_to=["ann@example.test", "nobody@example.test",
                                   "bb+news@example.test", "cat@example.test"])
    remote = spool.enqueue("in", mail_from="x@far.test", message=msg("q"),
                           rcpt_to=["ann@example.test", "nobody@example.test"])
    null = spool.enqueue("in", mail_from="", message=msg("r"),
                         rcpt_to=["nobody@example.test"])
    await run_until_idle(config, spool)
    await run_until_idle(config, spool)  # a second pass files nothing more
    assert spool.depth("in", Place.FAILED) == 0
    assert delivery_ids(reg, "ann") == Counter({f"{local.id}/ann@example.test": 1,
                                                f"{remote.id}/ann@example.test": 1})
    # The local sender got one DSN, filed exactly once; the remote sender
    # one, queued to out from the null sender; the null sender none.
    assert delivery_ids(reg, "ben") == Counter({f"{local.id}/notice": 1})
    (notice,) = messages(reg, "ben")
    assert notice.startswith(b"Return-Path: <>\r\nDelivered-To: ben@example.test\r\n")
    report = email.message_from_bytes(notice, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    human, status, headers = report.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; h1"
    got = {b["Final-Recipient"]: (b["Action"], b["Status"], b["Diagnostic-Code"])
           for b in blocks[1:]}
    assert got == {
        "rfc822; nobody@example.test": ("failed", "5.1.1",
                                        "smtp; 550 5.1.1 No such user here"),
        "rfc822; bb+news@example.test": ("failed", "5.1.1",
                                         "smtp; 550 5.1.1 No such bulletin board here (news)"),
        "rfc822; cat@example.test": ("failed", "5.2.1", "smtp; 550 5.2.1 Mailbox disabled")}
    assert "Subject: p" in headers.get_payload()
    assert b"body of p" not in notice
    (dsn,) = list(spool.list_entries("out"))
    assert (dsn.envelope.mail_from, dsn.envelope.rcpt_to) == ("", ("x@far.test",))
    out = spool.read("out", dsn.id)
    assert out.envelope.extra == {"dsn_for": remote.id}
    assert b"Final-Recipient: rfc822; nobody@example.test" in out.message
    assert b"Subject: q" in out.message and b"From: Mail Delivery System" in out.message
    text = caplog.text
    assert f"undeliverable {remote.id} from=<x@far.test> to=<nobody@example.test>" in text
    assert f"{remote.id}: DSN {dsn.id} to <x@far.test>" in text
    assert f"undeliverable {null.id}" in text


async def test_forward_requeues_to_out(tmp_path: Path) -> None:
    config, store, reg = setup_store(config_dict(tmp_path), ["ann", "dan"])
    reg.set_forward("dan", "dan@far.test")
    spool = Spool(store)
    env = spool.enqueue("in", mail_from="s@far.test", message=msg("f"),
                        rcpt_to=["dan@example.test", "ann@example.test"])
    looped = spool.enqueue("in", mail_from="s@far.test",
                           message=b"Delivered-To: dan@example.test\r\n" + msg("l"),
                           rcpt_to=["dan@example.test"])
    await run_until_idle(config, spool)
    assert len(folded(reg, "dan").messages) == 0  # forward only, no copy kept
    assert len(delivery_ids(reg, "ann")) == 1
    # The forward, and a DSN telling the sender of the looped one.
    outs = {e.envelope.mail_from: e for e in spool.list_entries("out") if e.envelope}
    assert sorted(outs) == ["", "s@far.test"]
    out = outs["s@far.test"]
    assert out.envelope is not None
    assert out.envelope.rcpt_to == ("dan@far.test",)
    assert out.envelope.extra == {"forwarded_for": "dan@example.test", "origin": env.id}
    fwd = spool.read("out", out.id)
    assert fwd.message == b"Delivered-To: dan@example.test\r\n" + msg("f")
    bounce = spool.read("out", outs[""].id)
    assert bounce.envelope.extra == {"dsn_for": looped.id}
    assert bounce.envelope.rcpt_to == ("s@far.test",)
    assert b"Status: 5.4.6" in bounce.message


@pytest.mark.parametrize("damage", ["corrupt-log", "missing-mail-dir"])
async def test_failed_after_attempts_and_nothing_lost(tmp_path: Path, damage: str) -> None:
    config, store, reg = setup_store(config_dict(tmp_path, attempts=3), ["ann", "ben"])
    spool = Spool(store)
    head = reg.mailboxes("ben").lookup("INBOX").path / "head"
    good_head = head.read_bytes()
    ben_dir = store.user_dir(reg.get("ben").id)
    aside = ben_dir.with_name("aside")
    if damage == "corrupt-log":
        head.write_bytes(b"not json")
    else:
        ben_dir.rename(aside)
    env = spool.enqueue("in", mail_from="", message=msg("x"),
                        rcpt_to=["ann@example.test", "ben@example.test"])
    async with trio.open_nursery() as n:
        await n.start(partial(serve_workers, config, options=FAST))
        with trio.fail_after(WAIT):
            while not await trio.to_thread.run_sync(spool.depth, "in", Place.FAILED):
                await trio.sleep(0.02)
        n.cancel_scope.cancel()
    (failed,) = list(spool.list_entries("in", Place.FAILED))
    assert failed.id == env.id and failed.attempts == 3
    assert failed.reason is not None and "ben@example.test" in failed.reason
    assert "gave up after 3 attempts" in failed.reason
    assert spool.depth("in") == 0 and spool.depth("in", Place.CLAIMED) == 0
    # ann got it once, despite three attempts.
    assert delivery_ids(reg, "ann") == Counter({f"{env.id}/ann@example.test": 1})
    # Repair, retry: ben gets it, ann still has exactly one.
    if damage == "corrupt-log":
        head.write_bytes(good_head)
    else:
        aside.rename(ben_dir)
    assert spool.retry("in", env.id)
    await run_until_idle(config, spool)
    assert delivery_ids(reg, "ann") == Counter({f"{env.id}/ann@example.test": 1})
    assert delivery_ids(reg, "ben") == Counter({f"{env.id}/ben@example.test": 1})


async def test_damaged_entry_goes_to_failed_at_once(tmp_path: Path) -> None:
    config, store, reg = setup_store(config_dict(tmp_path), ["ann"])
    spool = Spool(store)
    env = spool.enqueue("in", mail_from="", rcpt_to=["ann@example.test"], message=msg("d"))
    good = spool.enqueue("in", mail_from="", rcpt_to=["ann@example.test"], message=msg("g"))
    (path,) = [p for p in (spool.root / "in").rglob(f"{env.id}.a0")]
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    await run_until_idle(config, spool)
    (failed,) = list(spool.list_entries("in", Place.FAILED))
    assert failed.id == env.id and failed.attempts == 1
    assert failed.reason is not None and "damaged spool entry" in failed.reason
    assert delivery_ids(reg, "ann") == Counter({f"{good.id}/ann@example.test": 1})


async def test_cancel_releases_claims_uncounted(tmp_path: Path) -> None:
    """Cancelling the pool (what SIGTERM does) leaves nothing claimed."""
    config, store, reg = setup_store(config_dict(tmp_path), ["ann"])
    spool = Spool(store)
    for i in range(300):
        spool.enqueue("in", mail_from="", rcpt_to=["ann@example.test"], message=msg(f"c{i}"))
    async with trio.open_nursery() as n:
        await n.start(partial(serve_workers, config, count=2,
                              options=PoolOptions(batch=8)))
        with trio.fail_after(WAIT):
            while not await trio.to_thread.run_sync(lambda: len(folded(reg, "ann").messages)):
                await trio.sleep(0.005)
        n.cancel_scope.cancel()
    assert_no_workers(spool)
    left = list(spool.list_entries("in"))
    assert all(e.attempts == 0 for e in left)
    ids = delivery_ids(reg, "ann")
    assert set(ids.values()) == {1} and len(ids) + len(left) == 300


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


async def test_a_mailbox_locked_elsewhere_is_set_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds ben's INBOX lock (what a host cut off from the
    filesystem does).  Each message is for ann and ben, one per batch, so
    without setting ben's INBOX aside every batch would wait the full
    lock_timeout before ann's copy is settled.  With it, only the first one
    waits; ben's copies wait for the lock without using up attempts (the
    limit is 2), and are filed exactly once when the lock is let go."""
    caplog.set_level(logging.INFO, logger="delivery")
    lock_timeout = 4.0
    config, store, reg = setup_store(config_dict(tmp_path, attempts=2,
                                                 lock_timeout=lock_timeout), ["ann", "ben"])
    spool = Spool(store)
    held = reg.mailboxes("ben").lookup("INBOX").path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        with trio.fail_after(WAIT):
            line = await trio.to_thread.run_sync(holder.stdout.readline)
        assert line == b"held\n"
        n = 6
        ids = [spool.enqueue("in", mail_from="", message=msg(f"h{i}"),
                             rcpt_to=["ann@example.test", "ben@example.test"]).id
               for i in range(n)]
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            # Held entries come back after retry_max, at once here: claims
            # go round each shard, so they cannot starve the others.
            await nursery.start(partial(serve_workers, config, options=PoolOptions(
                batch=1, retry_min=0.01, retry_max=0.05)))
            with trio.fail_after(WAIT):
                while len(await trio.to_thread.run_sync(delivery_ids, reg, "ann")) < n:
                    await trio.sleep(0.02)
            took = trio.current_time() - t0
            # One full wait, then the others pass ben's INBOX over: about
            # 4 s, under two timeouts even on a loaded machine (without
            # setting aside, n timeouts: 24 s).
            assert took < 2 * lock_timeout, took
            assert delivery_ids(reg, "ben") == Counter()
            # Retried over and over, never counted: nothing has failed.
            assert spool.depth("in", Place.FAILED) == 0
            assert all(e.attempts == 0 for e in spool.list_entries("in"))
            holder.stdin.close()
            await trio.to_thread.run_sync(holder.wait, WAIT)
            await wait_idle(spool)
            nursery.cancel_scope.cancel()
    finally:
        stop(holder)
    assert spool.depth("in", Place.FAILED) == 0
    want = {f"{i}/{u}@example.test" for i in ids for u in ("ann", "ben")}
    got = delivery_ids(reg, "ann") + delivery_ids(reg, "ben")
    assert set(got) == want and set(got.values()) == {1}
    assert caplog.text.count("mailbox ben:INBOX set aside") == 1
    assert "mailbox ben:INBOX is back" in caplog.text


# -- real processes ----------------------------------------------------------------------


def wait_worker_registered(spool: Spool, n: int = 1) -> None:
    assert wait_for(lambda: len(spool.live_workers()) >= n), "worker did not register"


@pytest.mark.parametrize("how", ["killed-between-appends", "torn-append"])
def test_sigkill_mid_message_with_100_recipients(tmp_path: Path, how: str) -> None:
    users = [f"u{i:03d}" for i in range(100)]
    cfg = config_dict(tmp_path, lease=2.0, skew=0.2)
    _config, store, reg = setup_store(cfg, users)
    spool = Spool(store)
    env = spool.enqueue("in", mail_from="s@far.test", message=msg("hundred"),
                        rcpt_to=[f"{u}@example.test" for u in users])
    opts = ["--crash-after", "50"] + (["--torn"] if how == "torn-append" else [])
    first = spawn("worker", cfg, "1", *opts, log=tmp_path / "first.log")
    try:
        # SIGKILL, or os._exit(137) inside the torn write (the log's crash point).
        assert first.wait(WAIT) == (137 if how == "torn-append" else -signal.SIGKILL)
    finally:
        stop(first)
    filed = [u for u in users if folded(reg, u).messages]
    assert len(filed) == 50  # killed half way, holding the claim
    assert spool.depth("in", Place.CLAIMED) == 1
    second = spawn("worker", cfg, "1", log=tmp_path / "second.log")
    try:
        assert wait_for(lambda: spool_idle(spool)), "the second worker did not finish"
    finally:
        stop(second, signal.SIGTERM)
    assert second.returncode == 0
    for u in users:
        assert delivery_ids(reg, u) == Counter({f"{env.id}/{u}@example.test": 1}), u
    log = (tmp_path / "second.log").read_text()
    assert f"delivered {env.id}" in log and "filed=100 dup=50" in log
    if how == "torn-append":
        assert "repairing torn tail" in log  # the half-written record was cut away
    assert spool.depth("in", Place.FAILED) == 0


def test_sigterm_finishes_in_hand_and_releases(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    _config, store, reg = setup_store(cfg, ["ann", "ben"])
    spool = Spool(store)
    total = 200
    for i in range(total):
        spool.enqueue("in", mail_from="", message=msg(f"t{i}"),
                      rcpt_to=["ann@example.test", "ben@example.test"])
    proc = spawn("worker", cfg, "2", "--slow", "30", log=tmp_path / "w.log")
    try:
        wait_worker_registered(spool, 2)
        # Signal mid-batch: it has filed something and holds claims right now.
        assert wait_for(lambda: spool.depth("in", Place.CLAIMED) > 0
                        and len(folded(reg, "ann").messages) > 0, interval=0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        stop(proc)
    assert_no_workers(spool)
    queued = list(spool.list_entries("in"))
    assert queued and all(e.attempts == 0 for e in queued)  # released uncounted
    ann, ben = delivery_ids(reg, "ann"), delivery_ids(reg, "ben")
    # Every message it took on was finished for both recipients, none twice.
    assert set(ann.values()) == {1} and {k.split("/")[0] for k in ann} == \
        {k.split("/")[0] for k in ben}
    assert len(ann) + len(queued) == total
    log = (tmp_path / "w.log").read_text()
    assert "SIGTERM: finishing the messages in hand" in log and "Traceback" not in log


def test_worker_main_refuses_a_missing_store(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    proc = spawn("worker", cfg, "1", log=tmp_path / "w.log")
    assert proc.wait(WAIT) == 1
    err = (tmp_path / "w.log").read_text().strip().splitlines()
    assert len(err) == 1 and "not an AMS store" in err[0]

