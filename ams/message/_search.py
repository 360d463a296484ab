"""SEARCH keys (RFC 3501 §6.4.4, MODSEQ from RFC 7162) and matching.

Theory of operation
-------------------
A search is a tree of frozen dataclasses named after the RFC's keys; the
IMAP parser can build it directly.  Keys that RFC 3501 spells as a flag
test are one :class:`Flag` (``ANSWERED`` is ``Flag("\\\\Answered")``,
``UNANSWERED`` is ``Not(Flag("\\\\Answered"))``, ``KEYWORD x`` is
``Flag("x")``); :data:`SIMPLE_KEYS` maps every argument-less keyword to its
tree.

:func:`matches` tests one message, described by :class:`MessageInfo`: what
the index holds (flags, dates, size, numbers, MODSEQ), the cached ENVELOPE if
there is one, and a callable that reads the raw message only when a key
needs it.  :func:`needs` says how much of the message a key reads, so the
bridge fetches no more than that:

=========  ================================================================
INDEX      ALL, flags and keywords, RECENT/NEW/OLD, sequence sets, UID,
           LARGER, SMALLER, BEFORE, ON, SINCE, MODSEQ
ENVELOPE   FROM, TO, CC, BCC, SUBJECT, SENTBEFORE, SENTON, SENTSINCE
           (answered from ``MessageInfo.envelope`` when it is given, else
           from the header)
HEADER     HEADER: the header block only (``message()`` may return just it)
MESSAGE    BODY, TEXT
=========  ================================================================

And and Or test their cheaper operands first.

String matching is a substring test on decoded text, as Dovecot does it,
ignoring case (``str.casefold``) and treating any run of blanks and line
breaks as one space (so a folded header or a wrapped line still matches):

- header text has RFC 2047 encoded words decoded (``email.header``) and is
  unfolded; FROM/TO/CC/BCC match the envelope's addresses rendered as
  ``name <mailbox@host>``, groups as ``group: ... ;``;
- BODY searches the text parts of the body, each with its
  Content-Transfer-Encoding undone and its charset decoded, and the headers
  of attached messages; non-text parts (images, archives) are not searched,
  and neither are MIME preambles and epilogues;
- TEXT is the decoded header plus what BODY searches.

Dates: BEFORE, ON and SINCE use the internal date, in its own timezone;
SENTBEFORE, SENTON and SENTSINCE the Date: header's date in the timezone it
was written in.  A message with no usable Date: header is dated by its
internal date, as Dovecot does.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import IntEnum
from types import MappingProxyType
from typing import Protocol

from ams.message._address import MISSING_DOMAIN, MISSING_MAILBOX, Address
from ams.message._envelope import Envelope, envelope
from ams.message._mime import (
    decode_text,
    decode_transfer_encoding,
    decode_words,
    header_fields,
    split_header,
    unfold,
)
from ams.message._parts import Part, encode_field_name
from ams.message._structure import BodyStructure, Multipart, walk

__all__ = [
    "SIMPLE_KEYS", "All", "And", "Bcc", "Before", "Body", "Cc", "Flag", "From", "Header",
    "Larger", "MessageInfo", "ModSeq", "Need", "Not", "NumberSet", "On", "Or", "Recent", "SearchKey",
    "SentBefore", "SentOn", "SentSince", "Sequence", "SequenceSet", "Since", "Smaller",
    "Subject", "Text", "TextSpan", "To", "Uid", "decode_text_spans", "encode_text_spans",
    "matches", "needs", "text_spans",
]


class Need(IntEnum):
    """How much of a message a search key reads, cheapest first."""

    INDEX = 0
    ENVELOPE = 1
    HEADER = 2
    MESSAGE = 3


class NumberSet(Protocol):
    """What :class:`Sequence` and :class:`Uid` need of a set: this module's
    :class:`SequenceSet`, or the IMAP parser's, which has the same method."""

    def contains(self, number: int, largest: int) -> bool: ...


# ``*`` when the caller gives no largest number: above every nz-number, so
# ``n:*`` is everything from n and ``*`` alone is nothing.
_NO_STAR = 2**32


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set (RFC 3501 §9): inclusive ranges, ``None`` for ``*``."""

    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """``"1:3,5,7:*"``; raises ValueError on anything else."""
        def number(s: str) -> int | None:
            if s == "*":
                return None
            if not s.isascii() or not s.isdigit() or int(s) < 1:
                raise ValueError(f"bad sequence number {s!r}")
            return int(s)

        ranges = []
        for item in text.split(","):
            lo, colon, hi = item.partition(":")
            ranges.append((number(lo), number(hi if colon else lo)))
        return cls(tuple(ranges))

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set, ``*`` being ``largest``."""
        n, star = number, largest
        for lo, hi in self.ranges:
            a = star if lo is None else lo
            b = star if hi is None else hi
            if min(a, b) <= n <= max(a, b):
                return True
        return False


