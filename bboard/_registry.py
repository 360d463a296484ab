"""The bboard registry: which boards exist, their ids, policies and directories.

Theory of operation
-------------------
A board has a hierarchical, dot-separated name (``andrew.general``,
``org.acm.announce``).  Names are checked by :func:`validate_board_name` and
mapped to a random id; no name is ever part of a path.  Everything on disk
lives under ``bboards/`` in the store root::

    bboards/lock                 empty; the registry's lock under the fcntl method
    bboards/boards.json          the registry: every board's name → id
    bboards/ab/cd/BOARDID/       one board (ab/cd = shard_path(BOARDID))
        board.json               its description and policies
        lock                     empty; the board's lock (changes to board.json)
        posts/                   the published posts: a log (ams.store.log)
        pending/                 posts waiting for a moderator: a log, same format
    bboards/users/ab/cd/USERID/  per-user state (bboard._state)
    bboards/.deleted/            boards on their way out

Board names: one or more components separated by ``.``; a component is 1 or
more of ``a-z 0-9 _ -`` and does not start with ``-``; at most
:data:`MAX_COMPONENTS` components and :data:`MAX_NAME_LENGTH` characters in
all.  So no uppercase, no empty component (``a..b``, a leading or trailing
dot), no ``/``, NUL, space or other byte; ``..`` alone is refused as two
empty components.  Mail addresses are case-insensitive in practice, so the
delivery side lowercases the part after ``mail.bboard_prefix`` before it
checks it; the command line refuses uppercase outright.

``boards.json``, format 1 (``dump_json``: UTF-8, sorted keys)::

    {"format": 1,
     "next_uidvalidity": 1718000006,
     "boards": {"andrew.general": {"id": "<32 hex>", "uidvalidity": 1718000000,
                                   "created": "2024-06-10T08:00:00+00:00"}}}

The registry is one file, not a directory of entries: boards are created by
administrators, a few thousand at most, and one read of one file lists them
all (IMAP LIST), where a sharded tree would need a walk.

``board.json``, format 1::

    {"format": 1, "name": "andrew.general", "id": "<32 hex>",
     "pending_id": "<32 hex>",            the pending log's id (names its lock)
     "uidvalidity": 1718000000,           the posts log's UIDVALIDITY
     "created": "2024-06-10T08:00:00+00:00",
     "description": "General discussion",
     "post": "open" | "members" | "moderated",
     "read": "all" | "list",
     "members": ["alice"], "readers": [], "moderators": ["bob"],
     "expire_days": 30}                   0: posts never expire

The posts log's id (its ``head`` id, the key of the local index) is the
board id; the pending log's is ``pending_id``.  Both logs are ordinary
mailbox logs: posting appends a record under the log's lock and changes no
directory.

Policies: ``post = open``: anyone who can reach the board may post (a local
user, or anyone by mail); ``members``: the members and moderators only;
``moderated``: anyone, but a post waits in ``pending/`` until a moderator
approves it, except a moderator's own post through an authenticated channel
(the command line, IMAP).  ``read = all``: every user; ``list``: the readers
and moderators only.

Invariants (cited in the code as ``[B1]`` … ``[B5]``):

B1. No board name is ever part of a path.  A board lives at
    ``bboards/<shard_path(id)>/<id>`` and every id read from disk is checked
    to be 32 lowercase hex digits, so even a damaged file cannot point
    outside.
B2. Every name in a published registry names a complete board.  A board
    directory is assembled under a staging name beside its final place
    (``board.json``, ``lock``, both logs, each fsynced), renamed into place
    and the directory fsynced, and only then is the registry naming it
    published.  Deleting publishes the registry without the name first,
    then moves the directory to ``bboards/.deleted/`` and removes it.  A
    crash leaves at worst a directory no name points at
    (:meth:`BoardRegistry.orphans`), never a name without its board.
B3. The registry changes only by read-modify-write under the registry lock,
    ``board.json`` only under the board's lock; both are published with
    ``write_file_atomic`` (staging in this host's tmp dir, fsync, rename,
    fsync dir) after :meth:`Lock.check`.  Readers take no lock and always
    see a whole file.
B4. UIDVALIDITY only grows across boards: a new board gets
    ``max(next_uidvalidity, now)`` and the registry's ``next_uidvalidity``
    moves past it in the same publish that adds the name, so a board
    deleted and created again under the same name has a strictly larger
    UIDVALIDITY (and a new id).
B5. Policy lists hold only names that passed ``validate_user_name``; a
    policy value outside the documented set is refused on read
    (CorruptionError), never silently taken as "open".
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ams.errors import (
    AlreadyExists,
    AMSError,
    CorruptionError,
    FormatVersionError,
    NotFound,
    StoreError,
    UsageError,
)
from ams.store import Store, _fs, create_log, validate_user_name
from ams.store.lock import Lock
from ams.store.mailboxes import check_id, now_iso

log = logging.getLogger(__name__)

REGISTRY_FORMAT = 1
BOARD_FORMAT = 1
REGISTRY_FILE = "boards.json"
BOARD_FILE = "board.json"
LOCK_FILE = "lock"
POSTS_DIR = "posts"
PENDING_DIR = "pending"
MAX_NAME_LENGTH = 100
MAX_COMPONENTS = 16
MAX_DESCRIPTION = 1000
MAX_EXPIRE_DAYS = 100 * 366
POST_POLICIES = ("open", "members", "moderated")
READ_POLICIES = ("all", "list")
PostPolicy = Literal["open", "members", "moderated"]
ReadPolicy = Literal["all", "list"]
_COMPONENT_RE = re.compile(r"[a-z0-9_][a-z0-9_-]*")
_UIDVALIDITY_MAX = 2**32 - 1
#: Crash injection for tests (as in ams.store.log): $AMS_CRASHPOINT names
#: the point where the process dies, as a SIGKILL would leave it.
_CRASHPOINT = os.environ.get("AMS_CRASHPOINT", "")


class NotPermitted(AMSError):
    """A board's policy refuses this user the action (post, read, moderate)."""


