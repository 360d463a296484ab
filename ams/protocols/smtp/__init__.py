"""Sans-IO SMTP server protocol core (RFC 5321 with PIPELINING, SIZE,
8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING/BINARYMIME, STARTTLS and
AUTH PLAIN/LOGIN).

Feed bytes with ``receive_data``, take events from ``next_event``, send what
``data_to_send`` returns, and answer decision events with ``accept``,
``reject`` or ``auth_result``.  No sockets, no clocks, no filesystem: the
trio driver in ``gateways/`` does the I/O.  See ``_connection`` for the
driver loop.
"""

from ams.protocols.smtp import _replies as replies
from ams.protocols.smtp._connection import BareNewlinePolicy, SMTPServerConnection
from ams.protocols.smtp._events import (
    AuthRequest,
    ConnectionClosed,
    Data,
    EndOfData,
    Event,
    Hello,
    MailFrom,
    MessageRejected,
    RcptTo,
    Reset,
    StartData,
    StartTLS,
)
from ams.protocols.smtp._replies import Reply
from ams.protocols.smtp._state import State
from ams.protocols.smtp._util import (
    NEED_DATA,
    PAUSED,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Sentinel,
)

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthRequest",
    "BareNewlinePolicy",
    "ConnectionClosed",
    "Data",
    "EndOfData",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MessageRejected",
    "ProtocolError",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "Reset",
    "SMTPServerConnection",
    "Sentinel",
    "StartData",
    "StartTLS",
    "State",
    "replies",
]
