"""The mailbox log format: segment headers and records, byte for byte.

This docstring is the specification; docs/format.md points here and adds
the directory layout around it.  All integers are little-endian.  CRC is
CRC-32 (ISO-HDLC, the one zlib.crc32 computes).

Segment file ``seg-GGGGGGGG-SSSSSSSS`` (generation G, sequence S, 8 decimal
digits each), 64-byte header then records::

    off size field
      0   8  magic          b"\\x89AMSLOG\\n"
      8   2  version        1 (this code refuses anything greater)
     10   2  header_size    64
     12   4  uidvalidity    the mailbox's UIDVALIDITY
     16   4  generation     G (1 at creation, +1 per compaction)
     20   4  seq            S (1 for the first segment of a generation)
     24   8  base           log position of byte 0 of this file
     32   4  uidnext        UIDNEXT when this segment was started
     36   4  reserved       0
     40   8  created_us     microseconds since the Unix epoch
     48   8  modseq_floor   HIGHESTMODSEQ when this segment was started
     56   4  reserved       0
     60   4  crc            CRC-32 of bytes 0..59

Log position: ``base + offset within the file``.  Within a generation a
segment's base is the previous segment's base plus its final size; the
first segment of a new generation starts at the old generation's end.  So
positions only grow, and a fresh record's MODSEQ is its position.

Record (40-byte header, payload, 8-byte trailer)::

    off size field
      0   4  magic          b"AMSR"
      4   1  type           1 APPEND, 2 FLAGS, 3 EXPUNGE, 4 NEXT, 5 SEALED
      5   1  version        1
      6   2  reserved       0
      8   4  length         payload bytes (L)
     12   4  uid            APPEND: the message's UID; otherwise 0
     16   8  modseq         the record's MODSEQ (its position when first written)
     24   8  time_us        when the record was first written, µs since epoch
     32   4  uidnext        UIDNEXT after this record
     36   4  crc            CRC-32 of header bytes 0..35 followed by the payload
     40   L  payload
   40+L   4  total          40 + L + 8, the record's whole size
   44+L   4  end magic      b"AMSE"

The trailer lets a writer find the last record from the end of the file in
one read.  A record counts only if magic, version, trailer and CRC all hold;
anything after the last such record is a torn tail.

Payloads:

APPEND::

      0   8  internal_date  i64, Unix seconds
      8   2  tz_minutes     i16, the internal date's UTC offset
     10   2  flags_len      u16 (F)
     12   2  id_len         u16 (D)
     14   2  reserved       0
     16   F  flags          UTF-8, system and keyword flags separated by b" "
   16+F   D  delivery_id    UTF-8, "" when none (spool id + "/" + recipient)
 16+F+D   *  message        the RFC 5322 message, exactly as received

FLAGS::

      0   1  op             0 replace, 1 add, 2 remove
      1   1  reserved       0
      2   2  flags_len      u16 (F)
      4   4  count          u32 (N) UID ranges
      8   F  flags
    8+F 8*N  ranges         N × (u32 first, u32 last), inclusive

EXPUNGE::

      0   4  count          u32 (N)
      4 8*N  ranges         as for FLAGS

NEXT (the segment is full; the log goes on in sequence ``next_seq``)::

      0   4  next_seq       u32

SEALED (the generation was compacted; readers reopen ``head``)::

      0   4  generation     u32, the successor generation

Compaction copies APPEND records into the new generation keeping uid,
time_us and delivery id, with the message's folded flags and its latest
MODSEQ, and with ``uidnext`` set to the log's UIDNEXT at compaction (so the
UIDs of expunged messages are never reused); FLAGS and EXPUNGE records are
not carried over.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from ams.errors import CorruptionError, FormatVersionError

SEGMENT_MAGIC = b"\x89AMSLOG\n"
SEGMENT_VERSION = 1
SEGMENT_HEADER_SIZE = 64
RECORD_MAGIC = b"AMSR"
RECORD_END_MAGIC = b"AMSE"
RECORD_VERSION = 1
RECORD_HEADER_SIZE = 40
RECORD_TRAILER_SIZE = 8
RECORD_OVERHEAD = RECORD_HEADER_SIZE + RECORD_TRAILER_SIZE
APPEND_FIXED_SIZE = 16
MAX_PAYLOAD = 0xFFFF_FFFF - RECORD_OVERHEAD
MAX_UID = 0xFFFF_FFFF

_SEG = struct.Struct("<8sHHIIIQIIQQI")
_SEG_CRC = struct.Struct("<I")
_REC = struct.Struct("<4sBBHIIQQI")  # header bytes 0..35, crc follows
_REC_CRC = struct.Struct("<4sBBHIIQQII")  # the same with the crc: one unpack per record
_CRC = struct.Struct("<I")
_TRAILER = struct.Struct("<I4s")
_APPEND = struct.Struct("<qhHHH")
_FLAGS = struct.Struct("<BBHI")
_RANGE = struct.Struct("<II")
_U32 = struct.Struct("<I")

assert _SEG.size + _SEG_CRC.size == SEGMENT_HEADER_SIZE
assert _REC.size + _CRC.size == RECORD_HEADER_SIZE
assert _APPEND.size == APPEND_FIXED_SIZE


class RecordType(IntEnum):
    APPEND = 1
    FLAGS = 2
    EXPUNGE = 3
    NEXT = 4
    SEALED = 5


class FlagOp(IntEnum):
    REPLACE = 0
    ADD = 1
    REMOVE = 2


# -- segment header ----------------------------------------------------------


@dataclass(frozen=True)
class SegmentHeader:
    uidvalidity: int
    generation: int
    seq: int
    base: int
    uidnext: int
    created_us: int
    modseq_floor: int
    version: int = SEGMENT_VERSION

    def encode(self) -> bytes:
        body = _SEG.pack(SEGMENT_MAGIC, self.version, SEGMENT_HEADER_SIZE, self.uidvalidity,
                         self.generation, self.seq, self.base, self.uidnext, 0,
                         self.created_us, self.modseq_floor, 0)
        return body + _SEG_CRC.pack(zlib.crc32(body))

    @classmethod
    def decode(cls, data: bytes, *, path: object = None) -> SegmentHeader:
        if len(data) < SEGMENT_HEADER_SIZE:
            raise CorruptionError("segment header is truncated", path=path, offset=0)
        (magic, version, hsize, uidvalidity, gen, seq, base, uidnext, _r1, created, floor,
         _r2) = _SEG.unpack_from(data)
        if magic != SEGMENT_MAGIC:
            raise CorruptionError("not an AMS log segment (bad magic)", path=path, offset=0)
        if version > SEGMENT_VERSION:
            raise FormatVersionError(
                f"{path}: segment format version {version} is newer than this AMS reads "
                f"({SEGMENT_VERSION})")
        (crc,) = _SEG_CRC.unpack_from(data, _SEG.size)
        if crc != zlib.crc32(data[:_SEG.size]) or hsize != SEGMENT_HEADER_SIZE:
            raise CorruptionError("segment header checksum mismatch", path=path, offset=0)
        return cls(uidvalidity, gen, seq, base, uidnext, created, floor, version)


def segment_name(generation: int, seq: int) -> str:
    return f"seg-{generation:08d}-{seq:08d}"


# -- records -----------------------------------------------------------------

Range = tuple[int, int]


@dataclass(frozen=True)
class Append:
    internal_date: int
    tz_minutes: int
    flags: tuple[str, ...]
    delivery_id: str
    #: Offset of the message bytes within the payload.
    message_offset: int
    message_size: int


@dataclass(frozen=True)
class Flags:
    op: FlagOp
    flags: tuple[str, ...]
    ranges: tuple[Range, ...]


@dataclass(frozen=True)
class Expunge:
    ranges: tuple[Range, ...]


@dataclass(frozen=True)
class Next:
    next_seq: int


@dataclass(frozen=True)
class Sealed:
    generation: int


Body = Append | Flags | Expunge | Next | Sealed


@dataclass(frozen=True)
class RecordHeader:
    type: RecordType
    length: int
    uid: int
    modseq: int
    time_us: int
    uidnext: int

    @property
    def size(self) -> int:
        return RECORD_OVERHEAD + self.length


@dataclass(frozen=True)
class Record:
    header: RecordHeader
    body: Body
    #: Offset of the record in its segment file.
    offset: int = 0
    #: The payload itself is kept only for APPEND (the message bytes live
    #: at ``offset + RECORD_HEADER_SIZE + body.message_offset``).
    payload: bytes = field(default=b"", repr=False)

    @property
    def type(self) -> RecordType:
        return self.header.type

    @property
    def uid(self) -> int:
        return self.header.uid

    @property
    def modseq(self) -> int:
        return self.header.modseq

    @property
    def end(self) -> int:
        return self.offset + self.header.size


def _flags_bytes(flags: tuple[str, ...] | list[str]) -> bytes:
    for f in flags:
        if not f or " " in f or any(ord(c) < 0x21 for c in f):
            raise ValueError(f"bad flag {f!r}")
    return " ".join(flags).encode("utf-8")


def _ranges_bytes(ranges: tuple[Range, ...] | list[Range]) -> bytes:
    out = bytearray(_U32.pack(len(ranges)))
    for lo, hi in ranges:
        if not (1 <= lo <= hi <= MAX_UID):
            raise ValueError(f"bad UID range {lo}:{hi}")
        out += _RANGE.pack(lo, hi)
    return bytes(out)


def encode_append_payload(message: bytes, *, internal_date: int, tz_minutes: int = 0,
                          flags: tuple[str, ...] | list[str] = (), delivery_id: str = "") -> bytes:
    fb = _flags_bytes(flags)
    db = delivery_id.encode("utf-8")
    if len(fb) > 0xFFFF or len(db) > 0xFFFF:
        raise ValueError("flags or delivery id too long")
    if not -1440 < tz_minutes < 1440:
        raise ValueError("tz offset out of range")
    return _APPEND.pack(internal_date, tz_minutes, len(fb), len(db), 0) + fb + db + message


def encode_flags_payload(op: FlagOp, flags: tuple[str, ...] | list[str],
                         ranges: tuple[Range, ...] | list[Range]) -> bytes:
    fb = _flags_bytes(flags)
    if len(fb) > 0xFFFF:
        raise ValueError("flags too long")
    rb = _ranges_bytes(ranges)
    return _FLAGS.pack(int(op), 0, len(fb), len(ranges)) + fb + rb[4:]


def encode_expunge_payload(ranges: tuple[Range, ...] | list[Range]) -> bytes:
    return _ranges_bytes(ranges)


def encode_record(rtype: RecordType, payload: bytes, *, uid: int, modseq: int, time_us: int,
                  uidnext: int) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("record payload too large")
    head = _REC.pack(RECORD_MAGIC, int(rtype), RECORD_VERSION, 0, len(payload), uid, modseq,
                     time_us, uidnext)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, _CRC.pack(crc), payload,
                     _TRAILER.pack(RECORD_OVERHEAD + len(payload), RECORD_END_MAGIC)))


class Incomplete(Exception):
    """Not enough bytes for a whole record: the end of the log, or a torn tail."""


def decode_header(buf: bytes | memoryview, pos: int = 0, *, path: object = None,
                  base_offset: int = 0) -> tuple[RecordHeader, int]:
    """Decode a record header at ``buf[pos:]``; return it and its stored CRC.

    Raises Incomplete if fewer than 40 bytes remain, CorruptionError if the
    bytes there are not a record header.
    """
    if len(buf) - pos < RECORD_HEADER_SIZE:
        raise Incomplete
    magic, rtype, version, _r, length, uid, modseq, time_us, uidnext = _REC.unpack_from(buf, pos)
    if magic != RECORD_MAGIC:
        raise CorruptionError("bad record magic", path=path, offset=base_offset + pos)
    if version > RECORD_VERSION:
        raise FormatVersionError(f"{path}: record version {version} is newer than this AMS reads")
    try:
        rt = RecordType(rtype)
    except ValueError:
        raise CorruptionError(f"unknown record type {rtype}", path=path,
                              offset=base_offset + pos) from None
    (crc,) = _CRC.unpack_from(buf, pos + _REC.size)
    return RecordHeader(rt, length, uid, modseq, time_us, uidnext), crc


def decode_record(buf: bytes | memoryview, pos: int = 0, *, path: object = None,
                  base_offset: int = 0, keep_payload: bool = True) -> Record:
    """Decode and verify the record at ``buf[pos:]``.

    Raises Incomplete when the buffer ends inside the record, and
    CorruptionError when the bytes are there but wrong.  The caller decides
    whether an incomplete or corrupt record at the end of a segment is a
    torn tail (see ams.store.log).  This is the readers' hot path: one
    unpack for the header, a table lookup for the type.
    """
    if len(buf) - pos < RECORD_HEADER_SIZE:
        raise Incomplete
    magic, rtype, version, _r, length, uid, modseq, time_us, uidnext, crc = \
        _REC_CRC.unpack_from(buf, pos)
    if magic != RECORD_MAGIC:
        raise CorruptionError("bad record magic", path=path, offset=base_offset + pos)
    if version > RECORD_VERSION:
        raise FormatVersionError(f"{path}: record version {version} is newer than this AMS reads")
    rt = _TYPE_OF[rtype] if rtype < len(_TYPE_OF) else None
    if rt is None:
        raise CorruptionError(f"unknown record type {rtype}", path=path,
                              offset=base_offset + pos)
    pstart = pos + RECORD_HEADER_SIZE
    pend = pstart + length
    if pend + RECORD_TRAILER_SIZE > len(buf):
        raise Incomplete
    where = base_offset + pos
    total, emagic = _TRAILER.unpack_from(buf, pend)
    if emagic != RECORD_END_MAGIC or total != length + RECORD_OVERHEAD:
        raise CorruptionError("bad record trailer", path=path, offset=where)
    payload = buf[pstart:pend]
    if zlib.crc32(payload, zlib.crc32(buf[pos:pos + _REC.size])) != crc:
        raise CorruptionError("record checksum mismatch", path=path, offset=where)
    header = RecordHeader(rt, length, uid, modseq, time_us, uidnext)
    body = decode_body(header, payload, path=path, offset=where)
    kept = bytes(payload) if keep_payload and rt is RecordType.APPEND else b""
    return Record(header, body, where, kept)


#: Record type by its byte (index 0 is no type).
_TYPE_OF: tuple[RecordType | None, ...] = (None, *RecordType)


def decode_body(header: RecordHeader, payload: bytes | memoryview, *, path: object = None,
                offset: int = 0) -> Body:
    try:
        return _decode_body(header, payload)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CorruptionError(f"malformed {header.type.name} payload ({e})", path=path,
                              offset=offset) from None


def _decode_body(header: RecordHeader, p: bytes | memoryview) -> Body:
    t = header.type
    if t == RecordType.APPEND:
        date, tz, flen, dlen, _r = _APPEND.unpack_from(p)
        fend = APPEND_FIXED_SIZE + flen
        dend = fend + dlen
        if dend > len(p):
            raise ValueError("lengths exceed payload")
        flags = _split_flags(bytes(p[APPEND_FIXED_SIZE:fend])) if flen else ()
        did = bytes(p[fend:dend]).decode("utf-8") if dlen else ""
        if not 1 <= header.uid <= MAX_UID:
            raise ValueError("APPEND without a UID")
        return Append(date, tz, flags, did, dend, len(p) - dend)
    if t == RecordType.FLAGS:
        op, _r, flen, n = _FLAGS.unpack_from(p)
        flags = _split_flags(bytes(p[_FLAGS.size:_FLAGS.size + flen]))
        ranges = _decode_ranges(p, _FLAGS.size + flen, n)
        return Flags(FlagOp(op), flags, ranges)
    if t == RecordType.EXPUNGE:
        (n,) = _U32.unpack_from(p)
        return Expunge(_decode_ranges(p, 4, n))
    if t == RecordType.NEXT:
        if len(p) != 4:
            raise ValueError("NEXT payload must be 4 bytes")
        return Next(_U32.unpack_from(p)[0])
    if len(p) != 4:
        raise ValueError("SEALED payload must be 4 bytes")
    return Sealed(_U32.unpack_from(p)[0])


_FLAG_CACHE: dict[bytes, tuple[str, ...]] = {}


def _split_flags(b: bytes) -> tuple[str, ...]:
    """Flag lists repeat endlessly in a log: decode each distinct one once."""
    got = _FLAG_CACHE.get(b)
    if got is None:
        got = tuple(b.decode("utf-8").split()) if b else ()
        if len(_FLAG_CACHE) < 4096:
            _FLAG_CACHE[b] = got
    return got


def _decode_ranges(p: bytes | memoryview, pos: int, n: int) -> tuple[Range, ...]:
    if pos + 8 * n != len(p):
        raise ValueError("range count does not match payload length")
    out = []
    for i in range(n):
        lo, hi = _RANGE.unpack_from(p, pos + 8 * i)
        if not 1 <= lo <= hi:
            raise ValueError(f"bad UID range {lo}:{hi}")
        out.append((lo, hi))
    return tuple(out)


def find_next_record(data: bytes, start: int, *, path: object = None) -> int | None:
    """The offset of the first record at or after ``start`` that verifies.

    Used to tell a torn tail (nothing valid follows) from damage in the
    middle of a log, and by fsck to find where valid records resume.
    """
    i = data.find(RECORD_MAGIC, start)
    while i != -1:
        try:
            decode_record(data, i, path=path, keep_payload=False)
            return i
        except (Incomplete, CorruptionError):
            i = data.find(RECORD_MAGIC, i + 1)
    return None


def decode_trailer(buf: bytes) -> int | None:
    """The record size a trailer announces, or None if these 8 bytes are not one."""
    if len(buf) != RECORD_TRAILER_SIZE:
        return None
    total, magic = _TRAILER.unpack(buf)
    if magic != RECORD_END_MAGIC or total < RECORD_OVERHEAD:
        return None
    return int(total)


def ranges_from_uids(uids: list[int] | set[int] | range) -> list[Range]:
    """Compress UIDs into sorted inclusive ranges."""
    out: list[Range] = []
    for u in sorted(set(uids)):
        if out and u == out[-1][1] + 1:
            out[-1] = (out[-1][0], u)
        else:
            out.append((u, u))
    return out


def uids_in(ranges: tuple[Range, ...] | list[Range]) -> list[int]:
    return [u for lo, hi in ranges for u in range(lo, hi + 1)]
