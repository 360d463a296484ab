"""The part map, and BODY[section] extraction from it (RFC 3501 §6.4.5).

Theory of operation
-------------------
A message is parsed once into a tree of :class:`Part` nodes that hold only
byte offsets into the raw message: where the part's header starts, where its
body starts and where it ends.  BODYSTRUCTURE sizes and line counts and every
BODY[section] are slices of the raw bytes at those offsets, so they agree by
construction and a partial fetch of a large attachment copies only the
octets asked for.  The map is small and serialisable (``_codec``), so the
IMAP bridge can cache it next to the BODYSTRUCTURE.

The root part is the message: its header is the RFC 5322 header and its
body is the text.  A multipart's children are its body parts; the CRLF (or
LF) before a boundary line belongs to the boundary (RFC 2046 §5.1.1), so it
is in no part.  A MESSAGE/RFC822 part has one child, the encapsulated
message, whose header starts where the part's body starts.

Part numbers follow RFC 3501: the parts of a message are the parts of its
multipart body, or, when the body is not multipart, the single part 1 (the
body itself, whose MIME header is the message header).  A number inside a
MESSAGE/RFC822 part addresses the parts of the encapsulated message.

Boundary lines are matched as RFC 2046 and the ``email`` package do:
``--boundary`` at the start of a line, optionally ``--``, then only blanks.
(Dovecot also accepts trailing garbage; the strict rule lets an outer scan
run before the inner ones without mistaking ``--abc_1`` for ``--abc``.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from ams.message._mime import field_ranges, split_header

__all__ = ["Part", "PartKind", "Section", "SectionLike", "partial", "section"]


class PartKind(IntEnum):
    LEAF = 0
    MULTIPART = 1
    MESSAGE = 2  # MESSAGE/RFC822: one child, the encapsulated message


@dataclass(frozen=True, slots=True)
class Part:
    """Offsets of one entity in the raw message: ``raw[header:body]`` is
    its header (the empty line included), ``raw[body:end]`` its body."""

    header: int
    body: int
    end: int
    kind: PartKind = PartKind.LEAF
    children: tuple[Part, ...] = ()


def split_multipart(raw: bytes, start: int, end: int, boundary: bytes,
                    limit: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each body part between ``start`` and ``end``.
    After ``limit - 1`` parts, further delimiters are ignored and the last
    part runs to the close delimiter (or the end)."""
    delim = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start: int | None = None  # None: in the preamble
    pos = start
    while (i := raw.find(delim, pos, end)) >= 0:
        pos = i + len(delim)
        if i != start and raw[i - 1] != 0x0A:
            continue
        nl = raw.find(b"\n", pos, end)
        rest = raw[pos:end if nl < 0 else nl]
        close = rest.startswith(b"--")
        if (rest[2:] if close else rest).strip(b" \t\r"):
            continue  # a line that only starts like a boundary
        if part_start is not None:
            if not close and len(parts) >= limit - 1:
                continue
            parts.append((part_start, _before_eol(raw, part_start, i)))
        if close:
            return parts
        part_start = pos = end if nl < 0 else nl + 1
    if part_start is not None:
        parts.append((part_start, end))
    return parts


def _before_eol(raw: bytes, start: int, i: int) -> int:
    """``i`` less the line ending just before it, but not before ``start``."""
    if i > start and raw[i - 1] == 0x0A:
        i -= 1
        if i > start and raw[i - 1] == 0x0D:
            i -= 1
    return i


# --- sections ----------------------------------------------------------------------------

_TEXTS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Section:
    """A BODY[section] specifier: part numbers, then an optional text
    specifier (``HEADER``, ``HEADER.FIELDS``, ``HEADER.FIELDS.NOT``,
    ``TEXT``, ``MIME``) with its field names."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "part", tuple(self.part))
        object.__setattr__(self, "text", self.text or "")  # None, as the IMAP parser has it
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.text not in _TEXTS:
            raise ValueError(f"unknown section text {self.text!r}")
        if any(n < 1 for n in self.part):
            raise ValueError("part numbers start at 1")
        if self.text == "MIME" and not self.part:
            raise ValueError("MIME needs a part number")
        if bool(self.fields) != self.text.startswith("HEADER.FIELDS"):
            raise ValueError("field names go with HEADER.FIELDS and only with it")

    @classmethod
    def parse(cls, spec: str) -> Section:
        """``"1.2.HEADER.FIELDS (From To)"`` → ``Section((1, 2), ...)``:
        a convenience for tests and tools; the IMAP parser builds its own."""
        head, paren, rest = spec.strip().partition("(")
        fields: tuple[str, ...] = ()
        if paren:
            rest = rest.rstrip()
            if not rest.endswith(")"):
                raise ValueError(f"bad section {spec!r}")
            fields = tuple(f.strip('"') for f in rest[:-1].split())
        items = head.strip().split(".") if head.strip() else []
        part: list[int] = []
        while items and _NUMBER.fullmatch(items[0]):
            part.append(int(items.pop(0)))
        return cls(tuple(part), ".".join(items).upper(), fields)


def resolve(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part that ``numbers`` names, or None when there is none."""
    node, in_message = root, True
    for n in numbers:
        if not in_message and node.kind is PartKind.MESSAGE:
            node, in_message = node.children[0], True
        if node.kind is PartKind.MULTIPART:
            if n > len(node.children):
                return None
            node = node.children[n - 1]
        elif not (in_message and n == 1):
            return None  # a non-multipart message's part 1 is its own body
        in_message = False
    return node


