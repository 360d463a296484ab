"""Command grammar: a framed command → a typed :class:`Command`.

Theory of operation
-------------------
``Cursor.tag`` and ``parse_name`` read the tag and the command name; the connection checks
the name against the state table before ``parse_args`` reads the rest, so a
command that is not allowed is refused without looking at its arguments
(and before the client is invited to send a literal).  Each command has one
function here, written after its ABNF in RFC 3501 §9 and the extensions
(RFC 4315, 4731, 5161, 5258, 6154, 6851, 7162, 2971, 3691, 2177, 4959).
FETCH attributes and SEARCH keys come out fully typed (see ``_commands``).

The parser does not know the session: whatever depends on it (state,
capabilities, ENABLE) is checked by the connection on the typed result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from ams.protocols.imap._commands import (
    All,
    And,
    Append,
    AuthenticateStart,
    BodyKey,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    DateKey,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FlagKey,
    HeaderKey,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    Not,
    Or,
    QResync,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceKey,
    SizeKey,
    StartTLS,
    Status,
    Store,
    Subscribe,
    TextKey,
    Unselect,
    Unsubscribe,
)
from ams.protocols.imap._parse import Cursor, ParseError
from ams.protocols.imap._sequence import SequenceSet

__all__ = ["COMMAND_NAMES", "UID_COMMANDS", "parse_args", "parse_name"]

_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")
_FETCH_WORD = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_WORD = re.compile(rb"[A-Za-z.]+")
_FIELD_NAME = re.compile(r"[!-9;-~]+")          # RFC 5322 ftext
_MAX_SEARCH_DEPTH = 100         # nesting of NOT/OR/(): bounds the recursion
CHARSETS = ("US-ASCII", "UTF-8")


def parse_name(cur: Cursor) -> str:
    """``SP command-name`` after the tag (read with ``cur.tag()``)."""
    cur.expect(b" ", "command")
    return cur.atom("command").upper()


def parse_args(cur: Cursor, tag: str, name: str) -> Command:
    """The rest of the command after ``parse_name``."""
    return _PARSERS[name](cur, tag)


def _bare(cls: Callable[[str], Command]) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.end()
        return cls(tag)
    return parse


def _text(cur: Cursor, what: str) -> str:
    return cur.text(cur.astring(what), what)


# --- not authenticated / any state -----------------------------------------------------

def _login(cur: Cursor, tag: str) -> Command:
    cur.sp()
    userid = _text(cur, "user name")
    cur.sp()
    password = _text(cur, "password")
    cur.end()
    return Login(tag, userid, password)


def _authenticate(cur: Cursor, tag: str) -> Command:
    cur.sp()
    mechanism = cur.atom("mechanism").upper()
    initial = None
    if cur.accept(b" "):                        # SASL-IR (RFC 4959)
        initial = cur.take(_BASE64, "initial response")
    cur.end()
    return AuthenticateStart(tag, mechanism, initial)


def _id(cur: Cursor, tag: str) -> Command:
    cur.sp()
    if cur.keyword(b"NIL"):
        cur.end()
        return Id(tag, None)

    def pair() -> tuple[str, str | None]:
        key = cur.text(cur.string("ID field"), "ID field")
        cur.sp()
        raw = cur.nstring("ID value")
        value = None if raw is None else cur.text(raw, "ID value")
        if len(key) > 30 or (value is not None and len(value) > 1024):
            raise ParseError("ID field too long")     # RFC 2971 §3.3
        return key, value

    # "(" *(string SP nstring) ")": pairs separated by spaces, possibly none.
    items = cur.parenthesized(pair, empty=True)
    if len(items) > 30:
        raise ParseError("Too many ID fields")
    cur.end()
    return Id(tag, tuple(items))


def _enable(cur: Cursor, tag: str) -> Command:
    names = []
    cur.sp()
    names.append(cur.atom("capability").upper())
    while cur.accept(b" "):
        names.append(cur.atom("capability").upper())
    cur.end()
    return Enable(tag, tuple(names))


# --- authenticated ------------------------------------------------------------------------

def _known_set(cur: Cursor) -> SequenceSet:
    value = cur.sequence_set()
    if value.saved or value.uses_star:
        raise ParseError("Invalid known UID set")
    return value


def _qresync(cur: Cursor) -> QResync:
    cur.sp()
    cur.expect(b"(", "QRESYNC parameters")
    uidvalidity = cur.nz_number("UIDVALIDITY")
    cur.sp()
    modseq = cur.mod_sequence()
    known = seq_set = uid_set = None
    if cur.accept(b" "):
        match_data = cur.peek() == 0x28
        if not match_data:
            known = _known_set(cur)
            match_data = cur.accept(b" ")
        if match_data:                          # seq-match-data
            cur.expect(b"(", "sequence match data")
            seq_set = _known_set(cur)
            cur.sp()
            uid_set = _known_set(cur)
            cur.expect(b")", "sequence match data")
    cur.expect(b")", "QRESYNC parameters")
    return QResync(uidvalidity, modseq, known, seq_set, uid_set)


def _select(cls: type[Select]) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        mailbox = cur.mailbox()
        params: dict[str, QResync | None] = {}

        def param() -> None:
            name = cur.atom("select parameter").upper()
            if name in params or name not in ("CONDSTORE", "QRESYNC"):
                raise ParseError("Unknown or repeated select parameter")
            params[name] = _qresync(cur) if name == "QRESYNC" else None

        if cur.accept(b" "):
            cur.parenthesized(param)
        cur.end()
        return cls(tag, mailbox, bool(params), params.get("QRESYNC"))
    return parse


def _create(cur: Cursor, tag: str) -> Command:
    cur.sp()
    mailbox = cur.mailbox()
    uses: tuple[str, ...] = ()
    if cur.accept(b" "):                        # RFC 6154 §3: (USE (\Drafts))
        cur.expect(b"(", "create parameters")
        if not cur.keyword(b"USE"):
            raise ParseError("Unknown create parameter")
        cur.sp()
        uses = tuple(cur.parenthesized(cur.flag))
        cur.expect(b")", "create parameters")
    cur.end()
    return Create(tag, mailbox, uses)


def _one_mailbox(cls: Callable[[str, str], Command]) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        mailbox = cur.mailbox()
        cur.end()
        return cls(tag, mailbox)
    return parse


def _rename(cur: Cursor, tag: str) -> Command:
    cur.sp()
    old = cur.mailbox()
    cur.sp()
    new = cur.mailbox()
    cur.end()
    return Rename(tag, old, new)


LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})


def _options(cur: Cursor, allowed: frozenset[str]) -> frozenset[str]:
    words = cur.parenthesized(lambda: cur.atom("option").upper(), empty=True)
    if not set(words) <= allowed:
        raise ParseError("Unknown LIST option")
    return frozenset(words)


def _list(cur: Cursor, tag: str) -> Command:
    cur.sp()
    selection: frozenset[str] = frozenset()
    if cur.peek() == 0x28:                      # RFC 5258 list-select-opts
        selection = _options(cur, LIST_SELECT)
        if selection and selection <= {"RECURSIVEMATCH", "REMOTE"} and \
                "RECURSIVEMATCH" in selection:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        cur.sp()
    reference = cur.mailbox()
    cur.sp()
    if cur.peek() == 0x28:
        patterns = tuple(cur.parenthesized(cur.list_mailbox))
    else:
        patterns = (cur.list_mailbox(),)
    returns: frozenset[str] = frozenset()
    if cur.accept(b" "):
        if not cur.keyword(b"RETURN"):
            raise ParseError("Invalid LIST return options")
        cur.sp()
        returns = _options(cur, LIST_RETURN)
    cur.end()
    return List(tag, reference, patterns, selection, returns)


def _lsub(cur: Cursor, tag: str) -> Command:
    cur.sp()
    reference = cur.mailbox()
    cur.sp()
    pattern = cur.list_mailbox()
    cur.end()
    return Lsub(tag, reference, pattern)


def _status(cur: Cursor, tag: str) -> Command:
    cur.sp()
    mailbox = cur.mailbox()
    cur.sp()
    items = cur.parenthesized(lambda: cur.atom("status item").upper())
    cur.end()
    try:
        return Status(tag, mailbox, tuple(dict.fromkeys(items)))
    except ValueError:
        raise ParseError("Unknown status item") from None


def _append(cur: Cursor, tag: str) -> Command:
    cur.sp()
    mailbox = cur.mailbox()
    cur.sp()
    flags: tuple[str, ...] = ()
    if cur.peek() == 0x28:
        flags = cur.flag_list()
        cur.sp()
    internal_date = None
    if cur.peek() == 0x22:
        internal_date = cur.date_time()
        cur.sp()
    binary = cur.line.startswith(b"~{", cur.pos)
    message = cur.literal("message literal", binary=cur.binary)
    cur.end()
    return Append(tag, mailbox, message, flags, internal_date, binary)


# --- selected -------------------------------------------------------------------------------

def _expunge(cur: Cursor, tag: str) -> Command:
    cur.end()
    return Expunge(tag)


def _uid_expunge(cur: Cursor, tag: str) -> Command:
    cur.sp()
    uids = cur.sequence_set()
    cur.end()
    return Expunge(tag, uids)


def _copy(cls: type[Copy] | type[Move], uid: bool) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        numbers = cur.sequence_set()
        cur.sp()
        mailbox = cur.mailbox()
        cur.end()
        return cls(tag, numbers, mailbox, uid)
    return parse


def _store(uid: bool) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        numbers = cur.sequence_set()
        cur.sp()
        unchanged_since = None
        if cur.accept(b"("):                    # RFC 7162 store-modifier
            if not cur.keyword(b"UNCHANGEDSINCE"):
                raise ParseError("Unknown STORE modifier")
            cur.sp()
            unchanged_since = cur.mod_sequence(zero=True)
            cur.expect(b")", "STORE modifier")
            cur.sp()
        operation: Literal["replace", "add", "remove"] = (
            "add" if cur.accept(b"+") else "remove" if cur.accept(b"-") else "replace")
        word = cur.atom("STORE item").upper()
        if word not in ("FLAGS", "FLAGS.SILENT"):
            raise ParseError("Invalid STORE item")
        cur.sp()
        if cur.peek() == 0x28:
            flag_names = cur.flag_list()
        else:
            flag_names = (cur.flag(),)
            while cur.accept(b" "):
                flag_names += (cur.flag(),)
        cur.end()
        return Store(tag, numbers, operation, flag_names, word == "FLAGS.SILENT", uid,
                     unchanged_since)
    return parse


# --- FETCH ------------------------------------------------------------------------------------

_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTS = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                          "RFC822.SIZE", "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ"})


def _header_list(cur: Cursor) -> tuple[str, ...]:
    def name() -> str:
        field = _text(cur, "header field name")
        if not _FIELD_NAME.fullmatch(field):
            raise ParseError("Invalid header field name")
        return field
    return tuple(cur.parenthesized(name))


def _section(cur: Cursor, *, binary: bool) -> Section:
    cur.expect(b"[", "section")
    part: list[int] = []
    text = None
    fields: tuple[str, ...] = ()
    if cur.peek() != 0x5D:
        if 0x30 <= cur.peek() <= 0x39:
            part.append(cur.nz_number("section part"))
            while not binary and cur.accept(b"."):
                if 0x30 <= cur.peek() <= 0x39:
                    part.append(cur.nz_number("section part"))
                else:
                    text = cur.take(_SECTION_WORD, "section").decode("ascii").upper()
                    break
            while binary and cur.accept(b"."):
                part.append(cur.nz_number("section part"))
        elif not binary:
            text = cur.take(_SECTION_WORD, "section").decode("ascii").upper()
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            cur.sp()
            fields = _header_list(cur)
    cur.expect(b"]", "section")
    if text == "MIME" and not part:
        raise ParseError("Invalid section")
    try:
        return Section(tuple(part), text, fields)
    except ValueError:
        raise ParseError("Invalid section") from None


def _partial(cur: Cursor) -> tuple[int, int] | None:
    if not cur.accept(b"<"):
        return None
    origin = cur.number("partial origin")
    cur.expect(b".", "partial")
    count = cur.nz_number("partial length")
    cur.expect(b">", "partial")
    return origin, count


def _fetch_att(cur: Cursor) -> FetchAttribute:
    word = cur.take(_FETCH_WORD, "fetch attribute").decode("ascii").upper()
    if word in _SIMPLE_ATTS:
        return FetchAttribute(word)
    if word == "BODY" and cur.peek() != 0x5B:
        return FetchAttribute("BODY")
    if word in ("BODY", "BODY.PEEK"):
        section = _section(cur, binary=False)
        return FetchAttribute("BODY", section, _partial(cur), word == "BODY.PEEK")
    if word in ("BINARY", "BINARY.PEEK"):         # RFC 3516
        section = _section(cur, binary=True)
        return FetchAttribute("BINARY", section, _partial(cur), word == "BINARY.PEEK")
    if word == "BINARY.SIZE":
        return FetchAttribute("BINARY.SIZE", _section(cur, binary=True))
    raise ParseError("Unknown fetch attribute")


def _fetch_modifiers(cur: Cursor) -> tuple[int | None, bool]:
    changed_since, vanished = None, False
    cur.expect(b"(", "fetch modifiers")
    while True:
        if cur.keyword(b"CHANGEDSINCE") and changed_since is None:
            cur.sp()
            changed_since = cur.mod_sequence()
        elif cur.keyword(b"VANISHED") and not vanished:
            vanished = True
        else:
            raise ParseError("Unknown or repeated fetch modifier")
        if cur.accept(b")"):
            return changed_since, vanished
        cur.sp()


def _fetch(uid: bool) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        numbers = cur.sequence_set()
        cur.sp()
        macro = None
        if cur.peek() == 0x28:
            atts = cur.parenthesized(lambda: _fetch_att(cur))
        else:
            macro = next((m for m in _MACROS if cur.keyword(m.encode("ascii"))), None)
            atts = [FetchAttribute(n) for n in _MACROS[macro]] if macro else [_fetch_att(cur)]
        changed_since, vanished = None, False
        if cur.accept(b" "):
            changed_since, vanished = _fetch_modifiers(cur)
        cur.end()
        names = {att.name for att in atts}
        if uid and "UID" not in names:
            atts.append(FetchAttribute("UID"))
        if changed_since is not None and "MODSEQ" not in names:
            atts.append(FetchAttribute("MODSEQ"))
        if vanished and (not uid or changed_since is None):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
        return Fetch(tag, numbers, tuple(dict.fromkeys(atts)), uid, changed_since, vanished,
                     macro)
    return parse


# --- SEARCH ------------------------------------------------------------------------------------

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "RECENT": ("\\Recent", True),
    "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
    "OLD": ("\\Recent", False),
}
_HEADER_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
_DATE_KEYS = {
    "BEFORE": ("INTERNALDATE", "BEFORE"), "ON": ("INTERNALDATE", "ON"),
    "SINCE": ("INTERNALDATE", "SINCE"), "SENTBEFORE": ("SENT", "BEFORE"),
    "SENTON": ("SENT", "ON"), "SENTSINCE": ("SENT", "SINCE"),
}
_SEQUENCE_START = frozenset(b"0123456789*$")
ESEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


class _SearchParser:
    def __init__(self, cur: Cursor) -> None:
        self.cur = cur

    def value(self) -> str:
        self.cur.sp()
        return _text(self.cur, "search string")

    def key(self, depth: int = 0) -> SearchKey:
        cur = self.cur
        if depth > _MAX_SEARCH_DEPTH:
            raise ParseError("Search criteria nested too deeply")
        if cur.peek() == 0x28:
            keys = cur.parenthesized(lambda: self.key(depth + 1))
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if cur.peek() in _SEQUENCE_START:
            return SequenceKey(cur.sequence_set())
        word = cur.atom("search key").upper()
        if word in _FLAG_KEYS:
            return FlagKey(*_FLAG_KEYS[word])
        if word in _HEADER_KEYS:
            return HeaderKey(_HEADER_KEYS[word], self.value())
        if word in _DATE_KEYS:
            cur.sp()
            field_name, relation = _DATE_KEYS[word]
            return DateKey(field_name, relation, cur.date())   # type: ignore[arg-type]
        return self._other(word, depth)

    def _other(self, word: str, depth: int) -> SearchKey:
        cur = self.cur
        if word == "ALL":
            return All()
        if word == "NEW":
            return And((FlagKey("\\Recent"), FlagKey("\\Seen", False)))
        if word in ("KEYWORD", "UNKEYWORD"):
            cur.sp()
            return FlagKey(cur.atom("keyword"), word == "KEYWORD")
        if word == "HEADER":
            cur.sp()
            name = _text(cur, "header field name")
            if not _FIELD_NAME.fullmatch(name):
                raise ParseError("Invalid header field name")
            return HeaderKey(name, self.value())
        if word in ("BODY", "TEXT"):
            value = self.value()
            return BodyKey(value) if word == "BODY" else TextKey(value)
        if word in ("LARGER", "SMALLER"):
            cur.sp()
            return SizeKey(word, cur.number("size"))         # type: ignore[arg-type]
        if word == "UID":
            cur.sp()
            return SequenceKey(cur.sequence_set(), uid=True)
        if word == "NOT":
            cur.sp()
            return Not(self.key(depth + 1))
        if word == "OR":
            cur.sp()
            left = self.key(depth + 1)
            cur.sp()
            return Or(left, self.key(depth + 1))
        if word == "MODSEQ":
            return self._modseq()
        raise ParseError("Unknown search key")

    def _modseq(self) -> SearchKey:
        cur = self.cur
        cur.sp()
        entry = entry_type = None
        if cur.peek() == 0x22:                  # RFC 7162: "/flags/\\Seen" all
            entry = cur.text(cur.quoted("entry name"), "entry name")
            cur.sp()
            entry_type = cur.atom("entry type").lower()
            if entry_type not in ("priv", "shared", "all"):
                raise ParseError("Invalid entry type")
            cur.sp()
        return ModSeqKey(cur.mod_sequence(zero=True), entry, entry_type)


def _search(uid: bool) -> Callable[[Cursor, str], Command]:
    def parse(cur: Cursor, tag: str) -> Command:
        cur.sp()
        returns = None
        if cur.keyword(b"RETURN"):              # RFC 4731
            cur.sp()
            returns = tuple(cur.parenthesized(lambda: cur.atom("return option").upper(),
                                              empty=True))
            if not set(returns) <= ESEARCH_RETURN:
                raise ParseError("Unknown search return option")
            cur.sp()
        charset = None
        if cur.keyword(b"CHARSET"):
            cur.sp()
            charset = cur.text(cur.astring("charset"), "charset").upper()
            if charset not in CHARSETS:
                raise ParseError("Unsupported charset", condition="NO", code="BADCHARSET")
            cur.sp()
        parser = _SearchParser(cur)
        keys = [parser.key()]
        while cur.accept(b" "):
            keys.append(parser.key())
        cur.end()
        criteria = keys[0] if len(keys) == 1 else And(tuple(keys))
        return Search(tag, criteria, charset, uid, returns)
    return parse


# --- the table ------------------------------------------------------------------------------

_UID_PARSERS: dict[str, Callable[[Cursor, str], Command]] = {
    "COPY": _copy(Copy, True), "MOVE": _copy(Move, True), "FETCH": _fetch(True),
    "SEARCH": _search(True), "STORE": _store(True), "EXPUNGE": _uid_expunge,
}
UID_COMMANDS = frozenset(_UID_PARSERS)


def _uid(cur: Cursor, tag: str) -> Command:
    cur.sp()
    name = cur.atom("UID command").upper()
    if name not in _UID_PARSERS:
        raise ParseError("Unknown UID command")
    return _UID_PARSERS[name](cur, tag)


_PARSERS: dict[str, Callable[[Cursor, str], Command]] = {
    "CAPABILITY": _bare(Capability), "NOOP": _bare(Noop), "LOGOUT": _bare(Logout),
    "ID": _id, "STARTTLS": _bare(StartTLS), "LOGIN": _login, "AUTHENTICATE": _authenticate,
    "ENABLE": _enable, "SELECT": _select(Select), "EXAMINE": _select(Examine),
    "CREATE": _create, "DELETE": _one_mailbox(Delete), "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe), "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "NAMESPACE": _bare(Namespace), "IDLE": _bare(Idle), "CHECK": _bare(Check),
    "CLOSE": _bare(Close), "UNSELECT": _bare(Unselect), "EXPUNGE": _expunge,
    "SEARCH": _search(False), "FETCH": _fetch(False), "STORE": _store(False),
    "COPY": _copy(Copy, False), "MOVE": _copy(Move, False), "UID": _uid,
}
COMMAND_NAMES = frozenset(_PARSERS)
