"""Checking and repairing mailbox logs.

:func:`check_log` reads every byte of a log's current generation and checks
each rule of ams.store.format and ams.store.log:

- ``head`` parses and names an existing first segment;
- every segment header verifies and matches its name and the chain
  (generation, seq, base = previous base + previous size, uidvalidity);
- every record verifies (magic, version, trailer, CRC, payload shape);
- APPEND UIDs strictly increase and stay below each record's ``uidnext``;
  ``uidnext`` never decreases; a fresh record's MODSEQ is at most its
  position and MODSEQs of fresh records strictly increase;
- NEXT points to the next seq, and nothing follows NEXT or SEALED;
- the current generation is not SEALED;
- no bytes follow the last valid record (a torn tail, or damage).

Repairs (``repair=True``), each under the log's lock:

- a torn tail (no valid record after the damage) is truncated, as the next
  writer would do anyway;
- damage followed by valid records is salvaged: every record that still
  verifies (found again by scanning for the record magic) is written into a
  new generation, as compaction does, and the damaged byte ranges are saved
  to ``lost+found-<time>`` in the log directory for a human to look at.
  Nothing that verifies is dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ams.errors import CorruptionError, FormatVersionError, NotFound
from ams.store import _fs
from ams.store.format import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Append,
    Incomplete,
    Next,
    Record,
    Sealed,
    SegmentHeader,
    decode_record,
    find_next_record,
    segment_name,
)
from ams.store.log import (
    Head,
    MailboxLog,
    MessageLocation,
    fold,
    read_head,
)


@dataclass(frozen=True)
class Problem:
    path: Path
    offset: int | None
    what: str
    #: "torn-tail", "damage", "chain", "invariant", "head"
    kind: str
    repaired: bool = False

    def __str__(self) -> str:
        where = f"{self.path}" + (f" @{self.offset}" if self.offset is not None else "")
        fixed = " [repaired]" if self.repaired else ""
        return f"{where}: {self.what}{fixed}"


@dataclass
class LogReport:
    path: Path
    records: int = 0
    messages: int = 0
    segments: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.repaired for p in self.problems)


@dataclass
class _Scan:
    """One segment's bytes, split into verified records and damaged ranges."""

    path: Path
    header: SegmentHeader
    records: list[Record]
    damaged: list[tuple[int, int]]
    size: int

    def damaged_after(self, rec: Record) -> bool:
        return any(start >= rec.end for start, _ in self.damaged)


def _scan_segment(path: Path, data: bytes) -> _Scan:
    header = SegmentHeader.decode(data[:SEGMENT_HEADER_SIZE], path=path)
    records: list[Record] = []
    damaged: list[tuple[int, int]] = []
    pos = SEGMENT_HEADER_SIZE
    while pos < len(data):
        try:
            rec = decode_record(data, pos, path=path, keep_payload=True)
        except (Incomplete, CorruptionError):
            nxt = find_next_record(data, pos + 1, path=path)
            nxt = len(data) if nxt is None else nxt
            damaged.append((pos, nxt))
            pos = nxt
            continue
        records.append(rec)
        pos = rec.end
    return _Scan(path, header, records, damaged, len(data))


def check_log(log: MailboxLog, *, repair: bool = False) -> LogReport:
    report = LogReport(log.path)
    try:
        head = read_head(log.path)
    except (CorruptionError, FormatVersionError, NotFound) as e:
        report.problems.append(Problem(log.path / "head", None, str(e), "head"))
        return report
    scans = _read_chain(log, head, report)
    if scans is None:
        return report
    _check_invariants(scans, head, report)
    if repair and not report.ok:
        with log.lock:
            _repair(log, head, scans, report)
    return report


def _read_chain(log: MailboxLog, head: Head, report: LogReport) -> list[_Scan] | None:
    scans: list[_Scan] = []
    seq, base = 1, None
    while True:
        path = log.segment_path(head.generation, seq)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            report.problems.append(Problem(path, None, "segment named by the chain is missing",
                                           "chain"))
            return scans or None
        try:
            scan = _scan_segment(path, data)
        except (CorruptionError, FormatVersionError) as e:
            report.problems.append(Problem(path, 0, str(e), "chain"))
            return scans or None
        h = scan.header
        if (h.generation, h.seq, h.uidvalidity) != (head.generation, seq, head.uidvalidity):
            report.problems.append(Problem(path, 0, f"header says generation {h.generation} "
                                           f"seq {h.seq} uidvalidity {h.uidvalidity}", "chain"))
        if base is not None and h.base != base:
            report.problems.append(Problem(path, 0, f"base {h.base}, expected {base}", "chain"))
        scans.append(scan)
        report.segments += 1
        report.records += len(scan.records)
        last = scan.records[-1] if scan.records else None
        if last is not None and isinstance(last.body, Next) and not scan.damaged_after(last):
            if last.body.next_seq != seq + 1:
                report.problems.append(Problem(path, last.offset,
                                               f"NEXT points to seq {last.body.next_seq}",
                                               "chain"))
                return scans
            base = h.base + scan.size
            seq += 1
            continue
        return scans


