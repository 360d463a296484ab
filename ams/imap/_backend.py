"""What an IMAP session does to the store: the bridge's model, without IMAP syntax.

Theory of operation
-------------------
An :class:`Account` is one logged-in user: their mailbox list (names to log
ids, ams.store.mailboxes), this host's local index (ams.index) and the logs.
:meth:`Account.select` gives a :class:`Selected`, the session's own view of
one mailbox:

- ``uids`` is the session's message sequence: sequence number *n* is
  ``uids[n-1]``.  It changes only when the session is allowed to tell the
  client (RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH), so
  :meth:`Selected.refresh` returns what changed and applies it at once, and
  the caller decides when to call it.
- ``highest_modseq`` is what this session has already reported.  The index
  reports each change to only one of the threads or processes updating it,
  so a session finds its news itself: after bringing the index up to date
  from the log tail (a read of the log's new bytes only, never a directory
  listing), it compares the index's HIGHESTMODSEQ with its own; if they
  differ, ``changed_since`` gives the messages whose MODSEQ grew (new
  messages and flag changes), and a message count that does not add up
  means expunges, found by comparing UID lists.  A refresh with nothing new
  costs one status read.

Every method here is synchronous (filesystem and LMDB work); the trio driver
calls each in a worker thread, one per command.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ams.errors import AlreadyExists, NotFound, UsageError
from ams.index import Index, IndexedMessage
from ams.store import FlagOp, MailboxList, NewMessage, Store, UserRegistry
from ams.store.log import MailboxLog

if TYPE_CHECKING:
    from ams.imap._boards import BoardSpace

#: The bboards namespace's prefix (ams.imap._boards).
BOARDS_PREFIX = "Bboards"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
DELIMITER = "/"


@dataclass(frozen=True)
class ListEntry:
    name: str
    attributes: tuple[str, ...]


@dataclass
class Changes:
    """What a refresh found, in the order IMAP reports it."""

    #: Sequence numbers expunged, highest first (each shifts those above it).
    expunged: list[int] = field(default_factory=list)
    #: UIDs of expunged messages (for VANISHED under QRESYNC).
    expunged_uids: list[int] = field(default_factory=list)
    #: New EXISTS count, when messages arrived.
    exists: int | None = None
    #: (seq, message) whose flags changed (not new ones).
    flags: list[tuple[int, IndexedMessage]] = field(default_factory=list)
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.expunged or self.exists is not None or self.flags
                    or self.uidvalidity_changed)


class Account:
    """One user's view of the store."""

    def __init__(self, store: Store, index: Index, user: str,
                 users: UserRegistry | None = None) -> None:
        self.store = store
        self.index = index
        self.user = user
        self.users = users or UserRegistry(store)
        self.mailboxes: MailboxList = self.users.mailboxes(user)
        self._boards: BoardSpace | None = None

    @property
    def boards(self) -> BoardSpace:
        """The bboards namespace (``Bboards/…``), made on first use."""
        if self._boards is None:
            from ams.imap._boards import BoardSpace

            self._boards = BoardSpace(self)
        return self._boards

    # -- the mailbox list ---------------------------------------------------------

    def list(self) -> list[ListEntry]:
        snap = self.mailboxes.read()
        out: list[ListEntry] = []
        for info in snap.list():
            attrs = ["\\HasChildren" if snap.has_children(info.name) else "\\HasNoChildren"]
            if info.special_use:
                attrs.append(info.special_use)
            if info.subscribed:
                attrs.append("\\Subscribed")
            out.append(ListEntry(info.name, tuple(attrs)))
        for name in snap.implied_parents():
            out.append(ListEntry(name, ("\\Noselect", "\\HasChildren")))
        out.sort(key=lambda e: (e.name.upper() != "INBOX", e.name))
        return out + self.boards.list()

    def subscriptions(self) -> list[str]:
        return self.mailboxes.subscriptions() + self.boards.subscriptions()

    def create(self, name: str) -> None:
        self._personal(name)
        self.mailboxes.create(name.rstrip(DELIMITER))

    def delete(self, name: str) -> None:
        self._personal(name)
        info = self.mailboxes.lookup(name)
        self.mailboxes.delete(name)
        self.index.forget(info.id)

    def rename(self, old: str, new: str) -> None:
        self._personal(old)
        self._personal(new)
        self.mailboxes.rename(old, new)

    def _personal(self, name: str) -> None:
        """Refuse to make, remove or rename anything in the bboards namespace."""
        if is_board_name(name.rstrip(DELIMITER)):
            self.boards.refuse_change(name)

    def subscribe(self, name: str, on: bool = True) -> None:
        if is_board_name(name):
            self.boards.subscribe(name, on)
        elif on:
            self.mailboxes.subscribe(name)
        else:
            self.mailboxes.unsubscribe(name)

    # -- mailboxes ------------------------------------------------------------------

    def open_log(self, name: str) -> MailboxLog:
        return self.mailboxes.open(name)

    def status(self, name: str) -> dict[str, int]:
        if is_board_name(name):
            return self.boards.status(name)
        log = self.open_log(name)
        self.index.update(log)
        log_id = log.head().id
        st = self.index.status(log_id)
        if st is None:
            raise NotFound(f"no index for {name}")
        with self.index.view(log_id) as view:
            unseen = sum(1 for _, fl in view.flags() if "\\Seen" not in fl)
        return {"MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity,
                "UNSEEN": unseen, "RECENT": 0, "HIGHESTMODSEQ": st.highest_modseq}

    def select(self, name: str, *, readonly: bool = False) -> Selected:
        if is_board_name(name):
            return self.boards.select(name, readonly=readonly)
        return Selected(self, name, self.open_log(name), readonly=readonly)

    def append(self, name: str, message: bytes, flags: Sequence[str] = (),
               internal_date: int | None = None, tz_minutes: int = 0,
               ) -> tuple[int, int | None]:
        """APPEND: file ``message``; return (UIDVALIDITY, UID).

        In the bboards namespace this posts, and the UID is None when the
        post waits for a moderator.
        """
        if is_board_name(name):
            return self.boards.post(name, message, flags, internal_date)
        log = self.open_log(name)
        date = int(time.time()) if internal_date is None else internal_date
        (a,) = log.append([NewMessage(message, internal_date=date, tz_minutes=tz_minutes,
                                      flags=tuple(flags))])
        return log.head().uidvalidity, a.uid

    def special_use(self, attribute: str) -> str | None:
        for info in self.mailboxes.list():
            if info.special_use == attribute:
                return info.name
        return None


