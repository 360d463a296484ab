"""The spool: sharded queues of mail waiting for a worker, claimed by rename.

Theory of operation
-------------------
Layout under ``<root>/spool`` (SS is a shard, two hex digits, 256 of them;
an entry's shard is ``sha256(id)[:2]``)::

    in/SS/ID.aN                 the incoming queue (MX, LDA -> delivery workers)
    out/SS/ID.aN                the outgoing queue (submission -> outbound gateway)
    deferred/H/T/SS/ID.aN       outgoing entries waiting for a retry, in time
                                buckets (layout and rules: ams.store.outqueue)
    failed/QUEUE/SS/ID.aN       entries given up on, with beside each
    failed/QUEUE/SS/ID.reason   why (JSON sidecar)
    workers/WORKER              a worker's heartbeat (JSON, rewritten atomically)
    claims/WORKER/QUEUE.ID.aN   the entries that worker holds

An entry is one file, written once and never rewritten.  Its whole life is
renames: staging -> queue shard -> a worker's claims dir -> gone (done), back
to the shard (retry) or to failed.  ``N`` in the name is the number of
attempts that ended without success; moving the file back under ``.a(N+1)``
returns it and counts the attempt in one rename, so retry counting costs no
extra file and no extra directory entry.  (A per-entry state file would cost
a second directory entry per message and a write per attempt.)  The time of
the first attempt is not kept: queue lifetime counts from ``received_us``.

A worker (id ``HOST-PID-RANDOM``) registers a heartbeat with a lease and
renews it at the latest halfway through.  Each queue's shards are spread over
the live workers serving it by rendezvous hashing (:func:`assign_shards`),
so each shard directory is listed by one worker, and a worker joining or
leaving moves only its own share.  Views of who is live may differ for a
moment; two workers then scan one shard and the rename decides.  Any worker
may :meth:`Worker.reclaim_dead`: the claims of a worker whose lease expired
more than ``clock_skew`` ago go back to their shards.

Queues are named in :data:`QUEUES`; a queue is a directory of shards.  The
deferred entries of ``out`` are not a queue of their own: a gateway moves
its claim into a time bucket (:meth:`Worker.move`) and the bucket's entries
return to ``out`` when due, so the claim protocol is the same for both.

Crash-safety invariants (cited in the code as ``[S1]`` ... ``[S8]``):

S1. An entry enters a queue whole: it is written and (fsync on) fsynced in
    this host's staging dir, renamed into its shard, and the shard dir is
    fsynced before :meth:`Spool.enqueue` returns.  Only then may an SMTP
    server answer 250.  A crash earlier leaves at most a staging file
    (removed by :meth:`Spool.clean_staging`), never part of an entry.
S2. An entry has exactly one name at any time: in a queue shard, in one
    worker's claims dir or in a failed shard.  Every move is one rename(2),
    which a crash cannot split, so no crash duplicates or loses an entry.
S3. A claim is a rename into the claimer's own claims dir: of concurrent
    claimers exactly one wins.  A loser normally sees ENOENT or ESTALE, but
    sshfs and NFS may answer other errnos, or an error for a rename that was
    retried and did happen; so after any error the claimer decides by
    looking: the destination, a name only it creates, exists -> won; the
    source is gone -> lost.  One thread claims for a worker at a time.
    Moving a claim out, a vanished source is ClaimLost: a reclaimer took it
    (or a retried rename moved it; the two look alike and both are safe).
S4. The attempt count lives in the name and changes only by the rename
    that moves the entry ([S2]); the entry's bytes never change after S1.
S5. A worker acts on its claims only while its own lease holds by its own
    clock (:meth:`Worker.check` before committing work); it never renews a
    lapsed lease or a heartbeat a reclaimer removed.  A reclaimer acts only
    once the lease expired more than ``clock_skew`` ago by its clock.  With
    clocks within ``clock_skew`` the two never act on a claim at once; and
    delivery ids ([W7] in ams.store.log) make even that file nothing twice.
S6. Reclaim renames each dead claim into the reclaimer's own claims dir
    first (one reclaimer wins, [S3]), then back to its shard counting an
    attempt (a worker that dies holding a message is an attempt, so a
    message that kills workers ends in failed).  A crash in between leaves
    it claimed by the reclaimer, reclaimed in turn if that one died.  A dead
    worker's claims dir is removed (rmdir: fails if anything is left) before
    its heartbeat, and a claims dir with no heartbeat is reclaimed only once
    it is older than lease + skew (a crash between mkdir and heartbeat).
S7. :meth:`Worker.fail` writes the reason sidecar (staged, atomic) before it
    renames the entry into failed, so every failed entry has its reason; a
    crash in between leaves an orphan sidecar, ignored by listings and
    overwritten by the next failure of that id.
S8. Besides S1, moves into and out of failed and counted releases fsync
    their destination dir (fsync on).  Claim, complete and uncounted
    release, the hot path, do not: a crash can then only undo a recent move,
    which returns the entry to an earlier place where it is still exactly
    once ([S2]); it is attempted again and delivery ids drop the duplicate.

The entry file format and entry ids are specified in ams.store.spool_entry.
"""


