"""fsck: precise reports of damage, and repairs that lose nothing that verifies."""

from __future__ import annotations

import random

from ams.store import FlagOp, Store, fold
from ams.store.fsck import check_log
from tests.conftest import MakeConfig
from tests.test_log import msg, new_log


def test_clean_log_has_no_problems(make_config: MakeConfig) -> None:
    store = Store.initialise(make_config(segment_bytes=8192))
    log = new_log(store)
    log.append([msg(i, 400) for i in range(60)])
    log.store_flags(FlagOp.ADD, ["\\Seen"], [1, 2])
    log.expunge([3])
    log.compact()
    log.append([msg(100)])
    rep = check_log(log)
    assert rep.problems == []
    assert rep.messages == 60 and rep.segments >= 3


def test_random_corruption_is_reported_precisely(store: Store) -> None:
    rng = random.Random(11)
    log = new_log(store)
    log.append([msg(i, 300) for i in range(40)])
    seg = log.segment_path(1, 1)
    clean = seg.read_bytes()
    batch = log.reader().poll()
    for _ in range(25):
        k = rng.randrange(0, 39)  # damage a record that has valid records after it
        rec = batch.records[k]
        at = rng.randrange(rec.offset, rec.end)
        data = bytearray(clean)
        data[at] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(data))
        rep = check_log(log)
        damage = [p for p in rep.problems if p.kind == "damage"]
        assert len(damage) == 1, rep.problems
        assert damage[0].path == seg and damage[0].offset == rec.offset
        assert not rep.ok
    seg.write_bytes(clean)


def test_repair_torn_tail(store: Store) -> None:
    log = new_log(store)
    log.append([msg(i) for i in range(5)])
    seg = log.segment_path(1, 1)
    good = seg.read_bytes()
    seg.write_bytes(good + b"AMSR\x01\x01garbage-from-a-crash")
    rep = check_log(log)
    assert [p.kind for p in rep.problems] == ["torn-tail"]
    assert rep.problems[0].offset == len(good)
    rep = check_log(log, repair=True)
    assert rep.ok and seg.read_bytes() == good
    assert check_log(log).problems == []


def test_repair_salvages_everything_that_verifies(store: Store) -> None:
    log = new_log(store)
    log.append([msg(i, 300) for i in range(30)])
    log.store_flags(FlagOp.ADD, ["\\Answered"], [10, 20])
    seg = log.segment_path(1, 1)
    batch = log.reader().poll()
    victim = batch.records[12]  # UID 13
    data = bytearray(seg.read_bytes())
    data[victim.offset + 45] ^= 0x55
    seg.write_bytes(bytes(data))
    rep = check_log(log, repair=True)
    assert rep.ok
    assert any(p.kind == "salvage" for p in rep.problems)
    st = fold(log.reader())
    assert sorted(st.messages) == [u for u in range(1, 31) if u != 13]
    assert st.messages[20].flags == {"\\Answered"}
    lost = list(log.path.glob("lost+found-*"))
    assert len(lost) == 1 and lost[0].stat().st_size >= victim.header.size
    assert check_log(log).problems == []
    (a,) = log.append([msg(99)])
    assert a.uid == 31


def test_missing_segment_in_chain_is_reported(make_config: MakeConfig) -> None:
    store = Store.initialise(make_config(segment_bytes=4096))
    log = new_log(store)
    log.append([msg(i, 1000) for i in range(12)])
    log.segment_path(1, 2).unlink()
    rep = check_log(log)
    assert any(p.kind == "chain" and p.path == log.segment_path(1, 2) for p in rep.problems)
