"""Per-user bboard state: subscriptions, and flags (\\Seen …) per board per user.

Theory of operation
-------------------
A board's posts are shared, but whether alice has read a post is hers
alone, so flags never go into the board's log.  Each user has a small
directory of their own, keyed by their user id (a user deleted and created
again starts afresh), outside every board's directory::

    bboards/users/ab/cd/USERID/      ab/cd = shard_path(USERID)
        lock                         empty; the user's state lock (fcntl method)
        subscriptions.json           {"format": 1, "boards": ["andrew.general", …]}
        flags-BOARDID                this user's flags on one board (below)

Nothing here grows with the number of posts: a user has one flags file per
board they have ever flagged a post on, and the file holds UID *ranges*.

A flags file is a 32-byte header followed by FLAGS records exactly as in a
mailbox log (ams.store.format: 40-byte header, payload ``op, flags, UID
ranges``, 8-byte trailer, CRC-32)::

    off size field
      0   8  magic          b"\\x89AMSBBS\\n"
      8   2  version        1
     10   2  header_size    32
     12   4  reserved       0
     16   8  created_us     when this file (this compaction) was written
     24   4  base_size      the file's size when it was written (header and
                            the records it started with)
     28   4  crc            CRC-32 of bytes 0..27

Each record's ``uid`` and ``uidnext`` are 0; its ``modseq`` counts the
operations applied to the user's flags on this board (1, 2, …, carried
over by compaction), and ``time_us`` says when.  The flags of a post are
what folding the records in order gives: REPLACE sets a UID's flags to the
record's (dropping the others), ADD and REMOVE add and take away.

When a file has grown past ``max(COMPACT_BYTES, 2 × base_size)`` the writer
rewrites it as one ADD record per flag holding every UID range with that
flag (for most users: ``\\Seen`` on a handful of ranges).

Readers fold the records with no lock.  :meth:`UserState.flags` keeps the
folded state per board and, while the file's inode is unchanged and it has
only grown, reads just the new bytes; :meth:`UserState.version` is the
file's (inode, size, mtime): a cheap way for an IMAP session to notice that
another session changed the flags.

Invariants (cited in the code as ``[S1]`` … ``[S5]``):

S1. Writers hold the user's state lock (``bbstate-USERID``).  An operation
    is acknowledged only after its record has been written at the verified
    end of the file and, with fsync on, fsynced.
S2. Readers apply records in order up to the first one that is incomplete
    or fails its checks, so a record being written, or torn by a crash, is
    invisible.
S3. Before appending, the writer reads and folds the whole file (it is
    small: compaction keeps it within twice its folded size, and at least
    COMPACT_BYTES).  A torn tail is truncated to the end of the last valid
    record; damage
    followed by valid records (not a torn tail) is salvaged by rewriting the
    file from every record that still verifies, as compaction does.  These
    are flags, not mail: a warning is logged and the user's work goes on.
S4. A flags file and ``subscriptions.json`` are only ever created or
    replaced whole: written in this host's staging dir, fsynced, renamed
    into place, the directory fsynced.  A reader sees the old file or the
    new one, never a part.  A replaced file has a new inode, which tells a
    caching reader to fold it afresh.
S5. Compaction keeps the fold exactly: the rewritten file folds to the same
    flags as the file it replaces, and its operation count goes on from the
    old one.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ams.errors import CorruptionError, FormatVersionError
from ams.store import FlagOp, Store, _fs
from ams.store.format import (
    MAX_UID,
    Flags,
    Incomplete,
    Range,
    RecordType,
    decode_record,
    encode_flags_payload,
    encode_record,
    find_next_record,
    ranges_from_uids,
)
from ams.store.lock import Lock
from ams.store.mailboxes import check_id
from bboard._registry import validate_board_name

log = logging.getLogger(__name__)

STATE_MAGIC = b"\x89AMSBBS\n"
STATE_VERSION = 1
STATE_HEADER_SIZE = 32
SUBSCRIPTIONS_FORMAT = 1
SUBSCRIPTIONS_FILE = "subscriptions.json"
LOCK_FILE = "lock"
#: A flags file is compacted once it passes max(this, twice its compacted size).
COMPACT_BYTES = 16 * 1024
_HEADER = struct.Struct("<8sHHIQI")
_CRC = struct.Struct("<I")
assert _HEADER.size + _CRC.size == STATE_HEADER_SIZE


def encode_state_header(*, created_us: int, base_size: int) -> bytes:
    body = _HEADER.pack(STATE_MAGIC, STATE_VERSION, STATE_HEADER_SIZE, 0, created_us, base_size)
    return body + _CRC.pack(zlib.crc32(body))


def decode_state_header(data: bytes, *, path: object = None) -> int:
    """Check a flags file's header; return its ``base_size``."""
    if len(data) < STATE_HEADER_SIZE:
        raise CorruptionError("bboard state header is truncated", path=path, offset=0)
    magic, version, hsize, _r, _created, base = _HEADER.unpack_from(data)
    if magic != STATE_MAGIC:
        raise CorruptionError("not a bboard state file (bad magic)", path=path, offset=0)
    if version > STATE_VERSION:
        raise FormatVersionError(f"{path}: bboard state version {version} is newer than "
                                 f"this AMS reads ({STATE_VERSION})")
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if crc != zlib.crc32(data[:_HEADER.size]) or hsize != STATE_HEADER_SIZE:
        raise CorruptionError("bboard state header checksum mismatch", path=path, offset=0)
    return int(base)


