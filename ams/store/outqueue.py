"""The outgoing queue's own state: per-recipient results and the deferred buckets.

Theory of operation
-------------------
Outgoing mail uses the spool's ``out`` queue (ams.store.spool) for
everything the spool already does: staging, shards, claims by rename,
heartbeats, reclaim.  Two things are particular to it.

*Per-recipient results.*  One message to several domains can succeed for
some recipients and fail for others; a retry must go to the rest only.  The
results live in the entry's own envelope, under ``extra.outbound``::

    {"format": 1,
     "tries": INT,
     "results": {RCPT: {"status": "sent" | "failed", "code": "5.1.1",
                        "reply": "550 5.1.1 no such user", "remote": "mx.host",
                        "at_us": INT}},
     "last":    {RCPT: {"code": "4.4.1", "reply": "...", "remote": "...",
                        "at_us": INT}}}

``tries`` counts the attempts that ended in a deferral (it picks the wait
from ``outbound.retry_schedule``); ``results`` holds final outcomes
(``failed`` ones have been reported to the sender in a DSN); ``last`` the
latest temporary failure of recipients still pending, for ``ams queue
show`` and for the DSN when they expire.  A recipient is pending while it
has no entry in ``results``.  Readers ignore keys they do not know; a
``format`` above 1 is refused.  The attempt count in the entry's name
(``.aN``) keeps the spool's meaning, attempts that ended without a result
(a gateway that died holding it, a local error): after
``limits.delivery_attempts`` of those the entry goes to ``failed`` as a
poison message, whatever ``tries`` says.

*The deferred queue.*  An entry whose remaining recipients failed
temporarily waits for its next attempt in a time bucket::

    deferred/HHHHHHH/TTTTTTTTTT/SS/ID.aN

``TTTTTTTTTT`` is the bucket's due time (Unix seconds, ten digits: the
entry's due time rounded *up* to ``bucket_seconds``), ``HHHHHHH`` that time
in hours (seven digits), ``SS`` the entry's spool shard and ``N`` the
spool's attempt count.  So ``deferred/`` holds one directory per hour that has
anything due (about 120 for the default five-day lifetime), an hour at most
``3600 / bucket_seconds`` buckets and a bucket at most 256 shards.  Finding
what is due lists only buckets whose time has come and, of those, only the
shards this gateway serves (rendezvous, as for ``out``): no deferred entry
is looked at before it is due, however many wait.  An entry is never
promoted early; it is late by at most ``bucket_seconds`` plus the polling
interval.

Crash-safety invariants (cited as ``[D1]`` ... ``[D4]``; [S1]-[S8] are the
spool's and hold here too):

D1. Deferring is one rename of the claim into its bucket shard, the
    bucket's directories created on demand.  The entry has one name before
    and after [S2].
D2. When the envelope changes (new results), the new version of the entry
    is written whole in this host's staging dir, fsynced, and renamed *over
    the claim* before the claim moves on; the message bytes are copied, not
    changed.  This is the one exception to [S4]'s "bytes never change": the
    file at a name is replaced atomically, never modified.  It is done only
    while the gateway's lease holds ([S5]), so no reclaimer holds the entry
    at the same time.  A crash before the rename leaves the old version,
    whose recipients are then tried again: the remote may get a second copy
    for a recipient it accepted in the attempt that crashed (SMTP's own
    window between the remote's 250 and the sender recording it), never
    otherwise.
D3. Promotion is one rename from a due bucket into the ``out`` shard of the
    same name; of concurrent promoters (or an admin retry) one wins [S3].
    Empty bucket directories are removed with rmdir, which fails on a
    directory that is not empty, so no entry is ever removed with one.  A
    deferral racing a removal recreates the directory ([D1]).
D4. Bounces (DSNs) for recipients that failed for good are enqueued before
    the failure is recorded ([D2]) or the entry is completed; a crash in
    between sends the DSN again on retry (at-least-once, like forwards), and
    a DSN itself has the null sender, so it is never bounced.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.errors import CorruptionError, FormatVersionError, NotFound, UsageError
from ams.store import _fs
from ams.store.spool import (
    _ENTRY_NAME,
    Claim,
    ClaimLost,
    EntryInfo,
    Place,
    Spool,
    Worker,
    _listdir,
    _unlink_quiet,
)
from ams.store.spool_entry import (
    _ID_RE,
    Entry,
    Envelope,
    entry_name,
    read_entry,
    read_envelope,
    shard_of_entry,
)

log = logging.getLogger(__name__)

OUTBOUND_FORMAT = 1
_HOUR = re.compile(r"[0-9]{7}")
_BUCKET = re.compile(r"[0-9]{10}")
_SHARD = re.compile(r"[0-9a-f]{2}")


# -- per-recipient results -----------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One recipient's outcome (final in ``results``, temporary in ``last``)."""

    status: str          # "sent", "failed" or "deferred"
    code: str            # enhanced status code, e.g. "5.1.1"
    reply: str           # the remote's reply, or our own reason
    remote: str = ""     # the remote MTA it came from, if any
    at_us: int = 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "reply": self.reply, "remote": self.remote,
                             "at_us": self.at_us}
        if self.status != "deferred":
            d["status"] = self.status
        return d

    @classmethod
    def from_json(cls, d: Any, *, final: bool) -> Result:
        if not isinstance(d, dict):
            raise TypeError("a result is not an object")
        status = str(d.get("status", "")) if final else "deferred"
        if final and status not in ("sent", "failed"):
            raise TypeError(f"unknown result status {status!r}")
        return cls(status, str(d.get("code", "")), str(d.get("reply", "")),
                   str(d.get("remote", "")), int(d.get("at_us", 0)))


