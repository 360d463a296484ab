"""The spool: entry format, claims, workers, reclaim, rendezvous, admin.

Processes are started with the "spawn" context and every wait on them, or on
a lease running out, is a bounded polling loop.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ams.store.spool as spool_mod
from ams.config import config_from_dict
from ams.errors import CorruptionError, FormatVersionError, LockLost, NotFound, UsageError
from ams.store import Store
from ams.store.spool import (
    ENTRY_MAGIC,
    SHARDS,
    ClaimLost,
    Disposition,
    Envelope,
    Place,
    Spool,
    assign_shards,
    decode_entry,
    encode_entry,
    entry_name,
    new_entry_id,
    new_worker_id,
    read_entry,
    shard_of_entry,
    shards_for,
)
from tests.waiting import WAIT, wait_for

CTX = multiprocessing.get_context("spawn")
#: The bound on every wait for another process or for a lease to run out.
MSG = b"From: a@x.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


def cfg_dict(tmp: Path, *, host: str = "h1", fsync: str = "never", **store: Any,
             ) -> dict[str, Any]:
    return {"store": {"root": str(tmp / "store"), "lock_method": "fcntl", "fsync": fsync,
                      **store},
            "host": {"name": host, "cache_dir": str(tmp / f"cache-{host}")}}


def open_spool(cfg: dict[str, Any], **kw: Any) -> Spool:
    return Spool(Store.initialise(config_from_dict(cfg)), **kw)


def long_lease(tmp: Path, **kw: Any) -> Spool:
    """The same store seen by a host whose workers hold a lease that cannot
    lapse during a test, beside workers meant to die of a short one."""
    return open_spool(cfg_dict(tmp, lease_seconds=60.0, clock_skew=0.05), **kw)


def fill(spool: Spool, n: int, queue: str = "in") -> list[str]:
    return [spool.enqueue(queue, mail_from=f"s{i}@x.test", rcpt_to=[f"r{i}@example.test"],
                          message=MSG + b"%d\r\n" % i).id for i in range(n)]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def join_all(procs: list[Any]) -> None:
    deadline = time.monotonic() + WAIT
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    assert not alive, "worker processes did not finish in time"
    assert [p.exitcode for p in procs] == [0] * len(procs)


# -- the entry format ----------------------------------------------------------------


def spec_entry(envelope: bytes, message: bytes, *, version: int = 1,
               header_size: int = 32) -> bytes:
    """An entry built from the docstring's table, independently of the module."""
    fixed = (ENTRY_MAGIC + struct.pack("<HHIQI", version, header_size, len(envelope),
                                       len(message), zlib.crc32(message)))
    assert len(fixed) == 28
    return fixed + struct.pack("<I", zlib.crc32(fixed + envelope)) + envelope + message


def sample_envelope(**kw: Any) -> Envelope:
    base: dict[str, Any] = {
        "id": new_entry_id("h1"), "mail_from": "a@x.test", "rcpt_to": ("b@example.test",),
        "received_us": 1_700_000_000_000_000, "host": "h1", "client": {"helo": "x.test"},
        "extra": {"ret": "HDRS"}}
    base.update(kw)
    return Envelope(**base)


def test_entry_layout_matches_spec() -> None:
    env = sample_envelope()
    data = encode_entry(env, MSG)
    assert data == spec_entry(env.to_json(), MSG)
    magic, version, hsize, elen, mlen, mcrc, _ = struct.unpack_from("<8sHHIQII", data)
    assert (magic, version, hsize, mlen, mcrc) == (b"\x89AMSQUE\n", 1, 32, len(MSG),
                                                   zlib.crc32(MSG))
    assert json.loads(data[32:32 + elen]) == {
        "id": env.id, "from": "a@x.test", "to": ["b@example.test"],
        "received_us": 1_700_000_000_000_000, "host": "h1", "client": {"helo": "x.test"},
        "extra": {"ret": "HDRS"}}
    assert data[32 + elen:] == MSG


@settings(max_examples=60, deadline=None)
@given(mail_from=st.text(max_size=30),
       rcpt=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4),
       client=st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3),
       message=st.binary(max_size=3000))
def test_entry_format_round_trip(mail_from: str, rcpt: list[str], client: dict[str, str],
                                 message: bytes) -> None:
    env = sample_envelope(mail_from=mail_from, rcpt_to=tuple(rcpt), client=client)
    entry = decode_entry(encode_entry(env, message))
    assert entry.envelope == env
    assert entry.message == message


