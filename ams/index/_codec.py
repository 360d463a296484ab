"""The index's LMDB layout: databases, keys and values, byte for byte.

This docstring is the specification of the index format.  The index is a
cache: when ``INDEX_FORMAT`` changes, an old environment is not migrated but
emptied and rebuilt from the logs.

One environment per host at ``<host.cache_dir>/index/`` with five named
databases.  Keys are big-endian so that LMDB's bytewise order is numeric
order; values are little-endian like the log format.

``meta``: environment-wide settings::

    b"format"    u32 LE   INDEX_FORMAT
    b"next_mbx"  u32 LE   the next mailbox number to hand out

``mailboxes``: one entry per indexed log, key = the log id (UTF-8, as in the
log's ``head``), value::

    off size field
      0   1  version          1
      1   3  reserved         0
      4   4  mbx              this mailbox's number: the key prefix below
      8   4  uidvalidity      the log's UIDVALIDITY
     12   4  uidnext          max(uidnext of every record applied, segment floor)
     16   4  messages         message count
     20   8  highest_modseq   max(modseq of every record applied, segment floor)
     28   4  generation       \\
     32   4  seq               > the log Position the index has applied up to
     36   8  offset           /
     44   *  flag names       UTF-8, separated by b" ": bit i of a flag mask is
                              the i-th name.  Names are only ever appended, so
                              within one mbx a bit never changes meaning.

A rebuild writes the mailbox under a fresh ``mbx`` and switches the entry to
it in one transaction; readers see the old contents or the new, never a mix.
mbx numbers are never reused.

``messages``: key = mbx u32 BE + UID u32 BE (8 bytes), value::

    off size field
      0   4  generation       \\
      4   4  seq               > MessageLocation: the segment, the offset of the
      8   8  offset            > message bytes in it and their size
     16   4  size             /
     20   8  internal_date    i64, Unix seconds
     28   2  tz_minutes       i16
     30   8  modseq           the message's MODSEQ
     38   8  time_us          when its APPEND was first written
     46   *  flags            the flag mask, little-endian, trailing zero bytes
                              dropped (empty: no flags)

``modseqs``: key = mbx u32 BE + MODSEQ u64 BE + UID u32 BE (16 bytes), empty
value: one entry per message at its current MODSEQ, so CHANGEDSINCE is a
range scan.

``cache``: what the IMAP bridge derived from a message, so that a second
FETCH does not read or parse it again; key = the message's ``messages`` key
+ one kind octet, value = a version octet + the data::

    kind  data
    b"E"  the ENVELOPE value as IMAP wire bytes (no UTF8=ACCEPT)
    b"S"  the BODYSTRUCTURE value as IMAP wire bytes
    b"B"  the BODY (non-extensible structure) value as IMAP wire bytes
    b"T"  where SEARCH BODY/TEXT look: a JSON array (ASCII) of
          [start, end, encoding, charset] octet ranges of the message, in
          order; encoding and charset null for the header of an attached
          message (MESSAGE/RFC822), else the TEXT/* part's
          Content-Transfer-Encoding and charset (charset may be null)

Entries go with their message: an EXPUNGE deletes them, and a rebuild under
the same UIDVALIDITY carries them to the new mailbox number (a UID still
names the same bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ams.store import Position

INDEX_FORMAT = 1
MAILBOX_VERSION = 1

MBOX = struct.Struct("<B3xIIIIQIIQ")
MSG = struct.Struct("<IIQIqhQQ")
MSG_KEY = struct.Struct(">II")
MOD_KEY = struct.Struct(">IQI")
MBX = struct.Struct(">I")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
BE_U64 = struct.Struct(">Q")

#: Byte ranges inside a message value.
MODSEQ_AT = 30
MODSEQ_END = 38
FLAGS_AT = MSG.size

assert MBOX.size == 44
assert MSG.size == 46


@dataclass
class MailboxMeta:
    """A ``mailboxes`` value, decoded (mutable while a batch is applied)."""

    mbx: int
    uidvalidity: int
    uidnext: int = 1
    messages: int = 0
    highest_modseq: int = 0
    position: Position = field(default_factory=lambda: Position(0, 0, 0))
    flag_names: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> bytes:
        return MBX.pack(self.mbx)

    def encode(self) -> bytes:
        p = self.position
        return MBOX.pack(MAILBOX_VERSION, self.mbx, self.uidvalidity, self.uidnext,
                         self.messages, self.highest_modseq, p.generation, p.seq,
                         p.offset) + " ".join(self.flag_names).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> MailboxMeta | None:
        """None for a value from another version (the caller rebuilds)."""
        if len(raw) < MBOX.size or raw[0] != MAILBOX_VERSION:
            return None
        _v, mbx, uv, un, n, hms, gen, seq, off = MBOX.unpack_from(raw)
        names = raw[MBOX.size:].decode("utf-8").split(" ") if len(raw) > MBOX.size else []
        return cls(mbx, uv, un, n, hms, Position(gen, seq, off), names)


def mask_bytes(mask: int) -> bytes:
    return mask.to_bytes((mask.bit_length() + 7) >> 3, "little")


def names_of_mask(mask: int, names: list[str]) -> frozenset[str]:
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(names[i])
        mask >>= 1
        i += 1
    return frozenset(out)
