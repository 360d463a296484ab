"""The shared store: everything AMS keeps on the shared filesystem."""

from ams.store.format import FlagOp, RecordType
from ams.store.lock import Lock
from ams.store.log import (
    Appended,
    Head,
    LogOptions,
    LogReader,
    MailboxLog,
    MessageLocation,
    NewMessage,
    Position,
    ReadBatch,
    create_log,
    fold,
)
from ams.store.store import Store

__all__ = [
    "Appended", "FlagOp", "Head", "Lock", "LogOptions", "LogReader", "MailboxLog",
    "MessageLocation", "NewMessage", "Position", "ReadBatch", "RecordType", "Store", "create_log",
    "fold",
]
