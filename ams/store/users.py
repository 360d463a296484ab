"""The user registry: who has mail here, their password, aliases and mail dir.

Theory of operation
-------------------
A user is one small JSON record, found by name without listing anything::

    users/ab/cd/NAME.json        ab/cd = shard_path(NAME) (sha256 prefix)

Format 1 (``dump_json``)::

    {"format": 1, "name": "alice", "id": "<uuid4 hex>",
     "password": "$argon2id$v=19$m=…,t=…,p=…$…",
     "created": "2024-06-10T08:00:00+00:00",
     "aliases": ["info", "postmaster"], "forward_to": null, "disabled": false}

``id`` is random and keys the user's mail directory
(``mail/ab/cd/ID/``, see ``ams.store.mailboxes``), so a user deleted and
created again under the same name starts with an empty, unrelated mail dir.
User names are restricted (:func:`validate_user_name`) so a name is always a
safe file name.

Aliases are local parts (``info`` in ``info@any-local-domain``), global
across users, validated like user names.  The user records are the truth;
an index makes lookup one file read instead of a scan::

    aliases/ab/cd/ALIAS.json     {"format": 1, "alias": "info", "users": ["alice", "bob"]}

The index may name more users than really hold the alias (a crash, or a
deleted user), never fewer: :meth:`UserRegistry.resolve` keeps only users
whose record lists the alias.  A user name always wins over an alias of the
same spelling.  All index changes take one global lock (``aliases``): alias
changes are rare administrative acts.

Deleting a user renames the record into this host's staging dir (so it is
claimed whole, by exactly one deleter), then renames the mail dir into
``mail/.deleted/ID`` and, unless asked to keep it, removes it there.
Anything a crash leaves behind is unreachable by name and listed by
:meth:`UserRegistry.orphan_mail_dirs` / finished by
:meth:`UserRegistry.purge_deleted`.

Invariants (cited in the code as ``[U1]`` … ``[U5]``):

U1. A record only ever points at a complete mail dir: the mail dir is
    created (atomically, ``create_mail_dir``) before the record claims the
    name, and moved away only after the record is gone.  A crash leaves at
    worst a mail dir no record names (an orphan).
U2. A name is claimed with O_CREAT|O_EXCL (``create_exclusive``): of two
    hosts adding one name, exactly one wins; the loser removes the mail dir
    it made and gets AlreadyExists.
U3. The record of user (name, id) is replaced or removed only under the
    lock ``user-ID``, after re-reading it and checking the id; so an update
    can never bring back a deleted user or overwrite a newer user of the
    same name.  Replacements use ``write_file_atomic`` (staging, fsync,
    rename, fsync dir): readers see the old or the new record, whole.
U4. The alias index is a superset of the truth: an alias is added to the
    index before the record, and removed from the record before the index.
U5. verify_password does the same work for an unknown, disabled or
    malformed user as for a real one (a verify against a dummy hash), so
    its timing does not tell which names exist.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ams.errors import (
    AlreadyExists,
    CorruptionError,
    FormatVersionError,
    LockError,
    NotFound,
    UsageError,
)
from ams.store import _fs
from ams.store.lock import Lock
from ams.store.mailboxes import LOCK_FILE, MailboxList, check_id, create_mail_dir, now_iso
from ams.store.store import Store

log = logging.getLogger(__name__)

USER_FORMAT = 1
ALIAS_FORMAT = 1
MAX_NAME_LENGTH = 64
#: A record that is still empty or partial this long after its mtime is
#: damage, not a create_exclusive in progress.
_CREATING_GRACE = 2.0
_NAME_RE = re.compile(rf"[a-z0-9_][a-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
_ADDRESS_RE = re.compile(r"[^\s@<>\"]+@[^\s@<>\"]+")


def validate_user_name(name: str, *, what: str = "user name") -> str:
    """Lowercase ASCII letters, digits, '.', '_', '-'; 1..64; not starting '.' or '-'."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"bad {what} {name!r}: use 1 to {MAX_NAME_LENGTH} of a-z 0-9 . _ - "
            "(lowercase), not starting with '.' or '-'")
    return name


def validate_address(address: str) -> str:
    """A forwarding address: ``local@domain``, no spaces or angle brackets."""
    if (not isinstance(address, str) or len(address) > 254
            or not _ADDRESS_RE.fullmatch(address)):
        raise UsageError(f"bad mail address {address!r}: expected local@domain")
    return address


def default_hasher() -> PasswordHasher:
    """argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile)."""
    return PasswordHasher()


