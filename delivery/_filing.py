"""Turning one message and its recipients into records for mailbox logs.

Shared by the delivery worker and the LDA.  Synchronous; no trio.

Theory of operation
-------------------
:func:`plan_message` resolves every recipient and says, without touching a
log, what must happen: :class:`Filing` s (one per target mailbox), forwards,
and per-recipient refusals, permanent or temporary.  The caller then files
the filings grouped by mailbox with :meth:`Filer.append`, one append (one
lock, one fsync) per mailbox, and decides what to do with the rest.

Exactly once.  Each filing carries a delivery id chosen by the caller
(``SPOOLID/RECIPIENT`` in the worker) and every append passes
``dedupe_since_us``, so a retry finds what an earlier, interrupted attempt
filed and files nothing twice ([W7] in ams.store.log).  Two recipients of one
message that land in the same mailbox (``alice`` and ``alice+nofolder``, or
an alias and its user) are filed once, under the first recipient's id; the
envelope's order is fixed, so a retry picks the same one.

What a filed message looks like: the message exactly as received, after two
prepended header fields, ``Return-Path: <sender>`` (RFC 5321 4.4; omitted
when the sender is unknown, i.e. an LDA run without ``-f``) and
``Delivered-To: <recipient as addressed>``.  The line ending of the new
fields follows the message's own first line.

Forwards.  A forwarded copy gets ``Delivered-To`` (not Return-Path) and
goes to the ``out`` spool with the original envelope sender (no SRS yet).
If the message already carries ``Delivered-To`` for the recipient being
forwarded, it has been here before: that recipient is refused with
:attr:`Reason.LOOP` instead of forwarding again (Postfix's rule).
Forwarding is at-least-once, not exactly-once: a crash after the copy is
enqueued but before the spool entry is completed enqueues it again on
retry (the spool cannot enqueue idempotently).  Callers make the window
small by forwarding only once every filing of the message succeeded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ams.dsn import header_section
from ams.store import Appended, MailboxLog, NewMessage, Store
from delivery._resolve import Forward, Mailbox, Reason, Refusal, Resolution

Resolve = Callable[[str], Resolution | Refusal]


def line_ending(message: bytes) -> bytes:
    """The message's own line ending, judged by its first line."""
    nl = message.find(b"\n")
    return b"\r\n" if nl > 0 and message[nl - 1:nl] == b"\r" else b"\n"


def delivery_prefix(sender: str | None, recipient: str, message: bytes) -> bytes:
    """``Return-Path`` and ``Delivered-To``, to go in front of ``message``.

    Control characters are dropped from both addresses, so no envelope
    address can ever start a header field of its own (resolution already
    refuses such recipients; this is the belt to its braces).
    """
    eol = line_ending(message)
    out = b""
    if sender is not None:
        out += b"Return-Path: <" + _header_safe(sender) + b">" + eol
    return out + b"Delivered-To: " + _header_safe(recipient) + eol


def _header_safe(address: str) -> bytes:
    return "".join(c for c in address if c >= " " and c != "\x7f").encode("utf-8",
                                                                          "surrogateescape")


def delivered_to(message: bytes) -> set[str]:
    """The addresses in the message's ``Delivered-To`` fields, lowercased."""
    out: set[str] = set()
    for line in header_section(message).splitlines():
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            out.add(value.strip().strip(b"<>").decode("utf-8", "replace").lower())
    return out


