"""A mailbox (or bboard) as an append log on the shared filesystem.

Theory of operation
-------------------
A log directory holds::

    head                      {"format": 1, "id": …, "uidvalidity": …, "generation": G}
    lock                      empty; the fcntl lock method locks it
    seg-GGGGGGGG-SSSSSSSS     segments (ams.store.format)

Writers take the log's lock, find the tail, pwrite records at the tail
offset (never O_APPEND), fsync, release.  Readers take no lock: they open the
segment they know, read from the offset they have reached to the end of the
last valid record, and stop.  Rollover and compaction are announced *inside*
the log (NEXT and SEALED records), so a reader only ever watches the size of
one file and never lists the directory.

Crash-safety invariants (cited in the code as ``[W1]`` … ``[W7]``):

W1. A record is acknowledged (append returns) only after the bytes are
    written and, with fsync on, the segment is fsynced.
W2. Readers return only records whose magic, trailer and CRC verify; an
    incomplete or failing record ends what a reader returns, so a torn tail
    is invisible.
W3. A writer, under the lock, verifies the last record of the active
    segment before writing.  If the tail is torn it finds the end of the last
    valid record and truncates there, but only when no valid record follows
    the damage; otherwise it refuses (CorruptionError) and fsck decides, so
    a committed record is never cut away.
W4. Rollover creates and fsyncs the next segment (and the directory) before
    the NEXT record that points to it is written.  A crash in between leaves
    an orphan segment that the next rollover overwrites.
W5. Compaction writes and fsyncs the whole new generation, then replaces
    ``head`` by rename (and fsyncs the directory), and only then appends
    SEALED to the old generation.  Until ``head`` changes the old generation
    is the truth; after, the new one is; readers of the old one follow
    SEALED.  Superseded segments are deleted only after
    ``compaction_grace_seconds``, so a reader holding one is not broken.
W6. UIDs are assigned under the lock from the tail record's ``uidnext``;
    MODSEQs are log positions, which only grow, so every host sees the same
    UIDs and MODSEQs in the same order.
W7. With a delivery id and ``dedupe_since_us``, a message whose delivery id
    already appears in the log's recent records is not written again:
    a retry after a crash files nothing twice.

Directory entries change only at creation, rollover and compaction.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ams.errors import CorruptionError, FormatVersionError, NotFound, StoreError
from ams.store import _fs
from ams.store.format import (
    RECORD_HEADER_SIZE,
    RECORD_OVERHEAD,
    RECORD_TRAILER_SIZE,
    SEGMENT_HEADER_SIZE,
    Append,
    Expunge,
    FlagOp,
    Flags,
    Incomplete,
    Next,
    Range,
    Record,
    RecordHeader,
    RecordType,
    Sealed,
    SegmentHeader,
    decode_header,
    decode_record,
    decode_trailer,
    encode_append_payload,
    encode_expunge_payload,
    encode_flags_payload,
    encode_record,
    find_next_record,
    ranges_from_uids,
    segment_name,
)
from ams.store.lock import Lock

log = logging.getLogger(__name__)

HEAD_FORMAT = 1
READ_CHUNK = 4 * 1024 * 1024
#: Past this many remembered delivery ids a log starts a fresh window.
MAX_KNOWN_IDS = 200_000

#: Crash injection for tests: when $AMS_CRASHPOINT names a point the process
#: dies there with os._exit, as a SIGKILL would leave it.  Unset in
#: production, where each check is one dictionary lookup.
_CRASHPOINT = os.environ.get("AMS_CRASHPOINT", "")


def _crashpoint(name: str) -> None:
    if _CRASHPOINT == name:
        os._exit(137)


@dataclass(frozen=True)
class LogOptions:
    fsync: bool = True
    segment_bytes: int = 64 * 1024 * 1024
    clock_skew: float = 5.0
    compaction_grace: float = 3600.0


@dataclass(frozen=True)
class Head:
    id: str
    uidvalidity: int
    generation: int


@dataclass(frozen=True, order=True)
class Position:
    """Where a reader has got to: the next byte to read."""

    generation: int
    seq: int
    offset: int


@dataclass(frozen=True)
class MessageLocation:
    generation: int
    seq: int
    offset: int
    size: int


@dataclass(frozen=True)
class NewMessage:
    message: bytes
    internal_date: int
    tz_minutes: int = 0
    flags: tuple[str, ...] = ()
    delivery_id: str = ""


@dataclass(frozen=True)
class Appended:
    uid: int
    modseq: int
    delivery_id: str
    #: True when the delivery id was found already filed [W7].
    duplicate: bool = False


@dataclass
class _Tail:
    """The active segment, as found under the lock."""

    fd: int
    path: Path
    header: SegmentHeader
    size: int
    uidnext: int
    highest_modseq: int

    @property
    def position(self) -> int:
        return self.header.base + self.size


def read_head(path: Path) -> Head:
    try:
        data = _fs.read_json(path / "head")
    except FileNotFoundError:
        raise NotFound(f"no mailbox log at {path}") from None
    except ValueError:
        raise CorruptionError("head is not valid JSON", path=path / "head") from None
    if not isinstance(data, dict) or "format" not in data:
        raise CorruptionError("head lacks a format field", path=path / "head")
    if data["format"] > HEAD_FORMAT:
        raise FormatVersionError(f"{path}/head: format {data['format']} is newer than this AMS")
    try:
        return Head(str(data["id"]), int(data["uidvalidity"]), int(data["generation"]))
    except (KeyError, TypeError, ValueError):
        raise CorruptionError("head is missing fields", path=path / "head") from None


def _head_bytes(head: Head) -> bytes:
    return _fs.dump_json({"format": HEAD_FORMAT, "id": head.id, "uidvalidity": head.uidvalidity,
                          "generation": head.generation})


def create_log(path: Path, *, log_id: str, uidvalidity: int, sync: bool = True) -> None:
    """Create a log directory at ``path``, all at once.

    It is assembled under a staging name beside ``path`` and renamed into
    place, so a crash leaves either nothing or a complete log.
    """
    staging = path.with_name(f".new.{path.name}.{_fs.unique_suffix()}")
    os.mkdir(staging)
    try:
        header = SegmentHeader(uidvalidity=uidvalidity, generation=1, seq=1, base=0, uidnext=1,
                               created_us=_fs.now_us(), modseq_floor=0)
        for name, data in ((segment_name(1, 1), header.encode()), ("lock", b""),
                           ("head", _head_bytes(Head(log_id, uidvalidity, 1)))):
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                _fs.write_all(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if sync:
            _fs.fsync_dir(staging)
        try:
            os.rename(staging, path)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise StoreError(f"a log exists already at {path}") from None
            raise
    except BaseException:
        for child in staging.iterdir() if staging.exists() else ():
            child.unlink()
        if staging.exists():
            staging.rmdir()
        raise
    if sync:
        _fs.fsync_dir(path.parent)


class MailboxLog:
    """One log directory: the writer operations (under ``lock``) and readers."""

    def __init__(self, path: Path, lock: Lock, options: LogOptions | None = None) -> None:
        self.path = path
        self.lock = lock
        self.options = options or LogOptions()
        # A cache of where the tail was, to skip re-reading the chain and
        # re-verifying a record this process wrote itself.
        self._cached: tuple[int, int, int, int, int] | None = None  # gen, seq, size, uidnext, hms
        # Delivery ids known to be filed, for [W7] (see _find_delivery_ids).
        self._known: _KnownIds | None = None

    # -- reading ------------------------------------------------------------

    def head(self) -> Head:
        return read_head(self.path)

    def segment_path(self, generation: int, seq: int) -> Path:
        return self.path / segment_name(generation, seq)

    def reader(self, position: Position | None = None) -> LogReader:
        return LogReader(self.path, position)

    def read_message(self, loc: MessageLocation) -> bytes:
        with self.message_reader() as reader:
            return reader.read(loc)

    def message_reader(self) -> MessageReader:
        """A reader that keeps segments open between reads (close it, or use
        it as a context manager): for loops over many messages."""
        return MessageReader(self)

    # -- writing ------------------------------------------------------------

    def append(self, messages: Sequence[NewMessage], *,
               dedupe_since_us: int | None = None,
               lock_timeout: float | None = None) -> list[Appended]:
        """File ``messages`` in order, sharing one fsync (group commit) [W1].

        Returns one Appended per message, in the same order.  Waits at most
        ``lock_timeout`` seconds for the log's lock (None: the configured
        ``store.lock_timeout``), else LockTimeout and nothing is written.
        """
        if not messages:
            return []
        with self.lock.waiting(lock_timeout):
            tail = self._locate_tail()
            try:
                seen: dict[str, tuple[int, int]] = {}
                wanted = {m.delivery_id for m in messages if m.delivery_id}
                if dedupe_since_us is not None and wanted:
                    seen = self._find_delivery_ids(tail, wanted, dedupe_since_us)
                out: list[Appended] = []
                pending: list[tuple[RecordType, bytes, int]] = []
                for m in messages:
                    if m.delivery_id and m.delivery_id in seen:
                        uid, modseq = seen[m.delivery_id]
                        out.append(Appended(uid, modseq, m.delivery_id, duplicate=True))
                        continue
                    payload = encode_append_payload(
                        m.message, internal_date=m.internal_date, tz_minutes=m.tz_minutes,
                        flags=m.flags, delivery_id=m.delivery_id)
                    pending.append((RecordType.APPEND, payload, 1))
                    out.append(Appended(0, 0, m.delivery_id))
                known_current = (self._known is not None and dedupe_since_us is not None
                                 and wanted != set())
                written = self._write(tail, pending)
                it = iter(written)
                result = [a if a.duplicate else Appended(*next(it), a.delivery_id) for a in out]
                if known_current:
                    self._remember(tail, [(a.delivery_id, a.uid, a.modseq) for a in result
                                          if not a.duplicate])
                return result
            finally:
                os.close(tail.fd)

    def store_flags(self, op: FlagOp, flags: Sequence[str], uids: Sequence[int] | Sequence[Range],
                    ) -> int:
        """Record a flag change on ``uids`` (UIDs or ranges); return its MODSEQ."""
        ranges = _as_ranges(uids)
        if not ranges:
            raise ValueError("no UIDs given")
        payload = encode_flags_payload(op, tuple(flags), ranges)
        return self._write_one(RecordType.FLAGS, payload)

    def expunge(self, uids: Sequence[int] | Sequence[Range]) -> int:
        ranges = _as_ranges(uids)
        if not ranges:
            raise ValueError("no UIDs given")
        return self._write_one(RecordType.EXPUNGE, encode_expunge_payload(ranges))

    def _write_one(self, rtype: RecordType, payload: bytes) -> int:
        with self.lock:
            tail = self._locate_tail()
            try:
                ((_uid, modseq),) = self._write(tail, [(rtype, payload, 0)])
                return modseq
            finally:
                os.close(tail.fd)

    def _write(self, tail: _Tail, items: list[tuple[RecordType, bytes, int]],
               ) -> list[tuple[int, int]]:
        """Encode and write records at the tail; rollover as needed; fsync.

        Each item is (type, payload, uids it takes: 1 for APPEND else 0).
        Returns (uid, modseq) for each.
        """
        results: list[tuple[int, int]] = []
        buf: list[bytes] = []
        buf_size = 0
        now = _fs.now_us()
        for rtype, payload, takes in items:
            rec_size = RECORD_OVERHEAD + len(payload)
            offset = tail.size + buf_size
            if (offset > SEGMENT_HEADER_SIZE
                    and offset + rec_size > self.options.segment_bytes):
                self._flush(tail, buf, buf_size)
                buf, buf_size = [], 0
                self._rollover(tail, now)
                offset = tail.size
            uid = tail.uidnext if takes else 0
            tail.uidnext += takes
            modseq = tail.header.base + offset
            buf.append(encode_record(rtype, payload, uid=uid, modseq=modseq, time_us=now,
                                     uidnext=tail.uidnext))
            buf_size += rec_size
            tail.highest_modseq = modseq
            results.append((uid, modseq))
        self._flush(tail, buf, buf_size)
        if self.options.fsync:
            os.fsync(tail.fd)  # [W1]
        self._cached = (tail.header.generation, tail.header.seq, tail.size, tail.uidnext,
                        tail.highest_modseq)
        return results

    def _flush(self, tail: _Tail, buf: list[bytes], size: int) -> None:
        if not buf:
            return
        self.lock.check()  # [L1] never write on a lost lease
        data = b"".join(buf)
        if _CRASHPOINT == "append-torn":
            _fs.pwrite_all(tail.fd, data[:len(data) // 2], tail.size)
            _crashpoint("append-torn")
        _fs.pwrite_all(tail.fd, data, tail.size)
        tail.size += size

    def _rollover(self, tail: _Tail, now: int) -> None:
        """[W4] create the next segment, then point to it with NEXT."""
        h = tail.header
        next_rec = encode_record(RecordType.NEXT, (h.seq + 1).to_bytes(4, "little"), uid=0,
                                 modseq=h.base + tail.size, time_us=now, uidnext=tail.uidnext)
        new_header = SegmentHeader(
            uidvalidity=h.uidvalidity, generation=h.generation, seq=h.seq + 1,
            base=h.base + tail.size + len(next_rec), uidnext=tail.uidnext, created_us=now,
            modseq_floor=h.base + tail.size)
        new_path = self.segment_path(h.generation, h.seq + 1)
        # An orphan from a crash between the two steps may exist: replace it.
        _fs.write_file_atomic(new_path, new_header.encode(), sync=self.options.fsync)
        _crashpoint("rollover-before-next")
        self.lock.check()
        _fs.pwrite_all(tail.fd, next_rec, tail.size)
        if self.options.fsync:
            os.fsync(tail.fd)
        os.close(tail.fd)
        tail.fd = os.open(new_path, os.O_RDWR)
        tail.path = new_path
        tail.header = new_header
        tail.size = SEGMENT_HEADER_SIZE
        tail.highest_modseq = new_header.modseq_floor

    # -- finding and repairing the tail ---------------------------------------

    def _locate_tail(self) -> _Tail:
        """Open the active segment, verified and repaired [W3]; caller closes fd."""
        head = self.head()
        seq = 1
        cached = self._cached
        if cached and cached[0] == head.generation:
            seq = cached[1]
        while True:
            path = self.segment_path(head.generation, seq)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                if seq != 1 and self._cached:
                    self._cached = None  # stale cache: start the chain again
                    seq = 1
                    continue
                raise CorruptionError("segment named by the log chain is missing",
                                      path=path) from None
            try:
                tail = self._verify_segment(fd, path, head, seq)
            except BaseException:
                os.close(fd)
                raise
            if isinstance(tail, int):
                os.close(fd)
                seq = tail
                continue
            return tail

    def _verify_segment(self, fd: int, path: Path, head: Head, seq: int) -> _Tail | int:
        """Return the tail if this segment is active, else the next seq."""
        header = SegmentHeader.decode(_fs.pread_exact(fd, SEGMENT_HEADER_SIZE, 0), path=path)
        if header.generation != head.generation or header.seq != seq:
            raise CorruptionError(f"segment header says {header.generation}/{header.seq}",
                                  path=path, offset=0)
        size = os.fstat(fd).st_size
        c = self._cached
        if c and c[0] == head.generation and c[1] == seq and c[2] == size:
            return _Tail(fd, path, header, size, c[3], c[4])
        if size == SEGMENT_HEADER_SIZE:
            return _Tail(fd, path, header, size, header.uidnext, header.modseq_floor)
        last = self._last_record(fd, size, path)
        if last is None:  # the tail was torn back to the header
            return _Tail(fd, path, header, SEGMENT_HEADER_SIZE, header.uidnext,
                         header.modseq_floor)
        if isinstance(last.body, Next):
            return last.body.next_seq
        if isinstance(last.body, Sealed):
            raise CorruptionError("head names a generation that is sealed", path=path)
        return _Tail(fd, path, header, last.end, max(last.header.uidnext, header.uidnext),
                     max(last.header.modseq, header.modseq_floor))

    def _last_record(self, fd: int, size: int, path: Path) -> Record | None:
        trailer = _fs.pread_exact(fd, RECORD_TRAILER_SIZE, size - RECORD_TRAILER_SIZE)
        total = decode_trailer(trailer)
        if total is not None and size - total >= SEGMENT_HEADER_SIZE:
            data = _fs.pread_exact(fd, total, size - total)
            try:
                return decode_record(data, 0, path=path, base_offset=size - total,
                                     keep_payload=False)
            except (Incomplete, CorruptionError):
                pass
        return self._repair_tail(fd, size, path)

    def _repair_tail(self, fd: int, size: int, path: Path) -> Record | None:
        """Scan the segment; truncate a torn tail, refuse mid-log damage [W3]."""
        data = _fs.pread_exact(fd, size, 0)
        last: Record | None = None
        pos = SEGMENT_HEADER_SIZE
        while pos < size:
            try:
                rec = decode_record(data, pos, path=path, keep_payload=False)
            except (Incomplete, CorruptionError):
                break
            last, pos = rec, rec.end
        if pos >= size:
            return last
        if find_next_record(data, pos + 1, path=path) is not None:
            raise CorruptionError("damaged record followed by valid ones (not a torn tail); "
                                  "run 'ams fsck'", path=path, offset=pos)
        log.warning("repairing torn tail of %s: %d bytes after offset %d", path, size - pos, pos)
        self.lock.check()
        os.ftruncate(fd, pos)
        if self.options.fsync:
            os.fsync(fd)
        return last

    def _find_delivery_ids(self, tail: _Tail, wanted: set[str], since_us: int,
                           ) -> dict[str, tuple[int, int]]:
        """Which of ``wanted`` are filed already, at or after ``since_us`` [W7].

        The first call scans back from the tail to ``since_us`` less the
        clock skew and remembers every delivery id it saw, and where the scan
        ended (:class:`_KnownIds`).  Later calls, still under the lock, read
        forward only what other writers added since; this process's own
        appends are added as they are written.  So the check costs what the
        others wrote, not the whole window again.
        """
        floor = since_us - int(self.options.clock_skew * 1_000_000)
        k = self._known
        if (k is None or k.generation != tail.header.generation or k.floor_us > floor
                or (k.seq, k.offset) > (tail.header.seq, tail.size)):
            k = self._known = self._scan_window(tail, floor)
        elif (k.seq, k.offset) != (tail.header.seq, tail.size) and not self._catch_up(k, tail):
            k = self._known = self._scan_window(tail, floor)
        return {d: k.ids[d] for d in wanted if d in k.ids}

    def _scan_window(self, tail: _Tail, floor: int) -> _KnownIds:
        ids: dict[str, tuple[int, int]] = {}
        for rec_header, did in self._scan_back(tail):
            if rec_header.time_us < floor:
                break
            if did:
                ids.setdefault(did, (rec_header.uid, rec_header.modseq))
        return _KnownIds(tail.header.generation, tail.header.seq, tail.size, floor, ids)

    def _catch_up(self, k: _KnownIds, tail: _Tail) -> bool:
        """Read the records other writers appended after ``k``'s position.

        False when that cannot be done (the log was compacted meanwhile, or
        reading stopped short): the caller must scan the window afresh.
        """
        reader = LogReader(self.path, Position(k.generation, k.seq, k.offset))
        while True:
            batch = reader.poll(limit=4096)
            if batch.reset or batch.stopped_at is not None:
                return False
            for rec in batch.records:
                if isinstance(rec.body, Append) and rec.body.delivery_id:
                    k.ids.setdefault(rec.body.delivery_id, (rec.uid, rec.modseq))
            if not batch.records:
                break
        k.seq, k.offset = batch.position.seq, batch.position.offset
        return True

    def _remember(self, tail: _Tail, filed: list[tuple[str, int, int]]) -> None:
        """Our own appends extend the known window, which stays current."""
        k = self._known
        if k is None or k.generation != tail.header.generation:
            return
        for did, uid, modseq in filed:
            if did:
                k.ids.setdefault(did, (uid, modseq))
        k.seq, k.offset = tail.header.seq, tail.size
        if len(k.ids) > MAX_KNOWN_IDS:
            self._known = None  # rare: start a fresh window rather than grow

    def _scan_back(self, tail: _Tail) -> Iterator[tuple[RecordHeader, str]]:
        """Yield (header, delivery id) of APPEND records, newest first."""
        gen, seq, end = tail.header.generation, tail.header.seq, tail.size
        fd = tail.fd
        own = True
        try:
            while True:
                while end > SEGMENT_HEADER_SIZE:
                    total = decode_trailer(_fs.pread_exact(fd, RECORD_TRAILER_SIZE,
                                                           end - RECORD_TRAILER_SIZE))
                    if total is None or end - total < SEGMENT_HEADER_SIZE:
                        raise CorruptionError("bad trailer in backward scan", path=self.path,
                                              offset=end - RECORD_TRAILER_SIZE)
                    start = end - total
                    raw = _fs.pread_exact(fd, RECORD_HEADER_SIZE + 16, start)
                    header, _crc = decode_header(raw, 0, path=self.path, base_offset=start)
                    if header.type == RecordType.APPEND:
                        flen = int.from_bytes(raw[RECORD_HEADER_SIZE + 10:RECORD_HEADER_SIZE + 12],
                                              "little")
                        dlen = int.from_bytes(raw[RECORD_HEADER_SIZE + 12:RECORD_HEADER_SIZE + 14],
                                              "little")
                        did = _fs.pread_exact(fd, dlen, start + RECORD_HEADER_SIZE + 16 + flen)
                        yield header, did.decode("utf-8", "replace")
                    elif header.type == RecordType.FLAGS or header.type == RecordType.EXPUNGE:
                        yield header, ""
                    end = start
                if seq <= 1:
                    return
                seq -= 1
                if not own:
                    os.close(fd)
                fd = os.open(self.segment_path(gen, seq), os.O_RDONLY)
                own = False
                end = os.fstat(fd).st_size
        finally:
            if not own:
                os.close(fd)

    # -- compaction -----------------------------------------------------------

    def compact(self, *, progress: Callable[[int], None] | None = None) -> CompactStats:
        """Rewrite the live messages into a new generation [W5]."""
        with self.lock:
            tail = self._locate_tail()
            try:
                return self._compact_locked(tail, progress)
            finally:
                os.close(tail.fd)

    def _compact_locked(self, tail: _Tail, progress: Callable[[int], None] | None,
                        ) -> CompactStats:
        head = self.head()
        state = fold(self.reader(Position(head.generation, 1, SEGMENT_HEADER_SIZE)))
        old_gen = head.generation
        new_gen = old_gen + 1
        now = _fs.now_us()
        sealed = encode_record(RecordType.SEALED, new_gen.to_bytes(4, "little"), uid=0,
                               modseq=tail.position, time_us=now, uidnext=tail.uidnext)
        highest = max(state.highest_modseq, tail.highest_modseq)
        header = SegmentHeader(uidvalidity=head.uidvalidity, generation=new_gen, seq=1,
                               base=tail.position + len(sealed),
                               uidnext=max(tail.uidnext, state.uidnext),
                               created_us=now, modseq_floor=highest)
        nbytes = self.write_generation(state, header, progress)
        _crashpoint("compact-before-head")
        self.switch_head(head, new_gen)
        _crashpoint("compact-before-sealed")
        _fs.pwrite_all(tail.fd, sealed, tail.size)
        if self.options.fsync:
            os.fsync(tail.fd)
        self._cached = None
        removed = self._remove_superseded(old_gen)
        return CompactStats(old_gen, new_gen, len(state.messages), state.expunged, nbytes,
                            removed)

    def write_generation(self, state: FoldedLog, header: SegmentHeader,
                         progress: Callable[[int], None] | None = None) -> int:
        """Write ``state``'s messages as the generation ``header`` starts.

        Each message keeps its UID, MODSEQ, time and delivery id, with its
        flags folded in.  Returns the bytes written.  Caller holds the lock.
        """
        writer = _SegmentWriter(self, header)
        try:
            for n, (uid, msg) in enumerate(sorted(state.messages.items()), 1):
                body = self.read_message(msg.location)
                payload = encode_append_payload(body, internal_date=msg.internal_date,
                                                tz_minutes=msg.tz_minutes,
                                                flags=sorted(msg.flags),
                                                delivery_id=msg.delivery_id)
                # uidnext is the log's, not uid + 1: UIDs of expunged
                # messages at the end must never be handed out again [W6].
                writer.add(encode_record(RecordType.APPEND, payload, uid=uid, modseq=msg.modseq,
                                         time_us=msg.time_us, uidnext=header.uidnext))
                if progress and n % 1000 == 0:
                    progress(n)
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
        return writer.bytes

    def switch_head(self, head: Head, generation: int) -> None:
        """Make ``generation`` the log's truth (the commit point of [W5])."""
        self.lock.check()
        _fs.write_file_atomic(self.path / "head",
                              _head_bytes(Head(head.id, head.uidvalidity, generation)),
                              sync=self.options.fsync)
        self._cached = None

    def _remove_superseded(self, current_old: int) -> int:
        """Delete generations older than ``current_old`` once past the grace [W5]."""
        removed = 0
        for gen in range(current_old - 1, 0, -1):
            first = self.segment_path(gen, 1)
            try:
                st = os.stat(first)
            except FileNotFoundError:
                break  # older generations went earlier
            # The newest file of a generation carries SEALED; age by it.
            seq, newest = 1, st.st_mtime
            while True:
                try:
                    newest = max(newest, os.stat(self.segment_path(gen, seq + 1)).st_mtime)
                except FileNotFoundError:
                    break
                seq += 1
            if time.time() - newest < self.options.compaction_grace:
                continue
            for s in range(1, seq + 1):
                self.segment_path(gen, s).unlink(missing_ok=True)
                removed += 1
        if removed and self.options.fsync:
            _fs.fsync_dir(self.path)
        return removed