def test_unknown_version_refused(tmp_path: Path) -> None:
    env = sample_envelope()
    data = spec_entry(env.to_json(), MSG, version=2)
    with pytest.raises(FormatVersionError, match="version 2"):
        decode_entry(data)
    # The same through the spool: read, a worker's read, and the listing.
    spool = open_spool(cfg_dict(tmp_path))
    shard = spool.shard_dir("in", shard_of_entry(env.id))
    shard.mkdir(parents=True)
    (shard / entry_name(env.id, 0)).write_bytes(data)
    with pytest.raises(FormatVersionError):
        spool.read("in", env.id)
    (info,) = spool.list_entries("in")
    assert info.envelope is None and info.error is not None and "version 2" in info.error
    with spool.register_worker() as w:
        (claim,) = w.claim_batch("in")
        with pytest.raises(FormatVersionError):
            w.read(claim)


def _corruptions() -> dict[str, bytes]:
    env = sample_envelope().to_json()
    good = spec_entry(env, MSG)

    def flip(data: bytes, i: int) -> bytes:
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]

    no_to = json.dumps({**json.loads(env), "to": "b@example.test"}).encode()
    missing = json.dumps({k: v for k, v in json.loads(env).items() if k != "host"}).encode()
    return {
        "message byte": flip(good, len(good) - 3),
        "envelope byte": flip(good, 40),
        "header length": flip(good, 16),
        "truncated": good[:-1],
        "trailing bytes": good + b"x",
        "bad magic": b"X" + good[1:],
        "version 0": spec_entry(env, MSG, version=0),
        "header size": spec_entry(env, MSG, header_size=40),
        "envelope not JSON": spec_entry(b"{nope", MSG),
        "envelope not UTF-8": spec_entry(b'"\xff"', MSG),
        "rcpt not a list": spec_entry(no_to, MSG),
        "field missing": spec_entry(missing, MSG),
        "empty file": b"",
    }


@pytest.mark.parametrize("damage", sorted(_corruptions()))
def test_corrupt_entry_detected(tmp_path: Path, damage: str) -> None:
    data = _corruptions()[damage]
    with pytest.raises(CorruptionError):
        decode_entry(data)
    path = tmp_path / "entry"
    path.write_bytes(data)
    with pytest.raises(CorruptionError):
        read_entry(path)


