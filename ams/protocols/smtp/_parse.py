"""Syntax of command lines: verbs, paths (RFC 5321 §4.1.2), ESMTP
parameters and BDAT arguments.

Every function is pure.  A syntax problem raises :class:`CommandError`
carrying the reply to send; the connection turns it into that reply.
Addresses come back as plain ``str``: the mailbox as the client wrote it
(quotes kept), any source route dropped (RFC 5321 §4.1.1.3 says ignore it).
"""

from __future__ import annotations

import ipaddress
import re

from ams.protocols.smtp import _replies as R
from ams.protocols.smtp._replies import Reply

__all__ = [
    "CommandError",
    "check_mail_params",
    "parse_bdat",
    "parse_mail",
    "parse_rcpt",
    "split_command",
]


class CommandError(Exception):
    """A command the core answers with ``reply`` (never leaves the package)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


# --- command lines -----------------------------------------------------------

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_VERB = re.compile(r"[A-Za-z]{1,20}")


def split_command(line: bytes) -> tuple[str, str]:
    """``b"MAIL FROM:<a@b>"`` → ``("MAIL", "FROM:<a@b>")``.

    Control characters (NUL, bare CR or LF inside the line, TAB ...) and
    invalid UTF-8 are refused; UTF-8 is allowed because SMTPUTF8 addresses
    travel in MAIL and RCPT.
    """
    if _CONTROL.search(line):
        raise CommandError(R.INVALID_CHARACTERS)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(R.INVALID_CHARACTERS) from None
    text = text.rstrip(" ")
    verb, _, args = text.partition(" ")
    if not _VERB.fullmatch(verb):
        raise CommandError(R.COMMAND_UNRECOGNIZED)
    return verb.upper(), args


# --- paths -------------------------------------------------------------------
# RFC 5321 §4.1.2, widened by RFC 6531 §3.3 (UTF8-non-ascii in atext, qtext
# and sub-domains).  Non-ASCII is allowed by the grammar here; whether the
# transaction may use it is the connection's check (SMTPUTF8 parameter).

_U = r"[^\x00-\x7f]"
_ATEXT = rf"(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]|{_U})"
_ATOM = rf"{_ATEXT}+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|{_U})*"'
_LET_DIG = rf"(?:[A-Za-z0-9]|{_U})"
_SUB_DOMAIN = rf"{_LET_DIG}(?:(?:[A-Za-z0-9-]|{_U})*{_LET_DIG})?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*"
_PATH = re.compile(rf"<(?:{_ADL}:)?({_MAILBOX})>")
_POSTMASTER = re.compile(r"<([Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr])>")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")

MAX_PATH = 256       # RFC 5321 §4.5.3.1.3, octets including the brackets
MAX_DOMAIN = 255     # §4.5.3.1.2
MAX_LABEL = 63       # RFC 1035


def _literal_ok(literal: str) -> bool:
    inner = literal[1:-1]
    tag, colon, content = inner.partition(":")
    if not colon:
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    if tag.upper() == "IPV6":
        try:
            ipaddress.IPv6Address(content)
        except ValueError:
            return False
        return True
    return bool(_GENERAL_TAG.fullmatch(tag)) and bool(content)


def _domain_ok(domain: str) -> bool:
    if domain.startswith("["):
        return _literal_ok(domain)
    encoded = domain.encode("utf-8")
    return len(encoded) <= MAX_DOMAIN and all(
        len(label) <= MAX_LABEL for label in encoded.split(b"."))


def _parse_path(text: str, syntax: Reply, *, null_ok: bool,
                postmaster_ok: bool) -> tuple[str, str]:
    """``text`` starts with a path; return (mailbox, rest after the path)."""
    if null_ok and text.startswith("<>"):
        return "", text[2:]
    match = _PATH.match(text)
    if match is None and postmaster_ok:
        match = _POSTMASTER.match(text)
        if match is not None:
            return match.group(1), text[match.end():]
    if match is None:
        raise CommandError(syntax)
    if len(match.group(0).encode("utf-8")) > MAX_PATH:
        raise CommandError(R.PATH_TOO_LONG)
    mailbox = match.group(1)
    if not _domain_ok(mailbox[mailbox.rindex("@") + 1:]):
        raise CommandError(syntax)
    return mailbox, text[match.end():]


# --- ESMTP parameters (RFC 5321 §4.1.2 Mail-parameters) ------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(rf"(?:[\x21-\x3c\x3e-\x7e]|{_U})+")


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            raise CommandError(R.SYNTAX_ERROR)
        key = key.upper()
        if key in params:
            raise CommandError(R.SYNTAX_ERROR)
        params[key] = value if eq else None
    return params


def _split_path_args(args: str, prefix: str, syntax: Reply, *, null_ok: bool,
                     postmaster_ok: bool) -> tuple[str, dict[str, str | None]]:
    if args[:len(prefix)].upper() != prefix:
        raise CommandError(R.SYNTAX_ERROR)
    # RFC 5321 has no space after the colon; many clients send one.
    rest = args[len(prefix):].lstrip(" ")
    address, rest = _parse_path(rest, syntax, null_ok=null_ok, postmaster_ok=postmaster_ok)
    if rest and not rest.startswith(" "):
        raise CommandError(syntax)
    return address, _parse_params(rest)


def parse_mail(args: str) -> tuple[str, dict[str, str | None]]:
    """``FROM:<reverse-path> [params]`` → (address or "", params)."""
    return _split_path_args(args, "FROM:", R.BAD_SENDER_SYNTAX, null_ok=True,
                            postmaster_ok=False)


def parse_rcpt(args: str) -> tuple[str, dict[str, str | None]]:
    """``TO:<forward-path> [params]``; ``<Postmaster>`` alone is allowed."""
    return _split_path_args(args, "TO:", R.BAD_RECIPIENT_SYNTAX, null_ok=False,
                            postmaster_ok=True)


_BODY_VALUES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})


def check_mail_params(params: dict[str, str | None], *, esmtp: bool, max_size: int | None,
                      chunking: bool, smtputf8: bool, auth: bool) -> None:
    """MAIL parameters we advertised, with values that make sense.

    Unknown names (or any parameter after HELO, which negotiated no
    extension) → 555 5.5.4; a bad value → 501 5.5.4; a declared SIZE over the
    limit → 552 5.3.4 (RFC 1870 §6.1).
    """
    known = {"SIZE", "BODY"}
    if smtputf8:
        known.add("SMTPUTF8")
    if auth:
        known.add("AUTH")                     # RFC 4954 §5
    if params and (not esmtp or not params.keys() <= known):
        raise CommandError(R.PARAMETERS_UNRECOGNIZED)
    size = params.get("SIZE", "0")
    if size is None or not size.isascii() or not size.isdigit() or len(size) > 20:
        raise CommandError(R.SYNTAX_ERROR)
    if max_size is not None and int(size) > max_size:
        raise CommandError(R.MESSAGE_TOO_BIG)
    body = params.get("BODY", "7BIT")
    if body is None or body.upper() not in _BODY_VALUES \
            or (body.upper() == "BINARYMIME" and not chunking):
        raise CommandError(R.SYNTAX_ERROR)
    if params.get("SMTPUTF8") is not None or params.get("AUTH", "<>") is None:
        raise CommandError(R.SYNTAX_ERROR)


# --- BDAT (RFC 3030 §2: bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ]) ---

_BDAT = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)


def parse_bdat(args: str) -> tuple[int, bool] | None:
    """(chunk size, last) or None when the arguments cannot be read."""
    match = _BDAT.fullmatch(args)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None