def validate_board_name(name: object) -> str:
    """Return ``name`` if it is a valid board name; UsageError saying why if not."""
    if not isinstance(name, str) or not name:
        raise UsageError("a bboard name must not be empty")
    shown = repr(name) if len(name) <= 120 else repr(name[:120]) + "…"
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"bad bboard name {shown}: longer than {MAX_NAME_LENGTH} characters")
    parts = name.split(".")
    if "" in parts:
        raise UsageError(f"bad bboard name {shown}: empty component (leading, trailing or "
                         "doubled '.')")
    if len(parts) > MAX_COMPONENTS:
        raise UsageError(f"bad bboard name {shown}: more than {MAX_COMPONENTS} components")
    for p in parts:
        if not _COMPONENT_RE.fullmatch(p):
            raise UsageError(f"bad bboard name {shown}: components are lowercase a-z, 0-9, "
                             "'_' and '-', not starting with '-'")
    return name


def _check_policy(value: object, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"bad {what} policy {value!r}: one of {', '.join(allowed)}")
    return str(value)


def _check_users(names: Iterable[str], what: str) -> frozenset[str]:
    return frozenset(validate_user_name(n, what=what) for n in names)


@dataclass(frozen=True)
class BoardInfo:
    """One board as its ``board.json`` said when it was read."""

    name: str
    id: str
    pending_id: str
    uidvalidity: int
    created: str
    description: str = ""
    post: PostPolicy = "open"
    read: ReadPolicy = "all"
    members: frozenset[str] = frozenset()
    readers: frozenset[str] = frozenset()
    moderators: frozenset[str] = frozenset()
    expire_days: int = 0
    #: ``bboards/ab/cd/<id>`` [B1].
    path: Path = field(default=Path(), compare=False)

    @property
    def posts_path(self) -> Path:
        return self.path / POSTS_DIR

    @property
    def pending_path(self) -> Path:
        return self.path / PENDING_DIR

    def to_json(self) -> bytes:
        return _fs.dump_json({
            "format": BOARD_FORMAT, "name": self.name, "id": self.id,
            "pending_id": self.pending_id, "uidvalidity": self.uidvalidity,
            "created": self.created, "description": self.description, "post": self.post,
            "read": self.read, "members": sorted(self.members),
            "readers": sorted(self.readers), "moderators": sorted(self.moderators),
            "expire_days": self.expire_days})

    @classmethod
    def from_json(cls, data: Any, *, path: Path, board_dir: Path) -> BoardInfo:
        if not isinstance(data, dict) or not isinstance(data.get("format"), int):
            raise CorruptionError("board file lacks a format field", path=path)
        if data["format"] > BOARD_FORMAT:
            raise FormatVersionError(f"{path}: board format {data['format']} is newer than "
                                     f"this AMS ({BOARD_FORMAT})")
        try:
            post = data["post"]
            read = data["read"]
            if post not in POST_POLICIES or read not in READ_POLICIES:  # [B5]
                raise ValueError("unknown policy")
            info = cls(
                name=validate_board_name(data["name"]), id=check_id(data["id"], path=path),
                pending_id=check_id(data["pending_id"], path=path),
                uidvalidity=int(data["uidvalidity"]), created=str(data["created"]),
                description=str(data.get("description", "")), post=post, read=read,
                members=_check_users(data.get("members", []), "member"),
                readers=_check_users(data.get("readers", []), "reader"),
                moderators=_check_users(data.get("moderators", []), "moderator"),
                expire_days=int(data.get("expire_days", 0)), path=board_dir)
        except (KeyError, TypeError, ValueError, UsageError):
            raise CorruptionError("board file is missing fields or has bad values",
                                  path=path) from None
        if info.path.name != info.id:
            raise CorruptionError(f"board file names id {info.id}, its directory another",
                                  path=path)
        return info


