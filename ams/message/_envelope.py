"""ENVELOPE (RFC 3501 §7.4.2) from a message header.

Rules, from the RFC unless marked:

- date, subject, in-reply-to and message-id are the header values as sent:
  unfolded and trimmed, encoded words left encoded; NIL (None) when the
  field is absent, the empty string when it is present but empty.  A field
  given more than once counts by its first occurrence (Dovecot takes the
  last; RFC 5322 allows one).
- from, sender, reply-to, to, cc and bcc are address lists (``_address``);
  a field given more than once contributes all its addresses, in order, as
  Dovecot does (old mailers split long Cc lists over several fields).  An
  empty tuple is NIL.
- sender and reply-to, when absent or holding no address, are set to from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ams.message._address import Address, parse_addresses
from ams.message._mime import header_fields, split_header, unfold

__all__ = ["Addresses", "Envelope", "envelope"]

Addresses = tuple[Address, ...]

_STRINGS = (b"date", b"subject", b"in-reply-to", b"message-id")
_ADDRESSES = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")
#: Every field the envelope or a body part's structure reads from a header.
CONTENT_FIELDS = frozenset({
    b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"content-disposition", b"content-language", b"content-location", b"content-md5"})
MESSAGE_FIELDS = frozenset(_STRINGS + _ADDRESSES) | CONTENT_FIELDS


@dataclass(frozen=True, slots=True)
class Envelope:
    """The ten ENVELOPE members, in the RFC's order."""

    date: str | None = None
    subject: str | None = None
    from_: Addresses = ()
    sender: Addresses = ()
    reply_to: Addresses = ()
    to: Addresses = ()
    cc: Addresses = ()
    bcc: Addresses = ()
    in_reply_to: str | None = None
    message_id: str | None = None


def envelope_from_fields(fields: dict[bytes, list[bytes]]) -> Envelope:
    """The envelope of a header already split by ``header_fields``."""

    def string(name: bytes) -> str | None:
        values = fields.get(name)
        return unfold(values[0]) if values else None

    def addresses(name: bytes) -> Addresses:
        out: list[Address] = []
        for value in fields.get(name, ()):
            out.extend(parse_addresses(unfold(value)))
        return tuple(out)

    from_ = addresses(b"from")
    return Envelope(
        date=string(b"date"),
        subject=string(b"subject"),
        from_=from_,
        sender=addresses(b"sender") or from_,
        reply_to=addresses(b"reply-to") or from_,
        to=addresses(b"to"),
        cc=addresses(b"cc"),
        bcc=addresses(b"bcc"),
        in_reply_to=string(b"in-reply-to"),
        message_id=string(b"message-id"),
    )


def envelope(msg: bytes) -> Envelope:
    """The ENVELOPE of a raw message.  Reads only the header; never raises."""
    blank, _ = split_header(msg, 0, len(msg))
    return envelope_from_fields(header_fields(msg, 0, blank, MESSAGE_FIELDS))
