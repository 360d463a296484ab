"""Sans-IO IMAP server protocol core (RFC 3501 IMAP4rev1 with LITERAL+/-,
SASL-IR, ID, ENABLE, IDLE, NAMESPACE, UNSELECT, UIDPLUS, MOVE, CONDSTORE,
QRESYNC, SPECIAL-USE, ESEARCH and SEARCHRES syntax).

Feed bytes with ``receive_data``, take events from ``next_event``, answer
each command with ``send(...)`` (untagged data) and ``complete(tag, ...)``,
and write what ``data_to_send`` returns.  No sockets, no clocks, no
filesystem: the trio driver in ``ams/imap/`` does the I/O.  See
``_connection`` for the driver loop and the decision flow, ``_framing`` for
literals and limits, ``_responses`` for the response model.
"""

from ams.protocols.imap import _responses as responses
from ams.protocols.imap._commands import (
    All,
    And,
    Append,
    Authenticate,
    BodyKey,
    Check,
    Close,
    Command,
    ConnectionClosed,
    Copy,
    Create,
    DateKey,
    Delete,
    Event,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FlagKey,
    HeaderKey,
    Id,
    Idle,
    IdleDone,
    List,
    Login,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    Not,
    Or,
    QResync,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceKey,
    SizeKey,
    StartTLS,
    Status,
    Store,
    Subscribe,
    TextKey,
    Unselect,
    Unsubscribe,
)
from ams.protocols.imap._connection import DEFAULT_EXTENSIONS, IMAPServerConnection
from ams.protocols.imap._responses import (
    Atom,
    Concat,
    ContinueRequest,
    LiteralData,
    Mailbox,
    Response,
    ResponseCode,
    StatusResponse,
    Untagged,
)
from ams.protocols.imap._sequence import SequenceSet
from ams.protocols.imap._state import Mode, State
from ams.protocols.imap._utf7 import MailboxNameError
from ams.protocols.imap._utf7 import decode as decode_mailbox_name
from ams.protocols.imap._utf7 import encode as encode_mailbox_name
from ams.protocols.imap._util import (
    NEED_DATA,
    PAUSED,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Sentinel,
)

__all__ = [
    "DEFAULT_EXTENSIONS", "NEED_DATA", "PAUSED", "All", "And", "Append", "Atom", "Authenticate",
    "BodyKey", "Check", "Close", "Command", "ConnectionClosed", "ContinueRequest", "Copy",
    "Create", "DateKey", "Delete", "Event", "Examine", "Expunge", "Fetch", "FetchAttribute",
    "FlagKey", "HeaderKey", "IMAPServerConnection", "Id", "Idle", "IdleDone", "List",
    "Concat", "LiteralData", "LocalProtocolError", "Login", "Lsub", "Mailbox", "MailboxNameError",
    "ModSeqKey", "Mode", "Move", "Namespace", "Noop", "Not", "Or", "ProtocolError", "QResync",
    "RemoteProtocolError", "Rename", "Response", "ResponseCode", "Search", "SearchKey",
    "Section", "Select", "Sentinel", "SequenceKey", "SequenceSet", "SizeKey", "StartTLS",
    "State", "Status", "StatusResponse", "Store", "Subscribe", "TextKey", "Unselect",
    "Unsubscribe", "Untagged", "decode_mailbox_name", "encode_mailbox_name", "responses",
]