def local_offset_minutes(ts: float) -> int:
    """This host's UTC offset at ``ts``, for the internal date's zone."""
    off = time.localtime(ts).tm_gmtoff
    return max(-1439, min(1439, off // 60)) if off is not None else 0


# -- plans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filing:
    """One copy of a message for one mailbox."""

    recipient: str
    target: Mailbox
    prefix: bytes
    #: The message as received (shared by every filing of it, not copied).
    body: bytes = field(repr=False)
    delivery_id: str
    internal_date: int
    tz_minutes: int

    def new_message(self) -> NewMessage:
        return NewMessage(self.prefix + self.body, internal_date=self.internal_date,
                          tz_minutes=self.tz_minutes, delivery_id=self.delivery_id)


@dataclass
class Plan:
    filings: list[Filing] = field(default_factory=list)
    #: (recipient, forward) pairs.
    forwards: list[tuple[str, Forward]] = field(default_factory=list)
    permanent: list[Refusal] = field(default_factory=list)
    temporary: list[Refusal] = field(default_factory=list)
    #: recipient -> what it was resolved to, for the log line.
    targets: dict[str, list[str]] = field(default_factory=dict)


def plan_message(recipients: Iterable[str], resolve: Resolve, *, sender: str | None,
                 message: bytes, delivery_id: Callable[[str], str], internal_date: int,
                 tz_minutes: int) -> Plan:
    """Resolve each recipient and say what must be filed or forwarded."""
    plan = Plan()
    mailboxes: set[Path] = set()
    forwarded: set[str] = set()
    seen_here: set[str] | None = None
    for rcpt in recipients:
        r = resolve(rcpt)
        if isinstance(r, Refusal):
            (plan.permanent if r.permanent else plan.temporary).append(r)
            continue
        shown = plan.targets.setdefault(rcpt, [])
        for t in r.targets:
            if isinstance(t, Mailbox):
                shown.append(str(t))
                if t.path in mailboxes:
                    continue
                mailboxes.add(t.path)
                plan.filings.append(Filing(rcpt, t, delivery_prefix(sender, rcpt, message),
                                           message, delivery_id(rcpt), internal_date,
                                           tz_minutes))
                continue
            if seen_here is None:
                seen_here = delivered_to(message)
            if r.address.lower() in seen_here:
                plan.permanent.append(Refusal(rcpt, Reason.LOOP,
                                              f"{t.user} forwards to {t.address}"))
            elif t.address.lower() not in forwarded:
                forwarded.add(t.address.lower())
                shown.append(str(t))
                plan.forwards.append((rcpt, t))
    return plan


# -- appending -----------------------------------------------------------------------


class Filer:
    """Appends to mailbox logs, keeping recently used logs open.

    A :class:`MailboxLog` caches where its tail is, which saves re-reading
    the chain on every append; so logs are kept (up to ``cache_size``).
    Thread-safe: appends to one log from several threads serialise on its
    lock, whose in-process mutex covers threads [L4].
    """

    def __init__(self, store: Store, *, cache_size: int = 512) -> None:
        self.store = store
        self.cache_size = cache_size
        self._logs: OrderedDict[Path, MailboxLog] = OrderedDict()
        self._mutex = threading.Lock()

    def log(self, target: Mailbox) -> MailboxLog:
        with self._mutex:
            lg = self._logs.get(target.path)
            if lg is not None:
                self._logs.move_to_end(target.path)
                return lg
            lg = self.store.log_at(target.path, target.log_id)
            self._logs[target.path] = lg
            while len(self._logs) > self.cache_size:
                self._logs.popitem(last=False)
            return lg

    def append(self, target: Mailbox, filings: Sequence[Filing], *,
               dedupe_since_us: int, lock_timeout: float | None = None) -> list[Appended]:
        """File ``filings`` into ``target`` in one append (group commit) [W1, W7]."""
        return self.log(target).append([f.new_message() for f in filings],
                                       dedupe_since_us=dedupe_since_us,
                                       lock_timeout=lock_timeout)


def group_by_mailbox(filings: Iterable[Filing]) -> dict[Path, list[Filing]]:
    groups: dict[Path, list[Filing]] = {}
    for f in filings:
        groups.setdefault(f.target.path, []).append(f)
    return groups


__all__ = [
    "Filer", "Filing", "Plan", "delivered_to", "delivery_prefix",
    "group_by_mailbox", "header_section", "line_ending", "local_offset_minutes",
    "plan_message",
]
