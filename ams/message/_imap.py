"""ENVELOPE and BODYSTRUCTURE as nested values the IMAP encoder renders.

The encoder's contract:

- ``None`` is NIL; an ``int`` is a number; a ``list`` is a parenthesised
  list whose items are separated by one space;
- a ``str`` is a string the encoder may send quoted: it holds only
  printable ASCII and TAB;
- ``bytes`` is a string with other octets (8-bit header text, control
  characters): send it as a literal (or, under UTF8=ACCEPT, as the encoder
  sees fit).  They are the octets as stored;
- an :class:`Adjacent` holds items to render one after the other with *no*
  separator and no parentheses of its own, where RFC 3501 writes ``1*body``
  or ``1*address``: the body parts of a multipart (``((...)(...) "mixed")``)
  and the addresses of an address list (``((...)(...))``).

Nothing in ENVELOPE or BODYSTRUCTURE is an atom: every text member is a
string (RFC 3501 §7.4.2), so there is no atom marker.
"""

from __future__ import annotations

import re

from ams.message._address import Address
from ams.message._envelope import Envelope
from ams.message._mime import Params
from ams.message._structure import BodyStructure, Disposition, Multipart

__all__ = ["Adjacent", "ImapValue", "bodystructure_to_imap", "envelope_to_imap"]


class Adjacent(tuple):  # type: ignore[type-arg]
    """Items rendered back to back, with no space and no parentheses."""

    __slots__ = ()


ImapValue = None | int | str | bytes | list["ImapValue"] | Adjacent

_QUOTABLE = re.compile(r"[\t\x20-\x7e]*")


def _string(value: str | None) -> str | bytes | None:
    if value is None or _QUOTABLE.fullmatch(value):
        return value
    return value.encode("utf-8", "surrogateescape")


def _address(a: Address) -> ImapValue:
    return [_string(a.name), _string(a.adl), _string(a.mailbox), _string(a.host)]


def _addresses(addresses: tuple[Address, ...]) -> ImapValue:
    # env-from = "(" 1*address ")": no separator between addresses.
    return [Adjacent(_address(a) for a in addresses)] if addresses else None


def envelope_to_imap(env: Envelope) -> list[ImapValue]:
    """``(date subject from sender reply-to to cc bcc in-reply-to
    message-id)``."""
    return [
        _string(env.date), _string(env.subject),
        _addresses(env.from_), _addresses(env.sender), _addresses(env.reply_to),
        _addresses(env.to), _addresses(env.cc), _addresses(env.bcc),
        _string(env.in_reply_to), _string(env.message_id),
    ]


def _params(params: Params) -> ImapValue:
    if not params:
        return None
    return [_string(x) for pair in params for x in pair]


def _disposition(d: Disposition | None) -> ImapValue:
    return None if d is None else [_string(d.type), _params(d.params)]


def _language(lang: tuple[str, ...] | None) -> ImapValue:
    return None if lang is None else [_string(tag) for tag in lang]


def bodystructure_to_imap(bs: BodyStructure, extensible: bool = True) -> list[ImapValue]:
    """BODYSTRUCTURE (``extensible=True``) or BODY (``False``, no extension
    data) of a part, as the encoder's nested values."""
    if isinstance(bs, Multipart):
        out: list[ImapValue] = [
            Adjacent(bodystructure_to_imap(p, extensible) for p in bs.parts),
            _string(bs.subtype)]
        if extensible:
            out += [_params(bs.params), _disposition(bs.disposition),
                    _language(bs.language), _string(bs.location)]
        return out
    out = [_string(bs.type), _string(bs.subtype), _params(bs.params), _string(bs.id),
           _string(bs.description), _string(bs.encoding), bs.size]
    if bs.envelope is not None and bs.body is not None:
        out += [envelope_to_imap(bs.envelope), bodystructure_to_imap(bs.body, extensible),
                bs.lines]
    elif bs.lines is not None:
        out.append(bs.lines)
    if extensible:
        out += [_string(bs.md5), _disposition(bs.disposition), _language(bs.language),
                _string(bs.location)]
    return out