# --- keys --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class All:
    """ALL."""


@dataclass(frozen=True, slots=True)
class And:
    """Every key matches (a search's top level, or a parenthesised list)."""

    keys: tuple[SearchKey, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))  # a list would not hash


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Flag:
    """The message has this flag or keyword (compared case-insensitively)."""

    name: str


@dataclass(frozen=True, slots=True)
class Recent:
    """RECENT: the \\Recent flag (``MessageInfo.recent``)."""


@dataclass(frozen=True, slots=True)
class Sequence:
    """A sequence set of message sequence numbers."""

    set: NumberSet


@dataclass(frozen=True, slots=True)
class Uid:
    set: NumberSet


@dataclass(frozen=True, slots=True)
class Larger:
    size: int


@dataclass(frozen=True, slots=True)
class Smaller:
    size: int


@dataclass(frozen=True, slots=True)
class Before:
    date: date


@dataclass(frozen=True, slots=True)
class On:
    date: date


@dataclass(frozen=True, slots=True)
class Since:
    date: date


@dataclass(frozen=True, slots=True)
class SentBefore:
    date: date


@dataclass(frozen=True, slots=True)
class SentOn:
    date: date


@dataclass(frozen=True, slots=True)
class SentSince:
    date: date


@dataclass(frozen=True, slots=True)
class ModSeq:
    """MODSEQ (RFC 7162): a MODSEQ at least this; the entry name and type
    are not kept (a message has one MODSEQ here)."""

    modseq: int


@dataclass(frozen=True, slots=True)
class From:
    text: str


@dataclass(frozen=True, slots=True)
class To:
    text: str


@dataclass(frozen=True, slots=True)
class Cc:
    text: str


@dataclass(frozen=True, slots=True)
class Bcc:
    text: str


@dataclass(frozen=True, slots=True)
class Subject:
    text: str


@dataclass(frozen=True, slots=True)
class Header:
    """HEADER field text; an empty text matches any message with the field."""

    field: str
    text: str


@dataclass(frozen=True, slots=True)
class Body:
    text: str


@dataclass(frozen=True, slots=True)
class Text:
    text: str


SearchKey = (
    All | And | Or | Not | Flag | Recent | Sequence | Uid | Larger | Smaller | Before | On
    | Since | SentBefore | SentOn | SentSince | ModSeq | From | To | Cc | Bcc | Subject | Header
    | Body | Text)


def _flag_keys() -> dict[str, SearchKey]:
    keys: dict[str, SearchKey] = {"ALL": All(), "RECENT": Recent(), "OLD": Not(Recent()),
                                  "NEW": And((Recent(), Not(Flag("\\Seen"))))}
    for name in ("Answered", "Deleted", "Draft", "Flagged", "Seen"):
        keys[name.upper()] = Flag("\\" + name)
        keys["UN" + name.upper()] = Not(Flag("\\" + name))
    return keys


#: The argument-less RFC 3501 keys, by name, as trees.
SIMPLE_KEYS: Mapping[str, SearchKey] = MappingProxyType(_flag_keys())

_NEED: dict[type, Need] = {
    From: Need.ENVELOPE, To: Need.ENVELOPE, Cc: Need.ENVELOPE, Bcc: Need.ENVELOPE,
    Subject: Need.ENVELOPE, SentBefore: Need.ENVELOPE, SentOn: Need.ENVELOPE,
    SentSince: Need.ENVELOPE, Header: Need.HEADER, Body: Need.MESSAGE, Text: Need.MESSAGE,
}


@functools.lru_cache(maxsize=4096)
def needs(key: SearchKey) -> Need:
    """The most of a message that ``key`` reads (see the module notes)."""
    if isinstance(key, And):
        return max((needs(k) for k in key.keys), default=Need.INDEX)
    if isinstance(key, Or):
        return max(needs(key.left), needs(key.right))
    if isinstance(key, Not):
        return needs(key.key)
    return _NEED.get(type(key), Need.INDEX)


