"""The store root: its layout, and the objects that live in it.

Layout under ``store.root`` (docs/format.md has the whole picture)::

    store.json                 {"format": 1, "id": …, "created": …}
    users/ab/cd/NAME.json      user records, sharded by sha256(NAME)
    aliases/ab/cd/ALIAS.json   alias index: which users an alias delivers to
    mail/ab/cd/USERID/         one user's mail: mailboxes.json, lock, one log dir per mailbox
    bboards/ab/cd/BOARDID/     bulletin boards, logs in the same format
    locks/ab/NAME.lock         dotlocks (dotlock method only)
    spool/…                    incoming and outgoing queues (ams.store.spool)
    tmp/HOST/                  this host's staging directory
    doctor/verdicts/HOST.json  what ``ams doctor`` concluded on each host (docs/doctor.md);
                               doctor/RUN/ exists only while a check runs

Every directory with one entry per user, mailbox or message is sharded by
hash so that none grows past about a thousand entries.
"""

from __future__ import annotations

import uuid
from datetime import UTC
from pathlib import Path

from ams.config import Config
from ams.errors import FormatVersionError, StoreError
from ams.store import _fs
from ams.store.lock import Lock
from ams.store.log import LogOptions, MailboxLog

STORE_FORMAT = 1
TOP_DIRS = ("users", "aliases", "mail", "bboards", "locks", "spool", "tmp")


class Store:
    """A handle on the shared store, configured for this host."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = Path(config.store.root)
        self.host = config.host.name
        sc = config.store
        self.log_options = LogOptions(fsync=sc.fsync == "always", segment_bytes=sc.segment_bytes,
                                      clock_skew=sc.clock_skew,
                                      compaction_grace=sc.compaction_grace_seconds)

    @property
    def fsync(self) -> bool:
        return self.log_options.fsync

    # -- creation and checks -----------------------------------------------------

    @classmethod
    def initialise(cls, config: Config) -> Store:
        """Create the store's skeleton if it is not there (idempotent)."""
        root = Path(config.store.root)
        _fs.makedirs(root)
        for d in TOP_DIRS:
            _fs.makedirs(root / d)
        meta = root / "store.json"
        if not meta.exists():
            from datetime import datetime
            _fs.create_exclusive(meta, _fs.dump_json({
                "format": STORE_FORMAT, "id": str(uuid.uuid4()),
                "created": datetime.now(UTC).isoformat(timespec="seconds")}))
        store = cls(config)
        store.check()
        return store

    def check(self) -> dict[str, object]:
        """Refuse a root that is not an AMS store, or a newer one."""
        meta = self.root / "store.json"
        try:
            info = _fs.read_json(meta)
        except FileNotFoundError:
            raise StoreError(f"{self.root} is not an AMS store (no store.json); "
                             "run 'ams init'") from None
        except ValueError:
            raise StoreError(f"{meta} is not valid JSON") from None
        if int(info.get("format", 0)) > STORE_FORMAT:
            raise FormatVersionError(f"{meta}: store format {info['format']} is newer than "
                                     f"this AMS ({STORE_FORMAT})")
        return dict(info)

    # -- paths ----------------------------------------------------------------

    def staging_dir(self) -> Path:
        """This host's own staging directory (one writer per staging area)."""
        d = self.root / "tmp" / self.host
        if not d.is_dir():
            _fs.makedirs(d, sync=self.fsync)
        return d

    def user_dir(self, user_id: str) -> Path:
        return self.root / "mail" / _fs.shard_path(user_id) / user_id

    def bboard_dir(self, board_id: str) -> Path:
        return self.root / "bboards" / _fs.shard_path(board_id) / board_id

    def dotlock_path(self, name: str) -> Path:
        return self.root / "locks" / _fs.shard_of(name) / f"{name}.lock"

    # -- objects ----------------------------------------------------------------

    def lock(self, name: str, fcntl_path: Path) -> Lock:
        """A lock named ``name``; ``fcntl_path`` must be a long-lived file."""
        sc = self.config.store
        return Lock(method=sc.lock_method, fcntl_path=fcntl_path,
                    dot_path=self.dotlock_path(name), host=self.host, lease=sc.lease_seconds,
                    skew=sc.clock_skew, timeout=sc.lock_timeout)

    def log_at(self, path: Path, log_id: str | None = None) -> MailboxLog:
        """The log in directory ``path`` (its id names its lock)."""
        lid = log_id or path.name
        return MailboxLog(path, self.lock(f"log-{lid}", path / "lock"), self.log_options)