class MessageReader:
    """Reads messages by location, keeping each segment it touches open."""

    def __init__(self, log_: MailboxLog) -> None:
        self._log = log_
        self._fds: dict[tuple[int, int], int] = {}

    def read(self, loc: MessageLocation) -> bytes:
        key = (loc.generation, loc.seq)
        fd = self._fds.get(key)
        if fd is None:
            try:
                fd = os.open(self._log.segment_path(*key), os.O_RDONLY)
            except FileNotFoundError:
                raise NotFound(f"segment {loc.generation}/{loc.seq} of {self._log.path} is "
                               "gone (compacted away); reindex") from None
            self._fds[key] = fd
        data = _fs.pread_exact(fd, loc.size, loc.offset)
        if len(data) != loc.size:
            raise CorruptionError("message extends past the end of its segment",
                                  path=self._log.segment_path(*key), offset=loc.offset)
        return data

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> MessageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _KnownIds:
    """Every delivery id filed in the log from ``floor_us`` up to (seq, offset)."""

    generation: int
    seq: int
    offset: int
    floor_us: int
    ids: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class CompactStats:
    old_generation: int
    new_generation: int
    messages: int
    expunged: int
    bytes: int
    segments_removed: int


class _SegmentWriter:
    """Writes a fresh generation's segments during compaction."""

    def __init__(self, log_: MailboxLog, header: SegmentHeader) -> None:
        self.log = log_
        self.header = header
        self.paths: list[Path] = []
        self.bytes = 0
        self._open(header)

    def _open(self, header: SegmentHeader) -> None:
        path = self.log.segment_path(header.generation, header.seq)
        path.unlink(missing_ok=True)  # an orphan of an earlier, crashed compaction
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        self.paths.append(path)
        self.header = header
        self.size = 0
        self._buf: list[bytes] = [header.encode()]
        self._buf_size = SEGMENT_HEADER_SIZE

    def add(self, rec: bytes) -> None:
        if (self.size + self._buf_size > SEGMENT_HEADER_SIZE
                and self.size + self._buf_size + len(rec) > self.log.options.segment_bytes):
            h = self.header
            pos = h.base + self.size + self._buf_size
            nxt = encode_record(RecordType.NEXT, (h.seq + 1).to_bytes(4, "little"), uid=0,
                                modseq=pos, time_us=_fs.now_us(),
                                uidnext=int.from_bytes(rec[32:36], "little"))
            self._push(nxt)
            self._close()
            self._open(SegmentHeader(
                uidvalidity=h.uidvalidity, generation=h.generation, seq=h.seq + 1,
                base=pos + len(nxt), uidnext=h.uidnext, created_us=_fs.now_us(),
                modseq_floor=h.modseq_floor))
        self._push(rec)

    def _push(self, b: bytes) -> None:
        self._buf.append(b)
        self._buf_size += len(b)
        self.bytes += len(b)
        if self._buf_size >= READ_CHUNK:
            self._drain()

    def _drain(self) -> None:
        _fs.pwrite_all(self.fd, b"".join(self._buf), self.size)
        self.size += self._buf_size
        self._buf, self._buf_size = [], 0

    def _close(self) -> None:
        self._drain()
        if self.log.options.fsync:
            os.fsync(self.fd)
        os.close(self.fd)

    def finish(self) -> None:
        self._close()
        if self.log.options.fsync:
            _fs.fsync_dir(self.log.path)

    def abandon(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        for p in self.paths:
            p.unlink(missing_ok=True)


# -- reading -------------------------------------------------------------------


@dataclass
class ReadBatch:
    records: list[Record]
    #: Where the next poll starts.
    position: Position
    #: True when the log was compacted (or the position was from another
    #: generation): ``records`` replays the whole current generation and the
    #: consumer must drop what it had before applying them.
    reset: bool = False
    #: Set when reading stopped at bytes that do not verify.  At the very
    #: end of a segment this is usually a write in progress or a torn tail
    #: awaiting repair; anywhere else it is damage for fsck.
    stopped_at: CorruptionError | None = None
    #: Per record, the (generation, seq) of the segment it came from.
    segments: list[tuple[int, int]] = field(default_factory=list)
    #: The largest HIGHESTMODSEQ / UIDNEXT recorded in a segment header read
    #: by this poll (0 if none was read).  After compaction these carry what
    #: the dropped FLAGS and EXPUNGE records said; consumers keep the max.
    modseq_floor: int = 0
    uidnext_floor: int = 0

    def location(self, i: int) -> MessageLocation | None:
        rec = self.records[i]
        if not isinstance(rec.body, Append):
            return None
        gen, seq = self.segments[i]
        return MessageLocation(gen, seq, rec.offset + RECORD_HEADER_SIZE + rec.body.message_offset,
                               rec.body.message_size)


class LogReader:
    """Follows one log from a position; never takes a lock [W2]."""

    def __init__(self, path: Path, position: Position | None = None,
                 *, keep_payload: bool = False) -> None:
        self.path = path
        self.position = position
        self.keep_payload = keep_payload
        self.modseq_floor = 0
        self.uidnext_floor = 0

    def poll(self, *, limit: int | None = None) -> ReadBatch:
        """Read what has been committed since the last poll.

        With ``limit``, stops after about that many records (call again).
        """
        head = read_head(self.path)
        reset = False
        pos = self.position
        if pos is None or pos.generation != head.generation:
            reset = pos is not None
            if pos is not None and pos.generation > head.generation:
                raise CorruptionError(f"reader is at generation {pos.generation}, "
                                      f"head says {head.generation}", path=self.path)
            pos = Position(head.generation, 1, SEGMENT_HEADER_SIZE)
            if self.position is None:
                reset = True
        batch = ReadBatch([], pos, reset)
        while True:
            seg = self.path / segment_name(pos.generation, pos.seq)
            try:
                fd = os.open(seg, os.O_RDONLY)
            except FileNotFoundError:
                if pos.generation < head.generation:
                    # Our generation was compacted and removed: start over.
                    return self._restart(head, limit)
                raise CorruptionError("segment in the chain is missing", path=seg) from None
            try:
                size = os.fstat(fd).st_size
                if size < pos.offset:
                    # Bytes we read vanished (a host crash lost unsynced data).
                    os.close(fd)
                    fd = -1
                    return self._restart(head, limit)
                follow = self._read_segment(fd, seg, pos, size, batch, limit)
            finally:
                if fd >= 0:
                    os.close(fd)
            pos = batch.position
            if follow is None:
                break
            if isinstance(follow, Next):
                pos = Position(pos.generation, follow.next_seq, SEGMENT_HEADER_SIZE)
                batch.position = pos
                continue
            # SEALED: the log moved to a new generation.
            self.position = None
            return self._restart(read_head(self.path), limit)
        self.position = batch.position
        return batch

    def _restart(self, head: Head, limit: int | None) -> ReadBatch:
        self.position = None
        batch = self.poll(limit=limit)
        batch.reset = True
        return batch

    def _read_segment(self, fd: int, seg: Path, pos: Position, size: int, batch: ReadBatch,
                      limit: int | None) -> Next | Sealed | None:
        offset = pos.offset
        if offset == SEGMENT_HEADER_SIZE or offset < SEGMENT_HEADER_SIZE:
            header = SegmentHeader.decode(_fs.pread_exact(fd, SEGMENT_HEADER_SIZE, 0), path=seg)
            if header.generation != pos.generation or header.seq != pos.seq:
                raise CorruptionError("segment header does not match its name", path=seg)
            batch.modseq_floor = max(batch.modseq_floor, header.modseq_floor)
            batch.uidnext_floor = max(batch.uidnext_floor, header.uidnext)
            offset = SEGMENT_HEADER_SIZE
        while offset < size:
            want = min(size - offset, max(READ_CHUNK, 0))
            data = memoryview(_fs.pread_exact(fd, want, offset))  # slices without copies
            p = 0
            while p < len(data):
                try:
                    rec = decode_record(data, p, path=seg, base_offset=offset,
                                        keep_payload=self.keep_payload)
                except Incomplete:
                    if p == 0:
                        # A record bigger than the chunk: read it whole.
                        try:
                            hdr, _ = decode_header(data, 0, path=seg, base_offset=offset)
                        except Incomplete:
                            batch.position = Position(pos.generation, pos.seq, offset)
                            return None
                        except CorruptionError as e:
                            batch.stopped_at = e
                            batch.position = Position(pos.generation, pos.seq, offset)
                            return None
                        if offset + hdr.size > size:
                            batch.position = Position(pos.generation, pos.seq, offset)
                            return None
                        data = memoryview(_fs.pread_exact(fd, hdr.size, offset))
                        continue
                    break
                except CorruptionError as e:
                    batch.stopped_at = e
                    batch.position = Position(pos.generation, pos.seq, offset + p)
                    return None
                p = rec.end - offset
                if isinstance(rec.body, (Next, Sealed)):
                    batch.position = Position(pos.generation, pos.seq, offset + p)
                    return rec.body
                batch.records.append(rec)
                batch.segments.append((pos.generation, pos.seq))
                if limit is not None and len(batch.records) >= limit:
                    batch.position = Position(pos.generation, pos.seq, offset + p)
                    return None
            offset += p
            if p == 0:
                break
        batch.position = Position(pos.generation, pos.seq, offset)
        return None

    def records(self) -> Iterator[tuple[Record, MessageLocation | None]]:
        """Every record from the position to the end, with message locations.

        The segment-header floors seen on the way are kept in
        ``self.modseq_floor`` and ``self.uidnext_floor``.
        """
        while True:
            batch = self.poll(limit=10_000)
            self.modseq_floor = max(self.modseq_floor, batch.modseq_floor)
            self.uidnext_floor = max(self.uidnext_floor, batch.uidnext_floor)
            if batch.stopped_at is not None and not batch.records:
                raise batch.stopped_at
            for i, rec in enumerate(batch.records):
                yield rec, batch.location(i)
            if not batch.records:
                return


# -- folding a log into state --------------------------------------------------------


@dataclass
class MessageState:
    uid: int
    location: MessageLocation
    internal_date: int
    tz_minutes: int
    flags: set[str]
    modseq: int
    time_us: int
    delivery_id: str


@dataclass
class FoldedLog:
    messages: dict[int, MessageState] = field(default_factory=dict)
    highest_modseq: int = 0
    uidnext: int = 1
    expunged: int = 0


def fold(source: LogReader | Iterator[tuple[Record, MessageLocation | None]]) -> FoldedLog:
    """Apply records in order: the mailbox's current state.

    Given a LogReader, reads it to the end and includes its segment-header
    floors (which is what compaction needs); given bare records, only those.
    """
    if isinstance(source, LogReader):
        st = fold(source.records())
        st.highest_modseq = max(st.highest_modseq, source.modseq_floor)
        st.uidnext = max(st.uidnext, source.uidnext_floor)
        return st
    records = source
    st = FoldedLog()
    msgs = st.messages
    for rec, loc in records:
        h = rec.header
        st.highest_modseq = max(st.highest_modseq, h.modseq)
        st.uidnext = max(st.uidnext, h.uidnext)
        body = rec.body
        if isinstance(body, Append):
            assert loc is not None
            msgs[h.uid] = MessageState(h.uid, loc, body.internal_date, body.tz_minutes,
                                       set(body.flags), h.modseq, h.time_us, body.delivery_id)
        elif isinstance(body, Expunge):
            for uid in _uids_present(msgs, body.ranges):
                del msgs[uid]
                st.expunged += 1
        elif isinstance(body, Flags):
            for uid in _uids_present(msgs, body.ranges):
                m = msgs[uid]
                if body.op == FlagOp.REPLACE:
                    m.flags = set(body.flags)
                elif body.op == FlagOp.ADD:
                    m.flags.update(body.flags)
                else:
                    m.flags.difference_update(body.flags)
                m.modseq = h.modseq
    return st


def _uids_present(msgs: dict[int, MessageState], ranges: tuple[Range, ...]) -> list[int]:
    out: list[int] = []
    for lo, hi in ranges:
        if hi - lo < len(msgs):
            out.extend(u for u in range(lo, hi + 1) if u in msgs)
        else:
            out.extend(u for u in msgs if lo <= u <= hi)
    return out


def _as_ranges(uids: Sequence[int] | Sequence[Range]) -> list[Range]:
    if uids and isinstance(uids[0], tuple):
        return list(uids)  # type: ignore[arg-type]
    return ranges_from_uids(list(uids))  # type: ignore[arg-type]


__all__ = [
    "Appended", "CompactStats", "FoldedLog", "Head", "LogOptions", "LogReader", "MailboxLog",
    "MessageLocation", "MessageReader", "MessageState", "NewMessage", "Position", "ReadBatch", "create_log", "fold",
    "read_head",
]