@dataclass(frozen=True)
class OutboundState:
    """``extra.outbound`` of an entry: what is settled and what is pending."""

    results: Mapping[str, Result]
    last: Mapping[str, Result]
    #: Attempts that ended in a deferral.
    tries: int = 0

    @classmethod
    def of(cls, env: Envelope) -> OutboundState:
        raw = env.extra.get("outbound")
        if raw is None:
            return cls({}, {})
        try:
            if not isinstance(raw, dict) or int(raw.get("format", 1)) > OUTBOUND_FORMAT:
                if isinstance(raw, dict):
                    raise FormatVersionError(f"outbound state format {raw.get('format')} of "
                                             f"{env.id} is newer than this AMS")
                raise TypeError("outbound state is not an object")
            return cls({str(k): Result.from_json(v, final=True)
                        for k, v in dict(raw.get("results", {})).items()},
                       {str(k): Result.from_json(v, final=False)
                        for k, v in dict(raw.get("last", {})).items()},
                       int(raw.get("tries", 0)))
        except (TypeError, ValueError) as e:
            raise CorruptionError(f"outbound state of {env.id}: {e}") from None

    def pending(self, env: Envelope) -> list[str]:
        """Recipients without a final result, in envelope order, each once."""
        seen: set[str] = set()
        out: list[str] = []
        for r in env.rcpt_to:
            if r not in self.results and r not in seen:
                seen.add(r)
                out.append(r)
        return out

    def updated(self, outcomes: Mapping[str, Result]) -> OutboundState:
        """This state with ``outcomes`` recorded (final or temporary)."""
        results = dict(self.results)
        last = dict(self.last)
        for rcpt, res in outcomes.items():
            if res.status == "deferred":
                last[rcpt] = res
            else:
                results[rcpt] = res
                last.pop(rcpt, None)
        return OutboundState(results, last, self.tries)

    def deferred(self) -> OutboundState:
        """This state with one more try that ended in a deferral."""
        return OutboundState(self.results, self.last, self.tries + 1)

    def to_extra(self, env: Envelope) -> dict[str, Any]:
        extra = dict(env.extra)
        extra["outbound"] = {"format": OUTBOUND_FORMAT, "tries": self.tries,
                             "results": {k: v.to_json() for k, v in self.results.items()},
                             "last": {k: v.to_json() for k, v in self.last.items()}}
        return extra

    def envelope(self, env: Envelope) -> Envelope:
        return dataclasses.replace(env, extra=self.to_extra(env))


# -- the deferred queue ---------------------------------------------------------------


@dataclass(frozen=True)
class DeferredEntry:
    """A deferred entry as ``ams queue list --queue deferred`` shows it."""

    info: EntryInfo
    due: float
    path: Path


