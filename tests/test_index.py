"""The local LMDB index: tail updates, rebuilds, agreement with fold(), placement."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ams.config import Config, config_from_dict
from ams.errors import ConfigError, NotFound
from ams.index import Index, IndexUpdate, _fstype, check_index_location, find_logs, reindex_all
from ams.index._codec import MSG_KEY, U32
from ams.store import FlagOp, MailboxLog, NewMessage, Store, create_log, fold
from ams.store.format import SEGMENT_HEADER_SIZE, segment_name
from ams.store.log import Position

from .conftest import MakeConfig

# -- helpers ---------------------------------------------------------------------------


def new_log(store: Store, name: str = "mbox", *, user: str = "u1", log_id: str | None = None,
            uidvalidity: int = 1000) -> MailboxLog:
    parent = store.user_dir(user)
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / name
    create_log(path, log_id=log_id or f"{user}-{name}", uidvalidity=uidvalidity, sync=False)
    return store.log_at(path)


def msgs(n: int, flags: tuple[str, ...] = (), start: int = 0) -> list[NewMessage]:
    return [NewMessage(f"Subject: {start + i}\r\n\r\nbody {start + i}\r\n".encode(),
                       internal_date=1_700_000_000 + start + i, tz_minutes=60, flags=flags)
            for i in range(n)]


def folded(log: MailboxLog) -> dict[int, tuple[Any, ...]]:
    state = fold(log.reader().records())
    return {uid: (m.location, m.internal_date, m.tz_minutes, frozenset(m.flags), m.modseq,
                  m.time_us) for uid, m in state.messages.items()}


def indexed(ix: Index, log_id: str) -> dict[int, tuple[Any, ...]]:
    return {m.uid: (m.location, m.internal_date, m.tz_minutes, m.flags, m.modseq, m.time_us)
            for m in ix.messages(log_id)}


def without_location(state: dict[int, tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    return {uid: v[1:] for uid, v in state.items()}


def assert_matches_fold(ix: Index, log: MailboxLog) -> None:
    log_id = log.head().id
    want = folded(log)
    assert indexed(ix, log_id) == want
    status = ix.status(log_id)
    assert status is not None
    assert status.messages == len(want)
    assert ix.uids(log_id) == sorted(want)
    assert ix.flags(log_id) == [(u, want[u][3]) for u in sorted(want)]
    # Every message can be read back through the location the index gives.
    for m in ix.messages(log_id)[:3]:
        assert log.read_message(m.location).startswith(b"Subject: ")


@pytest.fixture
def index(store: Store) -> Any:
    ix = Index(store.config)
    yield ix
    ix.close()


# -- tail updates -------------------------------------------------------------------------


def test_index_lives_under_the_cache_dir(store: Store, index: Index) -> None:
    assert index.path == Path(store.config.host.cache_dir) / "index"
    assert (index.path / "data.mdb").exists()
    assert Path(store.root) not in index.path.parents


def test_first_update_indexes_everything(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(5, ("\\Seen",)) + msgs(5, start=5))
    r = index.update(log)
    assert r.reset and r.new == tuple(range(1, 11)) and r.records == 10
    assert not r.uidvalidity_changed
    status = index.status("u1-mbox")
    assert status is not None
    assert (status.uidvalidity, status.uidnext, status.messages) == (1000, 11, 10)
    assert status.highest_modseq == fold(log.reader().records()).highest_modseq
    assert index.get("u1-mbox", 3) is not None and index.get("u1-mbox", 99) is None
    assert index.messages("u1-mbox", 4, 6)[0].uid == 4
    assert [u for u, _ in index.flags("u1-mbox", 5, 6)] == [5, 6]
    assert_matches_fold(index, log)


def test_tail_update_sees_appends_flag_changes_and_expunges(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(10))
    index.update(log)
    before = index.status("u1-mbox")

    log.append(msgs(3, ("\\Draft",), start=10))
    r = index.update(log)
    assert (r.new, r.expunged, r.flags_changed, r.reset) == ((11, 12, 13), (), (), False)
    assert r.records == 3

    log.store_flags(FlagOp.ADD, ["\\Seen", "$Junk"], [2, 3, 11])
    log.store_flags(FlagOp.REMOVE, ["\\Draft"], [(12, 12)])
    log.store_flags(FlagOp.REPLACE, ["\\Flagged"], [(5, 6)])
    r = index.update(log)
    assert r.flags_changed == (2, 3, 5, 6, 11, 12) and r.new == r.expunged == ()
    assert index.get("u1-mbox", 11).flags == {"\\Seen", "$Junk", "\\Draft"}  # type: ignore[union-attr]
    assert index.get("u1-mbox", 12).flags == frozenset()  # type: ignore[union-attr]

    log.expunge([(2, 4), (100, 200)])
    r = index.update(log)
    assert r.expunged == (2, 3, 4) and r.new == r.flags_changed == ()
    after = index.status("u1-mbox")
    assert after is not None and before is not None
    assert after.messages == 10 and after.uidnext == 14
    assert after.highest_modseq > before.highest_modseq

    r = index.update(log)
    assert not r.changed and r.records == 0
    assert_matches_fold(index, log)


def test_changes_within_one_update_are_netted(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(4))
    index.update(log)
    log.append(msgs(2, start=4))                       # 5, 6
    log.store_flags(FlagOp.ADD, ["\\Seen"], [1, 5])
    log.store_flags(FlagOp.REMOVE, ["\\Seen"], [1])    # back as it was: not reported
    log.expunge([6, 2])
    r = index.update(log)
    assert r.new == (5,) and r.expunged == (2,) and r.flags_changed == ()


def test_small_batches_and_segment_rollover(make_config: MakeConfig) -> None:
    store = Store.initialise(make_config(segment_bytes=4096))
    log = new_log(store)
    with Index(store.config, batch_records=7) as ix:
        for i in range(6):
            log.append(msgs(25, start=25 * i))
            log.store_flags(FlagOp.ADD, [f"kw{i}"], [(1, 25 * i + 10)])
            r = ix.update(log)
            assert r.new == tuple(range(25 * i + 1, 25 * i + 26))
        assert len(list(Path(log.path).glob("seg-*"))) >= 3
        assert_matches_fold(ix, log)
        status = ix.status(log.head().id)
        assert status is not None and status.position.seq >= 3


def test_many_keywords_widen_the_flag_mask(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(3))
    names = [f"kw{i:03d}" for i in range(150)]
    log.store_flags(FlagOp.ADD, names, [2])
    log.store_flags(FlagOp.REMOVE, names[:70], [2])
    log.store_flags(FlagOp.ADD, names[140:], [3])
    index.update(log)
    assert index.get("u1-mbox", 2).flags == frozenset(names[70:])  # type: ignore[union-attr]
    assert_matches_fold(index, log)


def test_changed_since(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(6))
    index.update(log)
    mark = index.status("u1-mbox").highest_modseq  # type: ignore[union-attr]
    m1 = log.store_flags(FlagOp.ADD, ["\\Seen"], [2, 4])
    m2 = log.store_flags(FlagOp.ADD, ["\\Answered"], [4])
    log.expunge([2])
    index.update(log)
    assert index.changed_since("u1-mbox", mark) == [(4, m2)]
    assert index.changed_since("u1-mbox", m2) == []
    assert m1 < m2
    assert len(index.changed_since("u1-mbox", 0)) == 5


def test_one_index_per_directory_per_process(store: Store, index: Index) -> None:
    with pytest.raises(RuntimeError, match="open already"):
        Index(store.config)
    index.close()
    index.close()
    with Index(store.config) as again:
        assert again.mailboxes() == []


def test_unknown_mailbox(index: Index) -> None:
    assert index.status("nope") is None
    with pytest.raises(NotFound):
        index.uids("nope")


def test_torn_tail_is_ignored_then_picked_up(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(3))
    seg = log.segment_path(1, 1)
    with open(seg, "ab") as f:
        f.write(b"AMSR\x01\x01\x00\x00garbage-torn-record")
    r = index.update(log)
    assert r.new == (1, 2, 3)
    log.append(msgs(1, start=3))  # the writer repairs the torn tail [W3]
    r = index.update(log)
    assert r.new == (4,)
    assert_matches_fold(index, log)


# -- rebuilds ---------------------------------------------------------------------------------


def test_compaction_rebuilds_with_identical_content(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(30, ("\\Seen",)))
    log.store_flags(FlagOp.ADD, ["\\Flagged", "$Work"], [(5, 9)])
    log.expunge([(10, 14), (20, 20)])
    index.update(log)
    before = without_location(indexed(index, "u1-mbox"))
    status = index.status("u1-mbox")

    log.compact()
    r = index.update(log)
    assert r.reset and not r.changed and not r.uidvalidity_changed
    assert without_location(indexed(index, "u1-mbox")) == before
    after = index.status("u1-mbox")
    assert after is not None and status is not None
    assert (after.uidnext, after.highest_modseq, after.messages) == (
        status.uidnext, status.highest_modseq, status.messages)
    assert after.position.generation == 2
    assert_matches_fold(index, log)
    assert index.vacuum() == 0  # the old entries went with the switch

    log.append(msgs(2, start=30))
    r = index.update(log)
    assert r.new == (31, 32) and not r.reset


def test_compaction_while_behind_reports_the_difference(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(10))
    index.update(log)
    log.store_flags(FlagOp.ADD, ["\\Deleted"], [3, 4])
    log.expunge([3, 4])
    log.store_flags(FlagOp.ADD, ["\\Seen"], [7])
    log.append(msgs(2, start=10))
    log.compact()
    r = index.update(log)
    assert r.reset
    assert (r.new, r.expunged, r.flags_changed) == ((11, 12), (3, 4), (7,))
    assert_matches_fold(index, log)


def test_compacting_away_every_message_keeps_uidnext(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(5))
    log.expunge([(1, 5)])
    index.update(log)
    hms = index.status("u1-mbox").highest_modseq  # type: ignore[union-attr]
    log.compact()
    r = index.update(log)
    status = index.status("u1-mbox")
    assert r.reset and not r.changed
    assert status is not None and status.messages == 0
    assert status.uidnext == 6 and status.highest_modseq >= hms


def test_rebuild_equals_tail_updates(store: Store, index: Index) -> None:
    log = new_log(store)
    for i in range(5):
        log.append(msgs(8, start=8 * i))
        log.store_flags(FlagOp.ADD, ["\\Seen"], [(1, 4 * i + 1)])
        index.update(log)
    before = indexed(index, "u1-mbox")
    r = index.rebuild(log)
    assert r.reset and not r.changed
    assert indexed(index, "u1-mbox") == before


def test_uidvalidity_change_replaces_the_mailbox(store: Store, index: Index) -> None:
    a = new_log(store, "a", log_id="same", uidvalidity=1)
    a.append(msgs(3))
    index.update(a)
    b = new_log(store, "b", log_id="same", uidvalidity=2)
    b.append(msgs(2))
    r = index.update(b)
    assert r.uidvalidity_changed and r.new == (1, 2) and r.expunged == (1, 2, 3)
    assert index.status("same").uidvalidity == 2  # type: ignore[union-attr]


def test_index_format_change_empties_the_index(store: Store) -> None:
    log = new_log(store)
    log.append(msgs(2))
    with Index(store.config) as ix:
        ix.update(log)
        with ix._env.begin(write=True) as txn:
            txn.put(b"format", U32.pack(999), db=ix._meta)
    with Index(store.config) as ix:
        assert ix.mailboxes() == []
        assert ix.update(log).new == (1, 2)


def test_vacuum_removes_orphans_only(store: Store, index: Index) -> None:
    log = new_log(store)
    log.append(msgs(3))
    index.update(log)
    with index._env.begin(write=True) as txn:
        txn.put(MSG_KEY.pack(4000, 1), bytes(46), db=index._msgs)
        txn.put(MSG_KEY.pack(4000, 2), bytes(46), db=index._msgs)
    assert index.vacuum() == 2
    assert_matches_fold(index, log)


def test_reindex_all(store: Store, index: Index) -> None:
    logs = [new_log(store, f"box{i}", user=f"user{i % 2}") for i in range(3)]
    for i, lg in enumerate(logs):
        lg.append(msgs(i + 1))
    gone = new_log(store, "gone")
    gone.append(msgs(1))
    index.update(gone)
    import shutil
    shutil.rmtree(gone.path)
    seen: list[tuple[int, int, int]] = []
    stats = reindex_all(store, index=index,
                        progress=lambda p: seen.append((p.done, p.total, p.messages)))
    assert sorted(find_logs(store)) == sorted(lg.path for lg in logs)
    assert stats.mailboxes == 3 and stats.messages == 6 and not stats.errors
    assert stats.forgotten == 1
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert sorted(index.mailboxes()) == sorted(lg.head().id for lg in logs)
    for lg in logs:
        assert_matches_fold(index, lg)


# -- many hosts, many threads ------------------------------------------------------------------


def test_two_hosts_agree(make_config: MakeConfig) -> None:
    c1, c2 = make_config(host="h1"), make_config(host="h2")
    assert c1.host.cache_dir != c2.host.cache_dir
    store1, store2 = Store.initialise(c1), Store(c2)
    log1 = new_log(store1)
    log2 = store2.log_at(log1.path)
    with Index(c1) as ix1, Index(c2) as ix2:
        log1.append(msgs(20))
        ix1.update(log1)
        log2.store_flags(FlagOp.ADD, ["\\Seen"], [(1, 10)])
        ix2.update(log2)
        log2.append(msgs(5, ("\\Recent-ish",), start=20))
        log1.expunge([3, 22])
        ix1.update(log1)
        log1.compact()
        log2.store_flags(FlagOp.REMOVE, ["\\Seen"], [4])
        ix2.update(log2)
        ix1.update(log1)
        assert indexed(ix1, "u1-mbox") == indexed(ix2, "u1-mbox")
        assert ix1.status("u1-mbox") == ix2.status("u1-mbox")
        assert_matches_fold(ix1, log1)


def test_concurrent_updaters_apply_each_record_once(store: Store) -> None:
    index = Index(store.config, batch_records=3)  # many transactions: room for races
    log = new_log(store)
    log.append(msgs(50))
    reports: list[IndexUpdate] = []
    errors: list[BaseException] = []

    done = threading.Event()
    progress = threading.Condition()

    def updater() -> None:
        try:
            while not done.is_set():
                reports.append(index.update(store.log_at(log.path)))
                with progress:
                    progress.notify_all()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def caught_up(reports_wanted: int) -> bool:
        return len(reports) >= reports_wanted or bool(errors)

    threads = [threading.Thread(target=updater) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(40):
        log.append(msgs(5, start=50 + 5 * i))
        log.store_flags(FlagOp.ADD, ["\\Seen"], [i + 1])
        if i % 13 == 0:
            log.compact()
        with progress:  # let the updaters catch up now and then, to race each other
            progress.wait_for(functools.partial(caught_up, len(reports) + 2), timeout=10)
    done.set()
    for t in threads:
        t.join()
    assert not errors
    reports.append(index.update(log))
    assert_matches_fold(index, log)
    index.close()
    # Every UID was reported new exactly once, across all the updaters.
    assert sorted(u for r in reports for u in r.new) == list(range(1, 251))


# -- against fold(), at random ---------------------------------------------------------------

FLAG_NAMES = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "$Junk", "kw"]
uid_sets = st.lists(st.integers(1, 25), min_size=1, max_size=6)
flag_sets = st.lists(st.sampled_from(FLAG_NAMES), max_size=3, unique=True)
operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 4), flag_sets),
    st.tuples(st.just("flags"), st.sampled_from(list(FlagOp)), flag_sets, uid_sets),
    st.tuples(st.just("expunge"), uid_sets),
    st.tuples(st.just("update")),
    st.tuples(st.just("compact")),
), max_size=25)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations, batch=st.sampled_from([2, 5, 1000]))
def test_index_equals_fold_after_random_operations(ops: list[tuple[Any, ...]], batch: int,
                                                   ) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp))
        store = Store.initialise(cfg)
        log = new_log(store)
        with Index(cfg, batch_records=batch) as ix:
            # What an IMAP session would know, kept up only from the reports.
            session: dict[int, frozenset[str]] = {}

            def sync() -> None:
                r = ix.update(log)
                current = dict(ix.flags("u1-mbox"))
                for uid in r.expunged:
                    del session[uid]
                for uid in r.new + r.flags_changed:
                    session[uid] = current[uid]
                assert session == current

            n = 0
            for op in ops:
                if op[0] == "append":
                    log.append(msgs(op[1], tuple(op[2]), start=n))
                    n += op[1]
                elif op[0] == "flags":
                    log.store_flags(op[1], op[2], op[3])
                elif op[0] == "expunge":
                    log.expunge(op[1])
                elif op[0] == "compact":
                    log.compact()
                else:
                    sync()
            sync()
            assert_matches_fold(ix, log)
            state = fold(log.reader().records())
            status = ix.status("u1-mbox")
            assert status is not None
            assert status.uidnext >= state.uidnext and status.highest_modseq >= state.highest_modseq
            if log.head().generation == 1:
                assert (status.uidnext, status.highest_modseq) == (
                    state.uidnext, state.highest_modseq)


def _config(tmp: Path) -> Config:
    return config_from_dict({
        "store": {"root": str(tmp / "store"), "fsync": "never"},
        "host": {"name": "h1", "cache_dir": str(tmp / "cache")},
    })


# -- where an index may live ----------------------------------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 0:40 / /home rw,relatime shared:5 - xfs /dev/sdb1 rw
31 30 0:41 / /home/shared rw,relatime shared:6 master:2 - nfs4 fs1:/export/home rw,vers=4.2
32 27 0:42 / /mnt/ssh rw,nosuid,nodev - fuse.sshfs me@host:/srv rw,user_id=0
33 27 0:43 / /mnt/my\\040share rw - cifs //nas/share rw
34 27 0:44 / /tmp rw - tmpfs tmpfs rw
35 27 0:45 / /var/lib/docker/overlay rw - overlay overlay rw,lowerdir=/a
36 27 0:46 / /ceph rw - ceph 10.0.0.1:/ rw
37 27 0:47 / /afs rw - afs AFS rw
38 27 0:48 / /mnt/9p rw - 9p hostshare rw
39 27 0:49 / /mnt/ntfs rw - fuseblk /dev/sdc1 rw
40 27 0:50 / /lustre rw - lustre 10.0.0.2@tcp:/fs rw
41 27 0:51 / /gpfs rw - gpfs gpfs0 rw
42 34 0:52 / /tmp rw - fuse.mergerfs a:b rw
this line is not mountinfo
"""