@dataclass(frozen=True)
class _Entry:
    id: str
    uidvalidity: int
    created: str


@dataclass(frozen=True)
class _Registry:
    next_uidvalidity: int
    boards: dict[str, _Entry]


def _parse_registry(data: Any, path: Path) -> _Registry:
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise CorruptionError("bboard registry lacks a format field", path=path)
    if data["format"] > REGISTRY_FORMAT:
        raise FormatVersionError(f"{path}: bboard registry format {data['format']} is newer "
                                 f"than this AMS ({REGISTRY_FORMAT})")
    try:
        boards = {validate_board_name(n): _Entry(check_id(e["id"], path=path),
                                                  int(e["uidvalidity"]), str(e["created"]))
                  for n, e in data["boards"].items()}
        return _Registry(int(data["next_uidvalidity"]), boards)
    except (KeyError, TypeError, ValueError, AttributeError, UsageError):
        raise CorruptionError("bboard registry is missing fields", path=path) from None


def _dump_registry(reg: _Registry) -> bytes:
    return _fs.dump_json({
        "format": REGISTRY_FORMAT, "next_uidvalidity": reg.next_uidvalidity,
        "boards": {n: {"id": e.id, "uidvalidity": e.uidvalidity, "created": e.created}
                   for n, e in reg.boards.items()}})