def test_listing_shows_damaged_entry_with_its_error(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    (good,) = fill(spool, 1)
    bad_env, bad_msg = new_entry_id("h1"), new_entry_id("h1")
    for eid, damage in ((bad_env, "envelope byte"), (bad_msg, "message byte")):
        shard = spool.shard_dir("in", shard_of_entry(eid))
        shard.mkdir(parents=True, exist_ok=True)
        (shard / entry_name(eid, 0)).write_bytes(_corruptions()[damage])
    infos = {i.id: i for i in spool.list_entries("in")}
    assert infos[good].error is None and infos[good].envelope is not None
    assert infos[bad_env].envelope is None and "checksum" in (infos[bad_env].error or "")
    # Listings verify header and envelope only; reading verifies the message.
    assert infos[bad_msg].error is None
    for eid in (bad_env, bad_msg):
        with pytest.raises(CorruptionError):
            spool.read("in", eid)


def test_entry_ids_unique_safe_and_time_ordered() -> None:
    ids = [new_entry_id(h, 1_000 + i) for i in range(500) for h in ("mx1", "mx 2/../é")]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert "/" not in i and not i.startswith(".") and spool_mod._ID_RE.fullmatch(i)
    assert new_entry_id("a", 5) < new_entry_id("a", 6) < new_entry_id("a", 1 << 40)
    wids = {new_worker_id("mx1.example") for _ in range(200)}
    assert len(wids) == 200
    assert all(spool_mod._WORKER_ID.fullmatch(w) and str(os.getpid()) in w for w in wids)


# -- enqueue, claim, complete --------------------------------------------------------


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_enqueue_claim_complete_round_trip(tmp_path: Path, fsync: str) -> None:
    spool = open_spool(cfg_dict(tmp_path, fsync=fsync))
    env = spool.enqueue("in", mail_from="", rcpt_to=["b@example.test", "c@example.test"],
                        message=MSG, client={"helo": "x.test", "addr": "192.0.2.1"})
    path = spool.shard_dir("in", shard_of_entry(env.id)) / entry_name(env.id, 0)
    assert read_entry(path).envelope == env
    assert list(spool.staging.iterdir()) == []
    assert (spool.depth("in"), spool.depth("out")) == (1, 0)
    with spool.register_worker(("in",)) as w:
        claims = w.claim_batch("in", 10, shards=SHARDS)
        assert [c.entry_id for c in claims] == [env.id]
        assert not path.exists()
        assert (spool.depth("in"), spool.depth("in", Place.CLAIMED)) == (0, 1)
        entry = w.read(claims[0])
        assert entry.envelope == env and entry.message == MSG
        assert entry.envelope.mail_from == "" and entry.envelope.client["addr"] == "192.0.2.1"
        w.complete(claims[0])
        with pytest.raises(ClaimLost):
            w.complete(claims[0])
        assert w.claim_batch("in", 10, shards=SHARDS) == []
    assert spool.depth("in", Place.CLAIMED) == 0
    assert files_under(spool.root) == []


def test_enqueue_validates(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    with pytest.raises(UsageError):
        spool.enqueue("nope", mail_from="", rcpt_to=["b@example.test"], message=MSG)
    with pytest.raises(ValueError):
        spool.enqueue("in", mail_from="", rcpt_to=[], message=MSG)
    assert spool.depth("in") == 0 and list(spool.staging.iterdir()) == []


def test_clean_staging_removes_only_old_spool_files(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    old = spool.staging / "spool-crashed.tmp"
    new = spool.staging / "spool-writing.tmp"
    other = spool.staging / "something-else"
    for p in (old, new, other):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert spool.clean_staging(max_age=3600) == 1
    assert sorted(p.name for p in spool.staging.iterdir()) == sorted([new.name, other.name])


def test_queues_are_separate_and_workers_serve_theirs(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    ins, outs = fill(spool, 3, "in"), fill(spool, 2, "out")
    with spool.register_worker(("out",)) as w:
        assert sorted(c.entry_id for c in w.claim_batch("out", 10, shards=SHARDS)) == sorted(outs)
        with pytest.raises(UsageError):
            w.claim_batch("in")
    assert (spool.depth("in"), spool.depth("out")) == (3, 2)  # close returned them
    assert sorted(i.id for i in spool.list_entries("in")) == sorted(ins)


# -- claims under errors a network filesystem gives -----------------------------------


@pytest.mark.parametrize("case", ["spurious error after success", "rival won, EPERM",
                                  "real failure"])
def test_claim_decides_by_looking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  case: str) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    (eid,) = fill(spool, 1)
    rival = tmp_path / "rival"
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if "claims" not in str(dst):
            return real_rename(src, dst)
        if case == "spurious error after success":
            real_rename(src, dst)
            raise OSError(errno.EIO, "reply lost, request retried")
        if case == "rival won, EPERM":
            real_rename(src, rival)
            raise OSError(errno.EPERM, "sshfs says EPERM")
        raise OSError(errno.EIO, "disk on fire")

    with spool.register_worker() as w:
        monkeypatch.setattr(os, "rename", rename)
        if case == "real failure":
            with pytest.raises(OSError):
                w.claim_batch("in", shards=SHARDS)
            monkeypatch.undo()
            assert spool.depth("in") == 1
            return
        claims = w.claim_batch("in", shards=SHARDS)
        monkeypatch.undo()
        if case == "spurious error after success":
            assert [c.entry_id for c in claims] == [eid]
            w.complete(claims[0])
        else:
            assert claims == [] and rival.exists()
    assert spool.depth("in") == 0 and spool.depth("in", Place.CLAIMED) == 0


# -- many processes claiming -------------------------------------------------------------


def _claim_proc(cfg: dict[str, Any], out: str, mode: str, barrier: Any) -> None:
    spool = Spool(Store(config_from_dict(cfg)))
    done: list[str] = []
    with spool.register_worker(("in",)) as w:
        barrier.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            claims = w.claim_batch("in", 64, shards=SHARDS if mode == "contend" else None)
            if not claims:
                if spool.depth("in") == 0:
                    break
                time.sleep(0.002)
                continue
            for c in claims:
                done.append(w.read(c).envelope.id)
                w.complete(c)
        Path(out).write_text(json.dumps({"worker": w.id, "ids": done}))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rendezvous", "contend"])
def test_four_processes_claim_each_entry_exactly_once(tmp_path: Path, mode: str) -> None:
    cfg = cfg_dict(tmp_path)
    spool = open_spool(cfg)
    ids = fill(spool, 10_000)
    barrier = CTX.Barrier(4)
    outs = [tmp_path / f"out{i}.json" for i in range(4)]
    procs = [CTX.Process(target=_claim_proc, args=(cfg, str(o), mode, barrier)) for o in outs]
    for p in procs:
        p.start()
    join_all(procs)
    results = [json.loads(o.read_text()) for o in outs]
    seen = Counter(i for r in results for i in r["ids"])
    assert sorted(seen) == sorted(ids), "every id processed"
    assert max(seen.values()) == 1, "none processed twice"
    assert spool.depth("in") == 0 and spool.depth("in", Place.CLAIMED) == 0
    assert files_under(spool.root) == []
    by_shard: dict[str, set[str]] = {}
    for r in results:
        for i in r["ids"]:
            by_shard.setdefault(shard_of_entry(i), set()).add(r["worker"])
    if mode == "contend":
        # They really raced: several workers took entries from the same shards.
        assert sum(len(ws) > 1 for ws in by_shard.values()) > 10
    if mode == "rendezvous":
        # Each shard was scanned by the one worker rendezvous gives it.
        owner = {s: w for w, ss in assign_shards(r["worker"] for r in results).items()
                 for s in ss}
        for r in results:
            assert r["ids"], "every worker had a share"
            assert {owner[shard_of_entry(i)] for i in r["ids"]} == {r["worker"]}


# -- workers, leases, reclaim ----------------------------------------------------------


def test_heartbeats_and_live_workers(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=10.0, clock_skew=1.0))
    w1 = spool.register_worker(("in",))
    w2 = spool.register_worker(("out", "in"))
    assert sorted(w.id for w in spool.live_workers()) == sorted([w1.id, w2.id])
    assert [w.id for w in spool.live_workers("out")] == [w2.id]
    hb = json.loads(spool.heartbeat_path(w1.id).read_text())
    assert hb["host"] == "h1" and hb["pid"] == os.getpid() and hb["queues"] == ["in"]
    # Written rounded to the millisecond: up to 0.5 ms past write time + lease.
    assert time.time() < hb["expires"] <= time.time() + 10.0 + 0.001
    before = hb["expires"]
    w1.heartbeat()  # not due: no rewrite
    assert json.loads(spool.heartbeat_path(w1.id).read_text())["expires"] == before
    time.sleep(0.01)
    w1.heartbeat(force=True)
    assert json.loads(spool.heartbeat_path(w1.id).read_text())["expires"] > before
    # A heartbeat whose lease ended more than clock_skew ago is dead.
    stale = spool.heartbeat_path("h9-1-00000000")
    stale.write_text(json.dumps({"host": "h9", "pid": 1, "started": 0, "expires":
                                 time.time() - 1.5, "queues": ["in"]}))
    assert "h9-1-00000000" in [w.id for w in spool.list_workers()]
    assert "h9-1-00000000" not in [w.id for w in spool.live_workers()]
    w2.close()
    assert [w.id for w in spool.live_workers("in")] == [w1.id]
    assert not spool.claims_dir(w2.id).exists() and not spool.heartbeat_path(w2.id).exists()
    w1.close()
    with pytest.raises(LockLost):
        w1.check()


def test_assignment_follows_live_workers(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    ws = [spool.register_worker(("in",)) for _ in range(3)]
    spool.register_worker(("out",))  # serves another queue: takes no "in" shard
    mine = {w.id: set(w.my_shards("in")) for w in ws}
    assert sorted(s for ss in mine.values() for s in ss) == sorted(SHARDS)
    assert all(len(ss) > 40 for ss in mine.values())
    ws[2].close()
    after = {w.id: set(w.my_shards("in", refresh=True)) for w in ws[:2]}
    assert sorted(s for ss in after.values() for s in ss) == sorted(SHARDS)
    for w in ws[:2]:
        assert mine[w.id] <= after[w.id]  # only the leaver's shards moved


def _claim_and_hang(cfg: dict[str, Any], n: int, ready: str) -> None:
    spool = Spool(Store(config_from_dict(cfg)))
    w = spool.register_worker(("in",))
    claims = w.claim_batch("in", n, shards=SHARDS)
    w.heartbeat(force=True)
    Path(ready).write_text(json.dumps({"worker": w.id, "claimed": len(claims)}))
    time.sleep(WAIT)


@pytest.mark.slow
def test_dead_worker_claims_return_after_lease(tmp_path: Path) -> None:
    cfg = cfg_dict(tmp_path, lease_seconds=2.0, clock_skew=0.2)
    spool = open_spool(cfg)
    ids = fill(spool, 50)
    ready = tmp_path / "ready.json"
    proc = CTX.Process(target=_claim_and_hang, args=(cfg, 50, str(ready)))
    proc.start()
    try:
        assert wait_for(ready.exists), "worker did not start"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(WAIT)
    finally:
        if proc.is_alive():
            proc.kill()
    dead = json.loads(ready.read_text())
    assert dead["claimed"] == 50 and spool.depth("in", Place.CLAIMED) == 50
    (info,) = [w for w in spool.list_workers() if w.id == dead["worker"]]
    survivor = open_spool(cfg_dict(tmp_path, lease_seconds=60.0, clock_skew=0.2))
    with survivor.register_worker(("in",)) as live:
        assert live.reclaim_dead() == 0, "reclaimed before the lease ran out"
        moved = [0]

        def reclaimed_all() -> bool:
            moved[0] += live.reclaim_dead()
            return moved[0] >= 50

        assert wait_for(reclaimed_all, timeout=10), f"only {moved[0]} reclaimed"
        assert time.time() > info.expires + 0.2
        assert moved[0] == 50
        assert sorted(i.id for i in spool.list_entries("in")) == sorted(ids)
        assert {i.attempts for i in spool.list_entries("in")} == {1}  # dying counts
        assert not spool.claims_dir(dead["worker"]).exists()
        assert not spool.heartbeat_path(dead["worker"]).exists()
        assert [w.id for w in spool.list_workers()] == [live.id]


def _reclaim_proc(cfg: dict[str, Any], dead_id: str, out: str, barrier: Any) -> None:
    spool = Spool(Store(config_from_dict(cfg)))
    moved = 0
    with spool.register_worker(("in",)) as w:
        barrier.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while spool.claims_dir(dead_id).exists() and time.monotonic() < deadline:
            moved += w.reclaim_dead()
    Path(out).write_text(str(moved))


@pytest.mark.slow
def test_racing_reclaimers_take_each_claim_once(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=1.0, clock_skew=0.1))
    cfg = cfg_dict(tmp_path, lease_seconds=30.0, clock_skew=0.1)  # for the reclaimers
    ids = fill(spool, 1000)
    dead = spool.register_worker(("in",))
    claims = dead.claim_batch("in", 1000, shards=SHARDS)
    assert len(claims) == 1000
    # Let its lease run out (nobody renews it), then set two reclaimers on it at once.
    assert wait_for(lambda: time.time() > dead.expires + 0.1, timeout=5)
    barrier = CTX.Barrier(2)
    outs = [tmp_path / f"reclaim{i}" for i in range(2)]
    procs = [CTX.Process(target=_reclaim_proc, args=(cfg, dead.id, str(o), barrier))
             for o in outs]
    for p in procs:
        p.start()
    join_all(procs)
    counts = [int(o.read_text()) for o in outs]
    assert sum(counts) == 1000, counts
    assert sorted(i.id for i in spool.list_entries("in")) == sorted(ids)
    assert {i.attempts for i in spool.list_entries("in")} == {1}
    assert spool.depth("in", Place.CLAIMED) == 0
    assert not spool.heartbeat_path(dead.id).exists()
    # The dead worker, should it wake up, finds out and touches nothing.
    with pytest.raises(LockLost):
        dead.check()
    with pytest.raises(ClaimLost):
        dead.complete(claims[0])
    assert spool.depth("in") == 1000


def test_zombie_worker_loses_its_claims(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=0.3, clock_skew=0.05))
    (eid,) = fill(spool, 1)
    zombie = spool.register_worker()
    (claim,) = zombie.claim_batch("in", shards=SHARDS)
    assert wait_for(lambda: time.time() > zombie.expires + 0.05, timeout=5)
    with pytest.raises(LockLost):
        zombie.heartbeat()  # a lapsed lease is never renewed
    with long_lease(tmp_path).register_worker() as live:
        assert live.reclaim_dead() == 1
    with pytest.raises(ClaimLost):
        zombie.read(claim)
    with pytest.raises(ClaimLost):
        zombie.release(claim)
    (info,) = spool.list_entries("in")
    assert (info.id, info.attempts) == (eid, 1)
    zombie.close()  # reclaimed already: leaves everything alone
    assert spool.depth("in") == 1


def test_orphan_claims_dir_reclaimed_after_lease(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=5.0, clock_skew=1.0))
    (eid,) = fill(spool, 1)
    # A worker that crashed between creating its claims dir and its heartbeat,
    # after a claim (as a stale directory listing could let happen).
    orphan = spool.claims_dir("h2-99-0badf00d")
    orphan.mkdir()
    src = spool.shard_dir("in", shard_of_entry(eid)) / entry_name(eid, 0)
    os.rename(src, orphan / f"in.{src.name}")
    with spool.register_worker() as live:
        assert live.reclaim_dead() == 0 and orphan.exists()  # too young to judge
        past = time.time() - 7
        os.utime(orphan, (past, past))
        assert live.reclaim_dead() == 1
    assert not orphan.exists()
    (info,) = spool.list_entries("in")
    assert (info.id, info.attempts) == (eid, 1)


