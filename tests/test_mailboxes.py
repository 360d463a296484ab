"""Per-user mailbox lists: names to opaque ids, hierarchy, RENAME/DELETE semantics."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ams.config import Config
from ams.errors import (
    AlreadyExists,
    CorruptionError,
    FormatVersionError,
    NotFound,
    StoreError,
    UsageError,
)
from ams.store import NewMessage, Store, _fs, create_log, fold
from ams.store import mailboxes as mbmod
from ams.store.log import read_head
from ams.store.mailboxes import (
    DEFAULT_MAILBOXES,
    MailboxInfo,
    MailboxList,
    create_mail_dir,
    validate_mailbox_name,
)

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def user_id(store: Store) -> str:
    uid = uuid.uuid4().hex
    create_mail_dir(store, uid)
    return uid


@pytest.fixture
def boxes(store: Store, user_id: str) -> MailboxList:
    return MailboxList(store, user_id)


def append(boxes: MailboxList, name: str, *bodies: bytes) -> None:
    boxes.open(name).append([NewMessage(b"Subject: t\r\n\r\n" + b, 1_700_000_000) for b in bodies])


def messages(boxes: MailboxList, name: str) -> list[bytes]:
    log = boxes.open(name)
    st = fold(log.reader().records())
    return [log.read_message(st.messages[u].location) for u in sorted(st.messages)]


def assert_opaque(boxes: MailboxList, info: MailboxInfo) -> None:
    """The log of ``info`` is <user dir>/<32 hex>, whatever the name [M1]."""
    assert HEX32.fullmatch(info.id)
    assert info.path == boxes.dir / info.id
    assert info.path.resolve().parent == boxes.dir.resolve()
    assert read_head(info.path).id == info.id


# -- the defaults --------------------------------------------------------------------


def test_new_mail_dir_has_default_mailboxes(boxes: MailboxList, store: Store) -> None:
    snap = boxes.read()
    assert [(i.name, i.special_use) for i in snap] == sorted(DEFAULT_MAILBOXES)
    assert all(i.subscribed for i in snap)
    assert len({i.id for i in snap}) == len(DEFAULT_MAILBOXES)
    uvs = [snap.get(n).uidvalidity for n, _ in DEFAULT_MAILBOXES]
    assert uvs == sorted(set(uvs)) and snap.next_uidvalidity > uvs[-1]
    for info in snap:
        assert_opaque(boxes, info)
        assert read_head(info.path).uidvalidity == info.uidvalidity
    assert sorted(p.name for p in boxes.dir.iterdir()) == sorted(
        [i.id for i in snap] + ["lock", "mailboxes.json"])
    assert not list(boxes.dir.parent.glob(".new.*"))
    assert boxes.orphans() == []
    with pytest.raises(StoreError):
        create_mail_dir(store, boxes.user_id)


def test_mail_dir_appears_whole_or_not_at_all(store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = create_log
    calls: list[Path] = []

    def failing(path: Path, **kw: Any) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("simulated crash")
        real(path, **kw)

    monkeypatch.setattr(mbmod, "create_log", failing)
    uid = uuid.uuid4().hex
    with pytest.raises(OSError):
        create_mail_dir(store, uid)
    assert len(calls) == 3
    assert not store.user_dir(uid).exists()
    assert list(store.user_dir(uid).parent.iterdir()) == []  # staging cleaned up [M5]


# -- create and names -------------------------------------------------------------


@pytest.mark.parametrize("name", ["Entwürfe", "日本語/子供", "📬 post", "Ünïcödé/ß/ǅ",
                                  "with space", "a..b", "..x/y", "...", "etc/passwd",
                                  "~root", "C:\\x", "%2e%2e", "$HOME", "*", "a%b"])
def test_create_any_unicode_name_maps_to_an_opaque_dir(boxes: MailboxList, name: str) -> None:
    info = boxes.create(name)
    assert info.name == name and not info.subscribed
    assert boxes.lookup(name) == info
    assert_opaque(boxes, info)
    raw = json.loads((boxes.dir / "mailboxes.json").read_text("utf-8"))
    assert raw["mailboxes"][name]["id"] == info.id
    append(boxes, name, b"hello")
    assert messages(boxes, name)[0].endswith(b"hello")


@pytest.mark.parametrize("name", [
    "", "/etc/passwd", "/", "a/", "a//b", "a\x00b", "\x00", "a\nb", "tab\there", "del\x7f",
    "c1\x85", "../etc/passwd", "a/../../b", "..", ".", "a/./b", "x" * 1001, "é" * 501,
    "bad\ud800surrogate",
])
def test_bad_names_refused(boxes: MailboxList, name: str) -> None:
    before = sorted(p.name for p in boxes.dir.iterdir())
    with pytest.raises(UsageError):
        boxes.create(name)
    with pytest.raises(UsageError):
        boxes.lookup(name)
    assert sorted(p.name for p in boxes.dir.iterdir()) == before


def test_name_length_limit_is_in_utf8_bytes(boxes: MailboxList) -> None:
    assert boxes.create("x" * 1000).name == "x" * 1000
    assert boxes.create("é" * 500).name == "é" * 500


def test_inbox_is_case_insensitive(boxes: MailboxList) -> None:
    inbox = boxes.lookup("INBOX")
    assert boxes.lookup("inbox") == inbox == boxes.lookup("InBoX")
    with pytest.raises(AlreadyExists):
        boxes.create("Inbox")
    assert boxes.create("inbox/Sub").name == "INBOX/Sub"
    assert boxes.lookup("INBOX/Sub").name == "INBOX/Sub"
    assert validate_mailbox_name("inboxes") == "inboxes"  # only the whole part
    assert validate_mailbox_name("x/inbox") == "x/inbox"


def test_create_duplicate(boxes: MailboxList) -> None:
    first = boxes.create("Work")
    with pytest.raises(AlreadyExists):
        boxes.create("Work")
    assert boxes.lookup("Work") == first
    assert boxes.create("work").id != first.id  # only INBOX ignores case


def test_special_use(boxes: MailboxList) -> None:
    assert boxes.create("Starred", special_use="\\flagged").special_use == "\\Flagged"
    with pytest.raises(UsageError):
        boxes.create("Odd", special_use="\\Bogus")
    with pytest.raises(NotFound):
        boxes.lookup("Odd")


def test_hierarchy_without_parents(boxes: MailboxList) -> None:
    boxes.create("a/b/c")
    snap = boxes.read()
    with pytest.raises(NotFound, match="only a parent"):
        snap.get("a")
    assert snap.implied_parents() == ["a", "a/b"]
    assert snap.has_children("a") and snap.has_children("a/b")
    assert not snap.has_children("a/b/c") and not snap.has_children("INBOX")
    assert snap.children("a") == ["a/b/c"]
    boxes.create("a")
    snap = boxes.read()
    assert snap.implied_parents() == ["a/b"] and "a" in snap


# -- rename ---------------------------------------------------------------------------


def test_rename_keeps_log_and_messages(boxes: MailboxList) -> None:
    before = boxes.create("Work")
    append(boxes, "Work", b"one", b"two")
    assert boxes.rename("Work", "Projects/Work") == {"Work": "Projects/Work"}
    after = boxes.lookup("Projects/Work")
    assert (after.id, after.uidvalidity, after.path) == (before.id, before.uidvalidity,
                                                         before.path)
    with pytest.raises(NotFound):
        boxes.lookup("Work")
    got = messages(boxes, "Projects/Work")
    assert [m[-3:] for m in got] == [b"one", b"two"]
    append(boxes, "Projects/Work", b"three")
    assert len(messages(boxes, "Projects/Work")) == 3


def test_rename_parent_renames_children(boxes: MailboxList) -> None:
    ids = {n: boxes.create(n).id for n in ["p", "p/c1", "p/c1/d", "px", "p2/c"]}
    append(boxes, "p/c1/d", b"deep")
    moves = boxes.rename("p", "q/r")
    assert moves == {"p": "q/r", "p/c1": "q/r/c1", "p/c1/d": "q/r/c1/d"}
    snap = boxes.read()
    for old, new in moves.items():
        assert snap.get(new).id == ids[old] and old not in snap
    assert snap.get("px").id == ids["px"] and snap.get("p2/c").id == ids["p2/c"]
    assert messages(boxes, "q/r/c1/d")[0].endswith(b"deep")


def test_rename_implied_parent_and_upwards(boxes: MailboxList) -> None:
    boxes.create("x/y")
    assert boxes.rename("x", "z") == {"x/y": "z/y"}
    boxes.create("a/b")
    boxes.create("a/b/b/x")
    # Moving up a level: a target that is itself being moved is no clash.
    assert boxes.rename("a/b", "a") == {"a/b": "a", "a/b/b/x": "a/b/x"}
    assert sorted(i.name for i in boxes.list() if i.name.startswith(("a", "z"))) == [
        "a", "a/b/x", "z/y"]


def test_rename_errors(boxes: MailboxList) -> None:
    boxes.create("a")
    boxes.create("b")
    boxes.create("a/c")
    snapshot = boxes.read().by_name
    with pytest.raises(AlreadyExists):
        boxes.rename("a", "b")
    with pytest.raises(AlreadyExists):
        boxes.rename("b", "a/c")
    with pytest.raises(AlreadyExists):
        boxes.rename("b", "inbox")
    with pytest.raises(AlreadyExists):
        boxes.rename("a", "a")
    with pytest.raises(UsageError):
        boxes.rename("a", "a/sub")
    with pytest.raises(NotFound):
        boxes.rename("nothing", "else")
    with pytest.raises(UsageError):
        boxes.rename("a", "../a")
    with pytest.raises(UsageError):
        boxes.rename("a", "x" * 999)  # the child "…/c" would pass 1000 bytes
    assert boxes.read().by_name == snapshot


def test_rename_inbox_moves_messages_and_leaves_it_empty(boxes: MailboxList) -> None:
    old_inbox = boxes.lookup("INBOX")
    append(boxes, "INBOX", b"first", b"second")
    child = boxes.create("INBOX/Kept")
    assert boxes.rename("inbox", "Old Mail") == {"INBOX": "Old Mail"}
    moved = boxes.lookup("Old Mail")
    assert (moved.id, moved.uidvalidity, moved.path) == (old_inbox.id, old_inbox.uidvalidity,
                                                         old_inbox.path)
    assert [m[-5:] for m in messages(boxes, "Old Mail")] == [b"first", b"econd"]
    fresh = boxes.lookup("INBOX")
    assert fresh.id != old_inbox.id and fresh.uidvalidity > old_inbox.uidvalidity
    assert_opaque(boxes, fresh)
    assert messages(boxes, "INBOX") == []
    assert boxes.lookup("INBOX/Kept") == child  # INBOX's children stay
    assert boxes.orphans() == []
    with pytest.raises(AlreadyExists):
        boxes.rename("INBOX", "Old Mail")


# -- delete ---------------------------------------------------------------------------


def test_delete(boxes: MailboxList) -> None:
    info = boxes.create("tmp")
    append(boxes, "tmp", b"gone")
    boxes.delete("tmp")
    with pytest.raises(NotFound):
        boxes.lookup("tmp")
    assert not info.path.exists()
    with pytest.raises(NotFound):
        boxes.delete("tmp")
    for inbox in ["INBOX", "inbox"]:
        with pytest.raises(UsageError):
            boxes.delete(inbox)
    assert messages(boxes, "INBOX") == []
    assert boxes.orphans() == []


def test_delete_parent_leaves_children_and_a_noselect_name(boxes: MailboxList) -> None:
    parent = boxes.create("p")
    child = boxes.create("p/c")
    boxes.delete("p")
    snap = boxes.read()
    assert "p" not in snap and snap.get("p/c") == child
    assert snap.implied_parents() == ["p"]  # LIST shows it \Noselect
    assert not parent.path.exists() and child.path.exists()
    with pytest.raises(NotFound, match="only a parent"):
        boxes.delete("p")
    assert boxes.create("p").id != parent.id


def test_uidvalidity_grows_on_delete_and_recreate(boxes: MailboxList,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen = [boxes.create("X")]
    for i in range(4):
        if i == 2:
            monkeypatch.setattr(time, "time", lambda: 1000.0)  # the clock jumps back
        boxes.delete("X")
        seen.append(boxes.create("X"))
    uvs = [i.uidvalidity for i in seen]
    assert all(b > a for a, b in itertools.pairwise(uvs)), uvs
    assert len({i.id for i in seen}) == len(seen)
    assert [read_head(i.path).uidvalidity for i in seen[-1:]] == uvs[-1:]


def test_crash_between_list_and_rmtree_leaves_a_reported_orphan(
        boxes: MailboxList, monkeypatch: pytest.MonkeyPatch) -> None:
    info = boxes.create("doomed")

    def fail(path: Any, *a: Any, **k: Any) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(shutil, "rmtree", fail)
    boxes.delete("doomed")
    monkeypatch.undo()
    with pytest.raises(NotFound):
        boxes.lookup("doomed")
    assert boxes.orphans() == [info.path]
    # A log made just before a crash, never published, is reported too.
    stray = boxes.dir / uuid.uuid4().hex
    create_log(stray, log_id=stray.name, uidvalidity=1, sync=False)
    assert boxes.orphans() == sorted([info.path, stray])


def test_failed_publish_removes_the_new_log(boxes: MailboxList,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: Any, **k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_fs, "write_file_atomic", fail)
    with pytest.raises(OSError):
        boxes.create("never")
    monkeypatch.undo()
    with pytest.raises(NotFound):
        boxes.lookup("never")
    assert boxes.orphans() == []


# -- subscriptions ---------------------------------------------------------------------


def test_subscriptions(boxes: MailboxList) -> None:
    boxes.create("news")
    assert "news" not in boxes.subscriptions()
    boxes.subscribe("news")
    assert boxes.lookup("news").subscribed and "news" in boxes.subscriptions()
    boxes.unsubscribe("news")
    assert not boxes.lookup("news").subscribed
    with pytest.raises(NotFound):
        boxes.unsubscribe("news")
    # Any name may be subscribed; deleting a mailbox keeps its subscription.
    boxes.subscribe("ghost")
    assert "ghost" in boxes.subscriptions()
    assert boxes.create("ghost").subscribed
    boxes.delete("ghost")
    assert "ghost" in boxes.subscriptions()
    boxes.unsubscribe("ghost")
    assert "ghost" not in boxes.subscriptions()
    assert set(boxes.subscriptions()) == {n for n, _ in DEFAULT_MAILBOXES}


# -- readers, damage, deleted users -------------------------------------------------------


def test_lock_free_reader_always_sees_a_whole_list(boxes: MailboxList) -> None:
    counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                counts.append(len(boxes.read()))
                time.sleep(0.0002)  # let the writer have the GIL
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            boxes.create(f"f{i}")
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert counts and counts == sorted(counts)
    assert len(boxes.read()) == len(DEFAULT_MAILBOXES) + 30


def _rewrite(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_bytes())
    data.update(fields)
    path.write_bytes(json.dumps(data).encode())


def test_damaged_or_newer_list_refused(boxes: MailboxList) -> None:
    good = boxes.file.read_bytes()
    _rewrite(boxes.file, format=2)
    with pytest.raises(FormatVersionError):
        boxes.read()
    boxes.file.write_bytes(good)
    data = json.loads(good)
    data["mailboxes"]["INBOX"]["id"] = "../../../../etc"
    boxes.file.write_bytes(json.dumps(data).encode())
    with pytest.raises(CorruptionError):
        boxes.lookup("INBOX")
    boxes.file.write_bytes(b"{")
    with pytest.raises(CorruptionError):
        boxes.list()


def test_mail_dir_gone(lock_method: str, make_config: Any) -> None:
    st = Store.initialise(make_config(lock_method=lock_method))
    uid = uuid.uuid4().hex
    boxes = MailboxList(st, uid)
    with pytest.raises(NotFound):
        boxes.list()
    create_mail_dir(st, uid)
    shutil.rmtree(st.user_dir(uid))
    with pytest.raises(NotFound):
        boxes.create("x")
    with pytest.raises(CorruptionError):
        MailboxList(st, "not-an-id")


# -- many hosts at once ------------------------------------------------------------------


def _creator(config: Config, user_id: str, worker: int, count: int, start: Any) -> None:
    boxes = MailboxList(Store(config), user_id)
    start.wait()
    for i in range(count):
        boxes.create(f"w{worker}/box {i}")
        if i % 3 == 0:
            boxes.subscribe(f"w{worker}/box {i}")


def test_concurrent_creates_from_processes(make_config: Any, lock_method: str) -> None:
    config = make_config(lock_method=lock_method)
    store = Store.initialise(config)
    uid = uuid.uuid4().hex
    create_mail_dir(store, uid)
    ctx = multiprocessing.get_context("spawn")
    workers, count = 4, 8
    start = ctx.Barrier(workers)
    procs = [ctx.Process(target=_creator, args=(config, uid, w, count, start))
             for w in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert time.monotonic() - t0 < 60
    boxes = MailboxList(store, uid)
    snap = boxes.read()
    want = {f"w{w}/box {i}" for w in range(workers) for i in range(count)}
    assert want <= set(snap.by_name)
    assert len(snap) == len(want) + len(DEFAULT_MAILBOXES)
    assert {n for n in want if snap.get(n).subscribed} == {
        f"w{w}/box {i}" for w in range(workers) for i in range(0, count, 3)}
    uvs = [i.uidvalidity for i in snap]
    assert len(set(uvs)) == len(uvs)
    assert boxes.orphans() == []
