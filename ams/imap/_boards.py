"""Bboards through IMAP: a shared namespace over the boards a user may read.

Theory of operation
-------------------
Boards appear under one prefix, announced by NAMESPACE as the shared
namespace: ``Bboards/`` with ``/`` as the delimiter, each dot of a board's
name becoming a level (``andrew.general`` is ``Bboards/andrew/general``).
``Bboards`` itself and any level that is not a board (``Bboards/andrew``
when only ``andrew.general`` exists) are ``\\Noselect`` parents.  A user
sees only the boards they may read (``Bboards.can_read``); a name they may
not read, and a name that is no board, both answer NONEXISTENT, so LIST
and SELECT reveal nothing about private boards.

A board's posts are one shared log, indexed by this host's LMDB index like
a mailbox; its flags are not.  ``\\Seen``, ``\\Deleted`` and every other flag
a user sets on a post are that user's alone, kept in their bboard state
(bboard._state: UID ranges per flag, one small file per board).
:class:`BoardSelected` is a :class:`~ams.imap._backend.Selected` whose
flags come from that state instead of the index:

- FETCH, SEARCH and STORE see and change the user's flags;
- a refresh also notices the user's flags file changing (another session
  of the same user, on any host) and reports the posts whose flags moved;
- EXPUNGE removes the posts the user marked ``\\Deleted``, and only a
  moderator may (anyone else: NO [NOPERM]);
- APPEND and COPY into a board post under its policy: a moderated board
  keeps the post for a moderator, and no APPENDUID is given for it.

Per-user flags have no MODSEQ that stays monotonic for every user, so a
board is selected with ``NOMODSEQ`` (RFC 7162 §3.1.2.2): CONDSTORE and
QRESYNC work on mailboxes, and the commands that need mod-sequences are
refused on a board.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from ams.errors import NotFound, UsageError
from ams.imap._backend import (
    BOARDS_PREFIX,
    DELIMITER,
    Account,
    Changes,
    ListEntry,
    Selected,
    apply_flags,
    is_board_name,
)
from ams.index import IndexedMessage
from ams.store import FlagOp
from bboard import Bboards, BoardInfo, FlagState, NotPermitted, UserState, validate_board_name

PREFIX = BOARDS_PREFIX
NOFLAGS: frozenset[str] = frozenset()


def board_name(imap_name: str) -> str:
    """``Bboards/andrew/general`` → ``andrew.general``; NotFound if it names no board."""
    rest = imap_name[len(PREFIX) + 1:] if imap_name.startswith(PREFIX + DELIMITER) else ""
    try:
        return validate_board_name(rest.replace(DELIMITER, "."))
    except UsageError:
        raise NotFound(f"no bboard {imap_name!r}") from None


def imap_name(board: str) -> str:
    return PREFIX + DELIMITER + board.replace(".", DELIMITER)


class FlagOverlay:
    """A user's flags on one board at one moment, looked up by UID."""

    def __init__(self, state: FlagState) -> None:
        self._by_flag = sorted(state.by_flag.items())
        self._sets: dict[tuple[str, ...], frozenset[str]] = {}

    def get(self, uid: int) -> frozenset[str]:
        key = tuple(f for f, rs in self._by_flag if uid in rs)
        if not key:
            return NOFLAGS
        got = self._sets.get(key)
        if got is None:
            got = self._sets[key] = frozenset(key)
        return got