def test_reclaim_at_the_limit_moves_to_failed(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=0.3, clock_skew=0.05), max_attempts=1)
    (eid,) = fill(spool, 1)
    dead = spool.register_worker()
    assert len(dead.claim_batch("in", shards=SHARDS)) == 1
    assert wait_for(lambda: time.time() > dead.expires + 0.05, timeout=5)
    with long_lease(tmp_path, max_attempts=1).register_worker() as live:
        assert live.reclaim_dead() == 1
    (info,) = spool.list_entries("in", Place.FAILED)
    assert info.id == eid and info.attempts == 1
    assert dead.id in (info.reason or "") and "died" in (info.reason or "")


# -- attempts, failed, retry, admin -----------------------------------------------------


def test_attempts_counted_then_failed_then_retried(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path), max_attempts=3)
    (eid,) = fill(spool, 1)
    with spool.register_worker() as w:
        for n in (1, 2):
            (c,) = w.claim_batch("in", shards=SHARDS)
            assert c.attempts == n - 1
            assert w.release(c, "451 try later") is Disposition.REQUEUED
            (info,) = spool.list_entries("in")
            assert info.attempts == n
        (c,) = w.claim_batch("in", shards=SHARDS)
        assert w.release(c, "451 still busy") is Disposition.FAILED
        assert (spool.depth("in"), spool.depth("in", Place.FAILED)) == (0, 1)
        (info,) = spool.list_entries("in", Place.FAILED)
        assert info.attempts == 3 and "451 still busy" in (info.reason or "")
        assert "3 attempts" in (info.reason or "")
        assert spool.read("in", eid, Place.FAILED).message.startswith(MSG)
        assert spool.retry("in", eid) is True
        assert spool.retry("in", eid) is False
        assert files_under(spool.root / "failed") == []  # sidecar went too
        (c,) = w.claim_batch("in", shards=SHARDS)
        assert (c.entry_id, c.attempts) == (eid, 0)
        w.complete(c)
    assert files_under(spool.root) == []