def section_range(root: Part, spec: Section) -> tuple[int, int] | None:
    """Where a section lies in the raw message, for every specifier but
    HEADER.FIELDS[.NOT] (whose result is not one slice); None if absent."""
    node = resolve(root, spec.part)
    if node is None:
        return None
    if spec.text == "":
        return (node.header, node.end) if not spec.part else (node.body, node.end)
    if spec.text == "MIME":
        return node.header, node.body
    if spec.part:
        if node.kind is not PartKind.MESSAGE:
            return None  # HEADER and TEXT only apply to MESSAGE/RFC822 parts
        node = node.children[0]
    return (node.header, node.body) if spec.text == "HEADER" else (node.body, node.end)


def _header_fields(raw: bytes, msg: Part, spec: Section) -> bytes:
    blank, _ = split_header(raw, msg.header, msg.body)
    names = {encode_field_name(f) for f in spec.fields}
    keep = spec.text == "HEADER.FIELDS"
    eol = raw[blank:msg.body] or _line_ending(raw, msg.header, msg.end)
    out: list[bytes] = []
    for name, start, end in field_ranges(raw, msg.header, blank):
        if (name in names) == keep:
            out.append(raw[start:end])
            if raw[end - 1] != 0x0A:
                out.append(eol)
    out.append(eol)
    return b"".join(out)


def encode_field_name(name: str) -> bytes:
    """A header field name as the octets to compare, lower-cased."""
    try:
        return name.strip().lower().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.strip().lower().encode("utf-8", "replace")


def _line_ending(raw: bytes, start: int, end: int) -> bytes:
    """The message's own line ending: that of its first line (CRLF if none)."""
    nl = raw.find(b"\n", start, end)
    if nl < 0 or (nl > start and raw[nl - 1] == 0x0D):
        return b"\r\n"
    return b"\n"


class SectionLike(Protocol):
    """Any section specifier with these members (the IMAP parser's
    ``Section``, whose ``text`` is None for the whole part, is one)."""

    @property
    def part(self) -> tuple[int, ...]: ...
    @property
    def text(self) -> str | None: ...
    @property
    def fields(self) -> tuple[str, ...]: ...


def section(msg: bytes, spec: SectionLike | str, *, parts: Part | None = None,
            partial: tuple[int, int | None] | None = None) -> bytes:
    """The octets of BODY[spec] (``partial=(origin, octets)`` for
    BODY[spec]<origin.octets>), exactly as stored.  A part that does not
    exist gives ``b""``.  Pass ``parts`` (from ``part_map`` or the cache) to
    skip parsing the message again."""
    if isinstance(spec, str):
        spec = Section.parse(spec)
    elif not isinstance(spec, Section):
        spec = Section(tuple(spec.part), spec.text or "", tuple(spec.fields))
    if parts is None:
        from ams.message._structure import part_map
        parts = part_map(msg)
    elif parts.end != len(msg):
        raise ValueError("the part map is not this message's (its size differs)")
    if spec.text.startswith("HEADER.FIELDS"):
        node = resolve(parts, spec.part)
        if node is not None and spec.part:
            node = node.children[0] if node.kind is PartKind.MESSAGE else None
        data = b"" if node is None else _header_fields(msg, node, spec)
        return data if partial is None else _slice(data, 0, len(data), partial)
    where = section_range(parts, spec)
    if where is None:
        return b""
    start, end = where
    if partial is None:
        return msg[start:end]
    return _slice(msg, start, end, partial)


def _slice(data: bytes, start: int, end: int, part: tuple[int, int | None]) -> bytes:
    origin, octets = part
    lo = min(start + max(origin, 0), end)
    hi = end if octets is None else min(lo + max(octets, 0), end)
    return data[lo:hi]


def partial(data: bytes, origin: int, octets: int | None = None) -> bytes:
    """``<origin.octets>`` of a section (RFC 3501 §6.4.5): an origin past
    the end gives ``b""``, a count past the end stops there."""
    return _slice(data, 0, len(data), (origin, octets))