# --- matching ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as SEARCH sees it.  ``message`` returns the raw message
    (or just its header when ``needs(key) <= Need.HEADER``); it is called at
    most once per :func:`matches`, and only when a key needs it."""

    uid: int
    seq: int
    flags: frozenset[str]
    internal_date: datetime
    size: int
    modseq: int = 0
    recent: bool = False
    message: Callable[[], bytes] | None = None
    envelope: Envelope | None = None
    #: Where the message's searchable text lies (:func:`text_spans`,
    #: encoded), if known: BODY and TEXT then skip the MIME walk.
    text_spans: bytes | None = None
    #: Told the encoded spans when a match had to walk the message for them.
    keep_text_spans: Callable[[bytes], None] | None = None


_FOLD = re.compile(r"\r?\n[ \t]")


class _Context:
    """What one message's match has worked out so far."""

    def __init__(self, msg: MessageInfo, largest_seq: int | None,
                 largest_uid: int | None) -> None:
        self.msg = msg
        self.largest_seq = _NO_STAR if largest_seq is None else largest_seq
        self.largest_uid = _NO_STAR if largest_uid is None else largest_uid
        self.flags = frozenset(f.casefold() for f in msg.flags)
        self._raw: bytes | None = None
        self._env = msg.envelope
        self._body: list[str] | None = None
        self._collapsed: list[str] | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            if self.msg.message is None:
                raise ValueError("this search key needs the message, and there is none")
            self._raw = self.msg.message()
        return self._raw

    @property
    def envelope(self) -> Envelope:
        if self._env is None:
            self._env = envelope(self.raw)
        return self._env

    def header_values(self, field: str) -> list[str]:
        raw = self.raw
        blank, _ = split_header(raw, 0, len(raw))
        name = encode_field_name(field)
        values = header_fields(raw, 0, blank, frozenset({name})).get(name, [])
        return [decode_words(unfold(v)) for v in values]

    def header_text(self) -> str:
        raw = self.raw
        blank, _ = split_header(raw, 0, len(raw))
        return _header_text(raw[:blank])

    def body_texts(self, collapsed: bool = True) -> list[str]:
        """The decoded texts, case-folded; ``collapsed``: with blanks and
        line breaks made one space, which only a needle holding a space
        needs (see :func:`_contains`)."""
        if self._body is None:
            raw = self.raw
            spans = decode_text_spans(self.msg.text_spans) if self.msg.text_spans else None
            if spans is None:
                spans = text_spans(raw)
                if self.msg.keep_text_spans is not None:
                    self.msg.keep_text_spans(encode_text_spans(spans))
            self._body = [t.casefold() for t in _span_texts(raw, spans)]
        if not collapsed:
            return self._body
        if self._collapsed is None:
            self._collapsed = [" ".join(t.split()) for t in self._body]
        return self._collapsed

    def absent(self, needle: str) -> bool:
        """True when the raw octets prove that no decoded text of the message
        holds ``needle`` (folded, see :func:`_fold`), so BODY and TEXT need
        not decode anything.  Only claimed when decoding cannot create the
        needle: the message is all ASCII without NUL (no charset turns such
        octets into other ASCII letters, and no non-ASCII letter folds into
        the needle), has no encoded words, transfer encodings or UTF-7 that
        would change its octets, and the needle is ASCII without blanks (so
        unfolding cannot join it).  Otherwise False: decode and look."""
        if not needle or not needle.isascii() or " " in needle:
            return False
        raw = self.raw
        if not raw.isascii() or b"\0" in raw:
            return False
        low = raw.lower()
        if b"=?" in low or b"base64" in low or b"quoted-printable" in low or b"utf-7" in low:
            return False
        return needle.encode("ascii") not in low

    def sent_date(self) -> date:
        value = self.envelope.date
        parsed = None
        if value:
            try:
                t = email.utils.parsedate_tz(value)
                parsed = date(t[0], t[1], t[2]) if t else None
            except (ValueError, TypeError, OverflowError, IndexError):
                parsed = None
        return parsed if parsed is not None else self.msg.internal_date.date()


#: One piece of a message's searchable text beyond its own header:
#: ``(start, end, None, None)`` for the header of an attached message
#: (MESSAGE/RFC822), ``(start, end, transfer encoding, charset or None)``
#: for a TEXT/* body; offsets into the raw message, in order.
TextSpan = tuple[int, int, str | None, str | None]


def text_spans(raw: bytes) -> list[TextSpan]:
    """Where BODY and TEXT look in ``raw``: one walk of its MIME structure."""
    part, structure = walk(raw)
    out: list[TextSpan] = []
    _spans(part, structure, out)
    return out


def _spans(part: Part, bs: BodyStructure, out: list[TextSpan]) -> None:
    if isinstance(bs, Multipart):
        for child, child_bs in zip(part.children, bs.parts, strict=False):
            _spans(child, child_bs, out)
    elif bs.body is not None and part.children:
        inner = part.children[0]
        out.append((inner.header, inner.body, None, None))
        _spans(inner, bs.body, out)
    elif bs.type.lower() == "text":
        charset = next((v for k, v in bs.params if k.lower() == "charset"), None)
        out.append((part.body, part.end, bs.encoding, charset))


def encode_text_spans(spans: list[TextSpan]) -> bytes:
    """Spans as compact JSON (what the IMAP bridge keeps in its index)."""
    return json.dumps(spans, separators=(",", ":")).encode("ascii")


def decode_text_spans(data: bytes) -> list[TextSpan] | None:
    """:func:`encode_text_spans` read back; None if it is not that."""
    try:
        got = json.loads(data)
        return [(int(a), int(b), c, d) for a, b, c, d in got]
    except (ValueError, TypeError):
        return None