class Selected:
    """The session's view of one selected mailbox.  See the module docstring."""

    #: A mailbox keeps MODSEQs (CONDSTORE); a bboard does not (NOMODSEQ).
    nomodseq = False
    #: The watcher key of state outside the log that changes what a session
    #: shows (a user's bboard flags), if any.
    flags_key: str | None = None
    #: Whether EXPUNGE (and CLOSE's implicit one) may remove messages.
    may_expunge = True

    def __init__(self, account: Account, name: str, log: MailboxLog, *,
                 readonly: bool) -> None:
        self.account = account
        self.index = account.index
        self.name = name
        self.log = log
        self.readonly = readonly
        self.index.update(log)
        self.log_id = log.head().id
        with self.index.view(self.log_id) as view:
            st = view.status()
            self.uids: Sequence[int] = _shared(self.log_id, st.uidvalidity,
                                               st.highest_modseq, view.uid_array)
        self.uidvalidity = st.uidvalidity
        self.uidnext = st.uidnext
        self.highest_modseq = st.highest_modseq

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` in this session's view (UIDs ascend)."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen (for SELECT)."""
        with self.index.view(self.log_id) as view:
            uid = view.first_without("\\Seen")
        return self.seq_of(uid) if uid is not None else None

    # -- keeping up --------------------------------------------------------------------

    def overlay(self) -> Any:
        """Flags that replace the index's (a bboard's per-user flags), or None."""
        return None

    def refresh(self, *, allow_expunge: bool = True) -> Changes:
        """Catch up with the log; report and apply what changed.

        With ``allow_expunge`` False (during FETCH, STORE, SEARCH), expunges
        are left for a later refresh, and so is anything after them.
        """
        self.index.update(self.log)
        ch = Changes()
        with self.index.view(self.log_id) as view:
            st = view.status()
            if st.uidvalidity != self.uidvalidity:
                ch.uidvalidity_changed = True
                return ch
            if st.highest_modseq == self.highest_modseq:
                return ch
            changed = view.changed_since(self.highest_modseq)
            known = set(self.uids)
            new_uids = sorted(u for u, _ in changed if u not in known)
            uids = self.uids
            if st.messages != len(uids) + len(new_uids):
                if not allow_expunge:
                    return self._flags_only(view, changed, known, ch)
                current = set(view.uids())
                gone = [i for i, u in enumerate(uids) if u not in current]
                if gone:
                    uids = array("I", uids)  # the old one may be shared
                for i in reversed(gone):
                    ch.expunged.append(i + 1)
                    ch.expunged_uids.append(uids[i])
                    del uids[i]
                known = set(uids)
            self.uids = uids
            self._flags_only(view, changed, known, ch)
            if new_uids:
                uids = array("I", uids)
                uids.extend(new_uids)
                ch.exists = len(uids)
            # In step with the index again: share the list with the other
            # sessions on this mailbox at this point.
            self.uids = _shared(self.log_id, st.uidvalidity, st.highest_modseq,
                                lambda: uids)
        self.highest_modseq = st.highest_modseq
        self.uidnext = st.uidnext
        return ch

    def _flags_only(self, view, changed, known, ch: Changes) -> Changes:  # type: ignore[no-untyped-def]
        for uid, _modseq in changed:
            if uid in known:
                m = view.get(uid)
                seq = self.seq_of(uid)
                if m is not None and seq is not None:
                    ch.flags.append((seq, m))
        return ch

    # -- reading ---------------------------------------------------------------------

    def messages(self, uids: Iterable[int]) -> list[tuple[int, IndexedMessage]]:
        """(seq, message) for ``uids`` that are in the session's view, in UID order."""
        want = sorted((seq, u) for u in set(uids) if (seq := self.seq_of(u)) is not None)
        if not want:
            return []
        out = []
        with self.index.view(self.log_id) as view:
            for seq, u in want:
                m = view.get(u)
                if m is not None:
                    out.append((seq, m))
        return out

    def changed_since(self, modseq: int) -> list[tuple[int, IndexedMessage]]:
        """(seq, message) in the session's view whose MODSEQ is above ``modseq``."""
        with self.index.view(self.log_id) as view:
            uids = [u for u, _ in view.changed_since(modseq)]
        return self.messages(uids)

    def read(self, m: IndexedMessage) -> bytes:
        return self.log.read_message(m.location)

    # -- changing ---------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise UsageError("mailbox is read-only (EXAMINE)")

    def store(self, uids: Sequence[int], op: FlagOp, flags: Sequence[str], *,
              unchanged_since: int | None = None) -> tuple[list[int], list[int]]:
        """STORE: change flags; return (uids changed, uids refused by UNCHANGEDSINCE).

        No record is written for messages whose flags would not change
        (RFC 7162: MODSEQ moves only on a real change).
        """
        self._writable()
        targets = self.messages(uids)
        refused = []
        todo = []
        for _seq, m in targets:
            if unchanged_since is not None and m.modseq > unchanged_since:
                refused.append(m.uid)
                continue
            new = apply_flags(m.flags, op, flags)
            if new != m.flags:
                todo.append(m.uid)
        if todo:
            self.log.store_flags(op, list(flags), todo)
        return todo, refused

    def expunge(self, only: Iterable[int] | None = None) -> list[int]:
        """EXPUNGE (or UID EXPUNGE of ``only``): remove \\Deleted messages."""
        self._writable()
        with self.index.view(self.log_id) as view:
            deleted = [u for u, fl in view.flags() if "\\Deleted" in fl]
        if only is not None:
            keep = set(only)
            deleted = [u for u in deleted if u in keep]
        if deleted:
            self.log.expunge(deleted)
        return deleted

    def check_expunge(self) -> None:
        """Raise if this session may not remove messages (MOVE checks first)."""

    def remove(self, uids: Sequence[int]) -> None:
        """MOVE's second half: ``uids`` go, whatever their flags."""
        self._writable()
        self.log.expunge(list(uids))

    def copy_to(self, uids: Sequence[int], dest: str) -> tuple[int, list[int], list[int]]:
        """COPY: append copies to ``dest``; return (UIDVALIDITY, source UIDs, new UIDs).

        Into a bboard each message is a post; the UIDs are given only when
        every post was published (none waits for a moderator).
        """
        msgs = self.messages(uids)
        if is_board_name(dest):
            posted = [self.account.boards.post(dest, self.read(m), (), m.internal_date)
                      for _, m in msgs]
            if not posted or any(uid is None for _, uid in posted):
                return (posted[0][0] if posted else 0), [], []
            return posted[0][0], [m.uid for _, m in msgs], [u for _, u in posted if u]
        try:
            dlog = self.account.open_log(dest)
        except NotFound:
            raise NotFound(f"[TRYCREATE] no mailbox {dest}") from None
        if not msgs:
            return dlog.head().uidvalidity, [], []
        new = [NewMessage(self.read(m), internal_date=m.internal_date, tz_minutes=m.tz_minutes,
                          flags=tuple(sorted(m.flags))) for _, m in msgs]
        res = dlog.append(new)
        return dlog.head().uidvalidity, [m.uid for _, m in msgs], [a.uid for a in res]


#: (log id, UIDVALIDITY, HIGHESTMODSEQ) -> the UIDs at that point, shared by
#: every session of this process in step with it: a thousand clients idling on
#: one mailbox hold one array of 4-octet UIDs, not a thousand lists.  Arrays
#: here are never changed in place; a session that moves on builds a new one.
_SNAPSHOTS: weakref.WeakValueDictionary[tuple[str, int, int], array[int]] = (
    weakref.WeakValueDictionary())
_SNAPSHOTS_LOCK = threading.Lock()
#: The latest array of each recently selected log, kept alive after its
#: last session goes (most recently used last), so that selecting a mailbox
#: again costs no walk of its index: at most this many octets of UIDs.
RECENT_UID_BYTES = 64 * 1024 * 1024
_RECENT: OrderedDict[str, array[int]] = OrderedDict()
_recent_bytes = 0


def _shared(log_id: str, uidvalidity: int, modseq: int,
            load: Callable[[], Sequence[int]]) -> array[int]:
    key = (log_id, uidvalidity, modseq)
    with _SNAPSHOTS_LOCK:
        got = _SNAPSHOTS.get(key)
    if got is None:
        uids = load()
        made = uids if isinstance(uids, array) else array("I", uids)
        with _SNAPSHOTS_LOCK:
            got = _SNAPSHOTS.setdefault(key, made)
    _keep(log_id, got)
    return got


def _keep(log_id: str, uids: array[int]) -> None:
    global _recent_bytes
    with _SNAPSHOTS_LOCK:
        old = _RECENT.pop(log_id, None)
        if old is not None:
            _recent_bytes -= old.itemsize * len(old)
        _RECENT[log_id] = uids
        _recent_bytes += uids.itemsize * len(uids)
        while _recent_bytes > RECENT_UID_BYTES and len(_RECENT) > 1:
            _, gone = _RECENT.popitem(last=False)
            _recent_bytes -= gone.itemsize * len(gone)


def is_board_name(name: str) -> bool:
    """Whether an IMAP mailbox name lies in the bboards namespace."""
    return name == BOARDS_PREFIX or name.startswith(BOARDS_PREFIX + DELIMITER)


def apply_flags(old: frozenset[str], op: FlagOp, flags: Sequence[str]) -> frozenset[str]:
    if op == FlagOp.REPLACE:
        return frozenset(flags)
    if op == FlagOp.ADD:
        return old | frozenset(flags)
    return old - frozenset(flags)


__all__ = ["Account", "AlreadyExists", "Changes", "DELIMITER", "ListEntry", "SYSTEM_FLAGS",
           "Selected"]