class DeferredQueue:
    """Time-bucketed waiting room for outgoing entries (see the module doc)."""

    def __init__(self, spool: Spool, *, bucket_seconds: int = 60) -> None:
        if bucket_seconds < 1 or 3600 % bucket_seconds:
            raise UsageError("bucket_seconds must divide 3600")
        self.spool = spool
        self.root = spool.root / "deferred"
        self.width = bucket_seconds

    # -- paths --------------------------------------------------------------------------

    def bucket_time(self, due: float) -> int:
        """The bucket an entry due at ``due`` waits in: ``due`` rounded up."""
        return int(math.ceil(due / self.width)) * self.width

    def bucket_dir(self, bucket: int) -> Path:
        return self.root / f"{bucket // 3600:07d}" / f"{bucket:010d}"

    # -- the gateway's side -------------------------------------------------------------

    def defer(self, worker: Worker, claim: Claim, entry: Entry, due: float, *,
              envelope: Envelope | None = None) -> Path:
        """Move ``claim`` into the bucket for ``due`` [D1].

        With ``envelope`` (a new version of the entry's envelope), the claim
        is first replaced by an entry carrying it [D2].
        """
        if envelope is not None and envelope != entry.envelope:
            self.rewrite(worker, claim, envelope, entry.message)
        dst = self.bucket_dir(self.bucket_time(due)) / claim.shard / entry_name(
            claim.entry_id, claim.attempts)
        for attempt in range(3):
            try:
                worker.move(claim, dst)
                return dst
            except FileNotFoundError:
                # A promoter removed the (then empty) bucket dir between our
                # mkdir and rename [D3]: make it again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def rewrite(self, worker: Worker, claim: Claim, envelope: Envelope, message: bytes) -> None:
        """Replace the claimed entry's file by one with ``envelope`` [D2]."""
        if envelope.id != claim.entry_id:
            raise ValueError("a rewritten entry keeps its id")
        tmp = self.spool.staging / f".out-{claim.entry_id}.{_fs.unique_suffix()}.tmp"
        try:
            self.spool.write_staged(tmp, envelope, message)
            worker.check()  # [S5]: only while the lease holds
            if not os.path.lexists(claim.path):
                raise ClaimLost(f"claim on {claim.entry_id} was reclaimed")
            os.rename(tmp, claim.path)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def promote_due(self, worker: Worker, shards: Sequence[str], *,
                    now: float | None = None) -> int:
        """Move entries of due buckets in ``shards`` back into ``out`` [D3]."""
        now = time.time() if now is None else now
        mine = set(shards)
        moved = 0
        for hour in sorted(_listdir(self.root)):
            if not _HOUR.fullmatch(hour) or int(hour) * 3600 > now:
                continue
            hour_dir = self.root / hour
            for bucket in sorted(_listdir(hour_dir)):
                if not _BUCKET.fullmatch(bucket) or int(bucket) > now:
                    continue
                moved += self._promote_bucket(hour_dir / bucket, mine)
                _rmdir_quiet(hour_dir / bucket)
            _rmdir_quiet(hour_dir)
        return moved

    def _promote_bucket(self, bucket_dir: Path, mine: set[str]) -> int:
        moved = 0
        for shard in _listdir(bucket_dir):
            if shard not in mine:
                continue
            d = bucket_dir / shard
            for name in sorted(_listdir(d)):
                if _ENTRY_NAME.fullmatch(name) and self._to_out(d / name, shard, name):
                    moved += 1
            _rmdir_quiet(d)
        return moved

    def _to_out(self, src: Path, shard: str, name: str) -> bool:
        try:
            self.spool._rename_into(src, self.spool.shard_dir("out", shard) / name)
        except OSError as e:
            if e.errno in _fs.GONE_ERRNOS and not os.path.lexists(src):
                return False  # another promoter or an admin won [D3]
            raise
        return True

    # -- admin --------------------------------------------------------------------------

    def _entry_files(self) -> Iterator[tuple[Path, str, int, int]]:
        """(path, id, attempts, bucket time) of every deferred entry, soonest first."""
        for hour in sorted(_listdir(self.root)):
            if not _HOUR.fullmatch(hour):
                continue
            for bucket in sorted(_listdir(self.root / hour)):
                if not _BUCKET.fullmatch(bucket):
                    continue
                bdir = self.root / hour / bucket
                for shard in sorted(_listdir(bdir)):
                    if not _SHARD.fullmatch(shard):
                        continue
                    for name in sorted(_listdir(bdir / shard)):
                        m = _ENTRY_NAME.fullmatch(name)
                        if m:
                            yield bdir / shard / name, m[1], int(m[2]), int(bucket)

    def depth(self) -> int:
        return sum(1 for _ in self._entry_files())

    def list_entries(self, *, limit: int | None = None) -> Iterator[DeferredEntry]:
        n = 0
        for path, entry_id, attempts, bucket in self._entry_files():
            if limit is not None and n >= limit:
                return
            try:
                st = os.stat(path)
                envelope, size, error = *read_envelope(path), None
            except FileNotFoundError:
                continue
            except (CorruptionError, FormatVersionError) as e:
                envelope, size, error = None, st.st_size, str(e)
            n += 1
            info = EntryInfo("deferred", Place.QUEUED, entry_id, attempts, size, st.st_mtime,
                             envelope, error)
            yield DeferredEntry(info, float(bucket), path)

    def find(self, entry_id: str) -> tuple[Path, int, int] | None:
        """(path, attempts, bucket) of a deferred entry; walks every bucket."""
        if not _ID_RE.fullmatch(entry_id):
            raise UsageError(f"not a spool entry id: {entry_id!r}")
        for path, eid, attempts, bucket in self._entry_files():
            if eid == entry_id:
                return path, attempts, bucket
        return None

    def read(self, entry_id: str) -> tuple[Entry, float]:
        found = self.find(entry_id)
        try:
            if found is not None:
                return read_entry(found[0]), float(found[2])
        except FileNotFoundError:
            pass
        raise NotFound(f"no deferred entry {entry_id}")

    def retry_now(self, entry_id: str) -> bool:
        """Move a deferred entry into ``out`` at once (attempts kept)."""
        found = self.find(entry_id)
        if found is None:
            return False
        path = found[0]
        return self._to_out(path, shard_of_entry(entry_id), path.name)

    def delete(self, entry_id: str) -> bool:
        found = self.find(entry_id)
        return found is not None and _unlink_quiet(found[0])


def _rmdir_quiet(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, *_fs.GONE_ERRNOS):
            log.warning("could not remove empty deferred dir %s: %s", path, e)


__all__ = ["OUTBOUND_FORMAT", "DeferredEntry", "DeferredQueue", "OutboundState", "Result"]
