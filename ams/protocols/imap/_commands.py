"""Events: what the client asked for, named in the RFCs' words.

Every client command becomes a frozen dataclass carrying its tag and its
arguments, already validated and converted: mailbox names are ``str``
(decoded from modified UTF-7; INBOX in any case is ``"INBOX"``), dates are
``datetime``/``date``, sequence sets are :class:`SequenceSet`, FETCH
attributes are :class:`FetchAttribute` (macros expanded), SEARCH criteria
are a tree of :class:`SearchKey` nodes.

Kinds of event:

- *Commands* (subclasses of :class:`Command`): the driver does the work,
  sends untagged data with ``conn.send()`` and finishes with
  ``conn.complete(tag, "OK"|"NO"|"BAD", ...)``.  Until then the core reads
  nothing more (``next_event()`` is PAUSED).
- :class:`Idle`: the core has sent ``+ idling``; the driver may send
  updates until :class:`IdleDone`, then completes the IDLE tag.
- :class:`StartTLS`: the tagged OK is queued; send it, handshake, then call
  ``tls_started()``.
- :class:`ConnectionClosed`: the session is over.

CAPABILITY, ENABLE and LOGOUT are answered by the core and are not emitted;
nor is an AUTHENTICATE exchange until it yields credentials
(:class:`Authenticate`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Literal

from ams.protocols.imap._search import (
    All,
    And,
    BodyKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    Not,
    Or,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
    walk,
)
from ams.protocols.imap._sequence import SequenceSet

if TYPE_CHECKING:
    from ams.protocols.imap._responses import StatusResponse

__all__ = [
    "All", "And", "Append", "Authenticate", "AuthenticateStart", "BodyKey", "Capability",
    "Check", "Close", "Command", "ConnectionClosed", "Copy", "Create", "DateKey", "Delete",
    "Enable", "Event", "Examine", "Expunge", "Fetch", "FetchAttribute", "FlagKey", "HeaderKey",
    "Id", "Idle", "IdleDone", "List", "Login", "Logout", "Lsub", "ModSeqKey", "Move",
    "Namespace", "Noop", "Not", "Or", "QResync", "Rename", "Search", "SearchKey", "Section",
    "Select", "SequenceKey", "SizeKey", "StartTLS", "Status", "Store", "Subscribe", "TextKey",
    "Unselect", "Unsubscribe",
]

_TAG = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_MAX_MODSEQ = 2**63 - 1


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_str_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every IMAP server event."""


@dataclass(frozen=True, slots=True)
class Command(Event):
    """A tagged client command; ``name`` is the command as the RFC spells it."""

    name: ClassVar[str] = ""
    tag: str

    def __post_init__(self) -> None:
        _check(isinstance(self.tag, str) and _TAG.fullmatch(self.tag) is not None,
               f"bad tag {self.tag!r}")
        for item in fields(self):
            check = _FIELD_CHECKS.get(item.name)
            if check is not None:
                _check(check(getattr(self, item.name)), f"bad {item.name}")

    @property
    def command_name(self) -> str:
        """``name``, with the UID prefix when the client used it."""
        return f"UID {self.name}" if getattr(self, "uid", False) else self.name

    def extensions_used(self) -> set[str]:
        """Capabilities whose syntax this command uses; the connection
        refuses it unless they are advertised."""
        return set()


def _saved(*sets: SequenceSet | None) -> set[str]:
    """RFC 5182: ``$`` (the saved search result) needs SEARCHRES."""
    return {"SEARCHRES"} if any(s is not None and s.saved for s in sets) else set()


def _modseq(value: object, low: int) -> bool:
    return value is None or (type(value) is int and low <= value <= _MAX_MODSEQ)