@dataclass(frozen=True)
class User:
    name: str
    #: uuid4 hex; keys the mail dir.
    id: str
    password_hash: str = field(repr=False)
    created: str
    aliases: tuple[str, ...] = ()
    forward_to: str | None = None
    disabled: bool = False

    def to_json(self) -> bytes:
        return _fs.dump_json({
            "format": USER_FORMAT, "name": self.name, "id": self.id,
            "password": self.password_hash, "created": self.created,
            "aliases": list(self.aliases), "forward_to": self.forward_to,
            "disabled": self.disabled})

    @classmethod
    def from_json(cls, data: Any, *, name: str, path: Path) -> User:
        if not isinstance(data, dict) or not isinstance(data.get("format"), int):
            raise CorruptionError("user record lacks a format field", path=path)
        if data["format"] > USER_FORMAT:
            raise FormatVersionError(f"{path}: user record format {data['format']} is newer "
                                     f"than this AMS ({USER_FORMAT})")
        try:
            fwd = data.get("forward_to")
            user = cls(name=str(data["name"]), id=check_id(data["id"], path=path),
                       password_hash=str(data["password"]), created=str(data["created"]),
                       aliases=tuple(str(a) for a in data.get("aliases", [])),
                       forward_to=None if fwd is None else str(fwd),
                       disabled=bool(data.get("disabled", False)))
        except (KeyError, TypeError, ValueError):
            raise CorruptionError("user record is missing fields", path=path) from None
        if user.name != name:
            raise CorruptionError(f"user record names {user.name!r}, not {name!r}", path=path)
        return user


