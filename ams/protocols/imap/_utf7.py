"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

Theory of operation
-------------------
Printable US-ASCII (0x20-0x7E) stands for itself, except "&", which is
written "&-".  Any other run of characters is UTF-16BE, base64-encoded with
"," in place of "/" and no "=" padding, between "&" and "-".

A name has exactly one correct encoding, and the decoder insists on it: it
decodes, encodes the result again, and refuses the name unless the two are
identical.  That single rule refuses everything RFC 3501 forbids or leaves
ambiguous: base64 for characters that must stand for themselves ("&AGE-" is
"a"), a shift with nothing in it ("&-" is the ampersand, but "&" alone or
"&-" inside base64 is not), non-zero padding bits, two shifts in a row that
should have been one, and base64 that ends mid-character.  Unpaired UTF-16
surrogates, bytes outside printable ASCII and an unterminated shift are
refused before that comparison.  Two spellings of one name would otherwise
name two different mailboxes in the store and one in the client.

``decode`` raises :class:`MailboxNameError` (a ``ValueError``); ``encode``
raises ``ValueError`` only for strings that are not Unicode text (lone
surrogates).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MailboxNameError", "decode", "encode"]

_B64_RUN = re.compile(r"[A-Za-z0-9+,]+")
_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")


class MailboxNameError(ValueError):
    """A mailbox name is not valid modified UTF-7."""


def _encode_run(run: str) -> str:
    try:
        data = run.encode("utf-16-be")
    except UnicodeEncodeError:
        raise ValueError("a mailbox name cannot hold unpaired surrogates") from None
    return "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """``"Entwürfe"`` → ``"Entw&APw-rfe"``."""
    out: list[str] = []
    pos = 0
    while pos < len(name):
        direct = _DIRECT.match(name, pos)
        if direct is not None:
            out.append(direct.group())
            pos = direct.end()
        elif name[pos] == "&":
            out.append("&-")
            pos += 1
        else:
            end = pos
            while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
                end += 1
            out.append(_encode_run(name[pos:end]))
            pos = end
    return "".join(out)


def _decode_run(run: str) -> str:
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise MailboxNameError("invalid base64 in a mailbox name") from None
    if not data or len(data) % 2:
        raise MailboxNameError("base64 in a mailbox name must hold whole UTF-16 units")
    try:
        return data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MailboxNameError("unpaired surrogate in a mailbox name") from None


def _decode_loose(text: str) -> str:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        amp = text.find("&", pos)
        if amp < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:amp])
        end = text.find("-", amp + 1)
        if end < 0:
            raise MailboxNameError("unterminated '&' shift in a mailbox name")
        run = text[amp + 1:end]
        if not run:
            out.append("&")
        elif not _B64_RUN.fullmatch(run):
            raise MailboxNameError("invalid character in a base64 shift")
        else:
            out.append(_decode_run(run))
        pos = end + 1
    return "".join(out)


def decode(raw: str | bytes) -> str:
    """``"Entw&APw-rfe"`` → ``"Entwürfe"``; anything but the one correct
    encoding of a name raises :class:`MailboxNameError`."""
    if isinstance(raw, bytes):
        if not raw.isascii():
            raise MailboxNameError("8-bit byte in a modified UTF-7 mailbox name")
        raw = raw.decode("ascii")
    if raw and not _DIRECT.fullmatch(raw.replace("&", "%")):
        raise MailboxNameError("a modified UTF-7 name holds printable US-ASCII only")
    name = _decode_loose(raw)
    if encode(name) != raw:
        raise MailboxNameError("not the canonical modified UTF-7 form of the name")
    return name
