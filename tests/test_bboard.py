"""Bboards through their API: names, registry, policies, moderation, expiry, crashes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from ams.config import Config
from ams.errors import AlreadyExists, CorruptionError, NotFound, UsageError
from ams.index import Index
from ams.store import LogReader, Store, fold
from ams.store.format import Append
from bboard import Bboards, BoardInfo, NotPermitted, serve_expiry, validate_board_name
from tests.conftest import MakeConfig
from tests.mx_helpers import add_users
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent
DAY_NS = 86400 * 10**9


@pytest.fixture
def boards(store: Store) -> Bboards:
    return Bboards(store, add_users(store, "alice", "bob", "carol", "mod"))


def msg(tag: str) -> bytes:
    return f"From: x@example.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@t>\r\n\r\n{tag}\r\n".encode()


def subjects(boards: Bboards, info: BoardInfo, *, pending: bool = False) -> dict[int, str]:
    lg = boards.open_pending(info) if pending else boards.open(info)
    out = {}
    for uid, m in sorted(fold(lg.reader()).messages.items()):
        body = lg.read_message(m.location)
        out[uid] = body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
    return out


@contextmanager
def clock_back(monkeypatch: pytest.MonkeyPatch, days: float) -> Iterator[None]:
    """Posts made inside are dated ``days`` ago (a fake wall clock, nothing else)."""
    real = time.time_ns
    with monkeypatch.context() as m:
        m.setattr(time, "time_ns", lambda: real() - int(days * DAY_NS))
        yield


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["andrew.general", "org.acm.announce", "a", "x_y-z.9",
                                  "_hidden", "a" * 100, ".".join("a" * 16)])
def test_good_names(name: str) -> None:
    assert validate_board_name(name) == name


@pytest.mark.parametrize("name", ["", "..", ".", "a..b", ".a", "a.", "a/b", "../etc",
                                  "a\x00b", "Andrew.General", "a b", "-a", "a.-b", "é",
                                  "a" * 101, ".".join("a" * 17), "a\nb", "a\\b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="bboard name"):
        validate_board_name(name)


def test_name_is_never_a_path(boards: Bboards) -> None:
    info = boards.create("andrew.general")
    assert info.path.name == info.id and len(info.id) == 32
    assert "andrew" not in str(info.path.relative_to(boards.store.root))
    with pytest.raises(UsageError):
        boards.lookup("../../users")


# -- registry ----------------------------------------------------------------------------


def test_create_lookup_update_delete(boards: Bboards) -> None:
    a = boards.create("andrew.general", description="General", post="members",
                      members=["alice"], moderators=["mod"], expire_days=7)
    assert boards.lookup("andrew.general") == a
    assert [b.name for b in boards.list()] == ["andrew.general"]
    with pytest.raises(AlreadyExists):
        boards.create("andrew.general")
    with pytest.raises(NotFound, match="no user 'nobody'"):
        boards.create("x", members=["nobody"])
    b = boards.update("andrew.general", add_members=["bob"], remove_members=["alice"],
                      read="list", add_readers=["carol"], description="Changed")
    assert (b.members, b.readers, b.read, b.description) == (
        frozenset({"bob"}), frozenset({"carol"}), "list", "Changed")
    assert boards.lookup("andrew.general") == b  # the cache saw the new file
    with pytest.raises(UsageError, match="moderator"):
        boards.update("andrew.general", post="moderated", remove_moderators=["mod"])
    boards.delete("andrew.general")
    with pytest.raises(NotFound):
        boards.lookup("andrew.general")
    assert not a.path.exists() and boards.list() == []
    again = boards.create("andrew.general")
    assert again.id != a.id and again.uidvalidity > a.uidvalidity  # [B4]


def test_damaged_policy_is_refused_not_taken_as_open(boards: Bboards) -> None:
    info = boards.create("a.b", post="members", members=["alice"])
    f = info.path / "board.json"
    data = json.loads(f.read_bytes())
    data["post"] = "anyone"
    f.write_text(json.dumps(data))
    with pytest.raises(CorruptionError):
        Bboards(boards.store).lookup("a.b")


def run_py(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=WAIT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                        **(env or {})})


def store_code(config: Config) -> str:
    return ("from ams.config import config_from_dict\nfrom ams.store import Store\n"
            "from bboard import Bboards\n"
            f"store = Store(config_from_dict({json.dumps(cfg_dict(config))}))\n"
            "boards = Bboards(store)\n")


def cfg_dict(config: Config) -> dict[str, object]:
    return {"store": {"root": str(config.store.root), "fsync": config.store.fsync,
                      "lock_method": config.store.lock_method},
            "host": {"name": config.host.name, "cache_dir": str(config.host.cache_dir)},
            "mail": {"domains": list(config.mail.domains)}}


# -- posting and policy --------------------------------------------------------------------


def test_policies(boards: Bboards) -> None:
    open_ = boards.create("open.board")
    members = boards.create("members.board", post="members", members=["alice"],
                            moderators=["mod"])
    private = boards.create("private.board", read="list", readers=["bob"],
                            moderators=["mod"])
    assert boards.post(open_, msg("o1"), user="carol").uid == 1
    assert boards.post(open_, msg("o2"), user=None).uid == 2  # mail from anyone
    assert boards.post(members, msg("m1"), user="alice").uid == 1
    assert boards.post(members, msg("m2"), user="mod").uid == 2
    for who in ("carol", None):
        with pytest.raises(NotPermitted, match="only members"):
            boards.post(members, msg("no"), user=who)
    assert subjects(boards, members) == {1: "m1", 2: "m2"}  # nothing half-posted
    assert [boards.can_read(private, u) for u in ("alice", "bob", "mod", None)] == [
        False, True, True, False]
    with pytest.raises(NotPermitted, match="may not read"):
        boards.check_read(private, "alice")
    with pytest.raises(NotPermitted, match="not a moderator"):
        boards.expunge(open_, [1], user="alice")
    with pytest.raises(UsageError, match="empty"):
        boards.post(open_, b"", user="alice")


def test_delivery_id_posts_once(boards: Bboards) -> None:
    info = boards.create("a.b")
    first = boards.post(info, msg("x"), user="alice", delivery_id="imap/1")
    again = boards.post(info, msg("x"), user="alice", delivery_id="imap/1")
    assert (again.uid, again.duplicate) == (first.uid, True)
    assert list(subjects(boards, info)) == [1]


def test_moderated_posts_wait_until_approved(boards: Bboards) -> None:
    info = boards.create("mod.board", post="moderated", moderators=["mod"])
    r = boards.post(info, msg("wait"), user="alice")
    assert (r.uid, r.pending, r.published) == (None, 1, False)
    assert subjects(boards, info) == {}  # invisible to readers
    assert boards.post(info, msg("own"), user="mod").uid == 1  # a moderator publishes
    r2 = boards.post(info, msg("spam"), user="bob")
    assert [(p.uid, p.subject) for p in boards.pending(info)] == [(1, "wait"), (2, "spam")]
    with pytest.raises(NotPermitted):
        boards.approve(info, 1, moderator="alice")
    ok = boards.approve(info, 1, moderator="mod")
    assert (ok.uid, ok.duplicate) == (2, False)
    boards.reject(info, r2.pending or 0, moderator="mod")
    assert subjects(boards, info) == {1: "own", 2: "wait"}
    assert boards.pending(info) == []
    with pytest.raises(NotFound, match="no pending post 1"):
        boards.approve(info, 1, moderator="mod")


def test_crash_between_publish_and_expunge_publishes_once(boards: Bboards,
                                                          store: Store) -> None:
    """[P2] approve dies after the copy, before the expunge: approving again finishes."""
    info = boards.create("mod.board", post="moderated", moderators=["mod"])
    boards.post(info, msg("once"), user="alice")
    code = store_code(store.config) + "boards.approve(boards.lookup('mod.board'), 1, " \
                                      "moderator='mod')\n"
    r = run_py(code, env={"AMS_CRASHPOINT": "bboard-approve-published"})
    assert r.returncode == 137, r.stderr
    assert subjects(boards, info) == {1: "once"}
    assert [p.uid for p in boards.pending(info)] == [1]  # not expunged yet
    again = boards.approve(info, 1, moderator="mod")
    assert (again.uid, again.duplicate) == (1, True)
    assert subjects(boards, info) == {1: "once"} and boards.pending(info) == []


def test_crash_during_create_leaves_no_name(boards: Bboards, store: Store) -> None:
    """[B2] the board dir is complete before the registry names it."""
    r = run_py(store_code(store.config) + "boards.create('half.made')\n",
               env={"AMS_CRASHPOINT": "bboard-create-before-registry"})
    assert r.returncode == 137, r.stderr
    with pytest.raises(NotFound):
        boards.lookup("half.made")
    (orphan,) = boards.registry.orphans()
    assert (orphan / "posts" / "head").exists() and (orphan / "board.json").exists()
    assert boards.create("half.made").path != orphan


# -- expiry --------------------------------------------------------------------------------


def test_expiry_removes_exactly_the_expired_while_a_reader_is_open(
        boards: Bboards, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    info = boards.create("old.news", expire_days=30)
    with clock_back(monkeypatch, 40):
        for i in range(1, 7):
            boards.post(info, msg(f"old{i}"), user="alice")
    with clock_back(monkeypatch, 29):
        boards.post(info, msg("young7"), user="alice")  # inside the window: stays
    for i in range(8, 11):
        boards.post(info, msg(f"new{i}"), user="alice")
    lg = boards.open(info)
    # An open reader: the local index and a LogReader, both at the tail, with
    # the locations of every post in hand.
    index = Index(store.config)
    try:
        index.update(lg)
        held = {m.uid: m.location for m in index.messages(info.id)}
        reader = LogReader(lg.path)
        assert len(reader.poll().records) == 10
        # ``ams bboard expire`` as its own process.
        r = subprocess.run([sys.executable, "-m", "ams.cli", "--config",
                            str(write_toml(store.config)), "bboard", "expire"],
                           cwd=ROOT, capture_output=True, text=True, timeout=WAIT)
        assert r.returncode == 0, r.stderr
        assert "old.news: expired 6 posts, compacted" in r.stdout
        assert subjects(boards, info) == {7: "young7", 8: "new8", 9: "new9", 10: "new10"}
        # The reader can still read what it had: the old generation is kept
        # for the compaction grace period.
        for uid, loc in held.items():
            assert lg.read_message(loc).endswith(
                f"{'old' if uid < 7 else 'young' if uid == 7 else 'new'}{uid}\r\n".encode())
        # Its next poll follows SEALED into the new generation: a reset that
        # replays exactly the surviving posts.
        batch = reader.poll()
        assert batch.reset and [rec.uid for rec in batch.records
                                if isinstance(rec.body, Append)] == [7, 8, 9, 10]
        up = index.update(lg)
        assert up.expunged == (1, 2, 3, 4, 5, 6) and index.uids(info.id) == [7, 8, 9, 10]
    finally:
        index.close()
    # A second run finds nothing, cheaply (it stops at the first young post).
    assert boards.expire(info).expired == 0
    boards.post(info, msg("after"), user="alice")
    assert boards.post(info, msg("after2"), user="alice").uid == 12  # UIDs never reused


def test_expiry_counts_exactly_after_an_expunge_without_compaction(
        boards: Bboards, monkeypatch: pytest.MonkeyPatch) -> None:
    info = boards.create("b", expire_days=1, moderators=["mod"])
    with clock_back(monkeypatch, 2):
        for i in range(4):
            boards.post(info, msg(f"o{i}"), user="alice")
    boards.post(info, msg("n"), user="alice")
    boards.expunge(info, [2], user="mod")
    assert boards.expire(info, compact=False).expired == 3
    assert boards.expire(info, compact=False).expired == 0
    assert subjects(boards, info) == {5: "n"}


def test_pending_posts_expire_too(boards: Bboards, monkeypatch: pytest.MonkeyPatch) -> None:
    info = boards.create("m", post="moderated", moderators=["mod"], expire_days=3)
    with clock_back(monkeypatch, 5):
        boards.post(info, msg("stale"), user="alice")
    boards.post(info, msg("fresh"), user="alice")
    r = boards.expire(info)
    assert (r.expired, r.pending_expired) == (0, 1)
    assert [p.subject for p in boards.pending(info)] == ["fresh"]


async def test_serve_expiry_runs_periodically(make_config: MakeConfig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.initialise(make_config())
    boards = Bboards(store, add_users(store, "alice"))
    info = boards.create("a.b", expire_days=10)
    with clock_back(monkeypatch, 11):
        for i in range(3):
            boards.post(info, msg(f"old{i}"), user="alice")
    boards.post(info, msg("new"), user="alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_expiry, store.config, interval=0.05))
        with trio.fail_after(WAIT):
            while len(subjects(boards, info)) != 1:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert subjects(boards, info) == {4: "new"}


def write_toml(config: Config) -> Path:
    from ams.config import render_config
    path = Path(config.store.root).parent / "ams.toml"
    path.write_text(render_config(config))
    return path
