"""Compact bytes for the IMAP bridge's cache: envelopes, structures, part maps.

Each value is a two-octet prefix, then JSON (UTF-8, no blanks)::

    off size field
      0   1  kind     b"E" envelope, b"S" body structure, b"P" part map
      1   1  version  b"1" (the only version so far)
      2   *  body     JSON arrays, positional, as below

Envelope::

    [date, subject, from, sender, reply_to, to, cc, bcc, in_reply_to, message_id]
    address list = [[name, adl, mailbox, host], ...]
    sender and reply_to are null when they equal from (the usual case)

Body structure (``null`` for None; params flattened ``[k, v, k, v]``;
disposition ``[type, params]``; trailing nulls of each array left out)::

    single    = [0, type, subtype, params, id, description, encoding, size,
                 lines, envelope|null, structure|null, md5, disposition,
                 language, location]
    multipart = [1, [structure, ...], subtype, params, disposition,
                 language, location]

Part map: every part in pre-order, five integers each, flattened::

    [header, body, end, kind, number of children, ...]

Strings may hold lone surrogates (8-bit header octets that are not UTF-8,
see ``_mime``); they are written with ``surrogatepass`` so the round trip is
exact.  The cache is disposable: a value that is not exactly this raises
:class:`CacheFormatError`, and the bridge re-analyses the message.
"""

from __future__ import annotations

import json
from typing import Any

from ams.message._address import Address
from ams.message._envelope import Envelope
from ams.message._mime import Params
from ams.message._parts import Part, PartKind
from ams.message._structure import BodyStructure, Disposition, Multipart, SinglePart

__all__ = [
    "CacheFormatError",
    "decode_envelope",
    "decode_parts",
    "decode_structure",
    "encode_envelope",
    "encode_parts",
    "encode_structure",
]

VERSION = b"1"


class CacheFormatError(ValueError):
    """Cached bytes that are not a value this version wrote."""


def _dump(kind: bytes, obj: object) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return kind + VERSION + text.encode("utf-8", "surrogatepass")


