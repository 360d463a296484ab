"""Posting, moderation and expiry: the operations on a board's two logs.

Theory of operation
-------------------
A board has two logs in the mailbox format (ams.store.log): ``posts/``,
what readers see, and ``pending/``, what waits for a moderator.  Every
operation here is an append (or, for expiry, a compaction) on one of them,
under that log's own lock, so posting changes no directory and concurrent
posters on any host get distinct, increasing UIDs [W6].

Posting (:meth:`Bboards.post`).  The board's policy picks the log
(:meth:`Bboards.route`): ``posts/`` for an open board, or for a member of a
members-only board, or for a moderator; ``pending/`` for anyone else on a
moderated board; NotPermitted for anyone else on a members-only board.  The
message is checked and built whole before the one append, so a refusal or
a crash leaves nothing half-posted.  Every post gets a delivery id (the
caller's, or ``post/<random>``).

Approving (:meth:`Bboards.approve`) copies a pending post into ``posts/``
and then expunges it from ``pending/``.  The copy carries the delivery id
``approved/<pending log id>/<pending UID>`` and is appended with
``dedupe_since_us`` set to the pending record's time, so if the process
dies between the two steps, approving again finds the copy ([W7]) and only
finishes the expunge: the post is published exactly once.  Two moderators
approving at once serialise on the posts log's lock and the second finds the
first's copy the same way.

Expiry (:meth:`Bboards.expire`) removes the posts older than the board's
``expire_days``, judged by each record's ``time_us`` (when it was posted, or
approved), not by the Date header or the internal date, which a sender
chooses.  Records are in UID order and were appended in time order, so the
expired posts are a prefix of the log: the scan reads from the start and
stops at the first post newer than the cutoff plus ``store.clock_skew``
(hosts' clocks may disagree by that much), so an expiry run that finds
nothing reads a few records.  The expired UIDs are expunged in one record
and the log is compacted [W5]: the new generation holds exactly the posts
that remain; readers that hold the old generation keep reading it for
``store.compaction_grace_seconds`` and then follow SEALED to the new one,
seeing a reset with the remaining posts.  Pending posts expire the same way.

Invariants (cited in the code as ``[P1]`` … ``[P4]``):

P1. A post is appended whole in one record or not at all; policy is decided
    before the append.
P2. An approved post appears in ``posts/`` exactly once, whatever crashes
    (the approval's delivery id and [W7]).
P3. Expiry expunges exactly the posts whose ``time_us`` is older than the
    cutoff, and only those.
P4. Only moderators approve, reject or expunge; the check happens before
    anything is written.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.errors import NotFound, UsageError
from ams.store import Appended, LogReader, MailboxLog, NewMessage, Store, UserRegistry, fold
from ams.store.format import Append
from ams.store.log import MessageLocation
from bboard._message import header_text, parse_headers
from bboard._registry import BoardInfo, BoardRegistry, NotPermitted
from bboard._state import UserState

log = logging.getLogger(__name__)

#: How far back a post with a caller's delivery id looks for an earlier copy.
DEDUPE_SECONDS = 3600.0
#: Records per poll while scanning a log's prefix for expired posts.
_SCAN_BATCH = 2000

_CRASHPOINT = os.environ.get("AMS_CRASHPOINT", "")


def _crashpoint(name: str) -> None:
    """Crash injection for tests: die here as a SIGKILL would leave us."""
    if _CRASHPOINT == name:
        os._exit(137)


@dataclass(frozen=True)
class PostResult:
    board: str
    #: The post's UID in ``posts/`` (None while it waits for a moderator).
    uid: int | None
    #: Its UID in ``pending/`` when it waits for a moderator, else None.
    pending: int | None = None
    #: True when the delivery id was found already posted (nothing new written).
    duplicate: bool = False

    @property
    def published(self) -> bool:
        return self.uid is not None


@dataclass(frozen=True)
class Post:
    """A post as a log holds it (published or pending)."""

    uid: int
    location: MessageLocation
    internal_date: int
    time_us: int
    delivery_id: str


@dataclass(frozen=True)
class PendingPost:
    uid: int
    time_us: int
    sender: str
    subject: str
    size: int


@dataclass(frozen=True)
class ExpireResult:
    board: str
    expired: int
    pending_expired: int
    compacted: bool


class Bboards:
    """Every board of one store: the API the CLI, delivery and the IMAP bridge use.

    Synchronous and thread-safe; callers in trio use ``to_thread``.
    """

    def __init__(self, store: Store, users: UserRegistry | None = None) -> None:
        self.store = store
        self.registry = BoardRegistry(store)
        self._users = users
        self._logs: dict[Path, MailboxLog] = {}
        self._mutex = threading.Lock()

    @property
    def users(self) -> UserRegistry:
        if self._users is None:
            self._users = UserRegistry(self.store)
        return self._users

    # -- the registry --------------------------------------------------------------

    def list(self) -> list[BoardInfo]:
        return self.registry.list()

    def lookup(self, name: str) -> BoardInfo:
        """The board ``name``; NotFound if there is none, UsageError for a bad name."""
        return self.registry.lookup(name)

    def create(self, name: str, **settings: Any) -> BoardInfo:
        self._check_users_exist(settings)
        return self.registry.create(name, **settings)

    def update(self, name: str, **changes: Any) -> BoardInfo:
        self._check_users_exist(changes)
        return self.registry.update(name, **changes)

    def delete(self, name: str) -> BoardInfo:
        return self.registry.delete(name)

    def _check_users_exist(self, settings: dict[str, Any]) -> None:
        for key, names in settings.items():
            if key.endswith(("members", "readers", "moderators")) and not key.startswith(
                    "remove_") and names:
                for n in names:
                    if not self.users.exists(n):
                        raise NotFound(f"no user {n!r} (for {key.replace('_', ' ')})")

    # -- logs ----------------------------------------------------------------------

    def open(self, board: str | BoardInfo) -> MailboxLog:
        """The published log (index it with ams.index like a mailbox)."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        return self._log(info.posts_path, info.id)

    def open_pending(self, board: str | BoardInfo) -> MailboxLog:
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        return self._log(info.pending_path, info.pending_id)

    def _log(self, path: Path, log_id: str) -> MailboxLog:
        # Kept: a MailboxLog remembers where its tail is, which saves
        # re-reading the chain on every append.
        with self._mutex:
            lg = self._logs.get(path)
            if lg is None:
                if len(self._logs) > 1024:
                    self._logs.clear()
                lg = self._logs[path] = self.store.log_at(path, log_id)
            return lg

    # -- policy ----------------------------------------------------------------------

    @staticmethod
    def is_moderator(info: BoardInfo, user: str | None) -> bool:
        return user is not None and user in info.moderators

    @staticmethod
    def can_read(info: BoardInfo, user: str | None) -> bool:
        if info.read == "all":
            return True
        return user is not None and (user in info.readers or user in info.moderators)

    @staticmethod
    def can_post(info: BoardInfo, user: str | None) -> bool:
        """Whether ``user`` may post at all (on a moderated board: submit for approval)."""
        if info.post == "members":
            return user is not None and (user in info.members or user in info.moderators)
        return True

    def route(self, info: BoardInfo, user: str | None) -> str:
        """Where a post by ``user`` goes: "posts" or "pending"; NotPermitted if nowhere.

        ``user`` None is a poster who is not a logged-in user (mail).
        """
        if not self.can_post(info, user):
            raise NotPermitted(f"only members may post to bboard {info.name!r}")
        if info.post == "moderated" and not self.is_moderator(info, user):
            return "pending"
        return "posts"

    def check_read(self, info: BoardInfo, user: str | None) -> None:
        if not self.can_read(info, user):
            raise NotPermitted(f"{user or 'anonymous'} may not read bboard {info.name!r}")

    def check_moderator(self, info: BoardInfo, user: str | None) -> None:
        if not self.is_moderator(info, user):  # [P4]
            raise NotPermitted(f"{user or 'anonymous'} is not a moderator of bboard "
                               f"{info.name!r}")

    # -- posting [P1] ------------------------------------------------------------------

    def post(self, board: str | BoardInfo, raw_message: bytes, *, user: str | None,
             sender: str | None = None, internal_date: int | None = None,
             delivery_id: str | None = None, dedupe_since_us: int | None = None,
             ) -> PostResult:
        """Post ``raw_message`` as ``user`` under the board's policy.

        Returns the published UID, or the pending id on a moderated board.
        Raises NotPermitted when the policy refuses, UsageError for a message
        over ``limits.max_message_bytes``.  With ``delivery_id``, a message
        already posted under that id (within ``dedupe_since_us``, default the
        last hour) is not posted again.  ``sender`` is for the log line only.
        """
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        limit = self.store.config.limits.max_message_bytes
        if len(raw_message) > limit:
            raise UsageError(f"the post is {len(raw_message)} bytes; the limit is {limit}")
        if not raw_message:
            raise UsageError("the post is empty")
        where = self.route(info, user)
        now = time.time()
        did = delivery_id or f"post/{uuid.uuid4().hex}"
        since = dedupe_since_us
        if delivery_id and since is None:
            since = int((now - DEDUPE_SECONDS) * 1_000_000)
        lg = self.open(info) if where == "posts" else self.open_pending(info)
        (a,) = self._append(lg, info, NewMessage(raw_message,
                                                 internal_date=int(internal_date or now),
                                                 delivery_id=did),
                            since)
        log.info("bboard %s: %s %d by %s%s%s", info.name,
                 "posted" if where == "posts" else "pending", a.uid, user or "-",
                 f" from <{sender}>" if sender else "", " (duplicate)" if a.duplicate else "")
        if where == "posts":
            return PostResult(info.name, a.uid, None, a.duplicate)
        return PostResult(info.name, None, a.uid, a.duplicate)

    def _append(self, lg: MailboxLog, info: BoardInfo, msg: NewMessage,
                since: int | None) -> builtins.list[Appended]:
        try:
            return lg.append([msg], dedupe_since_us=since)
        except FileNotFoundError:  # the board's directory went away under us
            raise NotFound(f"bboard {info.name!r} was deleted meanwhile") from None

    # -- reading ---------------------------------------------------------------------

    def posts(self, board: str | BoardInfo, *, index: Any = None) -> builtins.list[Post]:
        """The published posts, by UID.  With an ams.index Index, from it (cheap)."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        lg = self.open(info)
        if index is not None:
            index.update(lg)
            return [Post(m.uid, m.location, m.internal_date, m.time_us, "")
                    for m in index.messages(info.id)]
        return _fold_posts(lg)

    def read(self, board: str | BoardInfo, post: Post) -> bytes:
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        return self.open(info).read_message(post.location)

    def message(self, board: str | BoardInfo, uid: int) -> bytes:
        """The message of published post ``uid``; NotFound if it is not there."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        lg = self.open(info)
        for p in _fold_posts(lg):
            if p.uid == uid:
                return lg.read_message(p.location)
        raise NotFound(f"bboard {info.name!r} has no post {uid}")

    # -- moderation [P2, P4] -------------------------------------------------------------

    def pending(self, board: str | BoardInfo) -> builtins.list[PendingPost]:
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        lg = self.open_pending(info)
        out = []
        for p in _fold_posts(lg):
            head = parse_headers(_read_head(lg, p.location))
            out.append(PendingPost(p.uid, p.time_us, header_text(head, "From"),
                                   header_text(head, "Subject"), p.location.size))
        return out

    def approve(self, board: str | BoardInfo, pending_uid: int, *,
                moderator: str) -> PostResult:
        """Publish pending post ``pending_uid``, exactly once [P2]."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        self.check_moderator(info, moderator)
        pend = self.open_pending(info)
        p = self._pending_post(info, pend, pending_uid)
        body = pend.read_message(p.location)
        did = f"approved/{info.pending_id}/{p.uid}"
        (a,) = self._append(self.open(info), info,
                            NewMessage(body, internal_date=p.internal_date, delivery_id=did),
                            p.time_us)
        _crashpoint("bboard-approve-published")
        pend.expunge([p.uid])
        log.info("bboard %s: pending %d approved by %s as %d%s", info.name, p.uid, moderator,
                 a.uid, " (finishing an earlier approval)" if a.duplicate else "")
        return PostResult(info.name, a.uid, p.uid, a.duplicate)

    def reject(self, board: str | BoardInfo, pending_uid: int, *, moderator: str) -> None:
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        self.check_moderator(info, moderator)
        pend = self.open_pending(info)
        p = self._pending_post(info, pend, pending_uid)
        pend.expunge([p.uid])
        log.info("bboard %s: pending %d rejected by %s", info.name, p.uid, moderator)

    def expunge(self, board: str | BoardInfo, uids: Sequence[int], *, user: str) -> int:
        """Remove published posts (moderators only); return the MODSEQ of the record."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        self.check_moderator(info, user)
        return self.open(info).expunge(list(uids))

    def _pending_post(self, info: BoardInfo, pend: MailboxLog, uid: int) -> Post:
        for p in _fold_posts(pend):
            if p.uid == uid:
                return p
        raise NotFound(f"bboard {info.name!r} has no pending post {uid} (approved or "
                       "rejected already?)")

    # -- expiry [P3] -------------------------------------------------------------------

    def expire(self, board: str | BoardInfo, *, now: float | None = None,
               compact: bool = True) -> ExpireResult:
        """Expunge posts older than the board's ``expire_days``, then compact."""
        info = board if isinstance(board, BoardInfo) else self.lookup(board)
        if info.expire_days <= 0:
            return ExpireResult(info.name, 0, 0, False)
        cutoff = int(((now if now is not None else time.time())
                      - info.expire_days * 86400) * 1_000_000)
        skew = int(self.store.config.store.clock_skew * 1_000_000)
        counts = []
        compacted = False
        for lg in (self.open(info), self.open_pending(info)):
            uids = _expired(lg, cutoff, skew)
            if uids:
                lg.expunge(uids)
                if compact:
                    lg.compact()
                    compacted = True
            counts.append(len(uids))
        if counts[0] or counts[1]:
            log.info("bboard %s: expired %d posts and %d pending ones older than %d days%s",
                     info.name, counts[0], counts[1], info.expire_days,
                     ", compacted" if compacted else "")
        return ExpireResult(info.name, counts[0], counts[1], compacted)

    def expire_all(self, *, now: float | None = None,
                   progress: Callable[[int, int, ExpireResult], None] | None = None,
                   ) -> builtins.list[ExpireResult]:
        """Expire every board; a board that fails is logged and the rest go on."""
        boards = [b for b in self.list() if b.expire_days > 0]
        out = []
        for n, info in enumerate(boards, 1):
            try:
                r = self.expire(info, now=now)
            except (NotFound, OSError) as e:
                log.warning("bboard %s: expiry failed: %s", info.name, e)
                r = ExpireResult(info.name, 0, 0, False)
            out.append(r)
            if progress is not None:
                progress(n, len(boards), r)
        return out

    # -- per-user state ------------------------------------------------------------------

    def user_state(self, user: str) -> UserState:
        """``user``'s subscriptions and flags; NotFound for an unknown user."""
        u = self.users.get(user)
        return UserState(self.store, u.name, u.id)


