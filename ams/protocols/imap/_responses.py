"""Responses are data: the server's side of RFC 3501 §7, and their encoder.

Theory of operation
-------------------
Three kinds of response, as in the RFC's ``response`` production:

- :class:`StatusResponse`: OK, NO, BAD, PREAUTH or BYE, tagged or untagged,
  with an optional :class:`ResponseCode` (``[UIDNEXT 5]``) and human text.
- :class:`Untagged`: server data, ``* [number] NAME data...``: EXISTS,
  FETCH, LIST, STATUS, SEARCH, CAPABILITY, VANISHED ...
- :class:`ContinueRequest`: ``+ text``.  Only the core sends these (literal
  continuations, ``+ idling``, SASL challenges).

Data is built from plain Python values, and the encoder picks the wire
form: ``int`` is a number, ``None`` is NIL, ``str``/``bytes`` are strings
(quoted when short, 7-bit and free of CR/LF, a literal otherwise; 8-bit may
be quoted once UTF8=ACCEPT is enabled), ``tuple``/``list`` are parenthesised
lists, ``datetime`` is a quoted date-time, :class:`SequenceSet` is its
compact text.  Wrappers say what a plain value cannot: :class:`Atom` (flags,
keywords, NIL-free names), :class:`Mailbox` (encoded in modified UTF-7, or
UTF-8 when enabled), :class:`LiteralData` (always a literal; ``~{n}`` for
BINARY).  Every value is validated, so driver data can never inject CRLF or
a second response.

The builders at the end (``exists``, ``fetch``, ``list_response``,
``uidnext`` ...) are the spellings the driver is expected to use.  The
texts the core sends on its own are in :class:`Text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

from ams.protocols.imap import _utf7
from ams.protocols.imap._commands import FetchAttribute
from ams.protocols.imap._sequence import SequenceSet

__all__ = [
    "Atom", "ContinueRequest", "Item", "LiteralData", "Mailbox", "Response", "ResponseCode",
    "StatusResponse", "Text", "Untagged", "encode", "encode_string", "encode_value",
    "encoded_fetch", "fetch_name", "flag_list",
]

Item = Union[int, str, bytes, None, datetime, "Atom", "Mailbox", "LiteralData", SequenceSet,
             Sequence["Item"]]

MAX_NUMBER64 = 2**63 - 1          # mod-sequence-value (RFC 7162) is the widest number
MAX_QUOTED = 1024                 # longer strings go out as literals
_ATOM = re.compile(r"\\?[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+|\\\*")
_ASTRING = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_TAG = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.=+\-]*")
_FETCH_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.]*(\[[\x20-\x5c\x5e-\x7e]*\])?(<[0-9]+>)?")
_TEXT = re.compile(r"[\x20-\x7e]+")
_QUOTABLE7 = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_NO_CTL = re.compile(rb"[^\x00\r\n]*")
CONDITIONS = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom or flag sent as is: ``\\Seen``, ``$Junk``, ``\\*``, ``NIL``."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not _ATOM.fullmatch(self.text):
            raise ValueError(f"not an atom or flag: {self.text!r}")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A mailbox name, encoded for the wire when the response is encoded:
    an astring, or always a string with ``quoted`` (NAMESPACE prefixes)."""

    name: str
    quoted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError("a mailbox name is a str")
        _utf7.encode(self.name)          # refuses lone surrogates now, not at send time


@dataclass(frozen=True, slots=True)
class LiteralData:
    """A string always sent as a literal; ``binary`` makes it ``~{n}``
    (literal8, RFC 3516), the only form that may carry NUL."""

    data: bytes
    binary: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise TypeError("LiteralData carries bytes")
        if not self.binary and b"\0" in self.data:
            raise ValueError("NUL needs a literal8 (binary=True)")


class Concat(tuple):  # type: ignore[type-arg]
    """Items written back to back, with neither spaces nor parentheses.

    RFC 3501 writes ``body-type-mpart = 1*body SP media-subtype`` and
    ``env-from = "(" 1*address ")"``: the parts of a multipart BODYSTRUCTURE
    and the addresses of an ENVELOPE field follow each other with no space.
    """

    __slots__ = ()


def _check_items(items: Sequence[Item]) -> None:
    for item in items:
        _check_item(item)


