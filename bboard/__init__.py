"""Bulletin boards: shared logs that many users read, posted to by mail,
from the command line (``ams bboard``) and through IMAP.

A board is stored exactly like a mailbox (an append log, ams.store.log) in
its own sharded tree, ``bboards/ab/cd/BOARDID/``, with a second log for
posts waiting for a moderator.  Names (``andrew.general``) are validated and
mapped to random ids, never used as paths.  Per-user state (subscriptions,
and ``\\Seen`` and other flags as UID ranges) lives in each user's own
``bboards/users/ab/cd/USERID/``, never in a board's directory, so reading a
post changes nothing that other readers watch.  The formats and crash-safety
rules are in the docstrings of ``bboard._registry``, ``bboard._boards`` and
``bboard._state`` (and docs/format.md).

The API (synchronous, thread-safe, no trio: callers in trio use
``trio.to_thread.run_sync``)::

    boards = Bboards(store)
    boards.list() -> list[BoardInfo]               every board, by name
    boards.lookup(name) -> BoardInfo               NotFound if unknown, UsageError if malformed
    boards.open(name_or_info) -> MailboxLog        the published log; its head id is
                                                   info.id, so ams.index indexes it
                                                   like a mailbox (Index.update(log))
    boards.can_read(info, user) / can_post(info, user) / is_moderator(info, user) -> bool
    boards.route(info, user) -> "posts" | "pending"   (NotPermitted if the user may not post)
    boards.post(info, raw, *, user, sender=None, internal_date=None, delivery_id=None)
        -> PostResult(uid=published UID | None, pending=pending UID | None)
        raises NotPermitted (policy) or UsageError (empty, too big)
    boards.expunge(info, uids, *, user)            moderators only (NotPermitted otherwise)
    boards.pending(info) / approve(info, id, *, moderator) / reject(info, id, *, moderator)
    boards.expire(info) / expire_all()             drop posts older than expire_days
    boards.create(name, …) / update(name, …) / delete(name)

    state = boards.user_state(user)                NotFound for an unknown user
    state.subscriptions() -> list[str]             board names (need not exist any more)
    state.subscribe(name, on: bool = True) -> bool (True if it changed)
    state.flags(board_id) -> dict[int, frozenset[str]]   only UIDs with flags
    state.seen(board_id) -> RangeSet               the \\Seen UIDs, as ranges
    state.version(board_id) -> (ino, size, mtime_ns)  changes whenever the flags change
    state.store(board_id, op: FlagOp, flags, uids)    uids: UIDs or (first, last) ranges

``board_id`` is ``BoardInfo.id``.  Flags are per user: alice's ``\\Seen``
never shows for bob.  ``state.flags`` re-reads only what was appended since
its last call (per UserState object), so an IMAP session should keep one
UserState and call ``version`` to learn cheaply whether anything changed.

Mail: ``delivery.Resolver`` maps ``<mail.bboard_prefix>NAME@<local domain>``
(``bb+andrew.general@example.org``) to the board's posts or pending log; see
``delivery._resolve``.  ``serve_expiry`` is the periodic expiry task that
``ams serve`` runs.
"""

from bboard._boards import (
    DEDUPE_SECONDS,
    Bboards,
    ExpireResult,
    PendingPost,
    Post,
    PostResult,
)
from bboard._message import build_post, check_raw, parent_of, render_post, reply_subject
from bboard._registry import (
    MAX_NAME_LENGTH,
    POST_POLICIES,
    READ_POLICIES,
    BoardInfo,
    BoardRegistry,
    NotPermitted,
    validate_board_name,
)
from bboard._state import FlagState, RangeSet, UserState

__all__ = [
    "DEDUPE_SECONDS", "MAX_NAME_LENGTH", "POST_POLICIES", "READ_POLICIES",
    "Bboards", "BoardInfo", "BoardRegistry", "ExpireResult", "FlagState", "NotPermitted",
    "PendingPost", "Post", "PostResult", "RangeSet", "UserState",
    "build_post", "check_raw", "parent_of", "render_post", "reply_subject",
    "serve_expiry", "validate_board_name",
]


def __getattr__(name: str) -> object:
    # serve_expiry needs trio; importing it lazily keeps the synchronous API
    # (and the command line) free of it.
    if name == "serve_expiry":
        from bboard._service import serve_expiry
        return serve_expiry
    raise AttributeError(f"module 'bboard' has no attribute {name!r}")