class UserRegistry:
    """The users of one store.  Synchronous: trio callers use ``to_thread``.

    ``hasher`` sets the argon2 parameters for new hashes (tests pass cheap
    ones); a stored hash made with other parameters is upgraded on the next
    successful :meth:`verify_password`.
    """

    def __init__(self, store: Store, *, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or default_hasher()
        self._dummy_hash: str | None = None

    # -- paths ---------------------------------------------------------------------

    def record_path(self, name: str) -> Path:
        name = validate_user_name(name)
        return self.store.root / "users" / _fs.shard_path(name) / f"{name}.json"

    def alias_path(self, alias: str) -> Path:
        alias = validate_user_name(alias, what="alias")
        return self.store.root / "aliases" / _fs.shard_path(alias) / f"{alias}.json"

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> User:
        """The record of ``name``; NotFound if there is none."""
        path = self.record_path(name)
        deadline = 0.0
        while True:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raise NotFound(f"no user {name!r}") from None
            try:
                return User.from_json(json.loads(raw), name=name, path=path)
            except ValueError:
                pass
            # Empty or partial: maybe create_exclusive is still writing it [U2].
            now = time.monotonic()
            if not deadline:
                deadline = now + _CREATING_GRACE
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > _CREATING_GRACE:
                    deadline = now
            if now >= deadline:
                raise CorruptionError("user record is not valid JSON", path=path)
            time.sleep(0.01)

    def exists(self, name: str) -> bool:
        try:
            return self.record_path(name).exists()
        except UsageError:
            return False

    def mailboxes(self, name: str) -> MailboxList:
        return MailboxList(self.store, self.get(name).id)

    def list_users(self) -> list[str]:
        """Every user name, sorted.  Walks all shards: for admin tools only."""
        out: list[str] = []
        for shard in _shard_dirs(self.store.root / "users"):
            with os.scandir(shard) as it:
                for e in it:
                    stem = e.name[:-5]
                    if e.name.endswith(".json") and _NAME_RE.fullmatch(stem):
                        out.append(stem)
        return sorted(out)

    def resolve(self, local: str) -> list[User]:
        """The users mail to local part ``local`` goes to (case-insensitive).

        The user of that name if there is one, else the users holding it as
        an alias; [] if none.  Splitting ``+detail`` off is the caller's job.
        Disabled users are included: the caller decides what that means.
        """
        local = local.lower()
        try:
            validate_user_name(local)
        except UsageError:
            return []
        try:
            return [self.get(local)]
        except NotFound:
            pass
        out: list[User] = []
        for name in self._alias_index(local):
            try:
                user = self.get(name)
            except NotFound:
                continue
            if local in user.aliases:  # the record is the truth [U4]
                out.append(user)
        return out

    # -- passwords -----------------------------------------------------------------

    def verify_password(self, name: str, password: str) -> bool:
        """True if ``name`` exists, is enabled and ``password`` is right [U5]."""
        dummy = self._dummy()  # made before any lookup, so even the first call is even
        user: User | None
        try:
            user = self.get(name)
        except (NotFound, UsageError, CorruptionError):
            user = None
        stored = user.password_hash if user is not None else dummy
        ok: bool
        try:
            ok = self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if user is None or user.disabled or not ok:
            return False
        if self.hasher.check_needs_rehash(stored):
            self._rehash(user, password)
        return True

    def set_password(self, name: str, password: str) -> None:
        new_hash = self._hash(password)
        self._update(name, lambda u: dataclasses.replace(u, password_hash=new_hash))

    def _hash(self, password: str) -> str:
        if not isinstance(password, str) or not password:
            raise UsageError("a password must not be empty")
        return self.hasher.hash(password)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        return self._dummy_hash

    def _rehash(self, user: User, password: str) -> None:
        """Upgrade an old-parameter hash; best effort, never fails a login."""
        old = user.password_hash
        new = self.hasher.hash(password)
        try:
            # Only if unchanged meanwhile: a concurrent passwd wins.
            self._update(user.name, lambda u: dataclasses.replace(u, password_hash=new)
                         if u.password_hash == old else u)
        except (NotFound, LockError, OSError) as e:
            log.warning("could not rehash the password of %s: %s", user.name, e)

    # -- creating and deleting ---------------------------------------------------

    def add(self, name: str, password: str, *, forward_to: str | None = None) -> User:
        """Create user ``name`` with a new mail dir and the default mailboxes."""
        path = self.record_path(name)
        if forward_to is not None:
            validate_address(forward_to)
        if path.exists():
            raise AlreadyExists(f"user {name!r} exists already")
        user = User(name=name, id=uuid.uuid4().hex, password_hash=self._hash(password),
                    created=now_iso(), forward_to=forward_to)
        sync = self.store.fsync
        mail_dir = create_mail_dir(self.store, user.id)  # before the record [U1]
        try:
            _fs.makedirs(path.parent, sync=sync)
            won = _fs.create_exclusive(path, user.to_json(), sync=sync)  # [U2]
        except BaseException:
            shutil.rmtree(mail_dir, ignore_errors=True)
            raise
        if not won:
            shutil.rmtree(mail_dir, ignore_errors=True)
            raise AlreadyExists(f"user {name!r} exists already")
        return user

    def delete(self, name: str, *, keep_mail: bool = False) -> User:
        """Remove user ``name``; their mail goes to ``mail/.deleted/ID``.

        The mail is removed there at once unless ``keep_mail``;
        :meth:`purge_deleted` empties the trash later.  Returns the record
        that was removed.
        """
        path = self.record_path(name)
        user = self.get(name)
        sync = self.store.fsync
        trash = self.store.root / "mail" / ".deleted"
        staging = self.store.staging_dir()
        aside = staging / f"deleted-user.{name}.{_fs.unique_suffix()}.json"
        with self._user_lock(user.id) as lock:
            current = self.get(name)
            if current.id != user.id:
                raise NotFound(f"user {name!r} was deleted meanwhile")
            lock.check()
            # The record first, so nothing resolves the user any more [U1, U3].
            if not _fs.rename_claim(path, aside):
                raise NotFound(f"user {name!r} was deleted meanwhile")
            if sync:
                _fs.fsync_dir(path.parent)
                _fs.fsync_dir(staging)
            _fs.makedirs(trash, sync=sync)
            os.rename(self.store.user_dir(user.id), trash / user.id)
            if sync:
                _fs.fsync_dir(trash)
                _fs.fsync_dir(self.store.user_dir(user.id).parent)
        os.unlink(aside)
        if not keep_mail:
            shutil.rmtree(trash / user.id, ignore_errors=True)
        for alias in user.aliases:  # stale index entries are harmless [U4]
            self._alias_change(alias, lambda names: names - {name})
        return user

    # -- other attributes -------------------------------------------------------

    def add_alias(self, name: str, alias: str) -> None:
        """Let mail to local part ``alias`` reach ``name`` too."""
        alias = validate_user_name(alias.lower(), what="alias")
        if alias == name or self.exists(alias):
            raise AlreadyExists(f"{alias!r} is a user name; it cannot be an alias")
        self.get(name)
        self._alias_change(alias, lambda names: names | {name})  # index first [U4]
        self._update(name, lambda u: u if alias in u.aliases
                     else dataclasses.replace(u, aliases=tuple(sorted((*u.aliases, alias)))))

    def remove_alias(self, name: str, alias: str) -> None:
        alias = validate_user_name(alias.lower(), what="alias")

        def drop(u: User) -> User:
            if alias not in u.aliases:
                raise NotFound(f"user {name!r} has no alias {alias!r}")
            return dataclasses.replace(u, aliases=tuple(a for a in u.aliases if a != alias))

        self._update(name, drop)  # record first [U4]
        self._alias_change(alias, lambda names: names - {name})

    def set_forward(self, name: str, address: str | None) -> None:
        """Forward ``name``'s mail to ``address`` (None: stop forwarding)."""
        if address is not None:
            validate_address(address)
        self._update(name, lambda u: dataclasses.replace(u, forward_to=address))

    def set_disabled(self, name: str, disabled: bool) -> None:
        """A disabled user cannot log in; mail to them is the caller's choice."""
        self._update(name, lambda u: dataclasses.replace(u, disabled=bool(disabled)))

    # -- fsck ----------------------------------------------------------------------

    def orphan_mail_dirs(self) -> list[Path]:
        """Mail dirs no user record names (a crash in add or delete) [U1].

        Includes a user being added on another host at this instant: fsck
        must only act on orphans still there after the lock lease.  Walks
        every shard of users/ and mail/: admin use.
        """
        ids: set[str] = set()
        for name in self.list_users():
            try:
                ids.add(self.get(name).id)
            except (NotFound, CorruptionError):
                continue
        out: list[Path] = []
        for shard in _shard_dirs(self.store.root / "mail"):
            with os.scandir(shard) as it:
                out.extend(Path(e.path) for e in it if e.name not in ids)
        return sorted(out)

    def purge_deleted(self) -> int:
        """Remove what delete left in ``mail/.deleted``; return how many."""
        trash = self.store.root / "mail" / ".deleted"
        try:
            entries = sorted(trash.iterdir())
        except FileNotFoundError:
            return 0
        for p in entries:
            shutil.rmtree(p)
        return len(entries)

    # -- internals -----------------------------------------------------------------

    def _user_lock(self, user_id: str) -> _Held:
        return _Held(self.store.lock(f"user-{user_id}",
                                     self.store.user_dir(user_id) / LOCK_FILE), user_id)

    def _update(self, name: str, change: Callable[[User], User]) -> User:
        """Read-modify-write ``name``'s record under its lock [U3]."""
        path = self.record_path(name)
        for _ in range(3):
            user = self.get(name)
            with self._user_lock(user.id) as lock:
                current = self.get(name)
                if current.id != user.id:
                    continue  # deleted and added again meanwhile: take the new lock
                new = change(current)
                if new != current:
                    lock.check()
                    _fs.write_file_atomic(path, new.to_json(),
                                          staging_dir=self.store.staging_dir(),
                                          sync=self.store.fsync)
                return new
        raise NotFound(f"user {name!r} keeps being deleted and re-added; try again")

    def _alias_index(self, alias: str) -> list[str]:
        try:
            data = _fs.read_json(self.alias_path(alias))
        except FileNotFoundError:
            return []
        except ValueError:
            raise CorruptionError("alias index file is not valid JSON",
                                  path=self.alias_path(alias)) from None
        if not isinstance(data, dict) or int(data.get("format", 0)) > ALIAS_FORMAT:
            raise FormatVersionError(f"{self.alias_path(alias)}: unknown alias format")
        return [str(n) for n in data.get("users", [])]

    def _alias_change(self, alias: str, change: Callable[[set[str]], set[str]]) -> None:
        root = self.store.root / "aliases"
        sync = self.store.fsync
        _fs.makedirs(root, sync=sync)  # not (yet) in Store's TOP_DIRS: made on first use
        path = self.alias_path(alias)
        with self.store.lock("aliases", root / LOCK_FILE) as lock:
            before = set(self._alias_index(alias))
            after = change(set(before))
            if after == before:
                return
            lock.check()
            if after:
                _fs.makedirs(path.parent, sync=sync)
                _fs.write_file_atomic(
                    path, _fs.dump_json({"format": ALIAS_FORMAT, "alias": alias,
                                         "users": sorted(after)}),
                    staging_dir=self.store.staging_dir(), sync=sync)
            else:
                path.unlink(missing_ok=True)
                if sync:
                    _fs.fsync_dir(path.parent)


class _Held:
    """A user's lock as a context manager; NotFound if their mail dir is gone."""

    def __init__(self, lock: Lock, user_id: str) -> None:
        self.lock = lock
        self.user_id = user_id

    def __enter__(self) -> Lock:
        try:
            self.lock.acquire()
        except FileNotFoundError:
            raise NotFound(f"user {self.user_id} has no mail directory") from None
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _shard_dirs(base: Path) -> Iterable[Path]:
    """``base/ab/cd`` for every two-level hex shard present."""
    def hex2(p: Path) -> bool:
        return len(p.name) == 2 and all(c in "0123456789abcdef" for c in p.name) and p.is_dir()

    if not base.is_dir():
        return
    for d1 in sorted(filter(hex2, base.iterdir())):
        yield from sorted(filter(hex2, d1.iterdir()))


__all__ = [
    "MAX_NAME_LENGTH", "User", "UserRegistry", "default_hasher", "validate_address",
    "validate_user_name",
]
