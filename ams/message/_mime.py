"""Header-level primitives: header blocks, fields, MIME parameters, decoding.

Theory of operation
-------------------
IMAP answers with the stored octets and with byte counts of them, so the
header block is located and split on the raw bytes here rather than through
the ``email`` package, which parses into objects and re-serialises.  A header
ends at the first empty line (``\\n`` or ``\\r\\n``) or at the end of the
entity; a line that is not a field (no colon) does not end it, as in Dovecot.
Line endings are whatever was stored: CRLF and bare LF are both accepted, and
a CR is part of the line it ends.

Header values are decoded from bytes as UTF-8 with ``surrogateescape``: raw
UTF-8 headers read naturally, and any other 8-bit octets survive the round
trip back to bytes unchanged (``_imap`` and ``_codec`` rely on this).

The ``email`` package does what it does well: RFC 2047 encoded words
(``email.header.decode_header``) for SEARCH.  The Content-Type tokenizer is
written here because IMAP needs the parameters as written, with RFC 2231
continuations merged but not decoded, and tolerant of the unquoted tspecials
that real mailers put in boundaries.
"""

from __future__ import annotations

import binascii
import email.header
import re

__all__ = [
    "Params",
    "decode_text",
    "decode_transfer_encoding",
    "decode_words",
]

#: MIME parameters as written: ``((name, value), ...)`` in header order.
Params = tuple[tuple[str, str], ...]

# A field: a name, a colon, and the rest of the line with its continuation
# lines.  Lines that have no colon are skipped (and so are theirs).
_FIELD = re.compile(rb"^([^ \t\r\n:][^:\r\n]*):([^\n]*(?:\n[ \t][^\n]*)*)", re.M)


def split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """Return ``(blank, body)``: where the empty line ending the header
    starts, and where the body starts.  Both are ``end`` without one."""
    if raw.startswith(b"\n", start, end) or raw.startswith(b"\r\n", start, end):
        return start, raw.index(b"\n", start) + 1
    lf = raw.find(b"\n\n", start, end)
    crlf = raw.find(b"\n\r\n", start, end)
    if lf < 0 and crlf < 0:
        return end, end
    if crlf < 0 or 0 <= lf < crlf:
        return lf + 1, lf + 2
    return crlf + 1, crlf + 3


def header_fields(raw: bytes, start: int, stop: int,
                  wanted: frozenset[bytes]) -> dict[bytes, list[bytes]]:
    """The raw values (after the colon, still folded) of the fields named in
    ``wanted`` (lower-case names), every occurrence in order."""
    found: dict[bytes, list[bytes]] = {}
    for m in _FIELD.finditer(raw, start, stop):
        name = m.group(1).rstrip(b" \t").lower()
        if name in wanted:
            found.setdefault(name, []).append(m.group(2))
    return found


