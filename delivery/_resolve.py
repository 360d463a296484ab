"""Recipient resolution: what an address means, before any byte is filed.

Theory of operation
-------------------
An address ``local@domain`` is *local* when ``domain`` (case-insensitive, one
trailing dot ignored) is one of ``mail.domains``.  An address with no ``@``
at all is taken as a local part of a local domain: RFC 5321 4.5.1 makes
``postmaster`` without a domain deliverable, and the LDA is handed bare user
names by some MTAs.

The local part, in this order:

1. starts with ``mail.bboard_prefix`` (``bb+``, case-insensitive): a
   bulletin board, named by the rest of the local part, lowercased
   (``bb+Andrew.General`` is ``andrew.general``).  The prefix is checked
   first, so a user called ``bb`` cannot shadow boards.  A malformed or
   unknown board is UNKNOWN_BBOARD.  Otherwise the target is a
   :class:`BboardTarget`: the board's published log, or its pending log when
   the board is moderated.  Mail never skips moderation, not even a
   moderator's: an envelope sender proves nothing.  When the caller passes
   the envelope ``sender`` (the MX does, at RCPT time), a members-only
   board also requires it to be the address of a local user who is a
   member or moderator, else BBOARD_DENIED; an authenticated ``user``
   (submission) is checked instead of the sender.  At RCPT time a missing
   sender counts as a stranger, so an unchecked post is refused.  Filing
   checks again, with the entry's envelope sender (or the user submission
   authenticated, kept in the entry), so a member removed between RCPT and
   filing can no longer post; the LDA, which has no RCPT of its own, checks
   the ``-f`` sender the same way.  Filing also follows the board's
   moderation setting at that moment.
2. is split once at ``mail.recipient_delimiter``: ``base+detail``.
3. ``base`` is looked up by :meth:`UserRegistry.resolve` (user names, then
   aliases, case-insensitive).  An alias may name several users: each
   becomes a target (fan-out).
4. per user: disabled users are skipped (a disabled user with a forward
   does not forward either); a user with ``forward_to`` becomes a
   :class:`Forward` (forward only: no copy is kept); anyone else becomes a
   :class:`Mailbox` target: the mailbox named ``detail`` exactly
   (case-sensitive, except that ``inbox`` is INBOX as IMAP says) if that user
   has one, else INBOX.

No user at all is UNKNOWN_USER; only disabled users is DISABLED.  I/O and
store errors while looking are TEMPORARY: the caller retries (the MX answers
451, the LDA exits 75, the worker releases the entry).  A user record whose
mail dir or INBOX is missing is damage for fsck, so it is TEMPORARY too,
not "unknown user": mail waits in the spool until an operator repairs it.

:meth:`Resolver.resolve_for_rcpt` is what the MX calls at RCPT time; each
:class:`Refusal` carries its SMTP reply (code, enhanced code, text) and its
sysexits code from one table, :data:`REFUSALS`.

This module reads the store (a few small files) and nothing else; callers in
trio run it in a thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from ams.config import Config
from ams.errors import LockError, NotFound, StoreError, UsageError
from ams.store import Store, User, UserRegistry
from ams.store.mailboxes import INBOX, MailboxInfo, validate_mailbox_name
from bboard import Bboards, validate_board_name

#: sysexits(3) codes the LDA uses.
EX_OK = 0
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: Errors that mean "try again later", wherever they come from.  NotFound
#: here is an object that vanished between resolving and filing (a mailbox
#: deleted, a user removed): a retry resolves afresh.
TEMPORARY_ERRORS: tuple[type[BaseException], ...] = (OSError, LockError, StoreError, NotFound)


class Reason(enum.Enum):
    """Why an address cannot take mail (now, or ever)."""

    BAD_ADDRESS = "bad address"
    NOT_LOCAL = "not a local domain"
    UNKNOWN_USER = "unknown user"
    DISABLED = "user disabled"
    UNKNOWN_BBOARD = "no such bulletin board"
    BBOARD_DENIED = "not allowed to post to this bulletin board"
    LOOP = "mail forwarding loop"
    TEMPORARY = "temporary failure"


@dataclass(frozen=True)
class ReplySpec:
    """How one refusal is reported: SMTP reply and LDA exit status."""

    code: int
    enhanced: str
    text: str
    exit_code: int


#: The one table of refusals (replies are data).  The MX builds its SMTP
#: reply from ``code``, ``enhanced`` and ``text``; detail stays in logs.
REFUSALS: dict[Reason, ReplySpec] = {
    Reason.BAD_ADDRESS: ReplySpec(501, "5.1.3", "Bad recipient address syntax", EX_NOUSER),
    Reason.NOT_LOCAL: ReplySpec(550, "5.7.1", "Relaying denied", EX_NOUSER),
    Reason.UNKNOWN_USER: ReplySpec(550, "5.1.1", "No such user here", EX_NOUSER),
    Reason.DISABLED: ReplySpec(550, "5.2.1", "Mailbox disabled", EX_NOUSER),
    Reason.UNKNOWN_BBOARD: ReplySpec(550, "5.1.1", "No such bulletin board here", EX_NOUSER),
    Reason.BBOARD_DENIED: ReplySpec(550, "5.7.1", "Not allowed to post to this bulletin board",
                                    EX_UNAVAILABLE),
    Reason.LOOP: ReplySpec(554, "5.4.6", "Mail forwarding loop", EX_UNAVAILABLE),
    Reason.TEMPORARY: ReplySpec(451, "4.3.0",
                                "Requested action aborted: local error in processing",
                                EX_TEMPFAIL),
}


@dataclass(frozen=True)
class Refusal:
    """An address that takes no mail; ``detail`` is for logs and notices only."""

    address: str
    reason: Reason
    detail: str = ""

    @property
    def permanent(self) -> bool:
        return self.reason is not Reason.TEMPORARY

    @property
    def reply(self) -> ReplySpec:
        return REFUSALS[self.reason]

    @property
    def exit_code(self) -> int:
        return REFUSALS[self.reason].exit_code

    def __str__(self) -> str:
        return f"{self.address}: {self.reason.value}" + (f" ({self.detail})" if self.detail
                                                         else "")


@dataclass(frozen=True)
class Mailbox:
    """File into this user's mailbox."""

    user: str
    user_id: str
    mailbox: str
    #: The log directory (``<user dir>/<id>``) and its id.
    path: Path
    log_id: str

    def __str__(self) -> str:
        return f"{self.user}:{self.mailbox}"