@pytest.mark.parametrize("path, fstype, refused", [
    ("/", "ext4", False),
    ("/var/cache/ams/index", "ext4", False),
    ("/home/alice/.cache", "xfs", False),
    ("/homes/x", "ext4", False),  # /home is not a prefix of /homes
    ("/home/shared", "nfs4", True),
    ("/home/shared/alice/cache", "nfs4", True),
    ("/mnt/ssh/cache", "fuse.sshfs", True),
    ("/mnt/my share/x", "cifs", True),
    ("/var/lib/docker/overlay/x", "overlay", False),
    ("/ceph/x", "ceph", True),
    ("/afs/cell/x", "afs", True),
    ("/mnt/9p", "9p", True),
    ("/mnt/ntfs/x", "fuseblk", True),
    ("/lustre/x", "lustre", True),
    ("/gpfs/x", "gpfs", True),
    ("/tmp/x", "fuse.mergerfs", True),  # the later of two mounts stacked on /tmp
])
def test_fs_type_classifier(path: str, fstype: str, refused: bool) -> None:
    mount = _fstype.mount_of(path, _fstype.parse_mountinfo(MOUNTINFO))
    assert mount is not None and mount.fstype == fstype
    assert (_fstype.shared_fs_reason(mount.fstype) is not None) == refused