def _check_item(item: object) -> None:
    if isinstance(item, bool):
        raise TypeError("bool is not an IMAP value")
    if isinstance(item, int):
        if not 0 <= item <= MAX_NUMBER64:
            raise ValueError(f"number out of range: {item}")
    elif isinstance(item, (str, bytes)):
        data = item.encode("utf-8", "strict") if isinstance(item, str) else item
        if b"\0" in data:
            raise ValueError("NUL in a string needs LiteralData(binary=True)")
    elif isinstance(item, (list, tuple)):
        _check_items(item)
    elif item is not None and not isinstance(item, (datetime, Atom, Mailbox, LiteralData,
                                                   SequenceSet)):
        raise TypeError(f"not an IMAP value: {type(item).__name__}")
    if isinstance(item, datetime) and item.utcoffset() is None:
        raise ValueError("a date-time needs a time zone")
    if isinstance(item, SequenceSet) and item.saved:
        raise ValueError("$ is not sent in responses")


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """``[NAME data...]`` in a status response (RFC 3501 §7.1, RFC 5530)."""

    name: str
    data: tuple[Item, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"bad response code name {self.name!r}")
        object.__setattr__(self, "name", self.name.upper())
        object.__setattr__(self, "data", tuple(self.data))
        _check_items(self.data)


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not _TEXT.fullmatch(text):
        raise ValueError("response text is one line of printable US-ASCII")


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """``tag|* OK|NO|BAD|PREAUTH|BYE [code] text``."""

    condition: str
    text: str
    code: ResponseCode | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {sorted(CONDITIONS)}")
        _check_text(self.text)
        if self.code is None and self.text.startswith("["):
            raise ValueError("text starting with '[' would read as a response code")
        if self.tag is not None:
            if not isinstance(self.tag, str) or not _TAG.fullmatch(self.tag):
                raise ValueError(f"bad tag {self.tag!r}")
            if self.condition not in ("OK", "NO", "BAD"):
                raise ValueError(f"{self.condition} is never tagged")


@dataclass(frozen=True, slots=True)
class Untagged:
    """Server data: ``* [number] NAME data...``."""

    name: str
    data: tuple[Item, ...] = ()
    number: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"bad response name {self.name!r}")
        if self.name.upper() in CONDITIONS:
            raise ValueError("status conditions are StatusResponse, not Untagged")
        object.__setattr__(self, "data", tuple(self.data))
        _check_items(self.data)
        if self.number is not None and (isinstance(self.number, bool)
                                        or not isinstance(self.number, int)
                                        or not 0 <= self.number < 2**32):
            raise ValueError("the message number is a 32-bit unsigned int")


@dataclass(frozen=True, slots=True)
class ContinueRequest:
    """``+ text``: the server is ready for more of the command."""

    text: str = field(default="")

    def __post_init__(self) -> None:
        if self.text:
            _check_text(self.text)


Response = StatusResponse | Untagged | ContinueRequest


# --- the encoder ---------------------------------------------------------------------