def test_fail_keeps_reason_and_delete_removes_it(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path, fsync="always"))
    a, b = fill(spool, 2)
    with spool.register_worker() as w:
        for c in w.claim_batch("in", shards=SHARDS):
            w.fail(c, f"550 no such user ({c.entry_id[-4:]})")
    infos = {i.id: i for i in spool.list_entries("in", Place.FAILED)}
    assert set(infos) == {a, b}
    assert infos[a].reason == f"550 no such user ({a[-4:]})" and infos[a].attempts == 1
    assert spool.delete("in", a, Place.FAILED) is True
    assert spool.delete("in", a, Place.FAILED) is False
    assert [i.id for i in spool.list_entries("in", Place.FAILED)] == [b]
    assert [p.name for p in files_under(spool.root / "failed")] == sorted(
        [entry_name(b, 1), f"{b}.reason"])
    assert spool.retry("in", b, keep_attempts=True)
    (info,) = spool.list_entries("in")
    assert info.attempts == 1


def test_admin_listing_read_delete(tmp_path: Path) -> None:
    spool = open_spool(cfg_dict(tmp_path))
    ids = fill(spool, 3)
    fill(spool, 1, "out")
    infos = list(spool.list_entries("in"))
    assert sorted(i.id for i in infos) == sorted(ids)
    for i in infos:
        assert i.place is Place.QUEUED and i.attempts == 0 and i.envelope is not None
        assert i.size == (spool.shard_dir("in", shard_of_entry(i.id))
                          / entry_name(i.id, 0)).stat().st_size
        assert 0 <= i.age() < 60
        assert i.envelope.rcpt_to[0].startswith("r")
    assert len(list(spool.list_entries("in", limit=2))) == 2
    assert spool.read("in", ids[1]).message == MSG + b"1\r\n"
    assert spool.delete("in", ids[1]) is True and spool.delete("in", ids[1]) is False
    with pytest.raises(NotFound):
        spool.read("in", ids[1])
    assert spool.depth("in") == 2 and spool.depth("out") == 1
    with pytest.raises(UsageError):
        spool.read("in", "../../etc/passwd")
    with pytest.raises(UsageError):
        spool.depth("bogus")
    with pytest.raises(UsageError):
        spool.delete("in", ids[0], Place.CLAIMED)
    with spool.register_worker() as w:
        (c,) = w.claim_batch("in", 1, shards=[shard_of_entry(ids[0])])
        (held,) = spool.list_entries("in", Place.CLAIMED)
        assert (held.id, held.worker) == (ids[0], w.id)
        assert spool.read("in", ids[0], Place.CLAIMED).envelope.id == ids[0]
        w.release(c, count=False)
    assert spool.depth("in") == 2