def _fold_posts(lg: MailboxLog) -> list[Post]:
    st = fold(lg.reader())
    return [Post(m.uid, m.location, m.internal_date, m.time_us, m.delivery_id)
            for _, m in sorted(st.messages.items())]


def _read_head(lg: MailboxLog, loc: MessageLocation, limit: int = 16384) -> bytes:
    """The first bytes of a message: enough for its header section."""
    data = lg.read_message(MessageLocation(loc.generation, loc.seq, loc.offset,
                                           min(loc.size, limit)))
    return data


def _expired(lg: MailboxLog, cutoff_us: int, skew_us: int) -> list[int]:
    """UIDs of live posts older than ``cutoff_us``: a prefix of the log [P3].

    Reads from the start of the current generation and stops at the first
    post newer than cutoff + skew, so finding nothing is cheap.  When
    something is found, a fold of the whole log (the compaction that follows
    reads it all anyway) leaves out UIDs expunged already, so the count is
    exact.
    """
    reader = LogReader(lg.path)
    found: list[int] = []
    done = False
    while not done:
        batch = reader.poll(limit=_SCAN_BATCH)
        if not batch.records:
            break
        for rec in batch.records:
            if isinstance(rec.body, Append):
                if rec.header.time_us < cutoff_us:
                    found.append(rec.uid)
                elif rec.header.time_us >= cutoff_us + skew_us:
                    done = True
                    break
    if not found:
        return []
    live = fold(lg.reader()).messages
    return [u for u in found if u in live]


__all__ = ["DEDUPE_SECONDS", "Bboards", "ExpireResult", "PendingPost", "Post", "PostResult"]