_StatKey = tuple[int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    # Files here are only ever replaced by rename, so a change shows in the
    # inode, and mtime/ctime/size guard against an inode being reused.
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class BoardRegistry:
    """The boards of one store.  Synchronous and thread-safe.

    Reads are cached per file and revalidated with one ``stat`` each, so
    looking a board up costs two stats when nothing changed.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "bboards"
        self.file = self.root / REGISTRY_FILE
        self._mutex = threading.Lock()
        self._registry: tuple[_StatKey, _Registry] | None = None
        self._boards: dict[str, tuple[_StatKey, BoardInfo]] = {}

    # -- paths ---------------------------------------------------------------------

    def board_dir(self, board_id: str) -> Path:
        return self.root / _fs.shard_path(check_id(board_id)) / board_id  # [B1]

    # -- reading (no lock) [B3] ------------------------------------------------------

    def _read_registry(self) -> _Registry:
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            return _Registry(0, {})
        key = _stat_key(st)
        with self._mutex:
            if self._registry is not None and self._registry[0] == key:
                return self._registry[1]
        try:
            with open(self.file, "rb") as f:
                key = _stat_key(os.fstat(f.fileno()))
                raw = f.read()
        except FileNotFoundError:
            return _Registry(0, {})
        try:
            reg = _parse_registry(json.loads(raw), self.file)
        except ValueError:
            raise CorruptionError("bboard registry is not valid JSON", path=self.file) from None
        with self._mutex:
            self._registry = (key, reg)
        return reg

    def names(self) -> list[str]:
        return sorted(self._read_registry().boards)

    def board_id(self, name: str) -> str:
        """The id of board ``name``; NotFound if there is none."""
        entry = self._read_registry().boards.get(validate_board_name(name))
        if entry is None:
            raise NotFound(f"no bboard {name!r}")
        return entry.id

    def lookup(self, name: str) -> BoardInfo:
        name = validate_board_name(name)
        info = self._read_board(self.board_id(name))
        if info.name != name:
            raise CorruptionError(f"the registry says {name!r}, the board file {info.name!r}",
                                  path=info.path / BOARD_FILE)
        return info

    def list(self) -> list[BoardInfo]:
        """Every board, by name.  A board deleted meanwhile is left out."""
        out: list[BoardInfo] = []
        for _name, entry in sorted(self._read_registry().boards.items()):
            try:
                out.append(self._read_board(entry.id))
            except NotFound:
                continue
        return out

    def _read_board(self, board_id: str) -> BoardInfo:
        d = self.board_dir(board_id)
        path = d / BOARD_FILE
        try:
            with open(path, "rb") as f:
                key = _stat_key(os.fstat(f.fileno()))
                with self._mutex:
                    hit = self._boards.get(board_id)
                if hit is not None and hit[0] == key:
                    return hit[1]
                raw = f.read()
        except FileNotFoundError:
            raise NotFound(f"bboard {board_id} is gone (deleted meanwhile?)") from None
        try:
            info = BoardInfo.from_json(json.loads(raw), path=path, board_dir=d)
        except ValueError:
            raise CorruptionError("board file is not valid JSON", path=path) from None
        with self._mutex:
            if len(self._boards) > 10_000:
                self._boards.clear()
            self._boards[board_id] = (key, info)
        return info

    # -- changing [B2, B3] ----------------------------------------------------------------

    def create(self, name: str, *, description: str = "", post: str = "open",
               read: str = "all", members: Iterable[str] = (), readers: Iterable[str] = (),
               moderators: Iterable[str] = (), expire_days: int = 0) -> BoardInfo:
        """Create board ``name``; AlreadyExists if it is there."""
        name = validate_board_name(name)
        draft = BoardInfo(name=name, id=uuid.uuid4().hex, pending_id=uuid.uuid4().hex,
                          uidvalidity=0, created=now_iso(), description=description,
                          post=_check_policy(post, POST_POLICIES, "post"),  # type: ignore[arg-type]
                          read=_check_policy(read, READ_POLICIES, "read"),  # type: ignore[arg-type]
                          members=_check_users(members, "member"),
                          readers=_check_users(readers, "reader"),
                          moderators=_check_users(moderators, "moderator"),
                          expire_days=expire_days)
        _check_settings(draft)
        sync = self.store.fsync
        _fs.makedirs(self.root, sync=sync)
        with self._locked() as lock:
            reg = self._read_registry()
            if name in reg.boards:
                raise AlreadyExists(f"bboard {name!r} exists already")
            uv = max(reg.next_uidvalidity, int(time.time()), 1)  # [B4]
            if uv >= _UIDVALIDITY_MAX:
                raise StoreError("UIDVALIDITY space exhausted for bboards")
            info = dataclasses.replace(draft, uidvalidity=uv,
                                       path=self.board_dir(draft.id))
            self._make_board_dir(info)
            if _CRASHPOINT == "bboard-create-before-registry":
                os._exit(137)
            boards = dict(reg.boards)
            boards[name] = _Entry(info.id, uv, info.created)
            try:
                self._publish(lock, _Registry(uv + 1, boards))
            except BaseException:
                self._remove_dir(info.path)
                raise
        return info

    def update(self, name: str, **changes: Any) -> BoardInfo:
        """Change board ``name``'s settings (keyword: a BoardInfo field).

        ``add_members``/``remove_members`` (and readers, moderators) change
        the lists; ``members=`` replaces one.  Under the board's lock [B3].
        """
        info = self.lookup(name)
        with self._board_lock(info) as lock:
            current = self._read_board(info.id)
            new = _apply_changes(current, changes)
            _check_settings(new)
            if new != current:
                lock.check()
                _fs.write_file_atomic(info.path / BOARD_FILE, new.to_json(),
                                      staging_dir=self.store.staging_dir(),
                                      sync=self.store.fsync)
        return new

    def delete(self, name: str) -> BoardInfo:
        """Remove board ``name`` and all its posts [B2]."""
        name = validate_board_name(name)
        with self._locked() as lock:
            reg = self._read_registry()
            entry = reg.boards.get(name)
            if entry is None:
                raise NotFound(f"no bboard {name!r}")
            try:
                info = self._read_board(entry.id)
            except (NotFound, CorruptionError):
                info = None
            boards = {n: e for n, e in reg.boards.items() if n != name}
            self._publish(lock, _Registry(reg.next_uidvalidity, boards))
        d = self.board_dir(entry.id)
        trash = self.root / ".deleted"
        sync = self.store.fsync
        try:
            _fs.makedirs(trash, sync=sync)
            aside = trash / f"{entry.id}.{_fs.unique_suffix()}"
            os.rename(d, aside)
            if sync:
                _fs.fsync_dir(d.parent)
            shutil.rmtree(aside, ignore_errors=True)
        except FileNotFoundError:
            pass
        except OSError as e:  # an orphan for an operator [B2]; the name is gone
            log.warning("could not remove bboard directory %s: %s", d, e)
        with self._mutex:
            self._boards.pop(entry.id, None)
        return info or BoardInfo(name, entry.id, entry.id, entry.uidvalidity, entry.created,
                                 path=d)

    def orphans(self) -> builtins.list[Path]:
        """Board directories no registry entry names [B2].  Walks every shard: admin use.

        A create in progress on another host shows here for an instant, so
        act only on orphans still present after the lock lease.
        """
        known = {e.id for e in self._read_registry().boards.values()}
        out: builtins.list[Path] = []
        for d1 in _hex_dirs(self.root):
            for d2 in _hex_dirs(d1):
                with os.scandir(d2) as it:
                    out.extend(Path(e.path) for e in it if e.name not in known)
        return sorted(out)

    # -- internals ----------------------------------------------------------------------

    def _make_board_dir(self, info: BoardInfo) -> None:
        """Assemble the board under a staging name, then rename it into place [B2]."""
        sync = self.store.fsync
        final = info.path
        _fs.makedirs(final.parent, sync=sync)
        staging = final.with_name(f".new.{info.id}.{_fs.unique_suffix()}")
        os.mkdir(staging)
        try:
            _fs.create_exclusive(staging / LOCK_FILE, b"", sync=sync)
            _fs.write_file_atomic(staging / BOARD_FILE, info.to_json(), sync=sync)
            create_log(staging / POSTS_DIR, log_id=info.id, uidvalidity=info.uidvalidity,
                       sync=sync)
            create_log(staging / PENDING_DIR, log_id=info.pending_id,
                       uidvalidity=info.uidvalidity, sync=sync)
            if sync:
                _fs.fsync_dir(staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if sync:
            _fs.fsync_dir(final.parent)

    def _remove_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def _publish(self, lock: Lock, reg: _Registry) -> None:
        lock.check()  # [L1]
        _fs.write_file_atomic(self.file, _dump_registry(reg),
                              staging_dir=self.store.staging_dir(), sync=self.store.fsync)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Lock]:
        with self.store.lock("bboards", self.root / LOCK_FILE) as lock:
            yield lock

    @contextlib.contextmanager
    def _board_lock(self, info: BoardInfo) -> Iterator[Lock]:
        lock = self.store.lock(f"bboard-{info.id}", info.path / LOCK_FILE)
        try:
            lock.acquire()
        except FileNotFoundError:
            raise NotFound(f"bboard {info.name!r} was deleted meanwhile") from None
        try:
            yield lock
        finally:
            lock.release()


def _check_settings(info: BoardInfo) -> None:
    if len(info.description) > MAX_DESCRIPTION or any(
            ord(c) < 0x20 and c != "\t" for c in info.description):
        raise UsageError(f"a bboard description is one line of at most {MAX_DESCRIPTION} "
                         "characters")
    if not 0 <= info.expire_days <= MAX_EXPIRE_DAYS:
        raise UsageError(f"expiry must be 0 (never) to {MAX_EXPIRE_DAYS} days, "
                         f"not {info.expire_days}")
    if info.post == "moderated" and not info.moderators:
        raise UsageError("a moderated bboard needs at least one moderator")


_LISTS = ("members", "readers", "moderators")


def _apply_changes(info: BoardInfo, changes: dict[str, Any]) -> BoardInfo:
    plain: dict[str, Any] = {}
    lists = {k: set(getattr(info, k)) for k in _LISTS}
    for key, value in changes.items():
        if value is None:
            continue
        if key in ("description", "expire_days"):
            plain[key] = value
        elif key == "post":
            plain[key] = _check_policy(value, POST_POLICIES, "post")
        elif key == "read":
            plain[key] = _check_policy(value, READ_POLICIES, "read")
        elif key in _LISTS:
            lists[key] = set(_check_users(value, key[:-1]))
        elif key.startswith(("add_", "remove_")) and key.split("_", 1)[1] in _LISTS:
            verb, what = key.split("_", 1)
            names = _check_users(value, what[:-1])
            if verb == "add":
                lists[what] |= names
            else:
                lists[what] -= names
        else:
            raise UsageError(f"unknown bboard setting {key!r}")
    plain.update({k: frozenset(v) for k, v in lists.items()})
    return dataclasses.replace(info, **plain)


def _hex_dirs(base: Path) -> list[Path]:
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    return sorted(Path(e.path) for e in entries
                  if len(e.name) == 2 and all(c in "0123456789abcdef" for c in e.name)
                  and e.is_dir(follow_symlinks=False))


__all__ = [
    "BOARD_FILE", "LOCK_FILE", "MAX_COMPONENTS", "MAX_NAME_LENGTH", "PENDING_DIR",
    "POSTS_DIR", "POST_POLICIES", "READ_POLICIES", "REGISTRY_FILE", "BoardInfo",
    "BoardRegistry", "NotPermitted", "PostPolicy", "ReadPolicy", "validate_board_name",
]