def _string(data: bytes, utf8: bool, *, literal_ok: bool) -> bytes:
    quotable = len(data) <= MAX_QUOTED and (
        _QUOTABLE7.fullmatch(data) is not None
        or (utf8 and _NO_CTL.fullmatch(data) is not None and _is_utf8(data)))
    if quotable:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if not literal_ok:
        raise ValueError("a value in a response code must fit a quoted string")
    return b"{%d}\r\n" % len(data) + data


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def date_time(value: datetime) -> str:
    """RFC 3501 ``date-time`` text (without the quotes): ``17-Jul-1996 02:44:25 -0700``."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("a date-time needs a time zone")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")


def _mailbox(name: str, utf8: bool, quoted: bool) -> bytes:
    wire = name if utf8 else _utf7.encode(name)
    if not quoted and _ASTRING.fullmatch(wire) and wire.upper() != "NIL":
        return wire.encode("ascii")
    return _string(wire.encode("utf-8"), utf8, literal_ok=True)


def _item(item: Item, utf8: bool, *, literal_ok: bool = True) -> bytes:
    if item is None:
        return b"NIL"
    if isinstance(item, bool):
        raise TypeError("bool is not an IMAP value")
    if isinstance(item, int):
        return str(item).encode("ascii")
    if isinstance(item, str):
        return _string(item.encode("utf-8"), utf8, literal_ok=literal_ok)
    if isinstance(item, bytes):
        return _string(item, utf8, literal_ok=literal_ok)
    if isinstance(item, Atom):
        return item.text.encode("ascii")
    if isinstance(item, Mailbox):
        return _mailbox(item.name, utf8, item.quoted)
    if isinstance(item, LiteralData):
        if not literal_ok:
            raise ValueError("no literal in a response code")
        return b"%s{%d}\r\n" % (b"~" if item.binary else b"", len(item.data)) + item.data
    if isinstance(item, datetime):
        return b'"' + date_time(item).encode("ascii") + b'"'
    if isinstance(item, SequenceSet):
        return str(item).encode("ascii")
    if isinstance(item, Concat):
        return b"".join(_item(i, utf8, literal_ok=literal_ok) for i in item)
    return b"(" + _items(item, utf8, literal_ok=literal_ok) + b")"


def _items(items: Sequence[Item], utf8: bool, *, literal_ok: bool = True) -> bytes:
    return b" ".join(_item(i, utf8, literal_ok=literal_ok) for i in items)


def _code(code: ResponseCode, utf8: bool) -> bytes:
    body = code.name.encode("ascii")
    if code.data:
        body += b" " + _items(code.data, utf8, literal_ok=False)
    return b"[" + body + b"]"


def encode(response: Response, *, utf8: bool = False) -> bytes:
    """The wire bytes of one response, CRLF included."""
    if isinstance(response, StatusResponse):
        parts = [(response.tag or "*").encode("ascii"), response.condition.encode("ascii")]
        if response.code is not None:
            parts.append(_code(response.code, utf8))
        parts.append(response.text.encode("ascii"))
        return b" ".join(parts) + b"\r\n"
    if isinstance(response, Untagged):
        parts = [b"*"]
        if response.number is not None:
            parts.append(str(response.number).encode("ascii"))
        parts.append(response.name.encode("ascii"))
        if response.data:
            parts.append(_items(response.data, utf8))
        return b" ".join(parts) + b"\r\n"
    if isinstance(response, ContinueRequest):
        return b"+ " + response.text.encode("ascii") + b"\r\n"
    raise TypeError(f"not a response: {type(response).__name__}")


class Text:
    """What the core says on its own (replies are data, in one place)."""

    GREETING = "AMS IMAP4rev1 server ready"
    LITERAL = "Ready for literal data"
    IDLING = "idling"
    BEGIN_TLS = "Begin TLS negotiation now"
    LOGOUT = "Logging out"
    TOO_MANY_ERRORS = "Too many protocol errors, closing connection"
    LINE_TOO_LONG = "Command line too long"
    LITERAL_TOO_BIG = "Literal too large"
    NON_SYNC_TOO_BIG = "Non-synchronizing literal too large, use a synchronizing literal"
    NON_SYNC_REFUSED = "Non-synchronizing literals are not supported"
    BAD_LITERAL = "Invalid literal length"
    UNKNOWN_COMMAND = "Unknown command"
    NOT_IN_STATE = "Command not valid in this state"
    NOT_ADVERTISED = "Extension not advertised or not enabled"
    LOGIN_DISABLED = "Use STARTTLS before logging in"
    TLS_ACTIVE = "TLS is already active"
    UNSUPPORTED_MECHANISM = "Unsupported authentication mechanism"
    AUTH_CANCELLED = "Authentication cancelled"
    AUTH_BAD_BASE64 = "Invalid base64 in SASL response"
    AUTH_MALFORMED = "Malformed PLAIN credentials"
    EXPECTED_DONE = "Expected DONE"
    BAD_CHARSET = "Unsupported charset"
    NO_TAG = "Missing or invalid tag"


# --- builders: response codes ---------------------------------------------------------

def flag_atoms(flags: Iterable[str]) -> tuple[Atom, ...]:
    return tuple(Atom(f) for f in flags)


def _set(value: SequenceSet | Iterable[int] | int) -> SequenceSet:
    if isinstance(value, SequenceSet):
        return value
    if isinstance(value, int):
        return SequenceSet.from_numbers([value])
    return SequenceSet.from_numbers(value)


ALERT = ResponseCode("ALERT")
PARSE = ResponseCode("PARSE")
READ_ONLY = ResponseCode("READ-ONLY")
READ_WRITE = ResponseCode("READ-WRITE")
TRYCREATE = ResponseCode("TRYCREATE")
UIDNOTSTICKY = ResponseCode("UIDNOTSTICKY")
NOMODSEQ = ResponseCode("NOMODSEQ")
CLOSED = ResponseCode("CLOSED")
NONEXISTENT = ResponseCode("NONEXISTENT")
ALREADYEXISTS = ResponseCode("ALREADYEXISTS")
CANNOT = ResponseCode("CANNOT")
LIMIT = ResponseCode("LIMIT")
NOPERM = ResponseCode("NOPERM")
INUSE = ResponseCode("INUSE")
OVERQUOTA = ResponseCode("OVERQUOTA")
AUTHENTICATIONFAILED = ResponseCode("AUTHENTICATIONFAILED")
UNAVAILABLE = ResponseCode("UNAVAILABLE")
SERVERBUG = ResponseCode("SERVERBUG")
CLIENTBUG = ResponseCode("CLIENTBUG")
PRIVACYREQUIRED = ResponseCode("PRIVACYREQUIRED")
TOOBIG = ResponseCode("TOOBIG")
EXPUNGEISSUED = ResponseCode("EXPUNGEISSUED")


def uidnext(uid: int) -> ResponseCode:
    return ResponseCode("UIDNEXT", (uid,))


def uidvalidity(value: int) -> ResponseCode:
    return ResponseCode("UIDVALIDITY", (value,))


def unseen(seq: int) -> ResponseCode:
    return ResponseCode("UNSEEN", (seq,))


def highest_modseq(modseq: int) -> ResponseCode:
    return ResponseCode("HIGHESTMODSEQ", (modseq,))


def permanent_flags(flags: Iterable[str]) -> ResponseCode:
    """``[PERMANENTFLAGS (\\Seen \\*)]``; include ``"\\\\*"`` to allow new keywords."""
    return ResponseCode("PERMANENTFLAGS", (flag_atoms(flags),))


def badcharset(charsets: Iterable[str] = ("US-ASCII", "UTF-8")) -> ResponseCode:
    return ResponseCode("BADCHARSET", (tuple(charsets),))


def capability_code(capabilities: Iterable[str]) -> ResponseCode:
    return ResponseCode("CAPABILITY", flag_atoms(capabilities))


def append_uid(uidvalidity: int, uids: SequenceSet | Iterable[int] | int) -> ResponseCode:
    """RFC 4315 ``[APPENDUID uidvalidity uid-set]``."""
    return ResponseCode("APPENDUID", (uidvalidity, _set(uids)))


def copy_uid(uidvalidity: int, source: SequenceSet | Iterable[int],
             destination: SequenceSet | Iterable[int]) -> ResponseCode:
    """RFC 4315 ``[COPYUID uidvalidity source-uids destination-uids]``."""
    return ResponseCode("COPYUID", (uidvalidity, _set(source), _set(destination)))


def modified(numbers: SequenceSet | Iterable[int]) -> ResponseCode:
    """RFC 7162 ``[MODIFIED set]``: what a conditional STORE did not change."""
    return ResponseCode("MODIFIED", (_set(numbers),))


# --- builders: server data ------------------------------------------------------------

def capability(capabilities: Iterable[str]) -> Untagged:
    return Untagged("CAPABILITY", flag_atoms(capabilities))


def enabled(capabilities: Iterable[str]) -> Untagged:
    return Untagged("ENABLED", flag_atoms(capabilities))


def exists(count: int) -> Untagged:
    return Untagged("EXISTS", number=count)


def recent(count: int) -> Untagged:
    return Untagged("RECENT", number=count)


def expunge(seq: int) -> Untagged:
    return Untagged("EXPUNGE", number=seq)


def flags(flag_names: Iterable[str]) -> Untagged:
    return Untagged("FLAGS", (flag_atoms(flag_names),))


def vanished(uids: SequenceSet | Iterable[int], *, earlier: bool = False) -> Untagged:
    """RFC 7162 ``* VANISHED [(EARLIER)] uid-set``."""
    head: tuple[Item, ...] = ((Atom("EARLIER"),),) if earlier else ()
    return Untagged("VANISHED", (*head, _set(uids)))


def search(numbers: Iterable[int], *, modseq: int | None = None) -> Untagged:
    """``* SEARCH 2 3 5``, with RFC 7162 ``(MODSEQ n)`` when asked for."""
    tail: tuple[Item, ...] = ((Atom("MODSEQ"), modseq),) if modseq is not None else ()
    return Untagged("SEARCH", (*sorted(numbers), *tail))


def esearch(tag: str, *, uid: bool = False, **results: int | SequenceSet | None) -> Untagged:
    """RFC 4731 ``* ESEARCH (TAG "t") [UID] MIN 2 COUNT 3 ...``; None results are left out."""
    data: list[Item] = [(Atom("TAG"), tag)]
    if uid:
        data.append(Atom("UID"))
    for name, value in results.items():
        if value is not None:
            data += [Atom(name.upper()), value]
    return Untagged("ESEARCH", tuple(data))


FetchKey = str | FetchAttribute
FetchItems = (Mapping[str, Item] | Mapping[FetchAttribute, Item] | Mapping[FetchKey, Item]
              | Iterable[tuple[FetchKey, Item]])


def encode_value(item: Item, *, utf8: bool = False) -> bytes:
    """One value's wire bytes, validated like any response's.

    For the bridge's fast paths: a value encoded once (and perhaps cached)
    becomes a piece of :func:`encoded_fetch`.
    """
    _check_item(item)
    return _item(item, utf8)


def encode_string(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    """A string member of a FETCH value (or NIL): quoted when it can be,
    else a literal; exactly what :func:`encode_value` gives for it."""
    if value is None:
        return b"NIL"
    if isinstance(value, str) and value.isascii() and value.isprintable() and (
            len(value) <= MAX_QUOTED):  # the common case, without a regex
        if "\\" in value or '"' in value:
            value = value.replace("\\", "\\\\").replace('"', '\\"')
        return b'"' + value.encode("ascii") + b'"'
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"\0" in data:
        raise ValueError("NUL in a string needs LiteralData(binary=True)")
    return _string(data, utf8, literal_ok=True)


def fetch_name(key: FetchKey) -> bytes:
    """The wire bytes of a FETCH item's name (see :func:`fetch`), validated."""
    name = key.response_name if isinstance(key, FetchAttribute) else key
    if not isinstance(name, str) or not _FETCH_NAME.fullmatch(name):
        raise ValueError(f"bad FETCH item name {name!r}")
    return name.encode("ascii")


