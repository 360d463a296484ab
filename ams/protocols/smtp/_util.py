"""Protocol errors and the sentinels ``next_event`` returns.

Two kinds of error, as in h11:

- :class:`LocalProtocolError`: *our* side (the driver) broke the API
  contract: ``accept()`` with no decision pending, a 2xx reply to
  ``reject()``, data after EOF.  A bug in the driver; never caused by the peer.
- :class:`RemoteProtocolError`: the peer did something the session cannot
  survive (too many bad commands, a bare newline in DATA under the default
  policy, an unparseable BDAT).  The core has already queued the closing
  reply (it is ``exc.reply``); the driver sends ``data_to_send()`` and closes.

Everything else the peer gets wrong (syntax, sequence, unknown commands,
binary garbage) is answered in-protocol with an error reply and no exception.
"""

from __future__ import annotations

import enum
from typing import Final

from ams.errors import AMSError
from ams.protocols.smtp import _replies
from ams.protocols.smtp._replies import Reply

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Sentinel",
]


class ProtocolError(AMSError):
    """Abstract: the SMTP conversation broke.  ``reply`` is what to answer."""

    def __init__(self, message: str, reply: Reply) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """The driver misused the connection object."""

    def __init__(self, message: str, reply: Reply = _replies.LOCAL_ERROR) -> None:
        super().__init__(message, reply)


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol beyond recovery; ``reply`` is already queued."""


class Sentinel(enum.Enum):
    """Values of ``next_event()`` that are not events."""

    NEED_DATA = "NEED_DATA"
    """Every buffered byte is processed: feed more with ``receive_data``."""
    PAUSED = "PAUSED"
    """A decision (``conn.pending``) or the TLS handshake is awaited."""

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED
