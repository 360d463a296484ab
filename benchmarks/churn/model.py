"""The AFS cache-manager model the churn meter counts with (no I/O here).

Theory of operation
-------------------
AFS keeps coherence with *callbacks*.  A client that fetches a file's or a
directory's status or data from the fileserver gets a callback promise with
it; while it holds the callback it uses its cached copy without asking the
server again.  When any client changes the object (a directory entry
created, renamed or removed; file data stored at close or fsync; a status
change), the fileserver *breaks* the callback of every other client holding
one, while the changing client waits.  The next time such a client needs
the object, it fetches the status again, and if the *data version* moved,
the data too: for a directory the whole directory, for a file the chunks it
reads.

:class:`CallbackServer` is that bookkeeping for the fileserver side: who
holds a callback on which object, each object's data version, and per
client the counters the benchmark reports.  The meters (one FUSE mount per
simulated host, :mod:`benchmarks.churn.meter`) keep the client side: which
callbacks they hold and which data (at which version) they have cached.

Sizes
-----
A directory refetch costs the directory's size in the AFS directory format
(OpenAFS ``src/dir/dir.c``): 2,048-byte pages of 64 slots of 32 bytes; the
first page spends 13 slots on headers (the page header and the directory
header with its allocation map and 128-entry hash table), every other page
1; an entry takes ``1 + (len(name) + 16) // 32`` slots and never spans a
page; ``.`` and ``..`` are entries.  :func:`dir_bytes` packs the current
entries in that format, so it is the size of a freshly built directory (a
real one that has seen deletions can only be larger).  A file is fetched
in chunks of :data:`CHUNK` bytes (the AFS default for a disk cache, 64 KiB);
a chunk at the end of a file costs only the bytes up to the end.  The same
rules apply to every scenario.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

PAGE = 2048
SLOTS_PER_PAGE = 64
FIRST_PAGE_HEADER_SLOTS = 13
CHUNK = 64 * 1024


def name_slots(name_len: int) -> int:
    """32-byte slots one entry with a name of ``name_len`` bytes takes (afs_dir_NameBlobs)."""
    return 1 + (name_len + 1 + 15) // 32


def dir_bytes(name_lengths: Iterable[int]) -> int:
    """Bytes of an AFS directory holding entries with these name lengths (plus . and ..)."""
    page, slot = 0, FIRST_PAGE_HEADER_SLOTS
    for n in (1, 2, *name_lengths):
        need = name_slots(n)
        if slot + need > SLOTS_PER_PAGE:
            page += 1
            slot = 1
        slot += need
    return (page + 1) * PAGE


def chunk_span(offset: int, size: int, file_size: int) -> range:
    """The chunk numbers a read of ``size`` bytes at ``offset`` touches (none past EOF)."""
    end = min(offset + size, file_size)
    if end <= offset:
        return range(0)
    return range(offset // CHUNK, (end - 1) // CHUNK + 1)


def chunk_bytes(chunk: int, file_size: int) -> int:
    """What fetching one chunk of a file of ``file_size`` bytes transfers."""
    return max(0, min(CHUNK, file_size - chunk * CHUNK))


@dataclass
class Counters:
    """What one client (one simulated host) caused and suffered.

    Breaks and fetches are what the client *received*: a break counts for
    the client whose callback was broken.  Entries are what the client
    *changed*.  ``*_refetch_bytes`` are fetches of data the client had
    cached at an older data version; the other fetch bytes are first reads.
    """

    dir_breaks: int = 0
    file_breaks: int = 0
    status_fetches: int = 0
    dir_fetches: int = 0
    dir_fetch_bytes: int = 0
    dir_refetches: int = 0
    dir_refetch_bytes: int = 0
    file_fetch_bytes: int = 0
    file_refetch_bytes: int = 0
    created: int = 0
    renamed: int = 0
    removed: int = 0
    mailbox_created: int = 0
    mailbox_renamed: int = 0
    mailbox_removed: int = 0
    data_changes: int = 0  # stores of file data and status changes this client made
    requests: int = 0  # FUSE requests the client's meter served (what metering costs)

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                           for f in fields(self)})

    @property
    def entries(self) -> int:
        return self.created + self.renamed + self.removed

    @property
    def mailbox_entries(self) -> int:
        return self.mailbox_created + self.mailbox_renamed + self.mailbox_removed

    @property
    def breaks(self) -> int:
        return self.dir_breaks + self.file_breaks

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Counters:
        return cls(**{f.name: int(d.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True)
class Change:
    """One change a client made, as the fileserver sees it.

    ``objects`` are (object, is_dir, data) triples: the callbacks on each
    are broken for every other holder; ``data`` says whether the object's
    data changed (a directory entry or file bytes) or only its status.
    ``acquire`` are objects the changer now holds a callback on (a file it
    created).  ``drop`` are objects that ceased to exist: their callbacks
    are deleted without counting a break (the directory's break is what
    tells the other clients).  ``created``, ``renamed`` and ``removed`` are
    directory entries; ``mailbox`` says a mailbox directory was among the
    directories changed.
    """

    objects: tuple[tuple[int, bool, bool], ...] = ()
    acquire: tuple[int, ...] = ()
    drop: tuple[int, ...] = ()
    created: int = 0
    renamed: int = 0
    removed: int = 0
    mailbox: bool = False


@dataclass(frozen=True)
class Break:
    client: str
    obj: int
    counted: bool  # False for a dropped object: no break is counted


class CallbackServer:
    """The fileserver's callback table and the per-client counters."""

    def __init__(self) -> None:
        self.holders: dict[int, set[str]] = {}
        self.versions: dict[int, int] = {}
        self.counters: dict[str, Counters] = {}

    def client(self, name: str) -> Counters:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Counters()
        return c

    def version(self, obj: int) -> int:
        return self.versions.get(obj, 0)

    def fetch(self, client: str, obj: int) -> int:
        """``client`` fetched ``obj``'s status: it holds a callback now.  Returns the
        object's data version, so the client can tell whether its cached data is
        still good."""
        self.holders.setdefault(obj, set()).add(client)
        self.client(client).status_fetches += 1
        return self.version(obj)

    def served(self, client: str, requests: int) -> None:
        self.client(client).requests += requests

    def account(self, client: str, *, dir_bytes: int = 0, dir_refetch: bool = False,
                file_bytes: int = 0, file_refetch_bytes: int = 0) -> None:
        """Data the client fetched under a callback it holds."""
        c = self.client(client)
        if dir_bytes:
            c.dir_fetches += 1
            c.dir_fetch_bytes += dir_bytes
            if dir_refetch:
                c.dir_refetches += 1
                c.dir_refetch_bytes += dir_bytes
        c.file_fetch_bytes += file_bytes
        c.file_refetch_bytes += file_refetch_bytes

    def change(self, client: str, change: Change) -> tuple[list[Break], dict[int, int]]:
        """Apply a change; return the breaks to deliver (and wait for) and the
        new data versions of the changed objects."""
        breaks: list[Break] = []
        versions: dict[int, int] = {}
        c = self.client(client)
        for obj, is_dir, data in change.objects:
            for other in sorted(self.holders.get(obj, ())):
                if other == client:
                    continue
                breaks.append(Break(other, obj, True))
                oc = self.client(other)
                if is_dir:
                    oc.dir_breaks += 1
                else:
                    oc.file_breaks += 1
            self.holders[obj] = {client}
            if data:
                self.versions[obj] = self.version(obj) + 1
            if not is_dir:
                c.data_changes += 1
            versions[obj] = self.version(obj)
        for obj in change.acquire:
            self.holders[obj] = {client}
            self.versions[obj] = self.version(obj) + 1
            versions[obj] = self.version(obj)
        for obj in change.drop:
            for other in sorted(self.holders.pop(obj, ())):
                if other != client:
                    breaks.append(Break(other, obj, False))
            self.versions[obj] = self.version(obj) + 1
        c.created += change.created
        c.renamed += change.renamed
        c.removed += change.removed
        if change.mailbox:
            c.mailbox_created += change.created
            c.mailbox_renamed += change.renamed
            c.mailbox_removed += change.removed
        return breaks, versions

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: c.as_dict() for name, c in sorted(self.counters.items())}


__all__ = ["CHUNK", "PAGE", "Break", "CallbackServer", "Change", "Counters", "chunk_bytes",
           "chunk_span", "dir_bytes", "name_slots"]
