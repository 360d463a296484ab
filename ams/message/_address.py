"""RFC 5322 address lists, parsed into RFC 3501 address structures.

Theory of operation
-------------------
IMAP's ENVELOPE wants each address as (name, adl, mailbox, host) with the
group syntax kept as start and end markers, the obsolete source route kept
in ``adl``, and encoded words left as they were sent.  The ``email`` package
decodes encoded words, drops routes and flattens groups
(``email.utils.getaddresses``), so the list is tokenised here, leniently:
real headers are often not RFC 5322, and no input may raise.

The choices follow Dovecot, which most IMAP clients are tested against:

- the display name is the phrase with quoted-strings unquoted and runs of
  blanks between words collapsed to one space; with no phrase, the last
  comment (the old ``user@host (Full Name)`` style) is the name;
- a quoted local part is unquoted (``"a b"@c`` gives mailbox ``a b``);
- a missing local part or domain becomes ``MISSING_MAILBOX`` or
  ``MISSING_DOMAIN``, so that a broken address is never mistaken for a group
  marker (whose host is NIL);
- empty list elements (``a@b, , c@d``) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ams.message._mime import quoted_string, skip_comment

__all__ = ["MISSING_DOMAIN", "MISSING_MAILBOX", "Address", "parse_addresses"]

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


@dataclass(frozen=True, slots=True)
class Address:
    """One RFC 3501 address structure.

    ``host is None`` marks group syntax: with a ``mailbox`` it starts the
    group named ``mailbox``; with neither it ends the group.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    @property
    def is_group_start(self) -> bool:
        return self.host is None and self.mailbox is not None

    @property
    def is_group_end(self) -> bool:
        return self.host is None and self.mailbox is None


GROUP_END = Address(None, None, None, None)