# -- UID range sets ------------------------------------------------------------------


class RangeSet:
    """A set of UIDs kept as sorted, disjoint, non-adjacent inclusive ranges."""

    __slots__ = ("_lo", "_hi")

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in sorted(ranges):
            self.add(lo, hi)

    def add(self, lo: int, hi: int) -> None:
        # The ranges that touch or overlap [lo, hi] merge with it.
        i = bisect.bisect_left(self._hi, lo - 1)
        j = bisect.bisect_right(self._lo, hi + 1)
        if i < j:
            lo = min(lo, self._lo[i])
            hi = max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]

    def remove(self, lo: int, hi: int) -> None:
        i = bisect.bisect_left(self._hi, lo)
        j = bisect.bisect_right(self._lo, hi)
        if i >= j:
            return
        keep_lo: list[int] = []
        keep_hi: list[int] = []
        if self._lo[i] < lo:
            keep_lo.append(self._lo[i])
            keep_hi.append(lo - 1)
        if self._hi[j - 1] > hi:
            keep_lo.append(hi + 1)
            keep_hi.append(self._hi[j - 1])
        self._lo[i:j] = keep_lo
        self._hi[i:j] = keep_hi

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        i = bisect.bisect_right(self._lo, uid) - 1
        return i >= 0 and uid <= self._hi[i]

    def __bool__(self) -> bool:
        return bool(self._lo)

    def __len__(self) -> int:
        return sum(h - lo + 1 for lo, h in zip(self._lo, self._hi, strict=True))

    def __iter__(self) -> Iterator[int]:
        for lo, hi in zip(self._lo, self._hi, strict=True):
            yield from range(lo, hi + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges() == other.ranges()

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()!r})"

    def ranges(self) -> list[Range]:
        return list(zip(self._lo, self._hi, strict=True))

    def copy(self) -> RangeSet:
        c = RangeSet()
        c._lo, c._hi = list(self._lo), list(self._hi)
        return c

    def count_in(self, uids: Iterable[int]) -> int:
        """How many of ``uids`` are in the set."""
        return sum(1 for u in uids if u in self)


# -- folding ---------------------------------------------------------------------------


