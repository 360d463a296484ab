"""The outgoing queue's store side (ams.store.outqueue): per-recipient state in
the envelope, deferral into time buckets, promotion of only what is due, and
the crash rules [D1]-[D3]."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ams.errors import CorruptionError, FormatVersionError
from ams.store import Place, Spool, Store, Worker
from ams.store import outqueue as oq
from ams.store.outqueue import DeferredQueue, OutboundState, Result
from ams.store.spool_entry import read_entry
from tests.conftest import MakeConfig

MSG = b"Subject: q\r\n\r\nbody\r\n"


def setup(make_config: MakeConfig) -> tuple[Spool, DeferredQueue, Worker]:
    store = Store.initialise(make_config())
    spool = Spool(store)
    return spool, DeferredQueue(spool, bucket_seconds=60), spool.register_worker(("out",))


def test_state_round_trips_and_pending_follows_results(make_config: MakeConfig) -> None:
    spool, _, _ = setup(make_config)
    env = spool.enqueue("out", mail_from="a@example.test",
                        rcpt_to=["x@r.test", "y@r.test", "x@r.test", "z@s.test"], message=MSG)
    state = OutboundState.of(env)
    assert state.pending(env) == ["x@r.test", "y@r.test", "z@s.test"] and state.tries == 0
    sent = Result("sent", "2.0.0", "250 ok", "mx.r.test", 1)
    failed = Result("failed", "5.1.1", "550 no", "mx.r.test", 2)
    later = Result("deferred", "4.4.1", "cannot connect", "mx.s.test", 3)
    new = state.updated({"x@r.test": sent, "y@r.test": failed, "z@s.test": later}).deferred()
    env2 = new.envelope(env)
    back = OutboundState.of(env2)
    assert back == new and back.tries == 1
    assert back.pending(env2) == ["z@s.test"] and back.last["z@s.test"] == later
    # A later success for z clears its "last".
    done = back.updated({"z@s.test": sent})
    assert done.pending(env2) == [] and "z@s.test" not in done.last


def test_unreadable_or_newer_state_is_refused(make_config: MakeConfig) -> None:
    spool, _, _ = setup(make_config)
    env = spool.enqueue("out", mail_from="", rcpt_to=["x@r.test"], message=MSG,
                        extra={"outbound": {"format": 9}})
    with pytest.raises(FormatVersionError):
        OutboundState.of(env)
    env = spool.enqueue("out", mail_from="", rcpt_to=["x@r.test"], message=MSG,
                        extra={"outbound": {"results": {"x@r.test": {"status": "odd"}}}})
    with pytest.raises(CorruptionError):
        OutboundState.of(env)


def test_defer_rewrites_the_entry_and_promotes_only_due_buckets_of_my_shards(
        make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, dq, worker = setup(make_config)
    now = time.time()
    ids = [spool.enqueue("out", mail_from="a@example.test", rcpt_to=[f"r{i}@x.test"],
                         message=MSG).id for i in range(6)]
    claims = worker.claim_batch("out", 10, shards=[f"{i:02x}" for i in range(256)])
    assert sorted(c.entry_id for c in claims) == sorted(ids)
    for i, claim in enumerate(sorted(claims, key=lambda c: c.entry_id)):
        entry = worker.read(claim)
        state = OutboundState.of(entry.envelope).updated(
            {entry.envelope.rcpt_to[0]: Result("deferred", "4.4.1", "down", "", 1)}).deferred()
        due = now - 120 if i < 3 else now + 7200  # three due, three in two hours
        path = dq.defer(worker, claim, entry, due, envelope=state.envelope(entry.envelope))
        assert path.parent.parent == dq.bucket_dir(dq.bucket_time(due))
        assert OutboundState.of(read_entry(path).envelope).tries == 1
        assert read_entry(path).message == MSG
    assert dq.depth() == 6 and spool.depth("out", Place.CLAIMED) == 0
    listed: list[Path] = []
    real = oq._listdir
    monkeypatch.setattr(oq, "_listdir", lambda p: (listed.append(Path(p)), real(p))[1])
    due_ids = sorted(ids)[:3]
    mine = [i for i in due_ids if i != due_ids[0]]
    shards = sorted({oq.shard_of_entry(i) for i in mine} - {oq.shard_of_entry(due_ids[0])})
    moved = dq.promote_due(worker, shards)
    future = dq.bucket_dir(dq.bucket_time(now + 7200))
    assert not any(str(p).startswith(str(future)) for p in listed)  # never looked at
    assert moved == len([i for i in due_ids if oq.shard_of_entry(i) in shards])
    moved += dq.promote_due(worker, [f"{i:02x}" for i in range(256)])
    assert moved == 3 and spool.depth("out") == 3 and dq.depth() == 3
    assert sorted(e.id for e in spool.list_entries("out")) == due_ids
    past = dq.bucket_dir(dq.bucket_time(now - 120))
    assert not past.exists()  # emptied buckets are removed


def test_a_crash_before_the_rewrite_leaves_the_old_version(make_config: MakeConfig,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    """[D2]: the new version appears whole or not at all."""
    spool, dq, worker = setup(make_config)
    env = spool.enqueue("out", mail_from="a@example.test", rcpt_to=["x@r.test"], message=MSG)
    (claim,) = worker.claim_batch("out", 1, shards=[oq.shard_of_entry(env.id)])
    entry = worker.read(claim)
    new = OutboundState.of(env).deferred().envelope(env)
    real_rename = os.rename

    def crash(src: object, dst: object) -> None:
        if Path(str(dst)) == claim.path:
            raise OSError(5, "simulated crash before the rename")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError):
        dq.defer(worker, claim, entry, time.time() + 60, envelope=new)
    monkeypatch.setattr(os, "rename", real_rename)
    assert read_entry(claim.path).envelope == env  # the old version, whole
    assert not [n for n in os.listdir(spool.staging) if n.startswith(".out-")]
    dq.defer(worker, claim, entry, time.time() + 60, envelope=new)
    (d,) = dq.list_entries()
    assert d.info.envelope == new


def test_concurrent_promoters_and_admin_retry_move_each_entry_once(
        make_config: MakeConfig) -> None:
    """[D3]: one rename wins; nothing is duplicated or lost."""
    spool, dq, worker = setup(make_config)
    envs = [spool.enqueue("out", mail_from="", rcpt_to=[f"r{i}@x.test"], message=MSG)
            for i in range(40)]
    all_shards = [f"{i:02x}" for i in range(256)]
    for claim in worker.claim_batch("out", 100, shards=all_shards):
        dq.defer(worker, claim, worker.read(claim), time.time() - 120)
    others = [spool.register_worker(("out",)) for _ in range(3)]
    moved: list[int] = []
    threads = [threading.Thread(target=lambda w=w: moved.append(dq.promote_due(w, all_shards)))
               for w in others]
    threads.append(threading.Thread(target=lambda: [dq.retry_now(e.id) for e in envs[:10]]))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(moved) <= 40 and dq.depth() == 0
    assert sorted(e.id for e in spool.list_entries("out")) == sorted(e.id for e in envs)


def test_bucket_layout_and_widths() -> None:
    class FakeSpool:
        root = Path("/s/spool")

    dq = DeferredQueue(FakeSpool(), bucket_seconds=60)  # type: ignore[arg-type]
    assert dq.bucket_time(3600.0) == 3600 and dq.bucket_time(3600.5) == 3660
    assert dq.bucket_dir(3660) == Path("/s/spool/deferred/0000001/0000003660")
    with pytest.raises(Exception, match="divide 3600"):
        DeferredQueue(FakeSpool(), bucket_seconds=7)  # type: ignore[arg-type]
