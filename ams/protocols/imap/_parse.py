"""The tokenizer: a cursor over one framed command, and the RFC 3501 §9
productions every command shares (atom, astring, string, number, flag list,
date-time, mailbox ...).

Theory of operation
-------------------
The framer hands over a command as segments: line, literal, line, ...
(see ``_framing``).  :class:`Cursor` walks them as one stream in which a
literal announcement at the end of a line is replaced by the literal that
follows it; the parser never sees a CRLF and never copies literal data.

A *partial* command ends in an announced literal that has not arrived.  A
production that reaches it raises :class:`Incomplete`: everything before it
was valid, so the connection can ask for the literal (``+``).  A problem
anywhere raises :class:`ParseError` with a fixed text from this module's
table, never anything the client sent, and never a Python exception text.

The cursor works on bytes.  Atoms are US-ASCII; 8-bit octets are allowed in
literals, and in quoted strings only once UTF8=ACCEPT is enabled (and then
only as UTF-8).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

from ams.protocols.imap import _utf7
from ams.protocols.imap._sequence import SequenceSet

__all__ = ["Cursor", "Incomplete", "ParseError"]

T = TypeVar("T")

_ATOM = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")
_ASTRING = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_LIST_CHARS = re.compile(rb"[!#$%&'*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_TAG = re.compile(rb"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_LITERAL = re.compile(rb"(~?)\{[0-9]+\+?\}")
_SEQ_CHARS = re.compile(rb"[0-9:,*$]+")
_DIGITS = re.compile(rb"[0-9]+")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MONTHS = {m: i for i, m in enumerate(
    (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV",
     b"DEC"), 1)}
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME = re.compile(rb"( [0-9]|[0-9]{2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):"
                        rb"([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})")
MAX_NUMBER = 2**32 - 1
MAX_MODSEQ = 2**63 - 1


class ParseError(Exception):
    """The command is refused: ``tag BAD text`` (or ``condition``/``code``)."""

    def __init__(self, text: str, *, condition: str = "BAD", code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.condition = condition
        self.code = code


class Incomplete(Exception):
    """Valid so far; the next literal has not arrived yet."""


class Cursor:
    """A read position in a framed command; see the module docstring."""

    def __init__(self, segments: Sequence[bytes], *, complete: bool = True,
                 utf8: bool = False, binary: bool = False) -> None:
        self._lines = segments[0::2]
        self._literals = segments[1::2]
        self.complete = complete
        self.utf8 = utf8
        self.binary = binary            # literal8 (~{n}) allowed where the grammar has it
        self._index = 0
        self.line = self._lines[0]
        self.pos = 0

    # --- characters -------------------------------------------------------------------

    def peek(self) -> int:
        """The next octet, or -1 at the end of a line."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self._index == len(self._lines) - 1

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def take(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        match = pattern.match(self.line, self.pos)
        if match is None:
            self._need(what)
        assert match is not None
        self.pos = match.end()
        return match.group()

    def _need(self, what: str) -> None:
        """Fail: ``what`` was expected here."""
        if self.pos >= len(self.line):
            raise ParseError(f"Missing {what}")
        raise ParseError(f"Invalid {what}")

    def expect(self, token: bytes, what: str | None = None) -> None:
        if self.line[self.pos:self.pos + len(token)] != token:
            self._need(what or repr(token.decode("ascii")))
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ", "argument")

    def accept(self, token: bytes) -> bool:
        """Consume ``token`` (exact octets) if it is next."""
        if self.line[self.pos:self.pos + len(token)] == token:
            self.pos += len(token)
            return True
        return False

    def keyword(self, word: bytes) -> bool:
        """Consume the atom ``word`` (any case) if it is next and complete."""
        end = self.pos + len(word)
        if self.line[self.pos:end].upper() != word:
            return False
        if end < len(self.line) and _ATOM.match(self.line, end):
            return False
        self.pos = end
        return True

    # --- RFC 3501 productions ------------------------------------------------------------

    def atom(self, what: str = "atom") -> str:
        return self.take(_ATOM, what).decode("ascii")

    def tag(self) -> str:
        return self.take(_TAG, "tag").decode("ascii")

    def number(self, what: str = "number", *, limit: int = MAX_NUMBER, zero: bool = True) -> int:
        value = int(self.take(_DIGITS, what))
        if value > limit or (value == 0 and not zero):
            raise ParseError(f"Invalid {what}")
        return value

    def nz_number(self, what: str = "number") -> int:
        return self.number(what, zero=False)

    def at_string(self) -> bool:
        """A quoted string or a literal (``{`` or ``~{``) starts here."""
        return self.peek() in (0x22, 0x7B) or self.line.startswith(b"~{", self.pos)

    def string(self, what: str = "string") -> bytes:
        if self.peek() == 0x22:
            return self.quoted(what)
        if self.at_string():
            return self.literal(what)
        self._need(what)
        raise AssertionError

    def astring(self, what: str = "string") -> bytes:
        if self.at_string():
            return self.string(what)
        return self.take(_ASTRING, what)

    def nstring(self, what: str = "string") -> bytes | None:
        if self.keyword(b"NIL"):
            return None
        return self.string(what)

    def quoted(self, what: str = "string") -> bytes:
        match = _QUOTED.match(self.line, self.pos)
        if match is None:
            raise ParseError(f"Invalid quoted {what}")
        value = re.sub(rb'\\(["\\])', rb"\1", match.group(1))
        if not value.isascii():
            if not self.utf8:
                raise ParseError("8-bit data in a quoted string; use a literal")
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("Invalid UTF-8 in a quoted string") from None
        self.pos = match.end()
        return value

    def literal(self, what: str = "string", *, binary: bool = False) -> bytes:
        """A literal: its announcement must end the line; its data is the
        next segment (Incomplete when the framer has not read it yet)."""
        match = _LITERAL.fullmatch(self.line, self.pos)
        if match is None:
            raise ParseError(f"Invalid {what}")
        if match.group(1) and not binary:
            raise ParseError("literal8 is not allowed here")
        if self._index >= len(self._literals):
            raise Incomplete()
        data = self._literals[self._index]
        if not match.group(1) and b"\0" in data:
            raise ParseError("NUL in a literal")
        self._index += 1
        self.line = self._lines[self._index]
        self.pos = 0
        return data

    def parenthesized(self, item: Callable[[], T], *, empty: bool = False) -> list[T]:
        """``"(" item *(SP item) ")"``."""
        self.expect(b"(", "list")
        items: list[T] = []
        if self.accept(b")"):
            if not empty:
                raise ParseError("Empty list")
            return items
        items.append(item())
        while not self.accept(b")"):
            self.sp()
            items.append(item())
        return items

    # --- shared arguments -------------------------------------------------------------------

    def text(self, raw: bytes, what: str = "string") -> str:
        """An astring's value as text: UTF-8 (US-ASCII is a subset)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"Invalid UTF-8 in {what}") from None

    def mailbox_name(self, raw: bytes) -> str:
        if self.utf8:
            name = self.text(raw, "mailbox name")
        else:
            try:
                name = _utf7.decode(raw)
            except _utf7.MailboxNameError:
                raise ParseError("Mailbox name is not valid modified UTF-7") from None
        if _CONTROL.search(name):
            raise ParseError("Control character in mailbox name")
        return "INBOX" if name.upper() == "INBOX" else name

    def mailbox(self) -> str:
        return self.mailbox_name(self.astring("mailbox name"))

    def list_mailbox(self) -> str:
        """``list-mailbox``: a pattern, with ``%`` and ``*`` as atom characters."""
        if self.at_string():
            raw = self.string("mailbox pattern")
        else:
            raw = self.take(_LIST_CHARS, "mailbox pattern")
        return self.mailbox_name(raw) if raw else ""

    def flag(self) -> str:
        """``flag``: a system flag (``\\Seen``) or a keyword; never ``\\*``/``\\Recent``."""
        if self.accept(b"\\"):
            name = "\\" + self.atom("flag")
            if name.upper() == "\\RECENT":
                raise ParseError("\\Recent cannot be set by a client")
            return name
        return self.atom("flag")

    def flag_list(self) -> tuple[str, ...]:
        return tuple(self.parenthesized(self.flag, empty=True))

    def sequence_set(self) -> SequenceSet:
        raw = self.take(_SEQ_CHARS, "sequence set")
        try:
            return SequenceSet.parse(raw)
        except ValueError:
            raise ParseError("Invalid sequence set") from None

    def mod_sequence(self, *, zero: bool = False) -> int:
        """RFC 7162 ``mod-sequence-value`` (``mod-sequence-valzer`` with zero)."""
        return self.number("mod-sequence value", limit=MAX_MODSEQ, zero=zero)

    def date(self) -> date:
        """SEARCH ``date``: ``1-Feb-1994``, bare or quoted."""
        quoted = self.accept(b'"')
        raw = self.take(_DATE, "date")
        if quoted:
            self.expect(b'"', "date")
        day, month, year = raw.split(b"-")
        return _make_date(int(day), month, int(year))

    def date_time(self) -> datetime:
        """APPEND ``date-time``: ``"17-Jul-1996 02:44:25 -0700"``."""
        self.expect(b'"', "date-time")
        match = self.take(_DATE_TIME, "date-time")
        self.expect(b'"', "date-time")
        groups = _DATE_TIME.fullmatch(match)
        assert groups is not None
        day, month, year, hour, minute, second, sign, zh, zm = groups.groups()
        base = _make_date(int(day), month, int(year))
        offset = timedelta(hours=int(zh), minutes=int(zm))
        if offset >= timedelta(hours=24) or int(zm) >= 60:
            raise ParseError("Invalid time zone")
        try:
            return datetime(base.year, base.month, base.day, int(hour), int(minute), int(second),
                            tzinfo=timezone(-offset if sign == b"-" else offset))
        except ValueError:
            raise ParseError("Invalid date-time") from None


def _make_date(day: int, month: bytes, year: int) -> date:
    number = _MONTHS.get(month.upper())
    if number is None:
        raise ParseError("Invalid month")
    try:
        return date(year, number, day)
    except ValueError:
        raise ParseError("Invalid date") from None