@dataclass
class FlagState:
    """One user's flags on one board: per flag, the UIDs that carry it."""

    by_flag: dict[str, RangeSet] = field(default_factory=dict)
    #: Operations applied so far (the last record's modseq).
    ops: int = 0

    def apply(self, op: FlagOp, flags: Sequence[str], ranges: Sequence[Range]) -> None:
        if op == FlagOp.REPLACE:
            for f, rs in self.by_flag.items():
                if f not in flags:
                    for lo, hi in ranges:
                        rs.remove(lo, hi)
        for f in flags:
            have = self.by_flag.get(f)
            if op == FlagOp.REMOVE:
                if have is not None:
                    for lo, hi in ranges:
                        have.remove(lo, hi)
                continue
            rs = have if have is not None else self.by_flag.setdefault(f, RangeSet())
            for lo, hi in ranges:
                rs.add(lo, hi)
        for f in [f for f, rs in self.by_flag.items() if not rs]:
            del self.by_flag[f]

    def per_uid(self) -> dict[int, frozenset[str]]:
        acc: dict[int, set[str]] = {}
        for f, rs in self.by_flag.items():
            for uid in rs:
                acc.setdefault(uid, set()).add(f)
        cache: dict[frozenset[str], frozenset[str]] = {}
        out: dict[int, frozenset[str]] = {}
        for uid in sorted(acc):
            fs = frozenset(acc[uid])
            out[uid] = cache.setdefault(fs, fs)
        return out

    def copy(self) -> FlagState:
        return FlagState({f: rs.copy() for f, rs in self.by_flag.items()}, self.ops)

    def compacted_records(self, time_us: int) -> bytes:
        """One ADD record per flag [S5]."""
        out = []
        for f in sorted(self.by_flag):
            out.append(encode_record(RecordType.FLAGS,
                                     encode_flags_payload(FlagOp.ADD, [f],
                                                          self.by_flag[f].ranges()),
                                     uid=0, modseq=self.ops, time_us=time_us, uidnext=0))
        return b"".join(out)


def fold_records(data: bytes | memoryview, start: int, state: FlagState, *,
                 path: object = None) -> int:
    """Apply the records in ``data[start:]`` to ``state``; return where they end [S2]."""
    pos = start
    while pos < len(data):
        try:
            rec = decode_record(data, pos, path=path, keep_payload=False)
        except (Incomplete, CorruptionError):
            break
        body = rec.body
        if isinstance(body, Flags):
            state.apply(body.op, body.flags, body.ranges)
            state.ops = max(state.ops, rec.modseq)
        pos = rec.end
    return pos


# -- one user's state ------------------------------------------------------------------


@dataclass
class _Cached:
    ino: int
    #: Where folding stopped (the end of the last valid record).
    end: int
    size: int
    state: FlagState


def check_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """IMAP flag names: no space or control characters, not empty."""
    out = tuple(flags)
    for f in out:
        if not isinstance(f, str) or not f or " " in f or any(
                ord(c) < 0x21 or ord(c) == 0x7F for c in f) or len(f.encode()) > 200:
            raise ValueError(f"bad flag {f!r}")
    return out


