"""Per-user bboard state: flags as UID ranges, subscriptions, crashes, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ams.config import config_from_dict
from ams.errors import UsageError
from ams.store import FlagOp, Store
from ams.store.format import ranges_from_uids
from bboard import Bboards, FlagState, RangeSet, UserState
from bboard._state import STATE_HEADER_SIZE
from tests.conftest import MakeConfig
from tests.mx_helpers import add_users
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent
SEEN = "\\Seen"


@pytest.fixture
def boards(store: Store) -> Bboards:
    return Bboards(store, add_users(store, "alice", "bob"))


def test_flags_are_per_user(boards: Bboards) -> None:
    info = boards.create("a.b")
    alice, bob = boards.user_state("alice"), boards.user_state("bob")
    alice.store(info.id, FlagOp.ADD, [SEEN], [1, 2, 3, 7])
    alice.store(info.id, FlagOp.ADD, ["\\Flagged", "$Todo"], [2])
    alice.store(info.id, FlagOp.REMOVE, [SEEN], [3])
    bob.store(info.id, FlagOp.ADD, [SEEN], [3])
    assert alice.flags(info.id) == {1: {SEEN}, 2: {SEEN, "\\Flagged", "$Todo"}, 7: {SEEN}}
    assert bob.flags(info.id) == {3: {SEEN}}
    alice.store(info.id, FlagOp.REPLACE, ["$Todo"], [(1, 2)])
    assert alice.flags(info.id) == {1: {"$Todo"}, 2: {"$Todo"}, 7: {SEEN}}
    assert alice.seen(info.id).ranges() == [(7, 7)]
    # Nothing went into the board's directory.
    assert sorted(p.name for p in info.path.iterdir()) == ["board.json", "lock", "pending",
                                                           "posts"]


def test_version_changes_with_the_flags_only(boards: Bboards) -> None:
    info = boards.create("a.b")
    s = boards.user_state("alice")
    v0 = s.version(info.id)
    assert v0 == (0, 0, 0) and s.flags(info.id) == {}
    s.store(info.id, FlagOp.ADD, [SEEN], [1])
    v1 = s.version(info.id)
    assert v1 != v0 and s.version(info.id) == v1
    boards.user_state("bob").store(info.id, FlagOp.ADD, [SEEN], [1])
    assert s.version(info.id) == v1  # bob's change is not alice's
    other = boards.user_state("alice")  # another session of alice's
    other.store(info.id, FlagOp.ADD, ["\\Answered"], [1])
    assert s.version(info.id) != v1
    assert s.flags(info.id) == {1: {SEEN, "\\Answered"}}  # read incrementally


def test_file_stays_small_and_compaction_keeps_the_fold(boards: Bboards) -> None:
    info = boards.create("a.b")
    s = boards.user_state("alice")
    model: set[int] = set()
    for uid in range(1, 3001):  # a reader going through 3,000 posts one by one
        s.store(info.id, FlagOp.ADD, [SEEN], [uid])
        model.add(uid)
        if uid % 7 == 0:
            s.store(info.id, FlagOp.REMOVE, [SEEN], [uid])
            model.discard(uid)
    size = os.path.getsize(s.flags_path(info.id))
    assert size < 64 * 1024, size  # not one entry per post: ranges, compacted
    assert set(s.seen(info.id)) == model
    assert set(UserState(boards.store, "alice", s.user_id).seen(info.id)) == model
    s.compact(info.id)
    assert set(s.seen(info.id)) == model
    assert len(os.listdir(s.dir)) == 2  # lock and one flags file


def test_torn_tail_is_invisible_then_repaired(boards: Bboards) -> None:
    """[S2, S3] half a record at the end (a crash mid-write)."""
    info = boards.create("a.b")
    s = boards.user_state("alice")
    s.store(info.id, FlagOp.ADD, [SEEN], [1, 2])
    path = s.flags_path(info.id)
    whole = path.read_bytes()
    s.store(info.id, FlagOp.ADD, [SEEN], [5])
    record = path.read_bytes()[len(whole):]
    path.write_bytes(whole + record[:len(record) // 2])
    fresh = UserState(boards.store, "alice", s.user_id)
    assert fresh.flags(info.id) == {1: {SEEN}, 2: {SEEN}}
    fresh.store(info.id, FlagOp.ADD, [SEEN], [9])
    assert fresh.flags(info.id) == {1: {SEEN}, 2: {SEEN}, 9: {SEEN}}
    assert s.flags(info.id) == {1: {SEEN}, 2: {SEEN}, 9: {SEEN}}


def test_damage_in_the_middle_is_salvaged(boards: Bboards) -> None:
    info = boards.create("a.b")
    s = boards.user_state("alice")
    for uid in (1, 3, 5):
        s.store(info.id, FlagOp.ADD, [SEEN], [uid])
    path = s.flags_path(info.id)
    data = bytearray(path.read_bytes())
    data[STATE_HEADER_SIZE + 45] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))
    assert UserState(boards.store, "alice", s.user_id).flags(info.id) == {}  # stops there
    s.store(info.id, FlagOp.ADD, [SEEN], [7])
    assert set(s.seen(info.id)) == {3, 5, 7}  # every record that verifies is kept


def test_subscriptions(boards: Bboards) -> None:
    s = boards.user_state("alice")
    assert s.subscriptions() == []
    assert s.subscribe("b.two") and s.subscribe("a.one")
    assert not s.subscribe("a.one")
    assert s.subscriptions() == ["a.one", "b.two"]
    assert s.subscribe("b.two", False) and not s.subscribe("b.two", False)
    assert boards.user_state("alice").subscriptions() == ["a.one"]
    assert boards.user_state("bob").subscriptions() == []
    with pytest.raises(UsageError):
        s.subscribe("../x")


def test_bad_flags_and_uids_are_refused(boards: Bboards) -> None:
    info = boards.create("a.b")
    s = boards.user_state("alice")
    for bad in (["two words"], [""], ["\\Seen\r\n"]):
        with pytest.raises(ValueError):
            s.store(info.id, FlagOp.ADD, bad, [1])
    with pytest.raises(ValueError):
        s.store(info.id, FlagOp.ADD, [SEEN], [0])
    assert s.flags(info.id) == {}


# -- a model -----------------------------------------------------------------------------

uid_lists = st.lists(st.integers(1, 60), min_size=1, max_size=8)
ops = st.lists(st.tuples(st.sampled_from(list(FlagOp)),
                         st.lists(st.sampled_from([SEEN, "\\Flagged", "$a"]), max_size=2,
                                  unique=True),
                         uid_lists), max_size=25)


@given(ops)
def test_fold_matches_a_per_uid_model(seq: list[tuple[FlagOp, list[str], list[int]]]) -> None:
    state = FlagState()
    model: dict[int, set[str]] = {}
    for op, flags, uids in seq:
        state.apply(op, flags, ranges_from_uids(uids))
        for u in uids:
            cur = model.setdefault(u, set())
            if op == FlagOp.REPLACE:
                cur.clear()
                cur.update(flags)
            elif op == FlagOp.ADD:
                cur.update(flags)
            else:
                cur.difference_update(flags)
    assert state.per_uid() == {u: frozenset(f) for u, f in model.items() if f}


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 80), st.integers(0, 10))))
def test_rangeset_matches_a_set(seq: list[tuple[bool, int, int]]) -> None:
    rs, model = RangeSet(), set()
    for add, lo, width in seq:
        hi = lo + width
        (rs.add if add else rs.remove)(lo, hi)
        (model.update if add else model.difference_update)(range(lo, hi + 1))
        ranges = rs.ranges()
        assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert list(rs) == sorted(model) and len(rs) == len(model)
    assert all((u in rs) == (u in model) for u in range(0, 95))


# -- two processes, one user -------------------------------------------------------------

WRITER = """
import json, sys
from ams.config import config_from_dict
from ams.store import FlagOp, Store
from ams.store.format import ranges_from_uids
from bboard import UserState
cfg, user_id, board_id, first = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
s = UserState(Store(config_from_dict(cfg)), "alice", user_id)
for uid in range(first, first + 150):
    s.store(board_id, FlagOp.ADD, ["\\\\Seen"], [uid])
"""


@pytest.mark.parametrize("method", ["fcntl", "dotlock"])
def test_concurrent_writers_of_one_user(make_config: MakeConfig, tmp_path: Path,
                                        method: str) -> None:
    """[S1] two processes (two hosts' worth of sessions) flag at once: nothing is lost."""
    cfg = {"store": {"root": str(tmp_path / "store"), "lock_method": method, "fsync": "never"},
           "host": {"name": "h1", "cache_dir": str(tmp_path / "cache")},
           "mail": {"domains": ["example.test"]}}
    store = Store.initialise(config_from_dict(cfg))
    boards = Bboards(store, add_users(store, "alice"))
    info = boards.create("a.b")
    s = boards.user_state("alice")
    procs = []
    for i, host in enumerate(("h1", "h2")):
        c = {**cfg, "host": {"name": host, "cache_dir": str(tmp_path / f"cache-{host}")}}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WRITER, json.dumps(c), s.user_id, info.id,
             str(1 + 150 * i)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=WAIT * 2)
        assert p.returncode == 0, err.decode()
    assert s.seen(info.id).ranges() == [(1, 300)]