def encoded_fetch(seq: int, pieces: Iterable[bytes]) -> bytes:
    """``* seq FETCH (...)`` CRLF from pieces ``name SP value``, each built
    from :func:`fetch_name` and :func:`encode_value` (or :func:`flag_list`)."""
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(pieces))


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label)``: a flag list's wire bytes, sorted, validated."""
    return _item(flag_atoms(sorted(flags)), False)


def fetch(seq: int, items: FetchItems) -> Untagged:
    """``* 12 FETCH (FLAGS (\\Seen) UID 42 BODY[] {..}``.  Keys are names
    (``"FLAGS"``, ``"BODY[HEADER]"``) or the :class:`FetchAttribute` the
    client asked for (its ``response_name`` is used: BODY.PEEK answers as
    BODY, a partial as ``<origin>``)."""
    pairs: Iterable[tuple[FetchKey, Item]] = (
        items.items() if isinstance(items, Mapping) else items)
    data: list[Item] = []
    for key, value in pairs:
        name = key.response_name if isinstance(key, FetchAttribute) else key
        if not isinstance(name, str) or not _FETCH_NAME.fullmatch(name):
            raise ValueError(f"bad FETCH item name {name!r}")
        data += [_FetchName(name), value]
    return Untagged("FETCH", (tuple(data),), number=seq)