def _load(kind: bytes, data: bytes) -> Any:
    if data[:1] != kind:
        raise CacheFormatError(f"not a {kind!r} value")
    if data[1:2] != VERSION:
        raise CacheFormatError(f"unknown version {data[1:2]!r}")
    try:
        return json.loads(data[2:].decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as e:
        raise CacheFormatError("corrupt value") from e


def _decoding(kind: bytes, data: bytes, build: Any) -> Any:
    obj = _load(kind, data)
    try:
        return build(obj)
    except (TypeError, ValueError, IndexError, KeyError, RecursionError) as e:
        raise CacheFormatError("corrupt value") from e


# --- checks for the decoders -------------------------------------------------------------

def _s(x: object) -> str | None:
    if x is None or isinstance(x, str):
        return x
    raise TypeError("string expected")


def _str(x: object) -> str:
    if isinstance(x, str):
        return x
    raise TypeError("string expected")


def _int(x: object) -> int:
    if type(x) is int and x >= 0:
        return x
    raise TypeError("integer expected")


def _list(x: object, size: int | None = None) -> list[Any]:
    if not isinstance(x, list) or (size is not None and len(x) != size):
        raise TypeError("list expected")
    return x


# --- envelope ----------------------------------------------------------------------------

def _env_obj(env: Envelope) -> list[Any]:
    def addrs(addresses: tuple[Address, ...]) -> list[list[str | None]]:
        return [[a.name, a.adl, a.mailbox, a.host] for a in addresses]

    def same(addresses: tuple[Address, ...]) -> list[list[str | None]] | None:
        return None if addresses == env.from_ else addrs(addresses)

    return [env.date, env.subject, addrs(env.from_), same(env.sender), same(env.reply_to),
            addrs(env.to), addrs(env.cc), addrs(env.bcc), env.in_reply_to, env.message_id]


def _env_build(obj: object) -> Envelope:
    o = _list(obj, 10)

    def addrs(x: object) -> tuple[Address, ...]:
        return tuple(Address(*(_s(f) for f in _list(a, 4))) for a in _list(x))

    from_ = addrs(o[2])
    return Envelope(_s(o[0]), _s(o[1]), from_, from_ if o[3] is None else addrs(o[3]),
                    from_ if o[4] is None else addrs(o[4]), addrs(o[5]), addrs(o[6]),
                    addrs(o[7]), _s(o[8]), _s(o[9]))


def encode_envelope(env: Envelope) -> bytes:
    return _dump(b"E", _env_obj(env))


def decode_envelope(data: bytes) -> Envelope:
    result: Envelope = _decoding(b"E", data, _env_build)
    return result


# --- body structure ----------------------------------------------------------------------

def _params_obj(params: Params) -> list[str]:
    return [x for pair in params for x in pair]


def _params_build(x: object) -> Params:
    flat = [_str(v) for v in _list(x)]
    if len(flat) % 2:
        raise ValueError("odd parameter list")
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def _dsp_obj(d: Disposition | None) -> list[Any] | None:
    return None if d is None else [d.type, _params_obj(d.params)]


def _dsp_build(x: object) -> Disposition | None:
    if x is None:
        return None
    o = _list(x, 2)
    return Disposition(_str(o[0]), _params_build(o[1]))


def _lang_build(x: object) -> tuple[str, ...] | None:
    return None if x is None else tuple(_str(t) for t in _list(x))


def _trim(obj: list[Any]) -> list[Any]:
    while obj[-1] is None:
        obj.pop()
    return obj


def _pad(obj: list[Any], size: int) -> list[Any]:
    if len(obj) > size:
        raise ValueError("too many members")
    return obj + [None] * (size - len(obj))


def _bs_obj(bs: BodyStructure) -> list[Any]:
    if isinstance(bs, Multipart):
        return _trim([1, [_bs_obj(p) for p in bs.parts], bs.subtype, _params_obj(bs.params),
                      _dsp_obj(bs.disposition), bs.language, bs.location])
    return _trim([0, bs.type, bs.subtype, _params_obj(bs.params), bs.id, bs.description,
            bs.encoding, bs.size, bs.lines,
            None if bs.envelope is None else _env_obj(bs.envelope),
            None if bs.body is None else _bs_obj(bs.body),
            bs.md5, _dsp_obj(bs.disposition), bs.language, bs.location])


def _bs_build(obj: object) -> BodyStructure:
    o = _list(obj)
    if o[0] == 1:
        o = _pad(o, 7)
        parts = tuple(_bs_build(p) for p in _list(o[1]))
        if not parts:
            raise ValueError("multipart without parts")
        return Multipart(parts, _str(o[2]), _params_build(o[3]), _dsp_build(o[4]),
                         _lang_build(o[5]), _s(o[6]))
    if o[0] != 0:
        raise ValueError("not a body structure")
    o = _pad(o, 15)
    return SinglePart(
        _str(o[1]), _str(o[2]), _params_build(o[3]), _s(o[4]), _s(o[5]), _str(o[6]),
        _int(o[7]), None if o[8] is None else _int(o[8]),
        None if o[9] is None else _env_build(o[9]),
        None if o[10] is None else _bs_build(o[10]),
        _s(o[11]), _dsp_build(o[12]), _lang_build(o[13]), _s(o[14]))


def encode_structure(bs: BodyStructure) -> bytes:
    return _dump(b"S", _bs_obj(bs))


def decode_structure(data: bytes) -> BodyStructure:
    result: BodyStructure = _decoding(b"S", data, _bs_build)
    return result


# --- part map ----------------------------------------------------------------------------

def _parts_obj(part: Part, out: list[int]) -> list[int]:
    out += (part.header, part.body, part.end, int(part.kind), len(part.children))
    for child in part.children:
        _parts_obj(child, out)
    return out


def _parts_build(flat: list[int]) -> Part:
    values = [_int(v) for v in _list(flat)]
    pos = 0

    def node() -> Part:
        nonlocal pos
        header, body, end, kind, count = values[pos:pos + 5]
        pos += 5
        if not header <= body <= end:
            raise ValueError("offsets out of order")
        if count != {PartKind.LEAF: 0, PartKind.MESSAGE: 1}.get(PartKind(kind), max(count, 1)):
            raise ValueError("wrong number of children")
        children = tuple(node() for _ in range(count))
        return Part(header, body, end, PartKind(kind), children)

    root = node()
    if pos != len(values):
        raise ValueError("trailing data")
    return root


def encode_parts(parts: Part) -> bytes:
    return _dump(b"P", _parts_obj(parts, []))


def decode_parts(data: bytes) -> Part:
    result: Part = _decoding(b"P", data, _parts_build)
    return result