class UserState:
    """One user's bboard state.  Synchronous and thread-safe; no trio."""

    def __init__(self, store: Store, user: str, user_id: str) -> None:
        self._store = store
        self.user = user
        self.user_id = check_id(user_id)
        self.dir = store.root / "bboards" / "users" / _fs.shard_path(user_id) / user_id
        self._mutex = threading.Lock()
        self._cache: dict[str, _Cached] = {}

    def flags_path(self, board_id: str) -> Path:
        return self.dir / f"flags-{check_id(board_id)}"

    # -- subscriptions ---------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        path = self.dir / SUBSCRIPTIONS_FILE
        try:
            data = _fs.read_json(path)
        except FileNotFoundError:
            return []
        except ValueError:
            raise CorruptionError("subscriptions file is not valid JSON", path=path) from None
        if not isinstance(data, dict) or not isinstance(data.get("format"), int):
            raise CorruptionError("subscriptions file lacks a format field", path=path)
        if data["format"] > SUBSCRIPTIONS_FORMAT:
            raise FormatVersionError(f"{path}: format {data['format']} is newer than this AMS")
        boards = data.get("boards")
        if not isinstance(boards, list) or not all(isinstance(b, str) for b in boards):
            raise CorruptionError("subscriptions file has no list of boards", path=path)
        return sorted(boards)

    def subscribe(self, name: str, on: bool = True) -> bool:
        """Subscribe to (or with ``on=False`` unsubscribe from) board ``name``.

        The board need not exist (IMAP lets a client subscribe to any name).
        Returns whether anything changed.
        """
        name = validate_board_name(name)
        with self._locked() as lock:
            subs = set(self.subscriptions())
            if (name in subs) == on:
                return False
            (subs.add if on else subs.discard)(name)
            lock.check()  # [L1]
            _fs.write_file_atomic(self.dir / SUBSCRIPTIONS_FILE,  # [S4]
                                  _fs.dump_json({"format": SUBSCRIPTIONS_FORMAT,
                                                 "boards": sorted(subs)}),
                                  staging_dir=self._store.staging_dir(), sync=self._store.fsync)
            return True

    # -- flags: reading (no lock) [S2] --------------------------------------------------

    def version(self, board_id: str) -> tuple[int, int, int]:
        """Changes whenever this user's flags on the board change; (0, 0, 0) if none yet."""
        try:
            st = os.stat(self.flags_path(board_id))
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def flag_state(self, board_id: str) -> FlagState:
        """The folded flags (a copy the caller may keep)."""
        path = self.flags_path(board_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            with self._mutex:
                self._cache.pop(board_id, None)
            return FlagState()
        try:
            st = os.fstat(fd)
            with self._mutex:
                c = self._cache.get(board_id)
                if c is not None and c.ino == st.st_ino and c.end == st.st_size:
                    return c.state.copy()
                if c is not None and (c.ino != st.st_ino or st.st_size < c.end):
                    c = None  # replaced (compaction) or cut back: fold it afresh
                base = c.state.copy() if c is not None else None
                start = c.end if c is not None else 0
            if base is None:
                data = _fs.pread_exact(fd, st.st_size, 0)
                decode_state_header(data, path=path)
                base, start, data_off = FlagState(), STATE_HEADER_SIZE, 0
            else:
                data = _fs.pread_exact(fd, st.st_size - start, start)
                data_off = start
            end = data_off + fold_records(memoryview(data), start - data_off, base, path=path)
        finally:
            os.close(fd)
        with self._mutex:
            self._cache[board_id] = _Cached(st.st_ino, end, st.st_size, base)
            if len(self._cache) > 4096:
                self._cache.clear()
        return base.copy()

    def flags(self, board_id: str) -> dict[int, frozenset[str]]:
        """{UID: flags}, for the UIDs that have any flag."""
        return self.flag_state(board_id).per_uid()

    def seen(self, board_id: str) -> RangeSet:
        """The UIDs this user has seen (``\\Seen``)."""
        return self.flag_state(board_id).by_flag.get("\\Seen", RangeSet())

    # -- flags: writing [S1] ------------------------------------------------------------

    def store(self, board_id: str, op: FlagOp, flags: Sequence[str],
              uids: Sequence[int] | Sequence[Range]) -> None:
        """Record a flag change for ``uids`` (UIDs, or inclusive ranges)."""
        flags = check_flags(flags)
        ranges = _as_ranges(uids)
        if not ranges or (op != FlagOp.REPLACE and not flags):
            return
        path = self.flags_path(board_id)
        with self._locked() as lock:
            fd, end, state = self._open_for_append(path, lock)
            try:
                rec = encode_record(RecordType.FLAGS, encode_flags_payload(op, flags, ranges),
                                    uid=0, modseq=state.ops + 1, time_us=_fs.now_us(),
                                    uidnext=0)
                lock.check()  # [L1]
                _fs.pwrite_all(fd, rec, end)
                if self._store.fsync:
                    os.fsync(fd)
                size = end + len(rec)
                base = decode_state_header(_fs.pread_exact(fd, STATE_HEADER_SIZE, 0), path=path)
            finally:
                os.close(fd)
            if size > max(COMPACT_BYTES, 2 * base):
                state.apply(op, flags, ranges)
                state.ops += 1
                self._rewrite(path, state, lock)

    def forget(self, board_id: str) -> None:
        """Drop every flag of this user on the board (the board was deleted)."""
        with self._locked():
            self.flags_path(board_id).unlink(missing_ok=True)
            if self._store.fsync:
                _fs.fsync_dir(self.dir)

    def compact(self, board_id: str) -> None:
        """Rewrite the flags file in its folded form now."""
        path = self.flags_path(board_id)
        with self._locked() as lock:
            if not path.exists():
                return
            fd, _end, state = self._open_for_append(path, lock)
            os.close(fd)
            self._rewrite(path, state, lock)

    # -- internals ------------------------------------------------------------------------

    def _open_for_append(self, path: Path, lock: Lock) -> tuple[int, int, FlagState]:
        """Open (creating) the flags file; return fd, the verified end and the fold [S3]."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            lock.check()
            _fs.write_file_atomic(path, encode_state_header(created_us=_fs.now_us(),  # [S4]
                                                            base_size=STATE_HEADER_SIZE),
                                  staging_dir=self._store.staging_dir(), sync=self._store.fsync)
            fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            data = _fs.pread_exact(fd, size, 0)
            decode_state_header(data, path=path)
            state = FlagState()
            end = fold_records(memoryview(data), STATE_HEADER_SIZE, state, path=path)
            salvaged = end < size and not self._repair(fd, path, data, end, state, lock)
        except BaseException:
            os.close(fd)
            raise
        if salvaged:  # the file was replaced: append to the new one
            os.close(fd)
            return self._open_for_append(path, lock)
        return fd, end, state

    def _repair(self, fd: int, path: Path, data: bytes, end: int, state: FlagState,
                lock: Lock) -> bool:
        """[S3] Truncate a torn tail (True), or salvage mid-file damage (False)."""
        if find_next_record(data, end + 1, path=path) is None:
            log.warning("bboard state %s: truncating a torn tail of %d bytes", path,
                        len(data) - end)
            lock.check()
            os.ftruncate(fd, end)
            if self._store.fsync:
                os.fsync(fd)
            return True
        log.warning("bboard state %s: damaged at offset %d; keeping every record that "
                    "verifies", path, end)
        pos = end
        while (nxt := find_next_record(data, pos + 1, path=path)) is not None:
            pos = fold_records(memoryview(data), nxt, state, path=path)
        self._rewrite(path, state, lock)
        return False

    def _rewrite(self, path: Path, state: FlagState, lock: Lock) -> int:
        """Replace the file by its folded form [S4, S5]; return its size."""
        now = _fs.now_us()
        records = state.compacted_records(now)
        size = STATE_HEADER_SIZE + len(records)
        data = encode_state_header(created_us=now, base_size=size) + records
        lock.check()
        _fs.write_file_atomic(path, data, staging_dir=self._store.staging_dir(),
                              sync=self._store.fsync)
        return size

    def _lock(self) -> Lock:
        return self._store.lock(f"bbstate-{self.user_id}", self.dir / LOCK_FILE)

    def _locked(self) -> _Held:
        if not self.dir.is_dir():
            _fs.makedirs(self.dir, sync=self._store.fsync)
        return _Held(self._lock())


class _Held:
    def __init__(self, lock: Lock) -> None:
        self.lock = lock

    def __enter__(self) -> Lock:
        self.lock.acquire()
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _as_ranges(uids: Sequence[int] | Sequence[Range]) -> list[Range]:
    if not uids:
        return []
    if isinstance(uids[0], tuple):
        out = sorted((int(lo), int(hi)) for lo, hi in uids)  # type: ignore[misc]
    else:
        out = ranges_from_uids(list(uids))  # type: ignore[arg-type]
    for lo, hi in out:
        if not 1 <= lo <= hi <= MAX_UID:
            raise ValueError(f"bad UID range {lo}:{hi}")
    return out


__all__ = [
    "COMPACT_BYTES", "STATE_HEADER_SIZE", "FlagState", "RangeSet", "UserState",
    "check_flags", "decode_state_header", "encode_state_header", "fold_records",
]