def field_ranges(raw: bytes, start: int, stop: int) -> list[tuple[bytes, int, int]]:
    """Every field of a header block as ``(lower-case name, start, end)``:
    the exact octets, continuation lines and line ending included.  A line
    with no colon is a field of its own (named by the whole line), so that
    HEADER.FIELDS.NOT hands it back untouched."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos < stop:
        nl = raw.find(b"\n", pos, stop)
        line_end = stop if nl < 0 else nl + 1
        if out and raw[pos] in b" \t":
            name, first, _ = out[-1]
            out[-1] = (name, first, line_end)
        else:
            colon = raw.find(b":", pos, line_end)
            name = raw[pos:colon if colon >= 0 else line_end]
            out.append((name.strip(b" \t\r\n").lower(), pos, line_end))
        pos = line_end
    return out


def unfold(value: bytes) -> str:
    """A field value as IMAP sends it: unfolded, trimmed, 8-bit preserved."""
    if b"\n" in value or b"\r" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    return value.strip(b" \t").decode("utf-8", "surrogateescape")


# --- MIME parameter syntax (RFC 2045 §5.1, RFC 2183, RFC 2231) ---------------------------

_TOKEN = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
# Unquoted parameter values: lenient, up to the next ';', blank or comment,
# because unquoted boundaries such as ----=_Part_1 are common.
_LOOSE_VALUE = re.compile(r'[^;\s(]+')
_CONTINUATION = re.compile(r"^(.*)\*([0-9]+)(\*?)$", re.S)


class _Scanner:
    """A cursor over a structured header value that skips blanks and
    (nested) comments."""

    __slots__ = ("pos", "s")

    def __init__(self, s: str) -> None:
        self.s = s
        self.pos = 0

    def skip(self) -> None:
        s, n = self.s, len(self.s)
        while self.pos < n:
            c = s[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "(":
                self.pos = skip_comment(s, self.pos)
            else:
                return

    def peek(self) -> str:
        self.skip()
        return self.s[self.pos] if self.pos < len(self.s) else ""

    def token(self) -> str:
        self.skip()
        m = _TOKEN.match(self.s, self.pos)
        if m is None:
            return ""
        self.pos = m.end()
        return m.group()

    def value(self) -> str:
        self.skip()
        if self.s.startswith('"', self.pos):
            text, self.pos = quoted_string(self.s, self.pos)
            return text
        m = _LOOSE_VALUE.match(self.s, self.pos)
        if m is None:
            return ""
        self.pos = m.end()
        return m.group()

    def next_param(self) -> bool:
        """Move past the next ';'; False at the end."""
        j = self.s.find(";", self.pos)
        if j < 0:
            self.pos = len(self.s)
            return False
        self.pos = j + 1
        return True


def skip_comment(s: str, pos: int) -> int:
    """The index just past the comment opening at ``s[pos]``."""
    depth, i, n = 0, pos, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def quoted_string(s: str, pos: int) -> tuple[str, int]:
    """Unquote the quoted-string opening at ``s[pos]``: ``(text, end)``.
    An unterminated one runs to the end of ``s``."""
    out: list[str] = []
    i, n = pos + 1, len(s)
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and i + 1 < n:
            i += 1
            c = s[i]
        out.append(c)
        i += 1
    return "".join(out), n


def _params(sc: _Scanner) -> Params:
    params: list[tuple[str, str]] = []
    while sc.next_param():
        name = sc.token()
        if not name or sc.peek() != "=":
            continue
        sc.pos += 1
        params.append((name, sc.value()))
    return _merge_continuations(params)


def _merge_continuations(params: list[tuple[str, str]]) -> Params:
    """RFC 2231 §3: join ``name*0``, ``name*1``... into one parameter, kept
    encoded (``name*`` with ``charset'lang'%XX`` when the first segment is
    extended) as Dovecot sends it; clients decode it."""
    if not any("*" in name for name, _ in params):
        return tuple(params)
    segments: dict[str, list[tuple[int, bool, str]]] = {}
    order: list[str | tuple[str, str]] = []
    for name, value in params:
        m = _CONTINUATION.match(name)
        if m is None:
            order.append((name, value))
            continue
        base = m.group(1)
        key = base.lower()
        if key not in segments:
            segments[key] = []
            order.append(base)
        segments[key].append((int(m.group(2)), bool(m.group(3)), value))
    out: list[tuple[str, str]] = []
    for item in order:
        if isinstance(item, tuple):
            out.append(item)
            continue
        parts = sorted(segments[item.lower()], key=lambda seg: seg[0])
        extended = parts[0][1]
        out.append((item + ("*" if extended else ""), "".join(v for _, _, v in parts)))
    return tuple(out)


def parse_content_type(value: str) -> tuple[str, str, Params] | None:
    """``type/subtype; params`` as written, or None when it does not parse
    (the caller then uses the RFC 2045 §5.2 default)."""
    sc = _Scanner(value)
    mtype = sc.token()
    if not mtype or sc.peek() != "/":
        return None
    sc.pos += 1
    subtype = sc.token()
    if not subtype:
        return None
    return mtype, subtype, _params(sc)


def parse_disposition(value: str) -> tuple[str, Params] | None:
    """``disposition-type; params`` (RFC 2183), or None."""
    sc = _Scanner(value)
    dtype = sc.token()
    if not dtype:
        return None
    return dtype, _params(sc)


def parse_language(value: str) -> tuple[str, ...] | None:
    """The language tags of Content-Language (RFC 3282), or None."""
    sc = _Scanner(value)
    tags: list[str] = []
    while True:
        sc.skip()
        if sc.pos >= len(sc.s):
            break
        tag = sc.token()
        if tag:
            tags.append(tag)
        else:
            sc.pos += 1  # a comma or a stray special
    return tuple(tags) or None


def first_token(value: str) -> str:
    """The leading token of a value such as Content-Transfer-Encoding."""
    return _Scanner(value).token()


# --- decoding, for SEARCH -----------------------------------------------------------------

_ENCODED_WORD = "=?"
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words with ``email.header``; undecodable
    words and unknown charsets degrade to replacement characters, never to
    an exception."""
    if _ENCODED_WORD not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # HeaderParseError on bad base64, and anything odd
        return value
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(decode_text(chunk, charset.partition("*")[0]))
    return "".join(out)


def decode_transfer_encoding(data: bytes, encoding: str) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 §6): base64 (ignoring
    characters outside the alphabet and bad padding) or quoted-printable;
    anything else is returned as it is."""
    enc = encoding.lower()
    if enc == "base64":
        clean = _NOT_BASE64.sub(b"", data)
        rem = len(clean) % 4
        if rem == 1:
            clean = clean[:-1]
        elif rem:
            clean += b"=" * (4 - rem)
        try:
            return binascii.a2b_base64(clean)
        except (binascii.Error, ValueError):
            return b""
    if enc == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset to text.  us-ascii and unknown charsets
    are read as UTF-8 (mislabelled UTF-8 is the common case); errors become
    U+FFFD."""
    cs = (charset or "").strip().lower()
    if cs and cs not in ("us-ascii", "ascii", "utf-8", "utf8"):
        try:
            return data.decode(cs, "replace")
        except Exception:  # LookupError, or a codec that is not a text codec
            pass
    return data.decode("utf-8", "replace")
