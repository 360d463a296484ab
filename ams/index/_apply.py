"""Applying log records to one mailbox's entries, inside one write transaction.

This is the hot path of both tail updates and rebuilds, so it works on the
records as LogReader returns them, with locals instead of attribute look-ups,
and batches consecutive APPENDs into one ``putmulti`` per database.  FLAGS and
EXPUNGE first flush the pending APPENDs (so they see every message) and then
walk the affected UID ranges with a cursor: the cost is the number of
messages present in the ranges, not the width of the ranges (``1:*`` on a
mailbox of ten messages touches ten entries).

The outcome equals :func:`ams.store.fold` over the same records: an APPEND
sets a message; FLAGS replace/add/remove and set the message's MODSEQ to the
record's (even when the flags do not change, as fold does); EXPUNGE deletes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ams.index._codec import (
    BE_U64,
    FLAGS_AT,
    MOD_KEY,
    MODSEQ_AT,
    MODSEQ_END,
    MSG,
    MSG_KEY,
    MailboxMeta,
    mask_bytes,
)
from ams.store import FlagOp, ReadBatch, RecordType
from ams.store.format import RECORD_HEADER_SIZE, Append, Expunge, Flags

_APPEND = RecordType.APPEND
_FLAGS = RecordType.FLAGS
_EXPUNGE = RecordType.EXPUNGE


@dataclass
class Changes:
    """What one ``Index.update`` call changed, accumulated over its batches."""

    #: UIDs appended by this call and still present.
    created: set[int] = field(default_factory=set)
    #: UIDs that existed before this call and were expunged by it.
    gone: set[int] = field(default_factory=set)
    #: uid -> [flag mask before this call, mask now], for pre-existing UIDs.
    touched: dict[int, list[int]] = field(default_factory=dict)
    #: Pre-existing UIDs whose flags changed (settled from ``touched``).
    flagged: set[int] = field(default_factory=set)
    records: int = 0

    def settle(self) -> None:
        """Turn ``touched`` into ``flagged`` (masks are only valid within one mbx)."""
        for uid, (before, now) in self.touched.items():
            if before != now:
                self.flagged.add(uid)
        self.touched.clear()


class Applier:
    """Applies batches to mailbox ``meta`` in ``txn``; updates ``meta`` in place.

    ``top`` is a UID at or above every UID present, so an APPEND above it is
    known to be new without a look-up (UIDs in a log only grow [W6]).
    """

    def __init__(self, txn: Any, msgs_db: Any, mods_db: Any, meta: MailboxMeta, top: int,
                 changes: Changes | None, *, cache_db: Any = None) -> None:
        self.txn = txn
        self.cache_db = cache_db
        self.msgs_db = msgs_db
        self.mods_db = mods_db
        self.meta = meta
        self.top = top
        self.ch = changes
        self.bits = {n: i for i, n in enumerate(meta.flag_names)}
        #: flags tuple -> (mask, mask bytes)
        self.masks: dict[tuple[str, ...], tuple[int, bytes]] = {(): (0, b"")}
        self.pend_m: list[tuple[bytes, bytes]] = []
        self.pend_s: list[tuple[bytes, bytes]] = []

    def mask(self, flags: tuple[str, ...]) -> tuple[int, bytes]:
        got = self.masks.get(flags)
        if got is None:
            m = 0
            for name in flags:
                bit = self.bits.get(name)
                if bit is None:
                    bit = self.bits[name] = len(self.meta.flag_names)
                    self.meta.flag_names.append(name)
                m |= 1 << bit
            got = self.masks[flags] = (m, mask_bytes(m))
        return got

    def run(self, batch: ReadBatch) -> None:
        meta = self.meta
        mbx = meta.mbx
        pack_key = MSG_KEY.pack
        pack_msg = MSG.pack
        pack_mod = MOD_KEY.pack
        pend_m = self.pend_m
        pend_s = self.pend_s
        masks = self.masks
        created = self.ch.created if self.ch is not None else None
        segs = batch.segments
        uidnext, hms, top, count = meta.uidnext, meta.highest_modseq, self.top, meta.messages
        for i, rec in enumerate(batch.records):
            h = rec.header
            ms = h.modseq
            if ms > hms:
                hms = ms
            if h.uidnext > uidnext:
                uidnext = h.uidnext
            if h.type is _APPEND:
                b = rec.body
                assert isinstance(b, Append)
                uid = h.uid
                mk = masks.get(b.flags) or self.mask(b.flags)
                gen, seq = segs[i]
                v = pack_msg(gen, seq, rec.offset + RECORD_HEADER_SIZE + b.message_offset,
                             b.message_size, b.internal_date, b.tz_minutes, ms, h.time_us) + mk[1]
                if uid > top:
                    top = uid
                    count += 1
                    pend_m.append((pack_key(mbx, uid), v))
                    pend_s.append((pack_mod(mbx, ms, uid), b""))
                    if created is not None:
                        created.add(uid)
                else:
                    self.flush()
                    count += self._replace(uid, v, mk[0])
            elif h.type is _FLAGS:
                self.flush()
                assert isinstance(rec.body, Flags)
                self._flags(rec.body, ms)
            elif h.type is _EXPUNGE:
                self.flush()
                assert isinstance(rec.body, Expunge)
                count -= self._expunge(rec.body)
        self.flush()
        meta.uidnext, meta.highest_modseq, meta.messages = uidnext, hms, count
        self.top = top
        if self.ch is not None:
            self.ch.records += len(batch.records)

    def flush(self) -> None:
        if self.pend_m:
            self.txn.cursor(db=self.msgs_db).putmulti(self.pend_m)
            self.txn.cursor(db=self.mods_db).putmulti(self.pend_s)
            self.pend_m.clear()
            self.pend_s.clear()

    def _replace(self, uid: int, value: bytes, mask: int) -> int:
        """An APPEND of a UID that may exist already: fold replaces it."""
        key = MSG_KEY.pack(self.meta.mbx, uid)
        old = self.txn.get(key, db=self.msgs_db)
        if old is not None:
            self.txn.delete(_mod_key(old, key), db=self.mods_db)
        self.txn.put(key, value, db=self.msgs_db)
        self.txn.put(_mod_key(value, key), b"", db=self.mods_db)
        if old is None:
            if self.ch is not None:
                self.ch.created.add(uid)
            return 1
        self._track(uid, int.from_bytes(old[FLAGS_AT:], "little"), mask)
        return 0

    def _track(self, uid: int, before: int, now: int) -> None:
        ch = self.ch
        if ch is None or uid in ch.created:
            return
        t = ch.touched.get(uid)
        if t is None:
            ch.touched[uid] = [before, now]
        else:
            t[1] = now

    def _flags(self, body: Flags, ms: int) -> None:
        opm = self.mask(body.flags)[0]
        op = body.op
        mbx = self.meta.mbx
        prefix = self.meta.prefix
        msb = ms.to_bytes(8, "little")
        mod_part = prefix + BE_U64.pack(ms)
        cur = self.txn.cursor(db=self.msgs_db)
        txn, mods_db = self.txn, self.mods_db
        track = self.ch is not None
        for lo, hi in body.ranges:
            hik = MSG_KEY.pack(mbx, hi)
            if not cur.set_range(MSG_KEY.pack(mbx, lo)):
                continue
            while True:
                k = cur.key()
                if not k or k > hik:
                    break
                v = cur.value()
                old = int.from_bytes(v[FLAGS_AT:], "little")
                if op == FlagOp.REPLACE:
                    new = opm
                elif op == FlagOp.ADD:
                    new = old | opm
                else:
                    new = old & ~opm
                oms = v[MODSEQ_AT:MODSEQ_END]
                if oms != msb or new != old:
                    cur.put(k, v[:MODSEQ_AT] + msb + v[MODSEQ_END:FLAGS_AT] + mask_bytes(new))
                    if oms != msb:
                        txn.delete(_mod_key(v, k), db=mods_db)
                        txn.put(mod_part + k[4:], b"", db=mods_db)
                    if track:
                        self._track(int.from_bytes(k[4:], "big"), old, new)
                if not cur.next():
                    break

    def _expunge(self, body: Expunge) -> int:
        mbx = self.meta.mbx
        cur = self.txn.cursor(db=self.msgs_db)
        txn, mods_db, ch = self.txn, self.mods_db, self.ch
        removed = 0
        for lo, hi in body.ranges:
            hik = MSG_KEY.pack(mbx, hi)
            if not cur.set_range(MSG_KEY.pack(mbx, lo)):
                continue
            while True:
                k = cur.key()
                if not k or k > hik:
                    break
                txn.delete(_mod_key(cur.value(), k), db=mods_db)
                cur.delete()
                removed += 1
                if self.cache_db is not None:
                    _drop_prefix(txn, self.cache_db, k)
                if ch is not None:
                    uid = int.from_bytes(k[4:], "big")
                    if uid in ch.created:
                        ch.created.discard(uid)
                    else:
                        ch.gone.add(uid)
                        ch.touched.pop(uid, None)
        return removed


def _drop_prefix(txn: Any, db: Any, prefix: bytes) -> None:
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        while cur.key()[:len(prefix)] == prefix:
            if not cur.delete():
                break


def _mod_key(value: bytes, msg_key: bytes) -> bytes:
    """The ``modseqs`` key of the message stored as ``value`` under ``msg_key``.

    The value holds the MODSEQ little-endian, the key big-endian: reversed.
    """
    return msg_key[:4] + value[MODSEQ_AT:MODSEQ_END][::-1] + msg_key[4:]