class _FetchName(Atom):
    """A msg-att name, which may hold a section with spaces (validated above)."""

    __slots__ = ()

    def __post_init__(self) -> None:
        pass


def list_response(attributes: Iterable[str], delimiter: str | None, mailbox: str, *,
                  kind: str = "LIST") -> Untagged:
    """``* LIST (\\HasNoChildren) "/" INBOX`` (``kind="LSUB"`` for LSUB)."""
    if kind not in ("LIST", "LSUB"):
        raise ValueError("kind is LIST or LSUB")
    if delimiter is not None and (len(delimiter) != 1 or not delimiter.isascii()):
        raise ValueError("the hierarchy delimiter is one ASCII character or None")
    return Untagged(kind, (flag_atoms(attributes), delimiter, Mailbox(mailbox)))


def mailbox_status(mailbox: str, items: Mapping[str, int]) -> Untagged:
    """``* STATUS INBOX (MESSAGES 3 UIDNEXT 4)``."""
    data: list[Item] = []
    for name, value in items.items():
        data += [Atom(name.upper()), value]
    return Untagged("STATUS", (Mailbox(mailbox), tuple(data)))


def id_response(fields: Mapping[str, str | None] | None) -> Untagged:
    """RFC 2971 ``* ID ("name" "AMS" ...)`` or ``* ID NIL``."""
    if fields is None:
        return Untagged("ID", (None,))
    data: list[Item] = []
    for key, value in fields.items():
        data += [key, value]
    return Untagged("ID", (tuple(data),))


Namespace = Sequence[tuple[str, str | None]]


def namespace(personal: Namespace | None, other: Namespace | None = None,
              shared: Namespace | None = None) -> Untagged:
    """RFC 2342 ``* NAMESPACE (("" "/")) NIL NIL``: each is (prefix, delimiter) pairs."""
    def group(entries: Namespace | None) -> Item:
        if not entries:
            return None
        return tuple((Mailbox(prefix, quoted=True), delimiter)
                     for prefix, delimiter in entries)
    return Untagged("NAMESPACE", (group(personal), group(other), group(shared)))
