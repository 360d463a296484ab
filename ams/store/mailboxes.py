"""A user's mailbox list: IMAP mailbox names mapped to opaque log ids.

Theory of operation
-------------------
IMAP mailbox names are arbitrary Unicode chosen by clients.  None of them
ever becomes a path: the list maps each name to a random id, and the
mailbox's log (``ams.store.log``) lives in ``<user dir>/<id>/``.  Renaming a
mailbox therefore rewrites one small file and moves no directory.

On disk, in the user's mail directory (``Store.user_dir(user_id)``)::

    lock              empty; the user's lock under the fcntl method
    mailboxes.json    the mailbox list (below)
    <id>/             one mailbox log per mailbox; id = uuid4 hex (32 digits)

``mailboxes.json``, format 1 (``dump_json``: UTF-8, sorted keys)::

    {"format": 1,
     "user_id": "<32 hex>",
     "next_uidvalidity": 1718000006,
     "mailboxes": {
        "INBOX": {"id": "<32 hex>", "uidvalidity": 1718000000,
                  "special_use": null, "subscribed": true,
                  "created": "2024-06-10T08:00:00+00:00"},
        "Sent":  {… "special_use": "\\\\Sent" …}},
     "subscribed_absent": ["old/name"]}

``subscribed_absent`` holds subscriptions to names that are not mailboxes:
RFC 3501 lets a client subscribe to any name and forbids the server to drop a
subscription because its mailbox went away.

Hierarchy (delimiter ``/``) is a property of the names only.  Creating
``a/b/c`` creates that one mailbox; ``a`` and ``a/b`` are *implied parents*,
which IMAP LIST shows as ``\\Noselect \\HasChildren``
(:meth:`Mailboxes.implied_parents`).  Deleting a mailbox that has children
removes it and its messages; its name lives on as an implied parent, which
is RFC 3501's "\\Noselect" outcome without a third kind of entry.  Deleting
a name that is only an implied parent is refused (NotFound), as RFC 3501
requires.  Renaming renames the children with it, except for INBOX, whose
rename moves its messages to the new name and leaves a fresh, empty INBOX
(RFC 3501 6.3.5); INBOX's children stay where they are.

Writers (create, rename, delete, subscribe) hold the user's lock and do a
read-modify-write of the whole file.  Readers (IMAP LIST on any host) read
the file without a lock.

Invariants (cited in the code as ``[M1]`` … ``[M6]``):

M1. No mailbox name is ever part of a path.  A mailbox's log is at
    ``<user dir>/<id>`` and every id read from the file is checked to be 32
    lowercase hex digits, so even a damaged file cannot point outside.
M2. Every change is a read-modify-write under the user's lock, published
    with ``write_file_atomic`` (staging in this host's tmp dir, fsync,
    rename, fsync dir) after :meth:`Lock.check`.  The file is only ever
    replaced by rename, so a lock-free reader always sees a whole list.
M3. Every id in a published list names a complete log.  A log is created
    (``create_log``, itself atomic) before the list naming it is published
    and removed only after the list that dropped it is published.  A crash
    in between leaves an unreferenced directory, never a dangling name;
    :meth:`MailboxList.orphans` lists them for fsck.
M4. UIDVALIDITY only grows within a user: a new log gets
    ``max(next_uidvalidity, now)`` and ``next_uidvalidity`` moves past it in
    the same publish that adds the name.  A name deleted and recreated
    therefore gets a strictly larger value, even if the clock went back.
    A rename keeps the mailbox's log, its UIDs and its UIDVALIDITY (the log
    format records it in every segment header), as Dovecot does.
M5. A user's mail directory appears all at once: :func:`create_mail_dir`
    builds it under a staging name beside its final place and renames it.
M6. "INBOX" is case-insensitive (RFC 3501 5.1), and so is the INBOX part of
    ``INBOX/…``: names are normalised before every lookup and store.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ams.errors import (
    AlreadyExists,
    CorruptionError,
    FormatVersionError,
    NotFound,
    StoreError,
    UsageError,
)
from ams.store import _fs
from ams.store.lock import Lock
from ams.store.log import MailboxLog, create_log
from ams.store.store import Store

log = logging.getLogger(__name__)

LIST_FORMAT = 1
LIST_FILE = "mailboxes.json"
LOCK_FILE = "lock"
DELIMITER = "/"
INBOX = "INBOX"
MAX_NAME_BYTES = 1000
#: RFC 6154 SPECIAL-USE attributes.
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                          "\\Trash"})
#: Created with every user, all subscribed.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
    ("Junk", "\\Junk"), ("Archive", "\\Archive"),
)
_ID_RE = re.compile(r"[0-9a-f]{32}")
_UIDVALIDITY_MAX = 2**32 - 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_id(value: object, *, path: object = None) -> str:
    """An opaque id as used in paths: 32 lowercase hex digits [M1]."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise CorruptionError(f"{value!r} is not a valid object id", path=path)
    return value