def _header_text(header: bytes) -> str:
    """A header block as TEXT searches it: unfolded, and the encoded words
    of each field decoded on their own (decoding the block at once would
    join a field's last word to the next field's name)."""
    text = _FOLD.sub(" ", header.decode("utf-8", "surrogateescape"))
    if "=?" not in text:
        return text
    return "\n".join(decode_words(line) for line in text.split("\n"))


def _span_texts(raw: bytes, spans: Iterable[TextSpan]) -> Iterable[str]:
    for start, end, encoding, charset in spans:
        if encoding is None:
            yield _header_text(raw[start:end])
        else:
            yield decode_text(decode_transfer_encoding(raw[start:end], encoding), charset)


def _fold(text: str) -> str:
    """Text as SEARCH compares it: case-folded, blanks and line breaks
    collapsed to one space."""
    return " ".join(text.casefold().split())


def _contains(haystack: str | None, needle: str) -> bool:
    """Whether the folded needle is in the folded haystack.  A needle with
    no space once folded lies within one run of non-blanks, and those runs
    are the same whether blanks are collapsed or not: the haystack is then
    only case-folded, which is most of the cost saved on long bodies."""
    if haystack is None:
        return False
    n = _fold(needle)
    return n in (_fold(haystack) if " " in n else haystack.casefold())


def _address_text(addresses: tuple[Address, ...]) -> str | None:
    """An address list as text to search (None for NIL: nothing matches)."""
    if not addresses:
        return None
    out: list[str] = []
    for a in addresses:
        if a.host is None:
            out.append(";" if a.mailbox is None else decode_words(a.mailbox) + ":")
            continue
        mailbox = "" if a.mailbox == MISSING_MAILBOX else a.mailbox or ""
        host = "" if a.host == MISSING_DOMAIN else a.host
        spec = f"{mailbox}@{host}" if host else mailbox
        out.append(f"{decode_words(a.name)} <{spec}>" if a.name else spec)
    return ", ".join(out)


def _eval(key: SearchKey, ctx: _Context) -> bool:
    msg = ctx.msg
    match key:
        case All():
            return True
        case And(keys):
            return all(_eval(k, ctx) for k in sorted(keys, key=needs))
        case Or(left, right):
            if needs(right) < needs(left):
                left, right = right, left
            return _eval(left, ctx) or _eval(right, ctx)
        case Not(inner):
            return not _eval(inner, ctx)
        case Flag(name):
            return name.casefold() in ctx.flags
        case Recent():
            return msg.recent or "\\recent" in ctx.flags
        case Sequence(seqset):
            return seqset.contains(msg.seq, ctx.largest_seq)
        case Uid(seqset):
            return seqset.contains(msg.uid, ctx.largest_uid)
        case Larger(size):
            return msg.size > size
        case Smaller(size):
            return msg.size < size
        case Before(day):
            return msg.internal_date.date() < day
        case On(day):
            return msg.internal_date.date() == day
        case Since(day):
            return msg.internal_date.date() >= day
        case SentBefore(day):
            return ctx.sent_date() < day
        case SentOn(day):
            return ctx.sent_date() == day
        case SentSince(day):
            return ctx.sent_date() >= day
        case ModSeq(modseq):
            return msg.modseq >= modseq
        case From(text):
            return _contains(_address_text(ctx.envelope.from_), text)
        case To(text):
            return _contains(_address_text(ctx.envelope.to), text)
        case Cc(text):
            return _contains(_address_text(ctx.envelope.cc), text)
        case Bcc(text):
            return _contains(_address_text(ctx.envelope.bcc), text)
        case Subject(text):
            subject = ctx.envelope.subject
            return _contains(None if subject is None else decode_words(subject), text)
        case Header(field, text):
            values = ctx.header_values(field)
            return bool(values) and (not text or any(_contains(v, text) for v in values))
        case Body(text):
            needle = _fold(text)
            if ctx.absent(needle):
                return False
            return any(needle in t for t in ctx.body_texts(" " in needle))
        case Text(text):
            needle = _fold(text)
            if ctx.absent(needle):
                return False
            return _contains(ctx.header_text(), text) or any(
                needle in t for t in ctx.body_texts(" " in needle))
    raise TypeError(f"not a search key: {key!r}")


def matches(key: SearchKey, msg: MessageInfo, *, largest_seq: int | None = None,
            largest_uid: int | None = None) -> bool:
    """Whether ``msg`` satisfies ``key``.  ``largest_seq`` and
    ``largest_uid`` give ``*`` in sequence sets its value (the mailbox's
    message count and largest UID); without them ``*`` is past every
    message."""
    return _eval(key, _Context(msg, largest_seq, largest_uid))