from __future__ import annotations

import bisect
import dataclasses
import enum
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ams.errors import CorruptionError, FormatVersionError, LockLost, NotFound, UsageError
from ams.store import _fs
from ams.store.spool_entry import (
    _ID,
    _ID_RE,
    ENTRY_HEADER_SIZE,
    ENTRY_MAGIC,
    ENTRY_VERSION,
    Entry,
    Envelope,
    decode_entry,
    encode_entry,
    entry_head,
    entry_name,
    new_entry_id,
    new_worker_id,
    read_entry,
    read_envelope,
    shard_of_entry,
)
from ams.store.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_FORMAT = 1
REASON_FORMAT = 1

#: The queues there are.  A queue is a directory of :data:`SHARDS`.
QUEUES = ("in", "out")
SHARDS = tuple(f"{i:02x}" for i in range(256))

_ENTRY_NAME = re.compile(rf"({_ID})\.a([0-9]{{1,9}})")
_CLAIM_NAME = re.compile(rf"([a-z][a-z0-9_]*)\.({_ID})\.a([0-9]{{1,9}})")
_WORKER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_STAGING_PREFIX = "spool-"


class ClaimLost(LockLost):
    """The claim is no longer ours: our lease lapsed and a reclaimer took it."""


class Place(enum.Enum):
    """Where an entry is: waiting in its queue, held by a worker, or failed."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    FAILED = "failed"


class Disposition(enum.Enum):
    """What :meth:`Worker.release` did with an entry."""

    REQUEUED = "requeued"
    FAILED = "failed"


def _listdir(path: Path) -> list[str]:
    """Names in ``path`` without our dot-named temporaries; [] if it is missing."""
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _unlink_quiet(path: Path) -> bool:
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno in _fs.GONE_ERRNOS:
            return False
        raise
    return True


def _check_queue(queue: str) -> None:
    if queue not in QUEUES:
        raise UsageError(f"unknown spool queue {queue!r} (known: {', '.join(QUEUES)})")


# -- rendezvous hashing ------------------------------------------------------------


def _weight(shard: str, worker: str) -> int:
    h = hashlib.blake2b(f"{shard}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def assign_shards(workers: Iterable[str], shards: Sequence[str] = SHARDS,
                  ) -> dict[str, list[str]]:
    """Each shard to the worker with the highest weight for it (rendezvous).

    A pure function of the two sets: every worker that sees the same live set
    computes the same assignment, and adding or removing a worker moves only
    the shards it gains or had.
    """
    ws = sorted(set(workers))
    out: dict[str, list[str]] = {w: [] for w in ws}
    if ws:
        for s in shards:
            out[max(ws, key=lambda w: (_weight(s, w), w))].append(s)
    return out


def shards_for(worker: str, workers: Iterable[str], shards: Sequence[str] = SHARDS) -> list[str]:
    return assign_shards({worker, *workers}, shards)[worker]


# -- records for callers ------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """An entry a worker holds; ``attempts`` is the count before this one."""

    queue: str
    entry_id: str
    attempts: int
    path: Path
    worker_id: str

    @property
    def shard(self) -> str:
        return shard_of_entry(self.entry_id)


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started: float
    expires: float
    queues: tuple[str, ...]

    def is_dead(self, now: float, skew: float) -> bool:
        """Dead once the lease expired more than ``skew`` ago [S5]."""
        return now > self.expires + skew


@dataclass(frozen=True)
class EntryInfo:
    """One line of ``ams queue list``."""

    queue: str
    place: Place
    id: str
    attempts: int
    size: int
    mtime: float
    envelope: Envelope | None
    #: Why the envelope could not be read, when it could not.
    error: str | None = None
    #: For failed entries: the reason sidecar's ``reason``.
    reason: str | None = None
    #: For claimed entries: the holder.
    worker: str | None = None

    def age(self, now: float | None = None) -> float:
        start = self.envelope.received_us / 1e6 if self.envelope else self.mtime
        return (time.time() if now is None else now) - start


# -- the spool ---------------------------------------------------------------------


class Spool:
    """The spool of one store: enqueueing, workers and admin listings."""

    def __init__(self, store: Store, *, max_attempts: int | None = None) -> None:
        self.store = store
        self.root = store.root / "spool"
        sc = store.config.store
        self.lease = sc.lease_seconds
        self.skew = sc.clock_skew
        self.sync = store.fsync
        self.max_attempts = max_attempts or store.config.limits.delivery_attempts
        self._staging: Path | None = None
        for d in ("workers", "claims", "failed", *QUEUES):
            _fs.makedirs(self.root / d, sync=self.sync)

    # -- paths ---------------------------------------------------------------

    def shard_dir(self, queue: str, shard: str) -> Path:
        return self.root / queue / shard

    def failed_dir(self, queue: str, shard: str) -> Path:
        return self.root / "failed" / queue / shard

    def claims_dir(self, worker_id: str) -> Path:
        return self.root / "claims" / worker_id

    def heartbeat_path(self, worker_id: str) -> Path:
        return self.root / "workers" / worker_id

    @property
    def staging(self) -> Path:
        if self._staging is None:
            self._staging = self.store.staging_dir()
        return self._staging

    # -- enqueue ---------------------------------------------------------------

    def enqueue(self, queue: str, *, mail_from: str, rcpt_to: Sequence[str], message: bytes,
                client: Mapping[str, str] | None = None,
                extra: Mapping[str, Any] | None = None) -> Envelope:
        """Make ``message`` durable in ``queue``; an SMTP 250 may follow [S1]."""
        (env,) = self.enqueue_many([(queue, Envelope(
            id="", mail_from=mail_from, rcpt_to=tuple(rcpt_to), received_us=0, host="",
            client=dict(client or {}), extra=dict(extra or {})), message)])
        return env

    def enqueue_many(self, items: Sequence[tuple[str, Envelope, bytes]]) -> list[Envelope]:
        """Enqueue several entries (queue, envelope, message) nearly at once [S1].

        Each envelope's ``id``, ``received_us`` and ``host`` are filled in
        here.  Every entry is written and fsynced in staging before the first
        is renamed into its queue, so a full disk or an I/O error while
        writing leaves none of them queued; only a failing rename (which
        allocates nothing) could leave some queued and not others.
        """
        envs: list[Envelope] = []
        staged: list[tuple[Path, Path]] = []
        try:
            for queue, proto, message in items:
                _check_queue(queue)
                if not proto.rcpt_to:
                    raise ValueError("a spool entry needs at least one recipient")
                now = _fs.now_us()
                env = dataclasses.replace(proto, id=new_entry_id(self.store.host, now),
                                          received_us=now, host=self.store.host)
                tmp = self.staging / f"{_STAGING_PREFIX}{env.id}.tmp"
                staged.append((tmp, self.shard_dir(queue, shard_of_entry(env.id))
                               / entry_name(env.id, 0)))
                self.write_staged(tmp, env, message)
                envs.append(env)
            while staged:
                self._rename_into(*staged[0])
                staged.pop(0)
        except BaseException:
            for tmp, _ in staged:
                _unlink_quiet(tmp)
            raise
        return envs

    def write_staged(self, tmp: Path, env: Envelope, message: bytes) -> None:
        """Write a whole entry file at ``tmp`` (a new name), fsynced if on."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _fs.write_all(fd, entry_head(env, message))
            _fs.write_all(fd, message)
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _rename_into(self, src: Path, dst: Path) -> None:
        """rename, creating the destination dir on demand; fsync it if on."""
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            if not _lexists(src):
                raise
            # The shard dir is missing, or another thread or host created it
            # a moment ago: make sure it exists (idempotent) and go again.
            _fs.makedirs(dst.parent, sync=self.sync)
            os.rename(src, dst)
        if self.sync:
            _fs.fsync_dir(dst.parent)

    def clean_staging(self, max_age: float = 3600.0) -> int:
        """Remove this host's staging files of enqueues that crashed [S1]."""
        n = 0
        cutoff = time.time() - max_age
        for name in _listdir(self.staging):
            p = self.staging / name
            if not name.startswith(_STAGING_PREFIX):
                continue
            try:
                if os.lstat(p).st_mtime < cutoff and _unlink_quiet(p):
                    n += 1
            except FileNotFoundError:
                continue
        return n

    # -- workers ---------------------------------------------------------------

    def register_worker(self, queues: Sequence[str] = ("in",)) -> Worker:
        for q in queues:
            _check_queue(q)
        worker = Worker(self, new_worker_id(self.store.host), tuple(queues))
        worker._register()
        return worker

    def list_workers(self) -> list[WorkerInfo]:
        """Every heartbeat file, live or dead (spool/workers is small)."""
        infos = (self._read_heartbeat(n) for n in sorted(_listdir(self.root / "workers"))
                 if _WORKER_ID.fullmatch(n))
        return [i for i in infos if i is not None]

    def live_workers(self, queue: str | None = None) -> list[WorkerInfo]:
        now = time.time()
        return [w for w in self.list_workers()
                if not w.is_dead(now, self.skew) and (queue is None or queue in w.queues)]

    def _read_heartbeat(self, worker_id: str) -> WorkerInfo | None:
        path = self.heartbeat_path(worker_id)
        try:
            d = json.loads(path.read_bytes())
            return WorkerInfo(id=worker_id, host=str(d["host"]), pid=int(d["pid"]),
                              started=float(d["started"]), expires=float(d["expires"]),
                              queues=tuple(str(q) for q in d["queues"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            pass
        # Heartbeats are replaced by rename, so this one is damaged, not
        # half-written: its lease is its mtime's.
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        log.warning("unreadable worker heartbeat %s", path)
        return WorkerInfo(worker_id, "?", 0, mtime, mtime + self.lease, ())

    # -- admin: listings ---------------------------------------------------------

    def _entry_files(self, queue: str, place: Place,
                     ) -> Iterator[tuple[Path, str, int, str | None]]:
        """(path, id, attempts, worker) of every entry in ``queue`` at ``place``."""
        _check_queue(queue)
        if place is Place.CLAIMED:
            for wid in sorted(_listdir(self.root / "claims")):
                d = self.claims_dir(wid)
                for name in sorted(_listdir(d)):
                    m = _CLAIM_NAME.fullmatch(name)
                    if m and m[1] == queue:
                        yield d / name, m[2], int(m[3]), wid
            return
        for shard in SHARDS:
            d = self.shard_dir(queue, shard) if place is Place.QUEUED else \
                self.failed_dir(queue, shard)
            for name in sorted(_listdir(d)):
                m = _ENTRY_NAME.fullmatch(name)
                if m:
                    yield d / name, m[1], int(m[2]), None

    def depth(self, queue: str, place: Place = Place.QUEUED) -> int:
        return sum(1 for _ in self._entry_files(queue, place))

    def list_entries(self, queue: str, place: Place = Place.QUEUED, *,
                     limit: int | None = None) -> Iterator[EntryInfo]:
        """Entries with their envelopes; damaged ones are listed with ``error``."""
        n = 0
        for path, entry_id, attempts, worker in self._entry_files(queue, place):
            if limit is not None and n >= limit:
                return
            try:
                st = os.stat(path)
                envelope, size, error = *read_envelope(path), None
            except FileNotFoundError:
                continue  # moved while we looked
            except (CorruptionError, FormatVersionError) as e:
                envelope, size, error = None, st.st_size, str(e)
            reason = None
            if place is Place.FAILED:
                reason = self._read_reason(queue, entry_id).get("reason", "(unknown)")
            n += 1
            yield EntryInfo(queue, place, entry_id, attempts, size, st.st_mtime, envelope,
                            error, reason, worker)

    def _find(self, queue: str, entry_id: str, place: Place) -> tuple[Path, int] | None:
        _check_queue(queue)
        if not _ID_RE.fullmatch(entry_id):
            raise UsageError(f"not a spool entry id: {entry_id!r}")
        if place is Place.CLAIMED:
            for path, eid, attempts, _w in self._entry_files(queue, place):
                if eid == entry_id:
                    return path, attempts
            return None
        shard = shard_of_entry(entry_id)
        d = self.shard_dir(queue, shard) if place is Place.QUEUED else \
            self.failed_dir(queue, shard)
        for name in _listdir(d):
            m = _ENTRY_NAME.fullmatch(name)
            if m and m[1] == entry_id:
                return d / name, int(m[2])
        return None

    def read(self, queue: str, entry_id: str, place: Place = Place.QUEUED) -> Entry:
        found = self._find(queue, entry_id, place)
        try:
            if found is not None:
                return read_entry(found[0])
        except FileNotFoundError:
            pass
        raise NotFound(f"no {place.value} entry {entry_id} in spool queue {queue!r}")

    def _read_reason(self, queue: str, entry_id: str) -> dict[str, Any]:
        path = self.failed_dir(queue, shard_of_entry(entry_id)) / f"{entry_id}.reason"
        try:
            d = _fs.read_json(path)
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    # -- admin: changes ----------------------------------------------------------

    def delete(self, queue: str, entry_id: str, place: Place = Place.QUEUED) -> bool:
        """Remove a queued or failed entry; False if it was not there."""
        if place is Place.CLAIMED:
            raise UsageError("a claimed entry belongs to its worker; delete it once released")
        found = self._find(queue, entry_id, place)
        if found is None or not _unlink_quiet(found[0]):
            return False
        if place is Place.FAILED:
            _unlink_quiet(found[0].with_name(f"{entry_id}.reason"))
        return True

    def retry(self, queue: str, entry_id: str, *, keep_attempts: bool = False) -> bool:
        """Move a failed entry back into its queue (attempts reset to 0)."""
        found = self._find(queue, entry_id, Place.FAILED)
        if found is None:
            return False
        src, attempts = found
        dst = self.shard_dir(queue, shard_of_entry(entry_id)) / entry_name(
            entry_id, attempts if keep_attempts else 0)
        try:
            self._rename_into(src, dst)
        except OSError as e:
            if e.errno in _fs.GONE_ERRNOS and not _lexists(src):
                return False  # another admin retried or deleted it
            raise
        _unlink_quiet(src.with_name(f"{entry_id}.reason"))
        return True


# -- workers -----------------------------------------------------------------------


class Worker:
    """One registered worker: its heartbeat, its claims dir, its claims.

    Call :meth:`check` before committing work on a claim (filing a message)
    and at least every ``lease_seconds / 2``; :meth:`claim_batch` and
    :meth:`reclaim_dead` call it themselves.
    """

    def __init__(self, spool: Spool, worker_id: str, queues: tuple[str, ...]) -> None:
        self.spool = spool
        self.id = worker_id
        self.queues = queues
        self.claims_dir = spool.claims_dir(worker_id)
        self.started = time.time()
        self.expires = 0.0
        self._refresh = min(max(spool.lease / 4, 0.05), 10.0)
        self._assigned: dict[str, tuple[float, list[str]]] = {}
        self._cursor = 0
        #: (queue, shard) -> the id of the last entry this worker claimed there.
        self._after: dict[tuple[str, str], str] = {}
        self._mutex = threading.Lock()
        self.closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lease -------------------------------------------------------------------

    def _register(self) -> None:
        # The claims dir comes first, so no heartbeat ever lacks one [S6].
        os.mkdir(self.claims_dir)
        if self.spool.sync:
            _fs.fsync_dir(self.claims_dir.parent)
        self._write_heartbeat()

    def _write_heartbeat(self) -> None:
        expires = time.time() + self.spool.lease
        _fs.write_file_atomic(self.spool.heartbeat_path(self.id), _fs.dump_json({
            "format": HEARTBEAT_FORMAT, "id": self.id, "host": self.spool.store.host,
            "pid": os.getpid(), "started": round(self.started, 3),
            "expires": round(expires, 3), "queues": list(self.queues)}),
            staging_dir=self.spool.staging, sync=self.spool.sync)
        self.expires = expires

    def heartbeat(self, *, force: bool = False) -> None:
        """Renew the lease once half of it has passed (or now, with ``force``).

        Raises LockLost if the lease already lapsed or a reclaimer removed
        this worker: it must stop and register anew [S5].
        """
        if self.closed:
            raise LockLost(f"worker {self.id} is closed")
        now = time.time()
        if now >= self.expires:
            raise LockLost(f"the lease of worker {self.id} ran out")
        if not force and self.expires - now > self.spool.lease / 2:
            return
        if not (_lexists(self.spool.heartbeat_path(self.id)) and self.claims_dir.is_dir()):
            raise LockLost(f"worker {self.id} was reclaimed by another worker")
        self._write_heartbeat()

    def check(self) -> None:
        """Raise LockLost unless the lease still holds (renewing it if due) [S5]."""
        self.heartbeat()

    # -- claiming ----------------------------------------------------------------

    def my_shards(self, queue: str, *, refresh: bool = False) -> list[str]:
        """This worker's shards of ``queue`` by rendezvous over the live workers.

        The live set is read again at most every lease/4 (or on ``refresh``).
        """
        now = time.monotonic()
        cached = self._assigned.get(queue)
        if cached is not None and not refresh and now - cached[0] < self._refresh:
            return cached[1]
        live = [w.id for w in self.spool.live_workers(queue)]
        shards = shards_for(self.id, live)
        self._assigned[queue] = (now, shards)
        return shards

    def claim_batch(self, queue: str, limit: int = 100, *,
                    shards: Sequence[str] | None = None) -> list[Claim]:
        """Claim up to ``limit`` entries.

        ``shards`` overrides the rendezvous assignment (admin tools, tests).
        Each scan resumes at the shard after the one where the previous
        batch filled up, so a busy shard cannot starve the others: every
        shard is visited once per round, whatever the batch size.  Within a
        shard, names (so arrival order) are taken in turn from just after
        the last one this worker claimed there: an entry put back (a retry
        keeps its name when no attempt is counted) waits behind those that
        came after it, so entries retried quickly cannot starve the rest.
        """
        if queue not in self.queues:
            raise UsageError(f"worker {self.id} does not serve queue {queue!r}")
        self.check()
        order = list(shards) if shards is not None else self.my_shards(queue)
        if not order:
            return []
        k = self._cursor % len(order)
        got: list[Claim] = []
        for i in range(len(order)):
            shard = order[(k + i) % len(order)]
            names = sorted(_listdir(self.spool.shard_dir(queue, shard)))
            after = self._after.get((queue, shard))
            if after is not None:
                # Past every name of that id, whatever its attempt count
                # (ID.aN; digits sort below DEL).
                j = bisect.bisect_right(names, after + ".a\x7f")
                names = names[j:] + names[:j]
            for name in names:
                claim = self._claim_name(queue, shard, name)
                if claim is not None:
                    got.append(claim)
                    self._after[(queue, shard)] = claim.entry_id
                if len(got) >= limit:
                    self._cursor = k + i + 1
                    return got
        self._cursor = k + 1
        return got

    def _claim_name(self, queue: str, shard: str, name: str) -> Claim | None:
        m = _ENTRY_NAME.fullmatch(name)
        if m is None:
            return None
        dst = self.claims_dir / f"{queue}.{name}"
        if not self._take(self.spool.shard_dir(queue, shard) / name, dst):
            return None
        return Claim(queue, m[1], int(m[2]), dst, self.id)

    def _take(self, src: Path, dst: Path) -> bool:
        """Rename ``src`` to ``dst`` in our claims dir; False if another won [S3]."""
        with self._mutex:
            try:
                os.rename(src, dst)
                return True
            except OSError as e:
                if _lexists(dst):
                    return True  # the rename happened; the error was for a retry
                if not _lexists(src):
                    return False
                if not self.claims_dir.is_dir():
                    raise LockLost(f"worker {self.id} was reclaimed by another worker") from e
                if e.errno in _fs.GONE_ERRNOS:
                    return False  # gone and back again (released by its winner)
                raise

    def read(self, claim: Claim) -> Entry:
        try:
            return read_entry(claim.path)
        except FileNotFoundError:
            raise ClaimLost(f"claim on {claim.entry_id} was reclaimed") from None

    # -- settling a claim ------------------------------------------------------------

    def complete(self, claim: Claim) -> None:
        """The entry is handled: remove it (no fsync [S8])."""
        if not _unlink_quiet(claim.path):
            raise ClaimLost(f"claim on {claim.entry_id} was reclaimed before completion")

    def release(self, claim: Claim, reason: str = "", *, count: bool = True) -> Disposition:
        """Put the entry back in its shard, counting an attempt [S4].

        Once the count reaches the spool's ``max_attempts`` the entry goes to
        failed instead, with ``reason``.  ``count=False`` (shutting down)
        returns it uncounted.
        """
        attempts = claim.attempts + (1 if count else 0)
        if count and attempts >= self.spool.max_attempts:
            self._to_failed(claim, attempts, f"gave up after {attempts} attempts: "
                            f"{reason or 'no reason given'}")
            return Disposition.FAILED
        dst = self.spool.shard_dir(claim.queue, claim.shard) / entry_name(claim.entry_id, attempts)
        self._give(claim, dst, sync=self.spool.sync and count)
        return Disposition.REQUEUED

    def fail(self, claim: Claim, reason: str) -> None:
        """Give up on the entry now: it goes to failed, this attempt counted [S7]."""
        self._to_failed(claim, claim.attempts + 1, reason)

    def _to_failed(self, claim: Claim, attempts: int, reason: str) -> None:
        d = self.spool.failed_dir(claim.queue, claim.shard)
        if not d.is_dir():
            _fs.makedirs(d, sync=self.spool.sync)
        _fs.write_file_atomic(d / f"{claim.entry_id}.reason", _fs.dump_json({
            "format": REASON_FORMAT, "reason": reason, "failed_us": _fs.now_us(),
            "attempts": attempts, "worker": self.id}),
            staging_dir=self.spool.staging, sync=self.spool.sync)
        self._give(claim, d / entry_name(claim.entry_id, attempts), sync=self.spool.sync)

    def move(self, claim: Claim, dst: Path, *, sync: bool = True) -> None:
        """Move a claim out to ``dst`` in one rename, creating its dir on demand
        (another place for entries, e.g. ams.store.outqueue's deferred
        buckets) [S2]; ClaimLost if a reclaimer took it."""
        self._give(claim, dst, sync=sync and self.spool.sync)

    def _give(self, claim: Claim, dst: Path, *, sync: bool) -> None:
        """Move a claim out of our claims dir to ``dst`` (one rename [S2])."""
        try:
            os.rename(claim.path, dst)
        except OSError as e:
            if not _lexists(claim.path):
                # Reclaimed; or a retried rename that did happen, which a
                # reclaimer's move looks just like: the entry is safe either way.
                raise ClaimLost(f"claim on {claim.entry_id} was reclaimed") from e
            if e.errno != errno.ENOENT or dst.parent.is_dir():
                raise
            _fs.makedirs(dst.parent, sync=self.spool.sync)
            os.rename(claim.path, dst)
        if sync:
            _fs.fsync_dir(dst.parent)

    # -- reclaiming ------------------------------------------------------------------

    def reclaim_dead(self) -> int:
        """Return dead workers' claims to their shards; how many this call moved."""
        self.check()
        now = time.time()
        moved = 0
        known: set[str] = set()
        for info in self.spool.list_workers():
            known.add(info.id)
            if info.id != self.id and info.is_dead(now, self.spool.skew):
                moved += self._reclaim(info.id, heartbeat=True)
        for wid in _listdir(self.spool.root / "claims"):
            if wid not in known and wid != self.id and self._orphaned(wid, now):
                moved += self._reclaim(wid, heartbeat=False)
        return moved

    def _orphaned(self, worker_id: str, now: float) -> bool:
        """A claims dir with no heartbeat, older than lease + skew [S6]."""
        if _lexists(self.spool.heartbeat_path(worker_id)):
            return False  # the listing was stale, or it registered since
        try:
            mtime = os.stat(self.spool.claims_dir(worker_id)).st_mtime
        except FileNotFoundError:
            return False
        return now - mtime > self.spool.lease + self.spool.skew

    def _reclaim(self, worker_id: str, *, heartbeat: bool) -> int:
        d = self.spool.claims_dir(worker_id)
        moved = 0
        for name in sorted(_listdir(d)):
            m = _CLAIM_NAME.fullmatch(name)
            if m is None:
                log.warning("stray file %s in claims of %s", name, worker_id)
                continue
            mine = self.claims_dir / name
            if not self._take(d / name, mine):
                continue  # another reclaimer won it [S6]
            claim = Claim(m[1], m[2], int(m[3]), mine, self.id)
            self.release(claim, f"worker {worker_id} died holding it")
            moved += 1
        try:
            os.rmdir(d)
        except OSError as e:
            if e.errno not in _fs.GONE_ERRNOS:
                # Something is still there: leave the heartbeat for next time.
                log.warning("claims of dead worker %s not empty (%s)", worker_id,
                            errno.errorcode.get(e.errno or 0, e.errno))
                return moved
        if heartbeat:
            _unlink_quiet(self.spool.heartbeat_path(worker_id))
        if moved:
            log.info("reclaimed %d entries from dead worker %s", moved, worker_id)
        return moved

    # -- shutting down -----------------------------------------------------------------

    def close(self) -> None:
        """Return our claims uncounted, then remove claims dir and heartbeat."""
        if self.closed:
            return
        self.closed = True
        if not _lexists(self.spool.heartbeat_path(self.id)):
            return  # reclaimed already: nothing here is ours any more
        for name in sorted(_listdir(self.claims_dir)):
            m = _CLAIM_NAME.fullmatch(name)
            if m is not None:
                try:
                    self.release(Claim(m[1], m[2], int(m[3]), self.claims_dir / name, self.id),
                                 count=False)
                except ClaimLost:
                    continue
        try:
            os.rmdir(self.claims_dir)
        except OSError as e:
            if e.errno not in _fs.GONE_ERRNOS:
                log.warning("could not remove claims dir %s: %s", self.claims_dir, e)
                return
        _unlink_quiet(self.spool.heartbeat_path(self.id))


__all__ = [
    "ENTRY_HEADER_SIZE", "ENTRY_MAGIC", "ENTRY_VERSION", "QUEUES", "SHARDS", "Claim", "ClaimLost",
    "Disposition", "Entry", "EntryInfo", "Envelope", "Place", "Spool", "Worker", "WorkerInfo",
    "assign_shards", "decode_entry", "encode_entry", "entry_head", "entry_name", "new_entry_id",
    "new_worker_id", "read_entry", "read_envelope", "shard_of_entry", "shards_for",
]