# Token kinds.
_WORD, _QUOTED, _LITERAL, _COMMENT, _SPECIAL = range(5)

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<special>[<>:;@,.])
  | (?P<atom>[^ \t\r\n"()<>\[\]:;@,.\\]+)
  | (?P<literal>\[(?:[^\]\\]|\\.)*\]?)
  | (?P<other>.)
""", re.X | re.S)

# A token: (kind, text, blank before it).
_Tok = tuple[int, str, bool]


def _tokenize(s: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, n, blank = 0, len(s), False
    match = _TOKEN.match
    while pos < n:
        c = s[pos]
        if c == '"':
            text, pos = quoted_string(s, pos)
            toks.append((_QUOTED, text, blank))
            blank = False
            continue
        if c == "(":
            end = skip_comment(s, pos)
            body = s[pos + 1:end - 1 if s.endswith(")", 0, end) else end]
            toks.append((_COMMENT, body.replace("\\", ""), blank))
            blank = True
            pos = end
            continue
        m = match(s, pos)
        assert m is not None  # (?P<other>.) matches any character
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            blank = True
            continue
        if kind == "special":
            toks.append((_SPECIAL, m.group(), blank))
        elif kind == "atom":
            toks.append((_WORD, m.group(), blank))
        elif kind == "literal":
            toks.append((_LITERAL, m.group(), blank))
        blank = False  # a stray backslash is dropped
    return toks


def _phrase(toks: list[_Tok]) -> str:
    """Words (and dots) rejoined with one space wherever there was a gap."""
    out: list[str] = []
    for kind, text, blank in toks:
        if kind == _COMMENT:
            continue
        if out and blank:
            out.append(" ")
        out.append(text)
    return "".join(out)


def _spec_text(toks: list[_Tok]) -> str:
    """A local part or a domain: the tokens run together."""
    return "".join(text for kind, text, _ in toks if kind != _COMMENT)


def _last_comment(toks: list[_Tok]) -> str | None:
    for kind, text, _ in reversed(toks):
        if kind == _COMMENT:
            return text.strip() or None
    return None


def _is(tok: _Tok, char: str) -> bool:
    return tok[0] == _SPECIAL and tok[1] == char


def _addr_spec(toks: list[_Tok]) -> tuple[str, str]:
    at = max((i for i, t in enumerate(toks) if _is(t, "@")), default=-1)
    if at < 0:
        local, domain = _spec_text(toks), ""
    else:
        local, domain = _spec_text(toks[:at]), _spec_text(toks[at + 1:])
    return local or MISSING_MAILBOX, domain or MISSING_DOMAIN


def _mailbox(toks: list[_Tok]) -> Address | None:
    """One mailbox from its tokens (a name-addr or an addr-spec)."""
    if all(kind == _COMMENT for kind, _, _ in toks):
        return None
    lt = next((i for i, t in enumerate(toks) if _is(t, "<")), -1)
    if lt < 0:
        spec = [t for t in toks if t[0] != _COMMENT]
        local, domain = _addr_spec(spec)
        return Address(_last_comment(toks), None, local, domain)
    gt = next((i for i in range(lt + 1, len(toks)) if _is(toks[i], ">")), len(toks))
    inner = [t for t in toks[lt + 1:gt] if t[0] != _COMMENT]
    adl = None
    if inner and _is(inner[0], "@"):
        colon = next((i for i, t in enumerate(inner) if _is(t, ":")), -1)
        if colon >= 0:
            adl = _spec_text(inner[:colon]) or None
            inner = inner[colon + 1:]
    local, domain = _addr_spec(inner)
    name = _phrase(toks[:lt]) or _last_comment(toks)
    return Address(name or None, adl, local, domain)


def _split(toks: list[_Tok], start: int, stops: str) -> int:
    """The index of the first special in ``stops`` at or after ``start``,
    outside angle brackets (a route's commas are inside them)."""
    angle = False
    for i in range(start, len(toks)):
        kind, text, _ = toks[i]
        if kind != _SPECIAL:
            continue
        if text == "<":
            angle = True
        elif text == ">":
            angle = False
        elif not angle and text in stops:
            return i
    return len(toks)


# The shapes most real address fields have, taken without tokenising:
# ``local@domain``, ``<local@domain>``, ``Some Name <local@domain>`` and
# ``"Some, Name" <local@domain>``, each alone or in a list split by commas.
# Within them the tokeniser would give exactly this: a phrase of atoms and
# dots is its words with each run of blanks made one space, a quoted string
# without backslashes is its inside, and an addr-spec without blanks is
# itself.  Anything else (comments, groups, routes, domain literals,
# escapes, blanks inside an addr-spec) goes the long way.
_SPEC = r'([^\s"()<>\[\]:;@,\\]+)@([^\s"()<>\[\]:;@,\\]+)'
_SIMPLE = re.compile(r'[ \t]*(?:([^\s"()<>\[\]:;@,\\][^"()<>\[\]:;@,\\]*?)[ \t]*'
                     r'|"([^"\\]*)"[ \t]*)?<' + _SPEC + r'>[ \t]*|[ \t]*' + _SPEC + r'[ \t]*')


def _simple(value: str) -> list[Address] | None:
    """``parse_addresses`` for the simple shapes above; None for any other."""
    out: list[Address] = []
    for element in value.split(",") if '"' not in value else (value,):
        m = _SIMPLE.fullmatch(element)
        if m is None:
            return None
        phrase, quoted, local, domain, bare_local, bare_domain = m.groups()
        if bare_local is not None:
            out.append(Address(None, None, bare_local, bare_domain))
        else:
            name = " ".join(phrase.split()) if phrase is not None else quoted
            out.append(Address(name or None, None, local, domain))
    return out


def parse_addresses(value: str) -> list[Address]:
    """Parse an address-list header value (unfolded).  Never raises."""
    fast = _simple(value)
    if fast is not None:
        return fast
    toks = _tokenize(value)
    out: list[Address] = []
    i, n = 0, len(toks)
    while i < n:
        j = _split(toks, i, ",:;")
        if j < n and _is(toks[j], ":"):
            # A group: phrase ":" [mailbox-list] ";"
            out.append(Address(None, None, _phrase(toks[i:j]) or "", None))
            i = j + 1
            while i < n:
                j = _split(toks, i, ",;")
                member = _mailbox(toks[i:j])
                if member is not None:
                    out.append(member)
                i = j + 1
                if j >= n or _is(toks[j], ";"):
                    break
            out.append(GROUP_END)
            continue
        member = _mailbox(toks[i:j])
        if member is not None:
            out.append(member)
        i = j + 1  # past a ',' or a stray ';'
    return out
