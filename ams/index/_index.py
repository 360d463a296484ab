"""The local index of one host: every mailbox's UIDs, flags and message locations.

Theory of operation
-------------------
The logs on the shared store are the truth; this is a cache of their folded
state on the host's local disk, in one LMDB environment
(``<host.cache_dir>/index/``, layout in :mod:`ams.index._codec`).  Anything
here can be thrown away and rebuilt [brief rule 6].

For each mailbox the index stores the log :class:`~ams.store.Position` it has
applied up to, in the same transaction as the entries.  :meth:`Index.update`
reads the log from there (``LogReader.poll`` in batches) and applies each
batch in one short write transaction, so the entries and the position always
agree, and a crash loses at most the last batch, which is then read again.

When the reader reports ``reset`` (the log was compacted, or this is the
first time), the mailbox is rebuilt from the replay under a fresh mailbox
number and switched over in one transaction at the end: readers keep seeing
the old contents until then, never a half-built mailbox.  The switch compares
old and new, so an update that rebuilt reports only what really changed
(nothing, after a compaction).

Concurrency: LMDB has one writer at a time and any number of readers.  The
log is read outside any transaction; the write transaction first checks that
the mailbox entry is still the one the read started from (another thread or
process may have applied the batch already) and otherwise starts again.  No
transaction outlives a method call, so trio code calls these methods through
``trio.to_thread.run_sync``, one call per thread hop.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb

from ams.config import Config
from ams.errors import CorruptionError, NotFound
from ams.index._apply import Applier, Changes
from ams.index._codec import (
    BE_U64,
    FLAGS_AT,
    INDEX_FORMAT,
    MBX,
    MSG,
    MSG_KEY,
    U32,
    MailboxMeta,
    names_of_mask,
)
from ams.index._fstype import check_index_location
from ams.store import MailboxLog, MessageLocation, Position, ReadBatch
from ams.store.format import MAX_UID, SEGMENT_HEADER_SIZE, SegmentHeader, segment_name
from ams.store.log import LogReader

log = logging.getLogger(__name__)

#: A sparse reservation of address space, not disk: the file grows as used.
DEFAULT_MAP_SIZE = (64 << 30) if sys.maxsize > 2**32 else (1 << 30)
#: Records per LogReader.poll, and so per write transaction.
BATCH_RECORDS = 20_000
_MAX_DBS = 8
_FLAGSET_CACHE = 100_000
#: meta key prefix of a rebuild in progress: + mbx u32 BE -> pid u32 LE.
_BUILD = b"build:"


class IndexedMessage(NamedTuple):
    uid: int
    location: MessageLocation
    internal_date: int
    tz_minutes: int
    flags: frozenset[str]
    modseq: int
    time_us: int

    @property
    def size(self) -> int:
        return self.location.size


@dataclass(frozen=True)
class MailboxStatus:
    log_id: str
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    messages: int
    #: The log position the index has applied up to.
    position: Position


@dataclass(frozen=True)
class IndexUpdate:
    """What an update or rebuild changed, for untagged IMAP responses.

    It covers the changes this call applied.  When several threads or
    processes update one mailbox, each change is reported to one of them
    only; a consumer that must see every change keeps its own MODSEQ and
    UID list and asks :meth:`MailboxView.changed_since` and ``uids``.
    """

    log_id: str
    #: UIDs that appeared, ascending.
    new: tuple[int, ...]
    #: UIDs that were there before and are gone, ascending.
    expunged: tuple[int, ...]
    #: UIDs that were there before and still are, whose flags changed.
    flags_changed: tuple[int, ...]
    #: Log records read and applied.
    records: int
    #: The mailbox was rebuilt from a replay of its log (compaction, first
    #: sight, or :meth:`Index.rebuild`).
    reset: bool
    #: UIDVALIDITY differs from what the index had: IMAP sessions must drop
    #: everything they know of this mailbox.
    uidvalidity_changed: bool
    position: Position
    #: Why reading stopped short, when it did (see ``ReadBatch.stopped_at``).
    stopped_at: CorruptionError | None = None

    @property
    def changed(self) -> bool:
        return bool(self.new or self.expunged or self.flags_changed or self.uidvalidity_changed)


class _Restart(Exception):  # noqa: N818 - control flow, not an error
    """The log was compacted again while a rebuild was reading it."""

    def __init__(self, batch: ReadBatch) -> None:
        self.batch = batch


class Index:
    """One host's index: an LMDB environment under ``config.host.cache_dir``.

    Share one Index between the threads of a process: LMDB forbids opening
    one environment twice in a process (closing the second copy would drop
    the first one's locks), so a second Index on the same directory raises
    RuntimeError until the first is closed.  Other processes on the host
    may open it at the same time.
    """

    def __init__(self, config: Config, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True,
                 batch_records: int = BATCH_RECORDS) -> None:
        self.path = Path(config.host.cache_dir) / "index"
        check_index_location(self.path, config.store.root)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        check_index_location(self.path, config.store.root)  # a mount may sit in between
        self.batch_records = batch_records
        self._key = os.path.realpath(self.path)
        with _OPEN_LOCK:
            if self._key in _OPEN:
                raise RuntimeError(f"the index at {self.path} is open already in this process; "
                                   "share that Index")
            _OPEN.add(self._key)
        try:
            # metasync=False: a crash may undo the last transaction but never
            # corrupts; the undone batch is simply read from the log again.
            self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=_MAX_DBS,
                                  sync=sync, metasync=False, max_readers=1024)
        except BaseException:
            _release(self._key)
            raise
        self._closed = False
        self._meta = self._env.open_db(b"meta")
        self._mailboxes = self._env.open_db(b"mailboxes")
        self._msgs = self._env.open_db(b"messages")
        self._mods = self._env.open_db(b"modseqs")
        self._cache = self._env.open_db(b"cache")
        self._flagsets: dict[tuple[int, int], frozenset[str]] = {}
        self._check_format()

    def _check_format(self) -> None:
        with self._env.begin(write=True) as txn:
            raw = txn.get(b"format", db=self._meta)
            if raw is not None and U32.unpack(raw)[0] == INDEX_FORMAT:
                return
            if raw is not None:
                log.warning("index %s has format %d, this AMS uses %d: rebuilding", self.path,
                            U32.unpack(raw)[0], INDEX_FORMAT)
                for db in (self._mailboxes, self._msgs, self._mods, self._cache):
                    txn.drop(db, delete=False)
            txn.put(b"format", U32.pack(INDEX_FORMAT), db=self._meta)
            txn.put(b"next_mbx", U32.pack(1), db=self._meta)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
            _release(self._key)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- updating -------------------------------------------------------------------

    def update(self, log_: MailboxLog) -> IndexUpdate:
        """Bring the mailbox of ``log_`` up to date by reading the log's tail."""
        head = log_.head()
        key = head.id.encode("utf-8")
        ch = Changes()
        while True:
            raw = self._get_mailbox(key)
            meta = MailboxMeta.decode(raw) if raw is not None else None
            if meta is None or meta.uidvalidity != head.uidvalidity:
                reader = LogReader(log_.path)
                return self._rebuild(log_, key, reader, reader.poll(limit=self.batch_records), ch)
            reader = LogReader(log_.path, meta.position)
            while raw is not None:
                batch = reader.poll(limit=self.batch_records)
                if batch.reset:
                    return self._rebuild(log_, key, reader, batch, ch)
                if batch.records or batch.position != meta.position:
                    raw = self._apply_live(key, raw, meta, batch, ch)
                if len(batch.records) < self.batch_records and raw is not None:
                    return _result(head.id, ch, meta.position, batch.stopped_at)
            # Another updater moved the mailbox on under us: start from its state.

    def rebuild(self, log_: MailboxLog) -> IndexUpdate:
        """Rebuild the mailbox of ``log_`` from a full replay of its log."""
        key = log_.head().id.encode("utf-8")
        reader = LogReader(log_.path)
        return self._rebuild(log_, key, reader, reader.poll(limit=self.batch_records), Changes())

    def _get_mailbox(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            raw = txn.get(key, db=self._mailboxes)
            return bytes(raw) if raw is not None else None

    def _apply_live(self, key: bytes, raw: bytes, meta: MailboxMeta, batch: ReadBatch,
                    ch: Changes) -> bytes | None:
        """Apply ``batch`` if the mailbox entry is still ``raw``; return the new entry."""
        with self._env.begin(write=True) as txn:
            if txn.get(key, db=self._mailboxes) != raw:
                return None
            Applier(txn, self._msgs, self._mods, meta, meta.uidnext - 1, ch,
                    cache_db=self._cache).run(batch)
            meta.position = batch.position
            new = meta.encode()
            txn.put(key, new, db=self._mailboxes)
            return new

    def _rebuild(self, log_: MailboxLog, key: bytes, reader: LogReader, batch: ReadBatch,
                 ch: Changes) -> IndexUpdate:
        ch.settle()
        while True:
            meta = self._fresh_mailbox(log_, batch.position.generation)
            try:
                top, force = 0, False
                while True:
                    batch, top = self._build(meta, reader, batch, ch, top)
                    switched = self._switch(key, meta, ch, force=force)
                    if switched is not None:
                        break
                    # Another updater got further in this generation meanwhile:
                    # catch up rather than move the mailbox back.
                    at = meta.position
                    batch = self._poll(reader)
                    force = not batch.records and batch.position == at
            except _Restart as r:
                self._purge(meta.mbx)
                batch = r.batch
                continue
            except BaseException:
                self._purge(meta.mbx)
                raise
            uv_changed, old_mbx = switched
            if old_mbx is not None:
                if not uv_changed:
                    self._carry_cache(old_mbx, meta.mbx)
                self._purge(old_mbx)  # no longer referenced: readers cannot see it
            return _result(key.decode("utf-8"), ch, meta.position, batch.stopped_at,
                           reset=True, uidvalidity_changed=uv_changed)

    def _poll(self, reader: LogReader) -> ReadBatch:
        batch = reader.poll(limit=self.batch_records)
        if batch.reset:
            raise _Restart(batch)
        return batch

    def _build(self, meta: MailboxMeta, reader: LogReader, batch: ReadBatch, ch: Changes,
               top: int) -> tuple[ReadBatch, int]:
        """Apply the replay to the (unreferenced) mailbox number ``meta.mbx``."""
        while True:
            with self._env.begin(write=True) as txn:
                applier = Applier(txn, self._msgs, self._mods, meta, top, None)
                applier.run(batch)
                top = applier.top
            ch.records += len(batch.records)
            meta.position = batch.position
            if len(batch.records) < self.batch_records:
                return batch, top
            batch = self._poll(reader)

    def _fresh_mailbox(self, log_: MailboxLog, generation: int) -> MailboxMeta:
        """A new mailbox number, and the floors from the generation's first segment.

        After a compaction that left no messages, the segment header is the
        only place that still knows UIDNEXT and HIGHESTMODSEQ.
        """
        head = log_.head()
        uidnext, floor = 1, 0
        try:
            with open(log_.path / segment_name(generation, 1), "rb") as f:
                sh = SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE), path=f.name)
            uidnext, floor = sh.uidnext, sh.modseq_floor
        except FileNotFoundError:
            pass  # compacted and removed meanwhile: the reader will restart
        with self._env.begin(write=True) as txn:
            mbx = U32.unpack(txn.get(b"next_mbx", U32.pack(1), db=self._meta))[0]
            txn.put(b"next_mbx", U32.pack(mbx + 1), db=self._meta)
            # So that vacuum() leaves a build in progress alone.
            txn.put(_BUILD + MBX.pack(mbx), U32.pack(os.getpid()), db=self._meta)
        return MailboxMeta(mbx, head.uidvalidity, uidnext, 0, floor)

    def _switch(self, key: bytes, meta: MailboxMeta, ch: Changes, *, force: bool = False,
                ) -> tuple[bool, int | None] | None:
        """Point the mailbox at the rebuilt entries; report the differences.

        Returns whether UIDVALIDITY changed and the replaced mailbox number,
        or None (and changes nothing) when the entry has meanwhile got
        further in the same generation.
        """
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._mailboxes)
            old = MailboxMeta.decode(raw) if raw is not None else None
            if (old is not None and not force and old.uidvalidity == meta.uidvalidity
                    and old.position.generation == meta.position.generation
                    and old.position > meta.position):
                return None
            txn.put(key, meta.encode(), db=self._mailboxes)
            txn.delete(_BUILD + MBX.pack(meta.mbx), db=self._meta)
            if old is None:
                ch.created.update(self._uids(txn, meta.mbx, 1, MAX_UID))
                return False, None
            self._diff(txn, old, meta, ch)
        return old.uidvalidity != meta.uidvalidity, old.mbx

    def _diff(self, txn: Any, old: MailboxMeta, new: MailboxMeta, ch: Changes) -> None:
        before = dict(self._flag_list(txn, old, 1, MAX_UID))
        if old.uidvalidity != new.uidvalidity:
            ch.gone.update(before)
            ch.created.update(self._uids(txn, new.mbx, 1, MAX_UID))
            return
        for uid, flags in self._flag_list(txn, new, 1, MAX_UID):
            was = before.pop(uid, None)
            if was is None:
                ch.created.add(uid)
            elif was != flags:
                ch.flagged.add(uid)
        for uid in before:
            if uid in ch.created:
                ch.created.discard(uid)
            else:
                ch.gone.add(uid)

    def _carry_cache(self, old: int, new: int) -> int:
        """Copy cached analyses from mailbox number ``old`` to ``new`` (a
        rebuild with the same UIDVALIDITY: a UID still names the same
        message) for the UIDs ``new`` has, a batch per transaction."""
        carried = 0
        prefix, lo, renamed = MBX.pack(old), MBX.pack(old), MBX.pack(new)
        while True:
            with self._env.begin(write=True) as txn:
                batch = []
                for k, v in self._range(txn, self._cache, lo, prefix + b"\xff" * 9):
                    batch.append((bytes(k), bytes(v)))
                    if len(batch) >= self.batch_records:
                        break
                for k, v in batch:
                    nk = renamed + k[4:]
                    if txn.get(nk[:8], db=self._msgs) is not None:
                        txn.put(nk, v, db=self._cache)
                        carried += 1
            if len(batch) < self.batch_records:
                return carried
            lo = batch[-1][0] + b"\0"

    def put_cached(self, mbx: int, entries: list[tuple[int, bytes, bytes]]) -> int:
        """Cache ``(uid, kind, value)`` analyses of mailbox number ``mbx``
        (from :attr:`MailboxView.mbx`), skipping messages no longer there."""
        if not entries:
            return 0
        done = 0
        with self._env.begin(write=True) as txn:
            for uid, kind, value in entries:
                key = MSG_KEY.pack(mbx, uid)
                if txn.get(key, db=self._msgs) is not None:
                    txn.put(key + kind, value, db=self._cache)
                    done += 1
        return done

    def _purge(self, mbx: int) -> int:
        """Delete every entry of mailbox number ``mbx``, a batch per transaction."""
        removed = 0
        prefix = MBX.pack(mbx)
        for db in (self._msgs, self._mods, self._cache):
            while True:
                with self._env.begin(write=True) as txn:
                    cur = txn.cursor(db=db)
                    n = 0
                    if cur.set_range(prefix):
                        while n < self.batch_records and cur.key()[:4] == prefix:
                            cur.delete()
                            n += 1
                removed += n
                if n < self.batch_records:
                    break
        with self._env.begin(write=True) as txn:
            txn.delete(_BUILD + prefix, db=self._meta)
        return removed

    def forget(self, log_id: str) -> bool:
        """Drop a mailbox from the index (its log was deleted)."""
        with self._env.begin(write=True) as txn:
            raw = txn.pop(log_id.encode("utf-8"), db=self._mailboxes)
        if raw is None:
            return False
        meta = MailboxMeta.decode(raw)
        if meta is not None:
            self._purge(meta.mbx)
        return True

    def vacuum(self) -> int:
        """Delete entries no mailbox refers to (left by a crash mid-rebuild)."""
        with self._env.begin() as txn:
            live = set()
            for _k, raw in txn.cursor(db=self._mailboxes):
                meta = MailboxMeta.decode(raw)
                if meta is not None:
                    live.add(meta.mbx)
            for k, v in self._range(txn, self._meta, _BUILD, _BUILD + b"\xff" * 4):
                if _process_alive(U32.unpack(v)[0]):
                    live.add(MBX.unpack(k[len(_BUILD):])[0])
            found: set[int] = set()
            for db in (self._msgs, self._mods, self._cache):
                cur = txn.cursor(db=db)
                ok = cur.first()
                while ok:
                    mbx = MBX.unpack(cur.key()[:4])[0]
                    found.add(mbx)
                    ok = cur.set_range(MBX.pack(mbx + 1)) if mbx < 0xFFFF_FFFF else False
        return sum(self._purge(m) for m in sorted(found - live))

    # -- reading ----------------------------------------------------------------------

    def mailboxes(self) -> list[str]:
        """The log ids of the indexed mailboxes."""
        with self._env.begin() as txn:
            return [bytes(k).decode("utf-8")
                    for k in txn.cursor(db=self._mailboxes).iternext(values=False)]

    @contextmanager
    def view(self, log_id: str) -> Iterator[MailboxView]:
        """A consistent read of one mailbox (one read transaction)."""
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(log_id.encode("utf-8"), db=self._mailboxes)
            meta = MailboxMeta.decode(raw) if raw is not None else None
            if meta is None:
                raise NotFound(f"mailbox {log_id} is not in the index at {self.path}")
            yield MailboxView(self, txn, log_id, meta)

    def status(self, log_id: str) -> MailboxStatus | None:
        try:
            with self.view(log_id) as v:
                return v.status()
        except NotFound:
            return None

    def uids(self, log_id: str) -> list[int]:
        with self.view(log_id) as v:
            return v.uids()

    def get(self, log_id: str, uid: int) -> IndexedMessage | None:
        with self.view(log_id) as v:
            return v.get(uid)

    def messages(self, log_id: str, first: int = 1, last: int = MAX_UID) -> list[IndexedMessage]:
        with self.view(log_id) as v:
            return v.messages(first, last)

    def flags(self, log_id: str, first: int = 1, last: int = MAX_UID,
              ) -> list[tuple[int, frozenset[str]]]:
        with self.view(log_id) as v:
            return v.flags(first, last)

    def changed_since(self, log_id: str, modseq: int) -> list[tuple[int, int]]:
        with self.view(log_id) as v:
            return v.changed_since(modseq)

    # -- helpers shared with MailboxView --------------------------------------------------

    def _flagset(self, meta: MailboxMeta, mask: int) -> frozenset[str]:
        # Within one mbx a bit never changes meaning, so (mbx, mask) is a key.
        got = self._flagsets.get((meta.mbx, mask))
        if got is None:
            if len(self._flagsets) > _FLAGSET_CACHE:
                self._flagsets.clear()
            got = self._flagsets[(meta.mbx, mask)] = names_of_mask(mask, meta.flag_names)
        return got

    def _range(self, txn: Any, db: Any, lo: bytes, hi: bytes, *, values: bool = True,
               ) -> Iterator[Any]:
        cur = txn.cursor(db=db)
        if not cur.set_range(lo):
            return
        if values:
            for k, v in cur:
                if k > hi:
                    return
                yield k, v
        else:
            for k in cur.iternext(values=False):
                if k > hi:
                    return
                yield k

    def _uids(self, txn: Any, mbx: int, first: int, last: int) -> list[int]:
        return [int.from_bytes(k[4:], "big") for k in self._range(
            txn, self._msgs, MSG_KEY.pack(mbx, first), MSG_KEY.pack(mbx, last), values=False)]

    def _flag_list(self, txn: Any, meta: MailboxMeta, first: int, last: int,
                   ) -> list[tuple[int, frozenset[str]]]:
        """(UID, flags) in UID order: the hot loop of SELECT and FETCH FLAGS."""
        cur = txn.cursor(db=self._msgs)
        out: list[tuple[int, frozenset[str]]] = []
        if not cur.set_range(MSG_KEY.pack(meta.mbx, first)):
            return out
        hi = MSG_KEY.pack(meta.mbx, last)
        sets: dict[bytes, frozenset[str]] = {}
        append = out.append
        from_bytes = int.from_bytes
        for k, v in cur:
            if k > hi:
                break
            mb = v[FLAGS_AT:]
            fs = sets.get(mb)
            if fs is None:
                fs = sets[mb] = self._flagset(meta, from_bytes(mb, "little"))
            append((from_bytes(k[4:], "big"), fs))
        return out