# -- rendezvous hashing ------------------------------------------------------------------


def _worker_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"host{rng.randrange(100)}-{rng.randrange(1, 99999)}-{rng.getrandbits(32):08x}"
            for _ in range(n)]


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_rendezvous_balance(n: int) -> None:
    mean = len(SHARDS) / n
    sd = (len(SHARDS) * (1 / n) * (1 - 1 / n)) ** 0.5
    chi2 = 0.0
    for seed in range(10):
        workers = _worker_ids(n, seed)
        a = assign_shards(workers)
        assert sorted(s for ss in a.values() for s in ss) == sorted(SHARDS)  # a partition
        loads = [len(ss) for ss in a.values()]
        assert all(abs(x - mean) <= 4.5 * sd for x in loads), loads
        chi2 += sum((x - mean) ** 2 / mean for x in loads)
        assert a == assign_shards(list(reversed(workers)))  # order does not matter
        assert shards_for(workers[0], workers) == a[workers[0]]
    # As even as chance allows: chi-square over all seeds near its degrees of
    # freedom (a skewed hash lands far above twice that).
    assert chi2 < 2 * 10 * (n - 1), chi2


def test_rendezvous_minimal_movement() -> None:
    for seed in range(10):
        workers = _worker_ids(8, 100 + seed)
        before = assign_shards(workers)
        owner = {s: w for w, ss in before.items() for s in ss}
        joiner = _worker_ids(1, 200 + seed)[0]
        after = {s: w for w, ss in assign_shards([*workers, joiner]).items() for s in ss}
        moved = [s for s in SHARDS if after[s] != owner[s]]
        assert all(after[s] == joiner for s in moved), "a join moves shards only to the joiner"
        assert 10 <= len(moved) <= 50
        leaver = workers[3]
        after = {s: w for w, ss in assign_shards(set(workers) - {leaver}).items() for s in ss}
        moved = [s for s in SHARDS if after[s] != owner[s]]
        assert sorted(moved) == sorted(before[leaver]), "a leave moves only the leaver's shards"
        assert len({after[s] for s in moved}) > 1  # spread, not dumped on one worker



