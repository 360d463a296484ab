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
from ams.store.mailboxes import (
    Mailboxes,
    MailboxInfo,
    MailboxList,
    create_mail_dir,
    validate_mailbox_name,
)
from ams.store.spool import (
    Claim,
    ClaimLost,
    Disposition,
    Entry,
    EntryInfo,
    Envelope,
    Place,
    Spool,
    Worker,
)
from ams.store.store import Store
from ams.store.users import User, UserRegistry, validate_user_name

__all__ = [
    "Claim", "ClaimLost", "Disposition", "Entry", "EntryInfo", "Envelope", "Place", "Spool",
    "Worker",
    "Appended", "FlagOp", "Head", "Lock", "LogOptions", "LogReader", "MailboxLog",
    "MailboxInfo", "MailboxList", "Mailboxes", "MessageLocation", "NewMessage", "Position",
    "ReadBatch", "RecordType", "Store", "User", "UserRegistry", "create_log", "create_mail_dir",
    "fold", "validate_mailbox_name", "validate_user_name",
]
