"""BODYSTRUCTURE (RFC 3501 §7.4.2), built in the same pass as the part map.

Rules, from RFC 3501 and RFC 2045 unless marked:

- Types, subtypes, parameter names and values, encodings and dispositions
  are reported as written (case kept, as Dovecot does); comments are
  dropped and RFC 2231 continuations merged (``_mime``).
- No Content-Type, or one that does not parse: TEXT/PLAIN with
  ``charset=us-ascii``; inside MULTIPART/DIGEST: MESSAGE/RFC822.  A TEXT
  type without a charset gets ``charset=us-ascii`` appended (Dovecot).
- No Content-Transfer-Encoding: ``7bit``.
- ``size`` is ``len(BODY[n])`` and ``lines`` (TEXT/* and MESSAGE/RFC822
  only) the number of LF octets in it, as Dovecot counts: both describe the
  octets as stored, so a bare-LF message reports bare-LF sizes.
- ``md5`` is the Content-MD5 value (RFC 1864) when there is one.
- A multipart with no boundary parameter or no body part in it gets one
  empty TEXT/PLAIN part (RFC 3501 requires at least one; Dovecot does this).
- Nesting deeper than ``MAX_DEPTH`` or more than ``MAX_PARTS`` parts in one
  message (Dovecot's limits) stop the parse: the part is then a leaf, and a
  MULTIPART or MESSAGE/RFC822 leaf is reported as APPLICATION/OCTET-STREAM
  so the response stays grammatical.
"""

from __future__ import annotations

from dataclasses import dataclass

from ams.message._envelope import (
    CONTENT_FIELDS,
    MESSAGE_FIELDS,
    Envelope,
    envelope_from_fields,
)
from ams.message._mime import (
    Params,
    first_token,
    header_fields,
    parse_content_type,
    parse_disposition,
    parse_language,
    split_header,
    unfold,
)
from ams.message._parts import Part, PartKind, split_multipart

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "Analysis",
    "BodyStructure",
    "Disposition",
    "Multipart",
    "SinglePart",
    "analyse",
    "bodystructure",
    "part_map",
]

MAX_DEPTH = 100
MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class Disposition:
    """Content-Disposition (RFC 2183): its type and parameters."""

    type: str
    params: Params = ()


@dataclass(frozen=True, slots=True)
class SinglePart:
    """A non-multipart body part.  ``lines`` is set for TEXT/* and
    MESSAGE/RFC822; ``envelope`` and ``body`` only for MESSAGE/RFC822."""

    type: str
    subtype: str
    params: Params = ()
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    size: int = 0
    lines: int | None = None
    envelope: Envelope | None = None
    body: BodyStructure | None = None
    md5: str | None = None
    disposition: Disposition | None = None
    language: tuple[str, ...] | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Multipart:
    """A MULTIPART/* part: its body parts, then its own extension data."""

    parts: tuple[BodyStructure, ...]
    subtype: str
    params: Params = ()
    disposition: Disposition | None = None
    language: tuple[str, ...] | None = None
    location: str | None = None


BodyStructure = SinglePart | Multipart


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the IMAP bridge caches about one message."""

    envelope: Envelope
    structure: BodyStructure
    parts: Part


_US_ASCII = (("charset", "us-ascii"),)
_EMPTY_TEXT = SinglePart("text", "plain", _US_ASCII, size=0, lines=0)


class _Walk:
    """One parse: the message and the budget of parts left."""

    __slots__ = ("budget", "envelopes", "raw")

    def __init__(self, raw: bytes, envelopes: bool) -> None:
        self.raw = raw
        self.budget = MAX_PARTS
        self.envelopes = envelopes

    def entity(self, start: int, end: int, depth: int, is_message: bool,
               in_digest: bool) -> tuple[Part, BodyStructure, Envelope | None]:
        raw = self.raw
        self.budget -= 1
        blank, body = split_header(raw, start, end)
        fields = header_fields(raw, start, blank, MESSAGE_FIELDS if is_message
                               else CONTENT_FIELDS)
        env = None
        if is_message:
            env = envelope_from_fields(fields) if self.envelopes else Envelope()

        def one(name: bytes) -> str | None:
            values = fields.get(name)
            return (unfold(values[0]) or None) if values else None

        ctype = one(b"content-type")
        parsed = parse_content_type(ctype) if ctype else None
        if parsed is None:
            parsed = ("message", "rfc822", ()) if in_digest else ("text", "plain", _US_ASCII)
        mtype, subtype, params = parsed
        low_type, low_sub = mtype.lower(), subtype.lower()
        dsp = one(b"content-disposition")
        dsp_parsed = parse_disposition(dsp) if dsp else None
        disposition = Disposition(*dsp_parsed) if dsp_parsed else None
        lang = one(b"content-language")
        language = parse_language(lang) if lang else None
        location = one(b"content-location")
        nested = depth < MAX_DEPTH and self.budget > 0

        if low_type == "multipart" and nested:
            boundary = next((v for k, v in params if k.lower() == "boundary"), "")
            spans = split_multipart(raw, body, end, boundary.encode("utf-8", "surrogateescape"),
                                    self.budget) if boundary else []
            kids = [self.entity(s, e, depth + 1, False, low_sub == "digest") for s, e in spans]
            if not kids:
                kids = [(Part(end, end, end), _EMPTY_TEXT, None)]
            part = Part(start, body, end, PartKind.MULTIPART, tuple(k[0] for k in kids))
            return part, Multipart(tuple(k[1] for k in kids), subtype, params,
                                   disposition, language, location), env

        encoding = first_token(one(b"content-transfer-encoding") or "") or "7bit"
        kind = PartKind.LEAF
        children: tuple[Part, ...] = ()
        lines: int | None = None
        inner_env: Envelope | None = None
        inner_bs: BodyStructure | None = None
        if low_type == "message" and low_sub == "rfc822" and nested:
            inner, inner_bs, inner_env = self.entity(body, end, depth + 1, True, False)
            kind, children, lines = PartKind.MESSAGE, (inner,), raw.count(b"\n", body, end)
        elif low_type == "multipart" or (low_type, low_sub) == ("message", "rfc822"):
            mtype, subtype, params = "application", "octet-stream", ()
        elif low_type == "text":
            if not any(k.lower() == "charset" for k, _ in params):
                params += _US_ASCII
            lines = raw.count(b"\n", body, end)
        structure = SinglePart(mtype, subtype, params, one(b"content-id"),
                               one(b"content-description"), encoding, end - body, lines,
                               inner_env, inner_bs, one(b"content-md5"), disposition, language,
                               location)
        return Part(start, body, end, kind, children), structure, env


def analyse(msg: bytes) -> Analysis:
    """ENVELOPE, BODYSTRUCTURE and the part map of a raw message, in one
    pass.  Never raises."""
    part, structure, env = _Walk(msg, True).entity(0, len(msg), 0, True, False)
    assert env is not None
    return Analysis(env, structure, part)


def bodystructure(msg: bytes) -> BodyStructure:
    """The BODYSTRUCTURE of a raw message, extension data included: render
    it with ``bodystructure_to_imap(bs, extensible=False)`` for BODY."""
    return analyse(msg).structure


def walk(msg: bytes) -> tuple[Part, BodyStructure]:
    """The part map and structure without the envelopes (for SEARCH)."""
    part, structure, _ = _Walk(msg, False).entity(0, len(msg), 0, True, False)
    return part, structure


def part_map(msg: bytes) -> Part:
    """The part map of a raw message (offsets only).  Skips the envelopes,
    which it does not need."""
    return _Walk(msg, False).entity(0, len(msg), 0, True, False)[0]
