"""The mailbox log: concurrency, crash safety, corruption, and the churn rule."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ams.errors import CorruptionError
from ams.store import FlagOp, NewMessage, Store, create_log, fold
from ams.store.format import RecordType
from ams.store.log import MailboxLog, Position
from tests.conftest import MakeConfig
from tests.procs import message

ROOT = Path(__file__).resolve().parent.parent


def new_log(store: Store, name: str = "mbox") -> MailboxLog:
    path = store.user_dir("u1") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    create_log(path, log_id=name, uidvalidity=1000)
    return store.log_at(path)


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.procs", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def msg(i: int, size: int = 200) -> NewMessage:
    return NewMessage(message(f"m{i}", size), internal_date=1_700_000_000 + i,
                      delivery_id=f"m{i}")


def test_append_read_round_trip(store: Store) -> None:
    log = new_log(store)
    res = log.append([msg(i) for i in range(10)])
    assert [a.uid for a in res] == list(range(1, 11))
    assert [a.modseq for a in res] == sorted(a.modseq for a in res)
    st = fold(log.reader())
    assert sorted(st.messages) == list(range(1, 11))
    assert log.read_message(st.messages[4].location) == message("m3", 200)
    assert st.messages[4].internal_date == 1_700_000_003


@pytest.mark.slow
def test_eight_processes_append_concurrently(make_config: MakeConfig, lock_method: str) -> None:
    """8 writers × 1,000 records: UIDs exactly 1..8000, every checksum valid."""
    store = Store.initialise(make_config(lock_method=lock_method))
    log = new_log(store)
    procs = [spawn("append", str(store.root), str(log.path), lock_method, "never", "1000", "300",
                   f"p{n}") for n in range(8)]
    acked: dict[int, str] = {}
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        for line in out.splitlines():
            uid, tag = line.split()
            assert int(uid) not in acked, f"UID {uid} given twice"
            acked[int(uid)] = tag
    assert sorted(acked) == list(range(1, 8001))
    # Every record verifies (the reader checks each CRC), in UID order.
    batch = log.reader().poll()
    assert batch.stopped_at is None
    assert [r.uid for r in batch.records] == list(range(1, 8001))
    for i, rec in enumerate(batch.records):
        loc = batch.location(i)
        assert loc is not None
        assert log.read_message(loc) == message(acked[rec.uid], 300)
    # Per process, its own messages are in the order it appended them.
    for n in range(8):
        mine = [acked[u] for u in sorted(acked) if acked[u].startswith(f"p{n}-")]
        assert mine == [f"p{n}-{i}" for i in range(1000)]


@pytest.mark.slow
def test_sigkill_mid_append_loses_nothing_acknowledged(make_config: MakeConfig,
                                                       lock_method: str) -> None:
    """Kill writers at random points; the next writer repairs; acks survive."""
    store = Store.initialise(make_config(lock_method=lock_method, fsync="always",
                                         segment_bytes=256 * 1024))
    log = new_log(store)
    rng = random.Random(7)
    acked: dict[int, str] = {}
    for round_ in range(12):
        p = spawn("append", str(store.root), str(log.path), lock_method, "always", "100000",
                  "20000", f"r{round_}", str(256 * 1024))
        assert p.stdout is not None
        # Let it acknowledge a few records, then kill it at a random moment.
        for _ in range(rng.randint(1, 15)):
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            uid, tag = line.split()
            acked[int(uid)] = tag
        time.sleep(rng.random() * 0.02)
        p.send_signal(signal.SIGKILL)
        rest, _ = p.communicate(timeout=30)
        for line in rest.splitlines():
            uid, tag = line.split()
            acked[int(uid)] = tag
    # The next writer repairs whatever tail the kills left.
    (a,) = log.append([msg(0)])
    st = fold(log.reader())
    for uid, tag in acked.items():
        assert uid in st.messages, f"acknowledged UID {uid} lost"
        assert log.read_message(st.messages[uid].location) == message(tag, 20000)
    assert a.uid == max(st.messages)
    assert sorted(st.messages) == list(range(1, a.uid + 1))


def test_torn_tail_at_every_cut_point(store: Store) -> None:
    """[W2][W3] a record cut at any byte: invisible, then repaired by the next writer."""
    log = new_log(store)
    log.append([msg(i) for i in range(3)])
    seg = log.segment_path(1, 1)
    good = seg.read_bytes()
    # The record a crashed writer was writing.
    log.append([msg(3)])
    full = seg.read_bytes()
    torn_rec = full[len(good):]
    for cut in range(1, len(torn_rec)):
        seg.write_bytes(good + torn_rec[:cut])
        reader_batch = log.reader().poll()
        assert [r.uid for r in reader_batch.records] == [1, 2, 3]
        log._cached = None  # a different process: nothing cached
        (a,) = log.append([msg(99)])
        assert a.uid == 4
        assert [r.uid for r in log.reader().poll().records] == [1, 2, 3, 4]
        seg.write_bytes(good)


def test_crash_between_torn_write_and_repair(make_config: MakeConfig, lock_method: str) -> None:
    """[W3] a real process dies mid-write (half its buffer written)."""
    store = Store.initialise(make_config(lock_method=lock_method))
    log = new_log(store)
    log.append([msg(i) for i in range(5)])
    p = spawn("append", str(store.root), str(log.path), lock_method, "never", "1", "5000", "x",
              env={"AMS_CRASHPOINT": "append-torn"})
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 137 and out == ""
    assert os.path.getsize(log.segment_path(1, 1)) > log.reader().poll().position.offset
    assert [r.uid for r in log.reader().poll().records] == [1, 2, 3, 4, 5]
    log._cached = None
    (a,) = log.append([msg(6)])
    assert a.uid == 6
    assert os.path.getsize(log.segment_path(1, 1)) == log.reader().poll().position.offset


def test_damage_before_valid_records_is_refused_not_truncated(store: Store) -> None:
    """[W3] mid-log damage is corruption: the writer must not cut valid records."""
    log = new_log(store)
    log.append([msg(i) for i in range(5)])
    seg = log.segment_path(1, 1)
    data = bytearray(seg.read_bytes())
    batch = log.reader().poll()
    third = batch.records[2]
    data[third.offset + 50] ^= 0xFF  # inside record 3's payload
    seg.write_bytes(bytes(data))
    log._cached = None
    # Damage the last record too, so the writer must scan.
    data[batch.records[4].offset + 60] ^= 0xFF
    seg.write_bytes(bytes(data))
    size = len(data)
    with pytest.raises(CorruptionError):
        log.append([msg(9)])
    assert os.path.getsize(seg) == size, "writer truncated committed records"
    # Readers stop before the damage and never return the damaged bytes.
    b = log.reader().poll()
    assert [r.uid for r in b.records] == [1, 2]
    assert b.stopped_at is not None and b.stopped_at.offset == third.offset


def test_rollover_and_reader_follows(make_config: MakeConfig) -> None:
    store = Store.initialise(make_config(segment_bytes=8192))
    log = new_log(store)
    reader = log.reader()
    seen: list[int] = []
    for i in range(0, 200, 10):
        log.append([msg(j, 500) for j in range(i, i + 10)])
        seen += [r.uid for r in reader.poll().records]
    assert seen == list(range(1, 201))
    assert log.segment_path(1, 5).exists()
    assert all(os.path.getsize(log.segment_path(1, s)) <= 8192 + 600 for s in range(1, 5))


def test_crash_between_new_segment_and_next_record(make_config: MakeConfig) -> None:
    """[W4] an orphan next segment is replaced by the next rollover."""
    store = Store.initialise(make_config(segment_bytes=8192))
    log = new_log(store)
    log.append([msg(i, 3000) for i in range(2)])
    p = spawn("append", str(store.root), str(log.path), "fcntl", "never", "5", "3000", "y",
              "8192", env={"AMS_CRASHPOINT": "rollover-before-next"})
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 137
    acked = len(out.splitlines())
    assert log.segment_path(1, 2).exists()  # the orphan
    log._cached = None
    log.append([msg(i, 3000) for i in range(10, 15)])
    st = fold(log.reader())
    assert sorted(st.messages) == list(range(1, 2 + acked + 5 + 1))


def test_flags_expunge_and_modseq(store: Store) -> None:
    log = new_log(store)
    res = log.append([msg(i) for i in range(5)])
    m1 = log.store_flags(FlagOp.ADD, ["\\Seen", "$Label1"], [1, 2, 3])
    m2 = log.store_flags(FlagOp.REMOVE, ["\\Seen"], [2])
    m3 = log.store_flags(FlagOp.REPLACE, ["\\Flagged"], [(3, 4)])
    m4 = log.expunge([1, 5])
    assert res[-1].modseq < m1 < m2 < m3 < m4
    st = fold(log.reader())
    assert sorted(st.messages) == [2, 3, 4]
    assert st.messages[2].flags == {"$Label1"} and st.messages[2].modseq == m2
    assert st.messages[3].flags == {"\\Flagged"} and st.messages[4].modseq == m3
    assert st.highest_modseq == m4 and st.uidnext == 6


def test_delivery_id_dedupe(store: Store) -> None:
    """[W7] a retry with the same delivery ids files nothing twice."""
    log = new_log(store)
    since = int(time.time() * 1e6)
    first = log.append([msg(i) for i in range(5)], dedupe_since_us=since)
    again = log.append([msg(i) for i in range(3, 8)], dedupe_since_us=since)
    assert [a.duplicate for a in again] == [True, True, False, False, False]
    assert again[0].uid == first[3].uid
    assert len(fold(log.reader()).messages) == 8


def test_compaction_keeps_state_and_readers(make_config: MakeConfig) -> None:
    """[W5] compaction drops expunged records; an open reader is not broken."""
    store = Store.initialise(make_config(segment_bytes=16384, compaction_grace_seconds=0))
    log = new_log(store)
    log.append([msg(i, 700) for i in range(60)])
    log.store_flags(FlagOp.ADD, ["\\Seen"], list(range(1, 31)))
    log.expunge(list(range(1, 21)))
    reader = log.reader()
    before = fold(log.reader())
    old_loc = before.messages[40].location
    stats = log.compact()
    assert stats.messages == 40 and stats.new_generation == 2
    # The old segment is still readable right after compaction.
    assert log.read_message(old_loc) == message("m39", 700)
    batch = reader.poll()
    assert batch.reset
    after = fold(log.reader())
    assert {u: (m.flags, m.modseq, m.internal_date) for u, m in after.messages.items()} == {
        u: (m.flags, m.modseq, m.internal_date) for u, m in before.messages.items()}
    assert after.highest_modseq == before.highest_modseq
    (a,) = log.append([msg(100)])
    assert a.uid == 61 and a.modseq > before.highest_modseq
    # A second compaction removes generation 1 (grace 0).
    log.compact()
    assert not log.segment_path(1, 1).exists()
    final = fold(log.reader())
    assert sorted(final.messages) == list(range(21, 62))


def test_uids_of_expunged_messages_are_never_reused(store: Store) -> None:
    log = new_log(store)
    log.append([msg(i) for i in range(10)])
    log.expunge([9, 10])
    log.compact()
    log._cached = None
    (a,) = log.append([msg(11)])
    assert a.uid == 11
    log.expunge([11])
    log.compact()
    log.compact()
    log._cached = None
    (b,) = log.append([msg(12)])
    assert b.uid == 12


@pytest.mark.parametrize("point", ["compact-before-head", "compact-before-sealed"])
def test_crash_during_compaction(make_config: MakeConfig, point: str) -> None:
    """[W5] a compaction killed at either step leaves a consistent log."""
    store = Store.initialise(make_config())
    log = new_log(store)
    log.append([msg(i) for i in range(20)])
    log.expunge([1, 2, 3])
    before = fold(log.reader())
    code = ("import sys; from pathlib import Path; from tests.procs import _store; "
            "s=_store(sys.argv[1],'fcntl','never'); s.log_at(Path(sys.argv[2])).compact()")
    p = subprocess.run([sys.executable, "-c", code, str(store.root), str(log.path)], cwd=ROOT,
                       env={**os.environ, "AMS_CRASHPOINT": point}, timeout=60,
                       capture_output=True)
    assert p.returncode == 137, p.stderr
    log._cached = None
    expected_gen = 1 if point == "compact-before-head" else 2
    assert log.head().generation == expected_gen
    after = fold(log.reader())
    assert {u: m.flags for u, m in after.messages.items()} == {
        u: m.flags for u, m in before.messages.items()}
    (a,) = log.append([msg(50)])
    assert a.uid == 21
    log.compact()
    assert sorted(fold(log.reader()).messages) == list(range(4, 22))


def test_reader_never_returns_unverified_bytes(store: Store) -> None:
    log = new_log(store)
    log.append([msg(i) for i in range(3)])
    seg = log.segment_path(1, 1)
    raw = bytearray(seg.read_bytes())
    rng = random.Random(3)
    for _ in range(50):
        damaged = bytearray(raw)
        i = rng.randrange(64, len(raw))
        damaged[i] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(damaged))
        b = log.reader().poll()
        for rec in b.records:
            start = rec.offset
            assert bytes(damaged[start:rec.end]) == bytes(raw[start:rec.end])
        # Damage either fails verification (stopped_at) or, in a length
        # field, looks like a write still in progress: both stop the reader.
        assert len(b.records) < 3
    seg.write_bytes(bytes(raw))


def test_filing_changes_no_directory_entry(make_config: MakeConfig) -> None:
    """The churn rule: 1,000 filings leave the mailbox directory untouched."""
    store = Store.initialise(make_config(fsync="always"))
    log = new_log(store)
    log.append([msg(0)])
    names = sorted(os.listdir(log.path))
    st = os.stat(log.path)
    for i in range(1, 1001):
        log.append([msg(i)])
    log.store_flags(FlagOp.ADD, ["\\Seen"], list(range(1, 500)))
    log.expunge([7])
    after = os.stat(log.path)
    assert sorted(os.listdir(log.path)) == names
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_nlink) == (
        st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def test_reader_resumes_from_saved_position(store: Store) -> None:
    log = new_log(store)
    log.append([msg(i) for i in range(5)])
    pos = log.reader().poll().position
    log.append([msg(i) for i in range(5, 8)])
    b = log.reader(Position(pos.generation, pos.seq, pos.offset)).poll()
    assert not b.reset and [r.uid for r in b.records] == [6, 7, 8]
    assert all(r.type == RecordType.APPEND for r in b.records)


def test_dedupe_window_sees_other_writers_compaction_and_old_retries(store: Store) -> None:
    """[W7] with the remembered window: other hosts' filings, compaction, older retries."""
    a = new_log(store)
    b = store.log_at(a.path)  # another process's handle on the same log
    since = int(time.time() * 1e6)
    assert [x.duplicate for x in b.append([msg(1)], dedupe_since_us=since)] == [False]
    assert [x.duplicate for x in a.append([msg(2)], dedupe_since_us=since)] == [False]
    # b's window was built before a filed m2: it must catch up, not miss it.
    got = b.append([msg(2), msg(3)], dedupe_since_us=since)
    assert [x.duplicate for x in got] == [True, False]
    # A plain append by a (no dedupe) is seen by b's catch-up too.
    a.append([msg(4)])
    assert [x.duplicate for x in b.append([msg(4)], dedupe_since_us=since)] == [True]
    # Compaction starts a new generation: the window is rebuilt from it.
    a.compact()
    assert [x.duplicate for x in b.append([msg(1), msg(5)], dedupe_since_us=since)] == \
        [True, False]
    # A retry older than the window scans further back.
    old = since - 3600 * 1_000_000
    assert [x.duplicate for x in b.append([msg(3)], dedupe_since_us=old)] == [True]
    st = fold(a.reader())
    assert sorted(m.delivery_id for m in st.messages.values()) == ["m1", "m2", "m3", "m4", "m5"]
