"""The local index: one host's LMDB cache of every mailbox's folded log.

Indexes are local and disposable (brief rule 6): an :class:`Index` lives
under ``host.cache_dir``, refuses network, cluster and FUSE filesystems and
the store root, and can always be rebuilt from the logs.  The record of what
is stored where, byte for byte, is in :mod:`ams.index._codec`; how updates
and rebuilds work is in :mod:`ams.index._index`.

All methods are synchronous and each runs its LMDB transactions to the end
before returning; trio code calls them with ``trio.to_thread.run_sync``.
"""

from ams.index._codec import INDEX_FORMAT
from ams.index._fstype import check_index_location
from ams.index._index import (
    BATCH_RECORDS,
    DEFAULT_MAP_SIZE,
    Index,
    IndexedMessage,
    IndexUpdate,
    MailboxStatus,
    MailboxView,
)
from ams.index._reindex import ReindexProgress, ReindexStats, find_logs, reindex_all

__all__ = [
    "BATCH_RECORDS", "DEFAULT_MAP_SIZE", "INDEX_FORMAT", "Index", "IndexUpdate", "IndexedMessage",
    "MailboxStatus", "MailboxView", "ReindexProgress", "ReindexStats", "check_index_location",
    "find_logs", "reindex_all",
]