class BoardSpace:
    """The bboards namespace of one logged-in user."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.user = account.user
        self.boards = Bboards(account.store, account.users)
        self._state: UserState | None = None

    @property
    def state(self) -> UserState:
        # One per session: it keeps the folded flags of the boards it read.
        if self._state is None:
            self._state = self.boards.user_state(self.user)
        return self._state

    def readable(self) -> list[BoardInfo]:
        return [b for b in self.boards.list() if self.boards.can_read(b, self.user)]

    def lookup(self, name: str) -> BoardInfo:
        """The board ``name`` names, if this user may read it; else NotFound."""
        board = board_name(name)
        try:
            info = self.boards.lookup(board)
        except (NotFound, UsageError):
            raise NotFound(f"no bboard {name!r}") from None
        if not self.boards.can_read(info, self.user):
            raise NotFound(f"no bboard {name!r}")
        return info

    def refuse_change(self, name: str) -> None:
        raise NotPermitted(f"{name} is in the bboards namespace: boards are made and removed "
                           "with 'ams bboard', not through IMAP")

    # -- listing -------------------------------------------------------------------------

    def list(self) -> list[ListEntry]:
        subscribed = set(self.state.subscriptions())
        names = {b.name for b in self.readable()}
        parents = {PREFIX} if names else set()
        for n in names:
            parts = n.split(".")
            for i in range(1, len(parts)):
                parents.add(imap_name(".".join(parts[:i])))
        out = []
        for n in sorted(names):
            full = imap_name(n)
            kids = any(m.startswith(n + ".") for m in names)
            attrs = ["\\HasChildren" if kids else "\\HasNoChildren"]
            if n in subscribed:
                attrs.append("\\Subscribed")
            out.append(ListEntry(full, tuple(attrs)))
        for p in sorted(parents - {imap_name(n) for n in names}):
            out.append(ListEntry(p, ("\\Noselect", "\\HasChildren")))
        return out

    def subscriptions(self) -> list[str]:
        return [imap_name(b) for b in self.state.subscriptions()]

    def subscribe(self, name: str, on: bool) -> None:
        # IMAP lets a client subscribe to a name that does not exist (yet);
        # it must still be a well-formed board name.
        self.state.subscribe(board_name(name), on)

    # -- one board -----------------------------------------------------------------------

    def status(self, name: str) -> dict[str, int]:
        info = self.lookup(name)
        log = self.boards.open(info)
        index = self.account.index
        index.update(log)
        st = index.status(info.id)
        if st is None:
            raise NotFound(f"no index for {name}")
        seen = self.state.seen(info.id)
        with index.view(info.id) as view:
            unseen = sum(1 for u in view.uids() if u not in seen)
        return {"MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity,
                "UNSEEN": unseen, "RECENT": 0}

    def select(self, name: str, *, readonly: bool) -> BoardSelected:
        info = self.lookup(name)
        return BoardSelected(self, name, info, readonly=readonly)

    def post(self, name: str, message: bytes, flags: Sequence[str] = (),
             internal_date: int | None = None) -> tuple[int, int | None]:
        """APPEND or COPY to a board: (UIDVALIDITY, the post's UID or None if pending)."""
        info = self.lookup(name)
        res = self.boards.post(info, message, user=self.user,
                               internal_date=internal_date or int(time.time()))
        if res.uid is not None and flags:
            self.state.store(info.id, FlagOp.ADD, flags, [res.uid])
        return info.uidvalidity, res.uid


class BoardSelected(Selected):
    """A selected board: the shared log's messages with this user's flags."""

    nomodseq = True

    def __init__(self, space: BoardSpace, name: str, info: BoardInfo, *,
                 readonly: bool) -> None:
        self.space = space
        self.info = info
        self.state = space.state
        self.flags_path = self.state.flags_path(info.id)
        self.flags_key = f"bbflags:{self.flags_path}"
        self._version = self.state.version(info.id)
        self._flags = self.state.flag_state(info.id)
        super().__init__(space.account, name, space.boards.open(info), readonly=readonly)

    @property
    def may_expunge(self) -> bool:
        return self.space.boards.is_moderator(self.info, self.space.user)

    def overlay(self) -> FlagOverlay:
        return FlagOverlay(self._flags)

    def first_unseen(self) -> int | None:
        seen = self._flags.by_flag.get("\\Seen")
        for i, u in enumerate(self.uids):
            if seen is None or u not in seen:
                return i + 1
        return None

    # -- keeping up --------------------------------------------------------------------

    def refresh(self, *, allow_expunge: bool = True) -> Changes:
        ch = super().refresh(allow_expunge=allow_expunge)
        version = self.state.version(self.info.id)
        if version != self._version and not ch.uidvalidity_changed:
            old = FlagOverlay(self._flags)
            self._flags = self.state.flag_state(self.info.id)
            self._version = version
            new = FlagOverlay(self._flags)
            shown = {seq for seq, _ in ch.flags}
            moved = [u for u in self.uids if old.get(u) != new.get(u)]
            for seq, m in self.messages(moved):
                if seq not in shown:
                    ch.flags.append((seq, m))
            ch.flags.sort(key=lambda x: x[0])
        return ch

    def _flags_only(self, view, changed, known, ch):  # type: ignore[no-untyped-def]
        # The board's log carries no per-user flags: only new posts and
        # expunges move its MODSEQ, and refresh handles both.
        return ch

    # -- reading ---------------------------------------------------------------------

    def messages(self, uids: Iterable[int]) -> list[tuple[int, IndexedMessage]]:
        ov = FlagOverlay(self._flags)
        return [(seq, m._replace(flags=ov.get(m.uid)))
                for seq, m in super().messages(uids)]

    # -- changing ---------------------------------------------------------------------

    def store(self, uids: Sequence[int], op: FlagOp, flags: Sequence[str], *,
              unchanged_since: int | None = None) -> tuple[list[int], list[int]]:
        self._writable()
        if unchanged_since is not None:
            raise UsageError("a bboard has no mod-sequences (NOMODSEQ)")
        todo = [m.uid for _, m in self.messages(uids) if apply_flags(m.flags, op, flags) != m.flags]
        if todo:
            self.state.store(self.info.id, op, flags, todo)
        return todo, []

    def check_expunge(self) -> None:
        if not self.may_expunge:
            raise NotPermitted(f"only a moderator of bboard {self.info.name!r} may expunge")

    def expunge(self, only: Iterable[int] | None = None) -> list[int]:
        self._writable()
        deleted = self._flags.by_flag.get("\\Deleted")
        if deleted is None:
            return []
        targets = [u for u in self.uids if u in deleted]
        if only is not None:
            keep = set(only)
            targets = [u for u in targets if u in keep]
        if not targets:
            return []
        self.check_expunge()
        self.space.boards.expunge(self.info, targets, user=self.space.user)
        return targets

    def remove(self, uids: Sequence[int]) -> None:
        """MOVE's second half: the posts go, whatever their flags."""
        self.check_expunge()
        self.space.boards.expunge(self.info, list(uids), user=self.space.user)


__all__ = ["BoardSelected", "BoardSpace", "DELIMITER", "FlagOverlay", "PREFIX", "board_name",
           "imap_name", "is_board_name"]