# -- crash injection ------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying at the marked step."""


def test_crash_during_enqueue_leaves_no_entry(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """[S1] Until the rename, the queue has nothing; after a crash, staging is cleaned."""
    spool = open_spool(cfg_dict(tmp_path, fsync="always"))

    def rename(src: Any, dst: Any) -> None:
        raise Crash

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Crash):
        fill(spool, 1)
    monkeypatch.undo()
    assert spool.depth("in") == 0 and list(spool.staging.iterdir()) == []
    # A crash so hard that not even the cleanup ran: a staging file, no entry.
    (spool.staging / "spool-0000000000000001-00-h1.tmp").write_bytes(b"partial")
    assert spool.depth("in") == 0
    assert spool.clean_staging(max_age=-1) == 1


def test_crash_between_reclaim_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[S6] A reclaimer that dies after taking a dead claim is reclaimed in turn."""
    spool = open_spool(cfg_dict(tmp_path, lease_seconds=0.3, clock_skew=0.05))
    (eid,) = fill(spool, 1)
    first = spool.register_worker()
    assert len(first.claim_batch("in", shards=SHARDS)) == 1
    assert wait_for(lambda: time.time() > first.expires + 0.05, timeout=5)
    second = spool.register_worker()

    def release(*args: Any, **kw: Any) -> Disposition:
        raise Crash

    monkeypatch.setattr(second, "release", release)
    with pytest.raises(Crash):
        second.reclaim_dead()
    (held,) = spool.list_entries("in", Place.CLAIMED)
    assert (held.id, held.worker, held.attempts) == (eid, second.id, 0)
    assert spool.depth("in") == 0
    assert wait_for(lambda: time.time() > second.expires + 0.05, timeout=5)
    with long_lease(tmp_path).register_worker() as third:
        assert wait_for(lambda: third.reclaim_dead() > 0, timeout=5)
        assert third.reclaim_dead() == 0  # the first one's empty leftovers went too
    (info,) = spool.list_entries("in")
    assert (info.id, info.attempts) == (eid, 1)
    assert spool.list_workers() == []
    assert list((spool.root / "claims").iterdir()) == []


def test_crash_between_reason_and_move_to_failed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """[S7] The reason is written first; an orphan reason is ignored, then replaced."""
    spool = open_spool(cfg_dict(tmp_path))
    (eid,) = fill(spool, 1)
    with spool.register_worker() as w:
        (c,) = w.claim_batch("in", shards=SHARDS)

        def give(*args: Any, **kw: Any) -> None:
            raise Crash

        monkeypatch.setattr(w, "_give", give)
        with pytest.raises(Crash):
            w.fail(c, "first reason")
        monkeypatch.undo()
        reason = spool.failed_dir("in", shard_of_entry(eid)) / f"{eid}.reason"
        assert json.loads(reason.read_text())["reason"] == "first reason"
        assert spool.depth("in", Place.FAILED) == 0 and spool.depth("in", Place.CLAIMED) == 1
        w.fail(c, "second reason")
    (info,) = spool.list_entries("in", Place.FAILED)
    assert (info.id, info.reason) == (eid, "second reason")


def test_no_shard_starves_behind_a_busy_one(tmp_path: Path) -> None:
    """Batches resume after the shard where the last one filled up."""
    spool = open_spool(cfg_dict(tmp_path))
    by_shard: dict[str, list[str]] = {}
    while len(by_shard) < 3 or max(len(v) for v in by_shard.values()) < 20:
        env = spool.enqueue("in", mail_from="a@x.test", rcpt_to=["b@example.test"],
                            message=b"hi\r\n")
        by_shard.setdefault(shard_of_entry(env.id), []).append(env.id)
    with spool.register_worker() as w:
        shards = sorted(by_shard)
        busy = max(shards, key=lambda s: len(by_shard[s]))
        # Three batches of 5: a shard other than the busiest must be served
        # before the busiest is drained.
        seen: list[str] = []
        for _ in range(len(shards)):
            seen += [shard_of_entry(c.entry_id) for c in w.claim_batch("in", 5, shards=shards)]
        assert set(seen) == set(shards)
        first_other = next(i for i, s in enumerate(seen) if s != seen[0])
        assert first_other <= 5, (busy, seen)


def test_entries_put_back_wait_their_turn(tmp_path: Path) -> None:
    """Within a shard, claims go round from just after the last entry this
    worker claimed: one released and claimed again and again (uncounted, so
    under the same name) cannot keep the others waiting, and a counted
    release (a new name for the same id) waits its turn too."""
    spool = open_spool(cfg_dict(tmp_path))
    ids: list[str] = []
    while len(ids) < 4:
        env = spool.enqueue("in", mail_from="a@x.test", rcpt_to=["b@example.test"],
                            message=b"hi\r\n")
        if shard_of_entry(env.id) == SHARDS[0]:
            ids.append(env.id)
        else:
            spool.delete("in", env.id)
    with spool.register_worker() as w:
        order = []
        for _ in range(8):
            (claim,) = w.claim_batch("in", 1, shards=[SHARDS[0]])
            order.append(claim.entry_id)
            w.release(claim, count=len(order) % 2 == 0)
        assert order == ids + ids


def test_concurrent_first_enqueues_into_missing_shards(tmp_path: Path) -> None:
    """Threads creating the same shard dir at once: every enqueue succeeds."""
    import shutil
    import threading
    spool = open_spool(cfg_dict(tmp_path))
    errors: list[BaseException] = []
    for _round in range(5):
        for shard in SHARDS:
            shutil.rmtree(spool.shard_dir("in", shard), ignore_errors=True)
        barrier = threading.Barrier(16)

        def burst(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                for _ in range(40):
                    spool.enqueue("in", mail_from="a@x.test", rcpt_to=["b@example.test"],
                                  message=b"hi\r\n")
            except BaseException as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=burst) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert spool.depth("in") == 640