# Fields several commands share, checked by Command.__post_init__.
_FIELD_CHECKS: dict[str, Callable[[object], bool]] = {
    **{name: (lambda v: isinstance(v, str)) for name in (
        "mailbox", "new_mailbox", "reference", "pattern", "mechanism")},
    **{name: (lambda v: isinstance(v, bool)) for name in (
        "uid", "silent", "condstore", "vanished", "binary")},
    "sequence_set": lambda v: isinstance(v, SequenceSet),
    "uid_set": lambda v: v is None or isinstance(v, SequenceSet),
    "changed_since": lambda v: _modseq(v, 1),
    "unchanged_since": lambda v: _modseq(v, 0),
}


# --- any state -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Capability(Command):
    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    """NOOP: a chance to send pending updates (EXISTS, EXPUNGE, FETCH)."""

    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: the client's identification, ``None`` for ``ID NIL``.
    Answer with ``responses.id_response(...)`` and complete."""

    name: ClassVar[str] = "ID"
    parameters: tuple[tuple[str, str | None], ...] | None = None


# --- not authenticated ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    """STARTTLS accepted; the tagged OK is queued.  Anything the client
    pipelined behind it has been thrown away (RFC 3501 §6.2.1)."""

    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Login(Command):
    name: ClassVar[str] = "LOGIN"
    userid: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(isinstance(self.userid, str) and isinstance(self.password, str),
               "userid and password are str")


@dataclass(frozen=True, slots=True)
class AuthenticateStart(Command):
    """AUTHENTICATE as parsed (internal: the core runs the SASL exchange)."""

    name: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = None

    def extensions_used(self) -> set[str]:
        return {"SASL-IR"} if self.initial_response is not None else set()


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """Decoded SASL credentials (PLAIN, RFC 4616; ``authzid`` empty when none)."""

    name: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        for value in (self.mechanism, self.authzid, self.username, self.password):
            _check(isinstance(value, str), "Authenticate fields are str")


# --- authenticated ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Enable(Command):
    name: ClassVar[str] = "ENABLE"
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QResync:
    """RFC 7162 ``QRESYNC (uidvalidity modseq [known-uids [seq-match-data]])``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence_set: SequenceSet | None = None
    known_uid_set: SequenceSet | None = None

    def __post_init__(self) -> None:
        _check(1 <= self.uidvalidity < 2**32, "uidvalidity is a nz-number")
        _check(1 <= self.modseq <= _MAX_MODSEQ, "modseq is a mod-sequence-value")
        _check((self.known_sequence_set is None) == (self.known_uid_set is None),
               "seq-match-data has both sets or neither")


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT (EXAMINE is the subclass :class:`Examine`).  Send FLAGS,
    EXISTS, RECENT and the OK codes, then complete with ``[READ-WRITE]``."""

    name: ClassVar[str] = "SELECT"
    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None

    def __post_init__(self) -> None:
        Command.__post_init__(self)

    @property
    def read_only(self) -> bool:
        return isinstance(self, Examine)

    def extensions_used(self) -> set[str]:
        return {"CONDSTORE"} if self.condstore else set()


@dataclass(frozen=True, slots=True)
class Examine(Select):
    name: ClassVar[str] = "EXAMINE"


@dataclass(frozen=True, slots=True)
class Create(Command):
    name: ClassVar[str] = "CREATE"
    mailbox: str
    special_use: tuple[str, ...] = ()      # RFC 6154 CREATE ... (USE (\Drafts))

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(_is_str_tuple(self.special_use), "special_use is a tuple of str")

    def extensions_used(self) -> set[str]:
        return {"CREATE-SPECIAL-USE"} if self.special_use else set()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    name: ClassVar[str] = "DELETE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    name: ClassVar[str] = "RENAME"
    mailbox: str
    new_mailbox: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    name: ClassVar[str] = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    name: ClassVar[str] = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, with the RFC 5258 extended forms: selection options
    (``SUBSCRIBED`` ...), several patterns, ``RETURN (...)`` options.
    ``patterns == ("",)`` asks only for the hierarchy delimiter."""

    name: ClassVar[str] = "LIST"
    reference: str
    patterns: tuple[str, ...]
    select_options: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(_is_str_tuple(self.patterns) and len(self.patterns) >= 1,
               "patterns is a non-empty tuple of str")

    @property
    def extended(self) -> bool:
        return bool(self.select_options or self.return_options or len(self.patterns) > 1)

    def extensions_used(self) -> set[str]:
        return {"SPECIAL-USE"} if "SPECIAL-USE" in self.select_options | self.return_options \
            else set()


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    name: ClassVar[str] = "LSUB"
    reference: str
    pattern: str


STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE",
                          "HIGHESTMODSEQ", "DELETED"})


@dataclass(frozen=True, slots=True)
class Status(Command):
    """STATUS mailbox (items): answer with ``responses.mailbox_status``."""

    name: ClassVar[str] = "STATUS"
    mailbox: str
    items: tuple[str, ...]

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(bool(self.items) and all(i in STATUS_ITEMS for i in self.items),
               f"status items are some of {sorted(STATUS_ITEMS)}")

    def extensions_used(self) -> set[str]:
        return ({"CONDSTORE"} if "HIGHESTMODSEQ" in self.items else set()) | \
            ({"STATUS=SIZE"} if "SIZE" in self.items else set())


@dataclass(frozen=True, slots=True)
class Append(Command):
    """APPEND: store ``message``; complete with ``[APPENDUID v uid]``, or NO
    ``[TRYCREATE]`` when the mailbox does not exist."""

    name: ClassVar[str] = "APPEND"
    mailbox: str
    message: bytes = field(repr=False)
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    binary: bool = False                    # sent as literal8 (RFC 3516)

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(isinstance(self.message, bytes), "message is bytes")
        _check(_is_str_tuple(self.flags), "flags is a tuple of str")

    def extensions_used(self) -> set[str]:
        return {"BINARY"} if self.binary else set()


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """RFC 2177: ``+ idling`` is queued; send updates until IdleDone."""

    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True, slots=True)
class IdleDone(Event):
    """DONE arrived: complete the IDLE command with ``complete(tag, "OK")``."""

    tag: str