@dataclass(frozen=True)
class BboardTarget(Mailbox):
    """File into a bboard's log: the same append as a mailbox's.

    ``path``/``log_id`` name the board's posts log, or its pending log when
    ``pending``; ``user`` is ``bboard:NAME`` and ``user_id`` the board id.
    """

    board: str = ""
    pending: bool = False

    def __str__(self) -> str:
        return f"bboard:{self.board}" + ("(pending)" if self.pending else "")


@dataclass(frozen=True)
class Forward:
    """Requeue to the outgoing spool for ``address`` instead of filing."""

    user: str
    address: str

    def __str__(self) -> str:
        return f"{self.user}>{self.address}"


Target = Mailbox | Forward


@dataclass(frozen=True)
class Resolution:
    """A local address that takes mail, and where it goes."""

    address: str
    #: The base local part, lowercased, and the ``+detail`` ("" if none).
    local: str
    detail: str
    targets: tuple[Target, ...]
    #: Users of an alias fan-out that were left out (disabled), for logs.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Address:
    """An address split for resolution; ``domain`` is None for a bare local part."""

    raw: str
    local: str
    domain: str | None


def parse_address(address: str) -> Address | None:
    """Split ``address`` (angle brackets allowed); None if it cannot be an address.

    Control characters, spaces and an empty local part are refused: the
    address is copied into a Delivered-To header, so it must not be able to
    start a header of its own.
    """
    raw = address.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    if not raw or len(raw) > 512 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        return None
    local, at, domain = raw.rpartition("@")
    if not at:
        return Address(raw, raw, None)
    if not local or not domain:
        return None
    return Address(raw, local, domain)