def _check_invariants(scans: list[_Scan], head: Head, report: LogReport) -> None:
    last_uid = 0
    uidnext = 0
    last_fresh = -1
    for si, scan in enumerate(scans):
        is_last_segment = si == len(scans) - 1
        for a, b in scan.damaged:
            tail = is_last_segment and b == scan.size
            what = (f"torn tail: {b - a} bytes after the last valid record" if tail
                    else f"damaged bytes {a}..{b} (records follow)")
            report.problems.append(Problem(scan.path, a, what, "torn-tail" if tail else "damage"))
        uidnext = max(uidnext, scan.header.uidnext)
        for i, rec in enumerate(scan.records):
            h = rec.header
            bad = None
            pos = scan.header.base + rec.offset
            if isinstance(rec.body, Append):
                report.messages += 1
                if h.uid <= last_uid:
                    bad = f"UID {h.uid} does not follow {last_uid}"
                elif h.uidnext <= h.uid:
                    bad = f"uidnext {h.uidnext} not above UID {h.uid}"
                last_uid = h.uid
            if h.uidnext < uidnext:
                bad = bad or f"uidnext went back from {uidnext} to {h.uidnext}"
            uidnext = max(uidnext, h.uidnext)
            if h.modseq > pos:
                bad = bad or f"MODSEQ {h.modseq} beyond the record's position {pos}"
            if h.modseq == pos:
                if h.modseq <= last_fresh:
                    bad = bad or f"MODSEQ {h.modseq} does not increase"
                last_fresh = h.modseq
            if isinstance(rec.body, (Next, Sealed)) and i != len(scan.records) - 1:
                bad = bad or f"{rec.type.name} record is not the last in its segment"
            if isinstance(rec.body, Sealed):
                bad = bad or "the current generation is sealed"
            if bad:
                report.problems.append(Problem(scan.path, rec.offset, bad, "invariant"))


def _repair(log: MailboxLog, head: Head, scans: list[_Scan], report: LogReport) -> None:
    kinds = {p.kind for p in report.problems}
    if kinds <= {"torn-tail"}:
        last = scans[-1]
        start = last.damaged[-1][0]
        fd = os.open(last.path, os.O_RDWR)
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        finally:
            os.close(fd)
        report.problems = [Problem(p.path, p.offset, p.what, p.kind, True)
                           for p in report.problems]
        log._cached = None
        return
    if kinds & {"head", "chain"} and not scans:
        return  # nothing we can salvage safely by ourselves
    _salvage(log, head, scans, report)


def _salvage(log: MailboxLog, head: Head, scans: list[_Scan], report: LogReport) -> None:
    """Write every verifiable record into a new generation; keep the rest aside."""
    lost = log.path / f"lost+found-{int(time.time())}"
    with open(lost, "wb") as f:
        for scan in scans:
            data = scan.path.read_bytes()
            for a, b in scan.damaged:
                f.write(f"--- {scan.path.name} {a}..{b}\n".encode())
                f.write(data[a:b])
        f.flush()
        os.fsync(f.fileno())
    pairs = []
    for scan in scans:
        for rec in scan.records:
            loc = None
            if isinstance(rec.body, Append):
                loc = MessageLocation(scan.header.generation, scan.header.seq,
                                      rec.offset + RECORD_HEADER_SIZE + rec.body.message_offset,
                                      rec.body.message_size)
            if not isinstance(rec.body, (Next, Sealed)):
                pairs.append((rec, loc))
    state = fold(iter(pairs))
    end = scans[-1].header.base + scans[-1].size
    uidnext = max([state.uidnext] + [s.header.uidnext for s in scans])
    highest = max([state.highest_modseq] + [s.header.modseq_floor for s in scans])
    new_gen = head.generation + 1
    header = SegmentHeader(uidvalidity=head.uidvalidity, generation=new_gen, seq=1, base=end,
                           uidnext=uidnext, created_us=_fs.now_us(), modseq_floor=highest)
    log.write_generation(state, header)
    log.switch_head(head, new_gen)
    report.problems = [Problem(p.path, p.offset, p.what, p.kind, True) for p in report.problems]
    report.problems.append(Problem(log.path, None,
                                   f"salvaged {len(state.messages)} messages into generation "
                                   f"{new_gen}; damaged bytes saved in {lost.name}",
                                   "salvage", True))


def check_logs(logs: list[MailboxLog], *, repair: bool = False,
               progress: Callable[[int, int], None] | None = None) -> list[LogReport]:
    out = []
    for i, lg in enumerate(logs, 1):
        out.append(check_log(lg, repair=repair))
        if progress:
            progress(i, len(logs))
    return out


__all__ = ["LogReport", "Problem", "check_log", "check_logs", "segment_name"]
