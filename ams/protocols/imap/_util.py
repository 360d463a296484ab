"""Protocol errors and the sentinels ``next_event`` returns.

Two kinds of error, as in h11 and in our SMTP core:

- :class:`LocalProtocolError`: *our* side (the driver) broke the API
  contract: ``complete()`` with a tag that is not pending, a tagged response
  through ``send()``, data after EOF.  A bug in the driver, never the peer's.
- :class:`RemoteProtocolError`: the client did something the session cannot
  survive (too many bad commands, a literal whose length cannot be read, so
  the byte stream cannot be resynchronised).  The core has already queued
  ``* BYE`` (it is ``exc.response``); the driver sends ``data_to_send()``
  and closes.

Everything else the client gets wrong (syntax, wrong state, unknown
commands, oversized literals, binary garbage) is answered in-protocol with a
BAD or NO response and no exception.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from ams.errors import AMSError

if TYPE_CHECKING:
    from ams.protocols.imap._responses import StatusResponse

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Sentinel",
]


class ProtocolError(AMSError):
    """Abstract: the IMAP conversation broke.  ``response`` is what to send
    (None when there is nothing useful to tell the client)."""

    def __init__(self, message: str, response: StatusResponse | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(message)
        self.response = response


class LocalProtocolError(ProtocolError):
    """The driver misused the connection object."""


class RemoteProtocolError(ProtocolError):
    """The client broke the protocol beyond recovery; ``response`` (a BYE)
    is already queued."""


class Sentinel(enum.Enum):
    """Values of ``next_event()`` that are not events."""

    NEED_DATA = "NEED_DATA"
    """Every buffered byte is processed: feed more with ``receive_data``."""
    PAUSED = "PAUSED"
    """A command awaits ``complete()``, or the TLS handshake is awaited."""

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED
