"""The user registry: records, passwords, aliases, deletion, races between hosts."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from ams.config import Config
from ams.errors import AlreadyExists, CorruptionError, FormatVersionError, NotFound, UsageError
from ams.store import NewMessage, Store, _fs, fold
from ams.store.mailboxes import DEFAULT_MAILBOXES, MailboxList, create_mail_dir
from ams.store.users import User, UserRegistry


def fast_hasher(time_cost: int = 1) -> PasswordHasher:
    """Cheap argon2id parameters: the real defaults cost ~0.1 s per hash."""
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1)


@pytest.fixture
def reg(store: Store) -> UserRegistry:
    return UserRegistry(store, hasher=fast_hasher())


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifies += 1
        return super().verify(hash, password)


def mail_dirs(store: Store) -> list[Path]:
    return sorted(p for p in (store.root / "mail").glob("??/??/*"))


# -- adding and reading ------------------------------------------------------------


def test_add_writes_sharded_record_and_mail_dir(reg: UserRegistry, store: Store) -> None:
    user = reg.add("alice", "s3cret")
    path = store.root / "users" / _fs.shard_path("alice") / "alice.json"
    assert reg.record_path("alice") == path
    data = json.loads(path.read_bytes())
    assert data["format"] == 1 and data["name"] == "alice" and data["id"] == user.id
    assert re.fullmatch(r"[0-9a-f]{32}", user.id)
    assert data["password"].startswith("$argon2id$") and "s3cret" not in path.read_text()
    assert data["aliases"] == [] and data["forward_to"] is None and data["disabled"] is False
    assert reg.get("alice") == user
    assert "s3cret" not in repr(user) and "argon2" not in repr(user)
    udir = store.user_dir(user.id)
    assert (udir / "lock").is_file() and (udir / "mailboxes.json").is_file()
    boxes = MailboxList(store, user.id).read()
    assert {i.name for i in boxes} == {n for n, _ in DEFAULT_MAILBOXES}
    assert mail_dirs(store) == [udir]


def test_verify_password(reg: UserRegistry) -> None:
    reg.add("alice", "s3cret")
    assert reg.verify_password("alice", "s3cret")
    assert not reg.verify_password("alice", "S3cret")
    assert not reg.verify_password("alice", "")
    assert not reg.verify_password("bob", "s3cret")


@pytest.mark.parametrize("name", [
    "", "A", "Alice", ".hidden", "-opt", "a/b", "../etc", "a b", "a\x00b", "a\nb", "é",
    "x" * 65, "a@b", "a+b", "a:b", "a\\b",
])
def test_bad_names_refused(reg: UserRegistry, store: Store, name: str) -> None:
    with pytest.raises(UsageError, match="bad user name"):
        reg.add(name, "pw")
    assert not list((store.root / "users").rglob("*"))
    assert mail_dirs(store) == []


@pytest.mark.parametrize("name", ["a", "0", "_x", "a.b-c_d", "x" * 64, "a..b", "z-"])
def test_good_names_accepted(reg: UserRegistry, name: str) -> None:
    reg.add(name, "pw")
    assert reg.get(name).name == name
    assert reg.record_path(name).name == f"{name}.json"


def test_empty_password_refused(reg: UserRegistry) -> None:
    with pytest.raises(UsageError):
        reg.add("alice", "")
    assert not reg.exists("alice")


def test_duplicate_add_refused(reg: UserRegistry, store: Store) -> None:
    first = reg.add("alice", "one")
    with pytest.raises(AlreadyExists):
        reg.add("alice", "two")
    assert reg.get("alice").id == first.id
    assert reg.verify_password("alice", "one") and not reg.verify_password("alice", "two")
    assert mail_dirs(store) == [store.user_dir(first.id)]


def test_add_loser_removes_its_mail_dir(reg: UserRegistry, store: Store,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The other host claims the name between our check and our O_EXCL create.
    monkeypatch.setattr(_fs, "create_exclusive", lambda *a, **k: False)
    with pytest.raises(AlreadyExists):
        reg.add("alice", "pw")
    assert mail_dirs(store) == []
    assert not list((store.root / "mail").rglob(".new.*"))


def _racer(config: Config, names: list[str], start: Any, out: Any) -> None:
    reg = UserRegistry(Store(config), hasher=fast_hasher())
    won = []
    for n in names:
        start.wait()  # both processes add each name at the same moment
        try:
            won.append((n, reg.add(n, f"pw-{os.getpid()}").id))
        except AlreadyExists:
            pass
    out.put(won)


def test_racing_adds_from_two_processes(store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    names = [f"user{i}" for i in range(15)]
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(store.config, names, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners: dict[str, list[str]] = {}
    for won in results:
        for n, uid in won:
            winners.setdefault(n, []).append(uid)
    assert sorted(winners) == sorted(names)
    assert all(len(ids) == 1 for ids in winners.values()), winners
    reg = UserRegistry(store, hasher=fast_hasher())
    assert {n: reg.get(n).id for n in names} == {n: ids[0] for n, ids in winners.items()}
    # Losers cleaned up: exactly one mail dir per user, each the winner's.
    assert mail_dirs(store) == sorted(store.user_dir(ids[0]) for ids in winners.values())


def test_list_users(reg: UserRegistry) -> None:
    assert reg.list_users() == []
    for n in ["zed", "alice", "bob.smith", "_svc"]:
        reg.add(n, "pw")
    assert reg.list_users() == ["_svc", "alice", "bob.smith", "zed"]


# -- passwords ----------------------------------------------------------------------


def test_set_password(reg: UserRegistry) -> None:
    before = reg.add("alice", "old")
    reg.set_password("alice", "new")
    assert reg.verify_password("alice", "new") and not reg.verify_password("alice", "old")
    after = reg.get("alice")
    assert after.id == before.id and after.password_hash != before.password_hash
    with pytest.raises(NotFound):
        reg.set_password("ghost", "x")
    with pytest.raises(UsageError):
        reg.set_password("alice", "")


def test_unknown_user_costs_one_verify(store: Store) -> None:
    hasher = CountingHasher()
    reg = UserRegistry(store, hasher=hasher)
    reg.add("alice", "pw")
    for name in ["alice", "nobody", "../etc/passwd", "Alice"]:
        before = hasher.verifies
        reg.verify_password(name, "pw")
        assert hasher.verifies == before + 1, name
    assert not reg.verify_password("nobody", "pw")


def test_rehash_on_stronger_parameters(store: Store) -> None:
    UserRegistry(store, hasher=fast_hasher()).add("alice", "pw")
    assert ",t=1," in UserRegistry(store).get("alice").password_hash
    stronger = UserRegistry(store, hasher=fast_hasher(time_cost=2))
    assert not stronger.verify_password("alice", "wrong")
    assert ",t=1," in stronger.get("alice").password_hash  # no rehash on failure
    assert stronger.verify_password("alice", "pw")
    assert ",t=2," in stronger.get("alice").password_hash
    assert stronger.verify_password("alice", "pw")


def test_disabled_user_cannot_log_in(reg: UserRegistry) -> None:
    reg.add("alice", "pw")
    reg.set_disabled("alice", True)
    assert reg.get("alice").disabled
    assert not reg.verify_password("alice", "pw")
    reg.set_disabled("alice", False)
    assert reg.verify_password("alice", "pw")


def test_forward(reg: UserRegistry) -> None:
    reg.add("alice", "pw", forward_to="a@elsewhere.test")
    assert reg.get("alice").forward_to == "a@elsewhere.test"
    reg.set_forward("alice", None)
    assert reg.get("alice").forward_to is None
    for bad in ["nope", "a b@c", "<a@b>", "a@b@c", ""]:
        with pytest.raises(UsageError):
            reg.set_forward("alice", bad)
    with pytest.raises(UsageError):
        reg.add("bob", "pw", forward_to="bad")
    assert not reg.exists("bob")


# -- deleting -----------------------------------------------------------------------


def test_delete_and_recreate_starts_empty(reg: UserRegistry, store: Store) -> None:
    old = reg.add("bob", "pw")
    reg.mailboxes("bob").open("INBOX").append([NewMessage(b"Subject: old\r\n\r\nx", 1)])
    old_dir = store.user_dir(old.id)
    assert reg.delete("bob").id == old.id
    with pytest.raises(NotFound):
        reg.get("bob")
    assert not reg.verify_password("bob", "pw")
    assert not old_dir.exists()
    assert reg.purge_deleted() == 0  # removed at once by default
    with pytest.raises(NotFound):
        MailboxList(store, old.id).create("x")
    new = reg.add("bob", "pw2")
    assert new.id != old.id
    inbox = reg.mailboxes("bob").open("INBOX")
    assert fold(inbox.reader().records()).messages == {}
    assert mail_dirs(store) == [store.user_dir(new.id)]
    assert not list(store.staging_dir().iterdir())  # the claimed record is gone too


def test_delete_keep_mail_then_purge(reg: UserRegistry, store: Store) -> None:
    user = reg.add("bob", "pw")
    reg.delete("bob", keep_mail=True)
    kept = store.root / "mail" / ".deleted" / user.id
    assert (kept / "mailboxes.json").is_file()
    assert mail_dirs(store) == []
    assert reg.purge_deleted() == 1
    assert not kept.exists()


def test_delete_unknown(reg: UserRegistry) -> None:
    with pytest.raises(NotFound):
        reg.delete("ghost")
    reg.add("bob", "pw")
    reg.delete("bob")
    with pytest.raises(NotFound):
        reg.delete("bob")


def test_update_after_delete_does_not_resurrect(reg: UserRegistry) -> None:
    reg.add("bob", "pw")
    reg.delete("bob")
    with pytest.raises(NotFound):
        reg.set_password("bob", "x")
    with pytest.raises(NotFound):
        reg.set_disabled("bob", True)
    with pytest.raises(NotFound):
        reg.add_alias("bob", "info")
    assert not reg.exists("bob")


# -- aliases ------------------------------------------------------------------------


def test_aliases_resolve_through_the_index(reg: UserRegistry, store: Store,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reg.add("alice", "pw")
    reg.add("bob", "pw")
    reg.add_alias("alice", "info")
    reg.add_alias("bob", "Info")
    assert reg.get("bob").aliases == ("info",)
    index = store.root / "aliases" / _fs.shard_path("info") / "info.json"
    assert json.loads(index.read_bytes())["users"] == ["alice", "bob"]
    # Lookup reads the index, never the list of users.
    def no_scan(self: UserRegistry) -> list[str]:
        pytest.fail("resolve scanned the users")

    monkeypatch.setattr(UserRegistry, "list_users", no_scan)
    assert [u.name for u in reg.resolve("INFO")] == ["alice", "bob"]
    assert [u.name for u in reg.resolve("alice")] == ["alice"]
    assert reg.resolve("nobody") == [] and reg.resolve("../x") == []
    reg.remove_alias("alice", "info")
    assert [u.name for u in reg.resolve("info")] == ["bob"]
    with pytest.raises(NotFound):
        reg.remove_alias("alice", "info")
    reg.remove_alias("bob", "info")
    assert reg.resolve("info") == [] and not index.exists()


def test_alias_cannot_shadow_a_user(reg: UserRegistry) -> None:
    reg.add("alice", "pw")
    reg.add("bob", "pw")
    with pytest.raises(AlreadyExists):
        reg.add_alias("alice", "bob")
    with pytest.raises(UsageError):
        reg.add_alias("alice", "no/slash")
    with pytest.raises(NotFound):
        reg.add_alias("ghost", "info")
    assert reg.get("alice").aliases == ()


def test_stale_alias_index_entries_are_ignored(reg: UserRegistry, store: Store) -> None:
    reg.add("alice", "pw")
    reg.add_alias("alice", "info")
    # A crash between index and record (or a deleted user) leaves the index
    # naming someone whose record lacks the alias [U4].
    reg.add("carol", "pw")
    index = reg.alias_path("info")
    index.write_bytes(_fs.dump_json({"format": 1, "alias": "info",
                                     "users": ["alice", "carol", "gone"]}))
    assert [u.name for u in reg.resolve("info")] == ["alice"]
    reg.delete("alice")
    assert reg.resolve("info") == []
    assert json.loads(index.read_bytes())["users"] == ["carol", "gone"]


# -- damage and fsck -------------------------------------------------------------------


def _rewrite(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_bytes())
    data.update(fields)
    path.write_bytes(json.dumps(data).encode())


def test_newer_or_damaged_records_refused(reg: UserRegistry) -> None:
    reg.add("alice", "pw")
    path = reg.record_path("alice")
    good = path.read_bytes()
    _rewrite(path, format=99)
    with pytest.raises(FormatVersionError):
        reg.get("alice")
    path.write_bytes(good)
    _rewrite(path, id="../../../etc")  # an id must never become a path
    with pytest.raises(CorruptionError):
        reg.get("alice")
    path.write_bytes(good)
    _rewrite(path, name="mallory")
    with pytest.raises(CorruptionError):
        reg.get("alice")
    path.write_bytes(b"{not json")
    os.utime(path, (1, 1))  # old: damage, not a create in progress
    with pytest.raises(CorruptionError):
        reg.get("alice")
    assert not reg.verify_password("alice", "pw")


def test_orphan_mail_dirs(reg: UserRegistry, store: Store) -> None:
    alice = reg.add("alice", "pw")
    assert reg.orphan_mail_dirs() == []
    # A crash after the mail dir was made, before the record claimed the name.
    orphan = create_mail_dir(store, "f" * 32)
    assert reg.orphan_mail_dirs() == [orphan]
    assert store.user_dir(alice.id) not in reg.orphan_mail_dirs()


def test_user_record_roundtrip() -> None:
    u = User(name="a", id="0" * 32, password_hash="h", created="t", aliases=("x",),
             forward_to="f@g", disabled=True)
    assert User.from_json(json.loads(u.to_json()), name="a", path=Path("p")) == u