class MailboxView:
    """Queries on one mailbox within one read transaction (see :meth:`Index.view`)."""

    def __init__(self, index: Index, txn: Any, log_id: str, meta: MailboxMeta) -> None:
        self._index = index
        self._txn = txn
        self.log_id = log_id
        self._meta = meta

    def status(self) -> MailboxStatus:
        m = self._meta
        return MailboxStatus(self.log_id, m.uidvalidity, m.uidnext, m.highest_modseq,
                             m.messages, m.position)

    def __len__(self) -> int:
        return self._meta.messages

    @property
    def mbx(self) -> int:
        """The mailbox number the entries read here are kept under."""
        return self._meta.mbx

    def raw(self, uid: int) -> bytes | None:
        """A ``messages`` value as stored (layout in ams.index._codec), for
        hot loops that decode only what they need."""
        return self._txn.get(MSG_KEY.pack(self._meta.mbx, uid), db=self._index._msgs)

    def raw_range(self, first: int, last: int) -> Iterator[tuple[int, bytes]]:
        """(UID, stored value) for first <= UID <= last, by one cursor walk."""
        ix = self._index
        from_bytes = int.from_bytes
        for k, v in ix._range(self._txn, ix._msgs, MSG_KEY.pack(self._meta.mbx, first),
                              MSG_KEY.pack(self._meta.mbx, last)):
            yield from_bytes(k[4:], "big"), v

    def values(self, first: int, last: int, count: int | None = None) -> list[bytes]:
        """The stored values for first <= UID <= last, in UID order (no keys).

        With ``count``, the caller expects that many: they are taken in one
        go, and only when exactly ``count`` are in the range; otherwise the
        answer is whatever the range holds, as without it."""
        hi = MSG_KEY.pack(self._meta.mbx, last)
        cur = self._txn.cursor(db=self._index._msgs)
        if not cur.set_range(MSG_KEY.pack(self._meta.mbx, first)):
            return []
        if count:
            # The walk is in C; the range check is on the last key alone
            # (keys are sorted and the first is >= first), then one step on
            # to see that nothing more is in range.
            got = list(itertools.islice(cur.iternext(keys=False), count))
            if len(got) == count and cur.key() <= hi and not (
                    cur.next() and cur.key() <= hi):
                return got
            if not cur.set_range(MSG_KEY.pack(self._meta.mbx, first)):
                return []
        out = []
        append = out.append
        for k, v in cur:
            if k > hi:
                break
            append(v)
        return out

    def first_without(self, flag: str) -> int | None:
        """The lowest UID whose flags lack ``flag`` (SELECT's UNSEEN), by
        testing one bit of each stored mask."""
        try:
            bit = self._meta.flag_names.index(flag)
        except ValueError:
            first = next(self.raw_range(1, MAX_UID), None)
            return first[0] if first is not None else None
        byte, mask = FLAGS_AT + (bit >> 3), 1 << (bit & 7)
        ix = self._index
        for k, v in ix._range(self._txn, ix._msgs, MSG_KEY.pack(self._meta.mbx, 1),
                              MSG_KEY.pack(self._meta.mbx, MAX_UID)):
            if len(v) <= byte or not v[byte] & mask:
                return int.from_bytes(k[4:], "big")
        return None

    def flagset(self, mask: bytes) -> frozenset[str]:
        """The flag names of a stored flag mask (the value's tail)."""
        return self._index._flagset(self._meta, int.from_bytes(mask, "little"))

    def cached(self, uid: int, kind: bytes) -> bytes | None:
        """A cached analysis of message ``uid`` (see :meth:`Index.put_cached`)."""
        return self._txn.get(MSG_KEY.pack(self._meta.mbx, uid) + kind, db=self._index._cache)

    def message(self, uid: int, raw: bytes) -> IndexedMessage:
        """Decode a value from :meth:`raw`."""
        return self._message(uid, raw)

    def uids(self, first: int = 1, last: int = MAX_UID) -> list[int]:
        """UIDs in ascending order (position + 1 is the IMAP sequence number)."""
        return self._index._uids(self._txn, self._meta.mbx, first, last)

    def uid_array(self) -> array[int]:
        """Every UID in ascending order, as 4-octet unsigned ints: the keys'
        big-endian UID halves joined and converted in one go."""
        lo = MSG_KEY.pack(self._meta.mbx, 1)
        hi = MSG_KEY.pack(self._meta.mbx, MAX_UID)
        cur = self._txn.cursor(db=self._index._msgs)
        out = array("I")
        assert out.itemsize == 4
        if cur.set_range(lo):
            keys = []
            append = keys.append
            for k in cur.iternext(values=False):
                if k > hi:
                    break
                append(k[4:])
            out.frombytes(b"".join(keys))
            if sys.byteorder == "little":
                out.byteswap()
        return out

    def get(self, uid: int) -> IndexedMessage | None:
        v = self._txn.get(MSG_KEY.pack(self._meta.mbx, uid), db=self._index._msgs)
        return self._message(uid, v) if v is not None else None

    def messages(self, first: int = 1, last: int = MAX_UID) -> list[IndexedMessage]:
        """Every message with first <= UID <= last, in UID order."""
        ix, mbx = self._index, self._meta.mbx
        return [self._message(int.from_bytes(k[4:], "big"), v) for k, v in ix._range(
            self._txn, ix._msgs, MSG_KEY.pack(mbx, first), MSG_KEY.pack(mbx, last))]

    def flags(self, first: int = 1, last: int = MAX_UID) -> list[tuple[int, frozenset[str]]]:
        """(UID, flags) with first <= UID <= last, in UID order."""
        return self._index._flag_list(self._txn, self._meta, first, last)

    def changed_since(self, modseq: int) -> list[tuple[int, int]]:
        """(UID, MODSEQ) of the messages whose MODSEQ is above ``modseq``, by UID.

        CONDSTORE's CHANGEDSINCE; expunged messages are not included.
        """
        ix, prefix = self._index, MBX.pack(self._meta.mbx)
        if modseq >= 0xFFFF_FFFF_FFFF_FFFF:
            return []
        lo = prefix + BE_U64.pack(modseq + 1)
        hi = prefix + b"\xff" * 12
        out = [(int.from_bytes(k[12:], "big"), int.from_bytes(k[4:12], "big"))
               for k in ix._range(self._txn, ix._mods, lo, hi, values=False)]
        out.sort()
        return out

    def _message(self, uid: int, v: bytes) -> IndexedMessage:
        gen, seq, off, size, date, tz, ms, t = MSG.unpack_from(v)
        return IndexedMessage(uid, MessageLocation(gen, seq, off, size), date, tz,
                              self._index._flagset(self._meta, int.from_bytes(v[FLAGS_AT:],
                                                                              "little")),
                              ms, t)


_OPEN: set[str] = set()
_OPEN_LOCK = threading.Lock()


def _release(key: str) -> None:
    with _OPEN_LOCK:
        _OPEN.discard(key)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _result(log_id: str, ch: Changes, position: Position, stopped_at: CorruptionError | None,
            *, reset: bool = False, uidvalidity_changed: bool = False) -> IndexUpdate:
    ch.settle()
    flagged = ch.flagged - ch.created - ch.gone
    return IndexUpdate(log_id, tuple(sorted(ch.created)), tuple(sorted(ch.gone)),
                       tuple(sorted(flagged)), ch.records, reset, uidvalidity_changed,
                       position, stopped_at)
