"""``ams reindex``: rebuild every mailbox of the store into this host's index.

This is an operator's command, the one place where the index walks the
store's directories: readers never list to find news [brief rule 3], but a
full rebuild has to find every log.  A log directory is one that holds a
``head`` file; the walk does not descend into log directories and skips
staging names (leading dot).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ams.errors import AMSError
from ams.index._index import Index
from ams.store import Store

#: Where logs live under the store root.
LOG_TREES = ("mail", "bboards")


@dataclass(frozen=True)
class ReindexProgress:
    #: Logs finished so far (including this one), and in all.
    done: int
    total: int
    path: Path
    #: Messages in this log's mailbox after the rebuild (0 if it failed).
    messages: int
    error: str | None = None


@dataclass
class ReindexStats:
    mailboxes: int = 0
    messages: int = 0
    records: int = 0
    #: Index entries dropped because their log was not found.
    forgotten: int = 0
    #: Orphaned entries removed (crashed rebuilds).
    vacuumed: int = 0
    errors: list[tuple[Path, str]] = field(default_factory=list)


def find_logs(store: Store) -> list[Path]:
    """Every log directory under the store's mail and bboard trees, sorted."""
    found: list[Path] = []
    stack = [store.root / t for t in LOG_TREES]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        if any(e.name == "head" and e.is_file() for e in entries):
            found.append(d)
            continue
        stack.extend(Path(e.path) for e in entries
                     if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    return sorted(found)


def reindex_all(store: Store, *, index: Index | None = None,
                progress: Callable[[ReindexProgress], None] | None = None,
                prune: bool = True) -> ReindexStats:
    """Rebuild the index of every log in ``store``.

    A log that fails (corrupt, unreadable) is reported in ``errors`` and the
    others go on.  With ``prune``, mailboxes whose log was not found are
    dropped from the index.  Opens ``Index(store.config)`` unless given one.
    """
    own = index is None
    ix = index if index is not None else Index(store.config)
    stats = ReindexStats()
    try:
        paths = find_logs(store)
        seen: set[str] = set()
        for n, path in enumerate(paths, 1):
            messages, error = 0, None
            try:
                log_ = store.log_at(path)
                seen.add(log_.head().id)
                result = ix.rebuild(log_)
                status = ix.status(result.log_id)
                messages = status.messages if status is not None else 0
                stats.mailboxes += 1
                stats.messages += messages
                stats.records += result.records
            except (AMSError, OSError) as e:
                error = str(e)
                stats.errors.append((path, error))
            if progress is not None:
                progress(ReindexProgress(n, len(paths), path, messages, error))
        if prune:
            for log_id in ix.mailboxes():
                if log_id not in seen:
                    stats.forgotten += int(ix.forget(log_id))
        stats.vacuumed = ix.vacuum()
    finally:
        if own:
            ix.close()
    return stats