def test_proc_mounts_parser() -> None:
    mounts = _fstype.parse_proc_mounts("/dev/vda / ext4 rw 0 0\nsrv:/x /mnt/x nfs rw 0 0\n")
    assert _fstype.mount_of("/mnt/x/y", mounts).fstype == "nfs"  # type: ignore[union-attr]
    assert {"nfs", "smb3", "glusterfs"} <= _fstype.SHARED_FSTYPES
    for local in ("ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "apfs"):
        assert _fstype.shared_fs_reason(local) is None


def test_refuses_a_fuse_or_network_cache_dir(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fstype, "filesystem_type", lambda p: ("/mnt/ssh", "fuse.sshfs"))
    with pytest.raises(ConfigError, match=r"cache.*FUSE.*fuse\.sshfs"):
        check_index_location(tmp_path / "cache" / "index")
    monkeypatch.setattr(_fstype, "filesystem_type", lambda p: ("/home/shared", "nfs4"))
    cfg = _config(tmp_path)
    Store.initialise(cfg)
    with pytest.raises(ConfigError, match=r"index.*network.*nfs4"):
        Index(cfg)
    assert not (tmp_path / "cache" / "index").exists()


def test_accepts_the_local_disk(tmp_path: Path) -> None:
    check_index_location(tmp_path / "not" / "yet" / "there")
    found = _fstype.filesystem_type(tmp_path)
    assert found is not None and _fstype.shared_fs_reason(found[1]) is None
    if sys.platform.startswith("linux"):  # the fallback when /proc is not mounted
        magic = _fstype._statfs_magic(str(tmp_path))
        assert magic is not None and magic not in _fstype._SHARED_MAGIC


@pytest.mark.parametrize("where", ["inside", "root", "symlink"])
def test_refuses_a_cache_dir_in_the_store_root(tmp_path: Path, where: str) -> None:
    root = tmp_path / "store"
    cache = {"inside": root / "cache", "root": root, "symlink": tmp_path / "link" / "c"}[where]
    if where == "symlink":
        root.mkdir()
        os.symlink(root, tmp_path / "link")
    cfg = config_from_dict({"store": {"root": str(root), "fsync": "never"},
                            "host": {"name": "h1", "cache_dir": str(cache)}})
    Store.initialise(cfg)
    with pytest.raises(ConfigError, match="inside the store root"):
        Index(cfg)
    assert not any(p.name == "data.mdb" for p in root.rglob("*"))


def test_segment_floor_is_read_from_the_generation_header(store: Store, index: Index) -> None:
    # White box: a reset reads UIDNEXT and the MODSEQ floor from seg-G-1's header.
    log = new_log(store)
    log.append(msgs(2))
    log.expunge([1, 2])
    log.compact()
    head = (log.path / segment_name(2, 1)).read_bytes()[:SEGMENT_HEADER_SIZE]
    assert len(head) == SEGMENT_HEADER_SIZE
    r = index.update(log)
    assert r.position == Position(2, 1, SEGMENT_HEADER_SIZE)
    assert index.status("u1-mbox").uidnext == 3  # type: ignore[union-attr]