class Resolver:
    """Resolves addresses against one store's users.  Synchronous."""

    def __init__(self, store: Store, users: UserRegistry | None = None,
                 config: Config | None = None) -> None:
        self.store = store
        self.users = users or UserRegistry(store)
        cfg = config or store.config
        self.domains = frozenset(d.lower().rstrip(".") for d in cfg.mail.domains)
        self.delimiter = cfg.mail.recipient_delimiter
        self.bboard_prefix = cfg.mail.bboard_prefix.lower()
        self._boards: Bboards | None = None

    @property
    def boards(self) -> Bboards:
        if self._boards is None:
            self._boards = Bboards(self.store, self.users)
        return self._boards

    def is_bboard(self, address: str) -> bool:
        """Whether ``address`` has the bboard prefix (its answer depends on the sender)."""
        a = parse_address(address)
        return (a is not None and bool(self.bboard_prefix)
                and a.local.lower().startswith(self.bboard_prefix))

    def is_local(self, address: str) -> bool:
        """Whether ``address`` is in one of our domains (its user may not exist)."""
        a = parse_address(address)
        return a is not None and (a.domain is None or a.domain.lower().rstrip(".") in self.domains)

    def resolve_for_rcpt(self, address: str, sender: str | None = None, *,
                         user: str | None = None) -> Resolution | Refusal:
        """What the MX answers to ``RCPT TO:<address>``: accept, or this refusal.

        A members-only bboard accepts the post when ``user`` (the client's
        authenticated user, for submission) or else the envelope ``sender``
        is one of its members; with neither, it refuses (fail closed).
        """
        return self.resolve(address, sender=sender or "", user=user)

    def resolve(self, address: str, *, sender: str | None = None,
                user: str | None = None) -> Resolution | Refusal:
        """What ``address`` means.  ``sender``/``user``: see :meth:`resolve_for_rcpt`;
        when both are None a bboard's admission is not checked."""
        a = parse_address(address)
        if a is None:
            return Refusal(address, Reason.BAD_ADDRESS)
        if a.domain is not None and a.domain.lower().rstrip(".") not in self.domains:
            return Refusal(a.raw, Reason.NOT_LOCAL)
        if self.bboard_prefix and a.local.lower().startswith(self.bboard_prefix):
            try:
                return self._resolve_bboard(a.raw, a.local[len(self.bboard_prefix):].lower(),
                                            sender, user)
            except TEMPORARY_ERRORS as e:
                return Refusal(a.raw, Reason.TEMPORARY, _describe(e))
        base, detail = a.local, ""
        if self.delimiter and self.delimiter in base:
            base, detail = base.split(self.delimiter, 1)
        try:
            return self._resolve_local(a.raw, base.lower(), detail)
        except TEMPORARY_ERRORS as e:
            return Refusal(a.raw, Reason.TEMPORARY, _describe(e))

    def names_bboard(self, address: str) -> bool:
        """Whether ``address`` is a bboard's (its resolution depends on who posts)."""
        a = parse_address(address)
        return bool(a is not None and self.bboard_prefix
                    and a.local.lower().startswith(self.bboard_prefix))

    def _resolve_local(self, raw: str, base: str, detail: str) -> Resolution | Refusal:
        users = self.users.resolve(base) if base else []
        if not users:
            return Refusal(raw, Reason.UNKNOWN_USER)
        targets: list[Target] = []
        skipped: list[str] = []
        for user in users:
            if user.disabled:
                skipped.append(user.name)
            elif user.forward_to:
                targets.append(Forward(user.name, user.forward_to))
            else:
                targets.append(self._mailbox(user, detail))
        if not targets:
            return Refusal(raw, Reason.DISABLED)
        return Resolution(raw, base, detail, tuple(targets), tuple(skipped))

    def _resolve_bboard(self, raw: str, name: str, sender: str | None, user: str | None,
                        ) -> Resolution | Refusal:
        try:
            info = self.boards.lookup(validate_board_name(name))
        except (UsageError, NotFound):
            return Refusal(raw, Reason.UNKNOWN_BBOARD, name)
        if (sender is not None or user is not None) and info.post == "members":
            posters = [user] if user is not None else self._sender_users(sender or "")
            if not any(self.boards.can_post(info, u) for u in posters):
                who = user if user is not None else f"<{sender}>"
                return Refusal(raw, Reason.BBOARD_DENIED, f"{who} is not a member of {name}")
        pending = info.post == "moderated"  # by mail, always (see the module docstring)
        path, log_id = ((info.pending_path, info.pending_id) if pending
                        else (info.posts_path, info.id))
        target = BboardTarget(f"bboard:{name}", info.id, "pending" if pending else "posts",
                              path, log_id, board=name, pending=pending)
        return Resolution(raw, self.bboard_prefix + name, "", (target,))

    def _sender_users(self, sender: str) -> list[str]:
        """The enabled local users an envelope sender names (none if not local)."""
        a = parse_address(sender)
        if a is None or a.domain is None or a.domain.lower().rstrip(".") not in self.domains:
            return []
        base = a.local
        if self.delimiter and self.delimiter in base:
            base = base.split(self.delimiter, 1)[0]
        return [u.name for u in self.users.resolve(base.lower()) if not u.disabled]

    def _mailbox(self, user: User, detail: str) -> Mailbox:
        try:
            boxes = self.users.mailboxes(user.name).read()
        except NotFound as e:  # the record is there, its mail dir is not: damage
            raise StoreError(f"user {user.name!r} has a record but no mail directory") from e
        info: MailboxInfo | None = None
        if detail:
            try:
                info = boxes.get(validate_mailbox_name(detail))
            except (NotFound, UsageError):
                info = None
        if info is None:
            try:
                info = boxes.get(INBOX)
            except NotFound as e:
                raise StoreError(f"user {user.name!r} has no INBOX") from e
        return Mailbox(user.name, user.id, info.name, info.path, info.id)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    return f"{type(e).__name__}: {e}"


__all__ = [
    "EX_CONFIG", "EX_DATAERR", "EX_NOUSER", "EX_OK", "EX_SOFTWARE", "EX_TEMPFAIL",
    "EX_UNAVAILABLE", "REFUSALS", "TEMPORARY_ERRORS", "Address", "BboardTarget", "Forward",
    "Mailbox",
    "Reason", "Refusal", "ReplySpec", "Resolution", "Resolver", "Target", "parse_address",
]