# --- selected -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Check(Command):
    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    """CLOSE: expunge silently (unless read-only), then leave the mailbox."""

    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    """RFC 3691: leave the mailbox without expunging."""

    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or RFC 4315 UID EXPUNGE when ``uid_set`` is given."""

    name: ClassVar[str] = "EXPUNGE"
    uid_set: SequenceSet | None = None

    @property
    def uid(self) -> bool:
        return self.uid_set is not None

    def extensions_used(self) -> set[str]:
        return {"UIDPLUS"} | _saved(self.uid_set) if self.uid_set is not None else set()


@dataclass(frozen=True, slots=True)
class Section:
    """``BODY[section]``: ``part`` numbers, then HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT or MIME (or None: the whole part)."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(all(isinstance(n, int) and n >= 1 for n in self.part), "parts are >= 1")
        _check(self.text in (None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT",
                             "MIME"), f"bad section text {self.text!r}")
        _check(self.text != "MIME" or bool(self.part), "MIME needs a part number")
        _check(bool(self.fields) == (self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")),
               "header fields go with HEADER.FIELDS[.NOT] only")

    def __str__(self) -> str:
        pieces = [".".join(map(str, self.part))] if self.part else []
        if self.text is not None:
            pieces.append(self.text)
        spec = ".".join(pieces)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


FETCH_NAMES = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                         "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID",
                         "MODSEQ", "BINARY", "BINARY.SIZE"})


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """One ``fetch-att``.  ``BODY`` without ``section`` is the body
    structure; ``BODY[]`` has an empty :class:`Section`."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None      # (origin, octet count)
    peek: bool = False

    def __post_init__(self) -> None:
        _check(self.name in FETCH_NAMES, f"bad fetch attribute {self.name!r}")
        if self.section is not None or self.partial is not None or self.peek:
            _check(self.name in ("BODY", "BINARY", "BINARY.SIZE"),
                   f"{self.name} takes no section")
            _check(self.section is not None, "a partial or PEEK needs a section")
        if self.name.startswith("BINARY"):
            _check(self.section is not None and self.section.text is None,
                   "BINARY takes a part number only")
        if self.partial is not None:
            _check(self.name != "BINARY.SIZE" and self.partial[1] >= 1
                   and self.partial[0] >= 0, "bad partial")

    @property
    def response_name(self) -> str:
        """The name in the FETCH response: PEEK dropped, ``<origin>`` only."""
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name

    @property
    def sets_seen(self) -> bool:
        """Fetching it sets \\Seen (RFC 3501 §6.4.5)."""
        if self.name in ("RFC822", "RFC822.TEXT"):
            return True
        return self.name in ("BODY", "BINARY") and self.section is not None and not self.peek


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH / UID FETCH.  Under UID the UID attribute is always included,
    and with CHANGEDSINCE the MODSEQ attribute (RFC 3501 §6.4.8, RFC 7162)."""

    name: ClassVar[str] = "FETCH"
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False
    macro: str | None = None

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(bool(self.attributes), "FETCH needs attributes")
        _check(not self.vanished or (self.uid and self.changed_since is not None),
               "VANISHED needs UID FETCH with CHANGEDSINCE")

    def extensions_used(self) -> set[str]:
        names = {att.name for att in self.attributes}
        used = _saved(self.sequence_set)
        if "MODSEQ" in names or self.changed_since is not None:
            used.add("CONDSTORE")
        if names & {"BINARY", "BINARY.SIZE"}:
            used.add("BINARY")
        return used


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE: ``operation`` is "replace" (FLAGS), "add" (+FLAGS) or "remove"
    (-FLAGS).  Unless ``silent``, send the new FLAGS of each message."""

    name: ClassVar[str] = "STORE"
    sequence_set: SequenceSet
    operation: Literal["replace", "add", "remove"]
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        _check(self.operation in ("replace", "add", "remove"), "bad STORE operation")
        _check(_is_str_tuple(self.flags), "flags is a tuple of str")

    def extensions_used(self) -> set[str]:
        return _saved(self.sequence_set) | (
            {"CONDSTORE"} if self.unchanged_since is not None else set())


@dataclass(frozen=True, slots=True)
class Copy(Command):
    """COPY / UID COPY: complete with ``[COPYUID ...]`` or NO ``[TRYCREATE]``."""

    name: ClassVar[str] = "COPY"
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False

    def extensions_used(self) -> set[str]:
        return _saved(self.sequence_set)


@dataclass(frozen=True, slots=True)
class Move(Command):
    """RFC 6851 MOVE / UID MOVE: send ``* OK [COPYUID ...]``, the EXPUNGEs
    (or VANISHED), then complete."""

    name: ClassVar[str] = "MOVE"
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False

    def extensions_used(self) -> set[str]:
        return _saved(self.sequence_set)


# --- SEARCH ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH.  ``charset`` is what the client named (strings
    are already decoded).  ``return_options`` is set for RFC 4731 ESEARCH
    (``SEARCH RETURN (MIN COUNT)``; an empty tuple means ALL)."""

    name: ClassVar[str] = "SEARCH"
    criteria: SearchKey
    charset: str | None = None
    uid: bool = False
    return_options: tuple[str, ...] | None = None

    def extensions_used(self) -> set[str]:
        used: set[str] = set()
        for key in walk(self.criteria):
            if isinstance(key, ModSeqKey):
                used.add("CONDSTORE")
            elif isinstance(key, SequenceKey):
                used |= _saved(key.sequence_set)
        if self.return_options is not None:
            used.add("ESEARCH")
            if "SAVE" in self.return_options:
                used.add("SEARCHRES")
        return used


# --- the end --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over.  ``response`` is the BYE the core sent, or None
    when the client hung up."""

    response: StatusResponse | None = None