# -- names ---------------------------------------------------------------------------


def validate_mailbox_name(name: str) -> str:
    """Check an IMAP mailbox name; return it normalised [M6].

    Refused (UsageError): empty names, names over 1000 bytes of UTF-8,
    control characters (NUL included), a leading or trailing ``/``, empty
    hierarchy parts (``a//b``), and parts that are exactly ``.`` or ``..``.
    The last rule is not needed by the store (names are never paths [M1]) but
    keeps the mounted view, which shows the hierarchy as directories, sane.
    """
    if not isinstance(name, str) or not name:
        raise UsageError("a mailbox name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("a mailbox name must be valid Unicode (no lone surrogates)") from None
    if size > MAX_NAME_BYTES:
        raise UsageError(f"mailbox name is {size} bytes long; the limit is {MAX_NAME_BYTES}")
    for c in name:
        if unicodedata.category(c) == "Cc":
            raise UsageError(f"mailbox name contains control character U+{ord(c):04X}")
    if name.startswith(DELIMITER) or name.endswith(DELIMITER):
        raise UsageError(f"mailbox name must not begin or end with {DELIMITER!r}")
    parts = name.split(DELIMITER)
    if "" in parts:
        raise UsageError(f"mailbox name has an empty hierarchy level ({DELIMITER * 2!r})")
    if "." in parts or ".." in parts:
        raise UsageError("mailbox name has a hierarchy level '.' or '..'")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
        name = DELIMITER.join(parts)
    return name


def _check_special_use(value: str | None) -> str | None:
    if value is None:
        return None
    for known in SPECIAL_USES:
        if value.lower() == known.lower():
            return known
    raise UsageError(f"unknown SPECIAL-USE attribute {value!r} "
                     f"(one of {', '.join(sorted(SPECIAL_USES))})")


# -- the list, in memory ---------------------------------------------------------------


@dataclass(frozen=True)
class MailboxInfo:
    """One mailbox as the list records it."""

    name: str
    id: str
    uidvalidity: int
    special_use: str | None
    subscribed: bool
    created: str
    #: ``<user dir>/<id>``: the log directory [M1].
    path: Path


@dataclass(frozen=True)
class Mailboxes:
    """A snapshot of one user's mailbox list (what one read of the file said)."""

    user_dir: Path
    by_name: Mapping[str, MailboxInfo]
    next_uidvalidity: int
    subscribed_absent: frozenset[str] = frozenset()
    _parents: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        parents = {n[:i] for n in self.by_name for i, c in enumerate(n) if c == DELIMITER}
        object.__setattr__(self, "_parents", frozenset(parents))

    def __iter__(self) -> Iterator[MailboxInfo]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.by_name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.by_name

    def get(self, name: str) -> MailboxInfo:
        """The mailbox ``name`` (already normalised); NotFound if none."""
        try:
            return self.by_name[name]
        except KeyError:
            if name in self._parents:
                raise NotFound(f"mailbox {name!r} does not exist (it is only a parent "
                               "of other mailboxes)") from None
            raise NotFound(f"mailbox {name!r} does not exist") from None

    def list(self) -> builtins.list[MailboxInfo]:
        return [self.by_name[n] for n in sorted(self.by_name)]

    def has_children(self, name: str) -> bool:
        """For LIST's \\HasChildren / \\HasNoChildren."""
        return name in self._parents

    def children(self, name: str) -> builtins.list[str]:
        """Mailboxes below ``name`` at any depth."""
        prefix = name + DELIMITER
        return sorted(n for n in self.by_name if n.startswith(prefix))

    def implied_parents(self) -> builtins.list[str]:
        """Names that only exist as parents: LIST shows them \\Noselect."""
        return sorted(self._parents - self.by_name.keys())

    def subscriptions(self) -> builtins.list[str]:
        """Every subscribed name, whether or not it is a mailbox."""
        subs = {n for n, i in self.by_name.items() if i.subscribed} | self.subscribed_absent
        return sorted(subs)


def _parse(data: Any, user_dir: Path, path: Path) -> Mailboxes:
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise CorruptionError("mailbox list lacks a format field", path=path)
    if data["format"] > LIST_FORMAT:
        raise FormatVersionError(f"{path}: mailbox list format {data['format']} is newer "
                                 f"than this AMS ({LIST_FORMAT})")
    try:
        boxes = data["mailboxes"]
        nuv = int(data["next_uidvalidity"])
        absent = frozenset(str(n) for n in data.get("subscribed_absent", []))
        by_name: dict[str, MailboxInfo] = {}
        for name, r in boxes.items():
            mid = check_id(r["id"], path=path)
            su = r.get("special_use")
            by_name[name] = MailboxInfo(
                name=str(name), id=mid, uidvalidity=int(r["uidvalidity"]),
                special_use=None if su is None else str(su), subscribed=bool(r["subscribed"]),
                created=str(r["created"]), path=user_dir / mid)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CorruptionError("mailbox list is missing fields", path=path) from None
    return Mailboxes(user_dir, by_name, nuv, absent)


def _dump(user_id: str, by_name: Mapping[str, MailboxInfo], next_uidvalidity: int,
          absent: set[str] | frozenset[str]) -> bytes:
    return _fs.dump_json({
        "format": LIST_FORMAT,
        "user_id": user_id,
        "next_uidvalidity": next_uidvalidity,
        "mailboxes": {n: {"id": i.id, "uidvalidity": i.uidvalidity,
                          "special_use": i.special_use, "subscribed": i.subscribed,
                          "created": i.created} for n, i in by_name.items()},
        "subscribed_absent": sorted(absent),
    })


@dataclass
class _Draft:
    """The list being changed under the lock."""

    by_name: dict[str, MailboxInfo]
    next_uidvalidity: int
    absent: set[str]

    @classmethod
    def of(cls, snap: Mailboxes) -> _Draft:
        return cls(dict(snap.by_name), snap.next_uidvalidity, set(snap.subscribed_absent))

    def take_uidvalidity(self) -> int:
        """[M4]"""
        uv = max(self.next_uidvalidity, int(time.time()), 1)
        if uv > _UIDVALIDITY_MAX:
            raise StoreError("UIDVALIDITY space exhausted for this user")
        self.next_uidvalidity = uv + 1
        return uv


def _new_mailbox(draft: _Draft, user_dir: Path, log_dir: Path, name: str,
                 special_use: str | None, subscribed: bool, *, sync: bool) -> MailboxInfo:
    """Create the log for a new mailbox (in ``log_dir``) and describe it [M3]."""
    mid = uuid.uuid4().hex
    uv = draft.take_uidvalidity()
    create_log(log_dir / mid, log_id=mid, uidvalidity=uv, sync=sync)
    return MailboxInfo(name, mid, uv, special_use, subscribed, now_iso(), user_dir / mid)


# -- a new user's mail directory -------------------------------------------------------


def create_mail_dir(store: Store, user_id: str) -> Path:
    """Create ``Store.user_dir(user_id)`` with its lock, list and default mailboxes [M5]."""
    check_id(user_id)
    final = store.user_dir(user_id)
    sync = store.fsync
    _fs.makedirs(final.parent, sync=sync)
    staging = final.with_name(f".new.{user_id}.{_fs.unique_suffix()}")
    os.mkdir(staging)
    try:
        _fs.create_exclusive(staging / LOCK_FILE, b"", sync=sync)
        draft = _Draft({}, 0, set())
        for name, su in DEFAULT_MAILBOXES:
            draft.by_name[name] = _new_mailbox(draft, final, staging, name, su, True, sync=sync)
        _fs.write_file_atomic(staging / LIST_FILE,
                              _dump(user_id, draft.by_name, draft.next_uidvalidity, set()),
                              sync=sync)
        if sync:
            _fs.fsync_dir(staging)
        try:
            os.rename(staging, final)
        except OSError as e:
            if final.exists():
                raise StoreError(f"a mail directory exists already at {final}") from e
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if sync:
        _fs.fsync_dir(final.parent)
    return final


# -- the list, on disk -----------------------------------------------------------------


class MailboxList:
    """One user's mailbox list.  Synchronous: trio callers use ``to_thread``."""

    def __init__(self, store: Store, user_id: str) -> None:
        self.store = store
        self.user_id = check_id(user_id)
        self.dir = store.user_dir(user_id)
        self.file = self.dir / LIST_FILE

    # -- reading (no lock) [M2] ---------------------------------------------------

    def read(self) -> Mailboxes:
        try:
            data = _fs.read_json(self.file)
        except FileNotFoundError:
            raise NotFound(f"user {self.user_id} has no mail directory "
                           "(deleted, or never created)") from None
        except ValueError:
            raise CorruptionError("mailbox list is not valid JSON", path=self.file) from None
        return _parse(data, self.dir, self.file)

    def lookup(self, name: str) -> MailboxInfo:
        return self.read().get(validate_mailbox_name(name))

    def list(self) -> builtins.list[MailboxInfo]:
        return self.read().list()

    def subscriptions(self) -> builtins.list[str]:
        return self.read().subscriptions()

    def open(self, name: str) -> MailboxLog:
        """The log of mailbox ``name``, ready to append to or read."""
        info = self.lookup(name)
        return self.store.log_at(info.path, info.id)

    # -- changing (under the user's lock) [M2] -------------------------------------

    def create(self, name: str, *, special_use: str | None = None,
               subscribed: bool = False) -> MailboxInfo:
        """Create mailbox ``name``; AlreadyExists if it is there.

        A name that was subscribed to while absent comes back subscribed.
        """
        name = validate_mailbox_name(name)
        su = _check_special_use(special_use)
        with self._locked() as (lock, draft):
            if name in draft.by_name:
                raise AlreadyExists(f"mailbox {name!r} exists already")
            info = _new_mailbox(draft, self.dir, self.dir, name, su,
                                subscribed or name in draft.absent, sync=self.store.fsync)
            draft.by_name[name] = info
            draft.absent.discard(name)
            self._commit(lock, draft, new_logs=[info.path])
        return info

    def delete(self, name: str) -> None:
        """Delete mailbox ``name`` and its messages; its children stay.

        Refused for INBOX (UsageError) and for names that are not mailboxes,
        implied parents included (NotFound).  The subscription stays.
        """
        name = validate_mailbox_name(name)
        if name == INBOX:
            raise UsageError("INBOX cannot be deleted")
        with self._locked() as (lock, draft):
            info = Mailboxes(self.dir, draft.by_name, 0).get(name)
            del draft.by_name[name]
            if info.subscribed:
                draft.absent.add(name)
            self._commit(lock, draft)
        self._remove_log(info.path)  # only after the list dropped it [M3]

    def rename(self, old: str, new: str) -> dict[str, str]:
        """Rename ``old`` (and its children) to ``new``; return {old name: new name}.

        Renaming INBOX moves its log to ``new`` and creates a fresh INBOX;
        INBOX's children are not moved (RFC 3501 6.3.5).  ``old`` may be an
        implied parent: its children are renamed.  Ids, logs, UIDs and
        UIDVALIDITY go with the names [M4].
        """
        old = validate_mailbox_name(old)
        new = validate_mailbox_name(new)
        if new == INBOX:
            raise AlreadyExists("INBOX exists already")
        if old == new:
            raise AlreadyExists(f"mailbox {new!r} exists already")
        if old != INBOX and new.startswith(old + DELIMITER):
            raise UsageError(f"cannot rename {old!r} to a name below itself ({new!r})")
        with self._locked() as (lock, draft):
            if old == INBOX:
                fresh = self._rename_inbox(draft, new)
                self._commit(lock, draft, new_logs=[fresh])
                return {INBOX: new}
            moves = self._rename_tree(draft, old, new)
            self._commit(lock, draft)
            return moves

    def subscribe(self, name: str) -> None:
        """Subscribe to ``name``, which need not exist (RFC 3501 6.3.6)."""
        name = validate_mailbox_name(name)
        with self._locked() as (lock, draft):
            info = draft.by_name.get(name)
            if info is not None:
                if info.subscribed:
                    return
                draft.by_name[name] = dataclasses.replace(info, subscribed=True)
            elif name in draft.absent:
                return
            else:
                draft.absent.add(name)
            self._commit(lock, draft)

    def unsubscribe(self, name: str) -> None:
        """Unsubscribe from ``name``; NotFound if it was not subscribed."""
        name = validate_mailbox_name(name)
        with self._locked() as (lock, draft):
            info = draft.by_name.get(name)
            if info is not None and info.subscribed:
                draft.by_name[name] = dataclasses.replace(info, subscribed=False)
            elif name in draft.absent:
                draft.absent.discard(name)
            else:
                raise NotFound(f"not subscribed to {name!r}")
            self._commit(lock, draft)

    # -- fsck ----------------------------------------------------------------------

    def orphans(self) -> builtins.list[Path]:
        """Entries of the user dir that no published list names [M3].

        Left by a crash between creating a log and publishing the list, or
        between publishing a delete and removing the log.  An entry may also
        be a create in progress on another host right now: fsck should act
        only on orphans that are still there after the lock lease.
        """
        known = {i.id for i in self.read().by_name.values()} | {LOCK_FILE, LIST_FILE}
        with os.scandir(self.dir) as it:
            return sorted(Path(e.path) for e in it if e.name not in known)

    # -- internals -----------------------------------------------------------------

    def _lock(self) -> Lock:
        return self.store.lock(f"user-{self.user_id}", self.dir / LOCK_FILE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[Lock, _Draft]]:
        lock = self._lock()
        try:
            lock.acquire()
        except FileNotFoundError:
            # fcntl: the lock file's directory is gone with the user.
            raise NotFound(f"user {self.user_id} has no mail directory") from None
        try:
            yield lock, _Draft.of(self.read())
        finally:
            lock.release()

    def _commit(self, lock: Lock, draft: _Draft, *, new_logs: Sequence[Path] = ()) -> None:
        """Publish ``draft`` [M2]; if that fails, drop the logs made for it [M3]."""
        try:
            lock.check()
            _fs.write_file_atomic(
                self.file, _dump(self.user_id, draft.by_name, draft.next_uidvalidity,
                                 draft.absent),
                staging_dir=self.store.staging_dir(), sync=self.store.fsync)
        except BaseException:
            for p in new_logs:
                self._remove_log(p)
            raise

    def _rename_inbox(self, draft: _Draft, new: str) -> Path:
        if new in draft.by_name:
            raise AlreadyExists(f"mailbox {new!r} exists already")
        moved = draft.by_name[INBOX]
        fresh = _new_mailbox(draft, self.dir, self.dir, INBOX, None, moved.subscribed,
                             sync=self.store.fsync)
        draft.by_name[new] = dataclasses.replace(moved, name=new)
        draft.by_name[INBOX] = fresh
        return fresh.path

    def _rename_tree(self, draft: _Draft, old: str, new: str) -> dict[str, str]:
        prefix = old + DELIMITER
        sources = [n for n in draft.by_name if n == old or n.startswith(prefix)]
        if not sources:
            raise NotFound(f"mailbox {old!r} does not exist")
        moves = {s: new + s[len(old):] for s in sources}
        for target in moves.values():
            if len(target.encode("utf-8")) > MAX_NAME_BYTES:
                raise UsageError(f"renamed name {target!r} would pass {MAX_NAME_BYTES} bytes")
            if target in draft.by_name and target not in moves:
                raise AlreadyExists(f"mailbox {target!r} exists already")
        infos = {s: draft.by_name.pop(s) for s in sources}
        for s, target in moves.items():
            draft.by_name[target] = dataclasses.replace(infos[s], name=target)
        return moves

    def _remove_log(self, path: Path) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            # Left as an orphan for fsck [M3]; the list no longer names it.
            log.warning("could not remove mailbox log %s: %s", path, e)


__all__ = [
    "DEFAULT_MAILBOXES", "DELIMITER", "INBOX", "MAX_NAME_BYTES", "SPECIAL_USES", "MailboxInfo",
    "MailboxList", "Mailboxes", "check_id", "create_mail_dir", "validate_mailbox_name",
]
