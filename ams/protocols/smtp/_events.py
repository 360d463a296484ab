"""Events: what the client did, named in RFC 5321's words.

Each event is a frozen dataclass that checks what it carries.  Three kinds:

- *Informational*: the core has already queued its reply (``Hello``,
  ``StartData``, ``Data``, ``Reset``, ``MessageRejected``,
  ``ConnectionClosed``).  The driver acts on it and carries on.
- *Decisions* (``MailFrom``, ``RcptTo``, ``EndOfData``, ``AuthRequest``): the
  core replies only when the driver calls ``accept()`` / ``reject(reply)``
  (``auth_result(ok)`` for AUTH).  Until then ``next_event()`` is ``PAUSED``.
- ``StartTLS``: the 220 is queued; the driver sends it, runs the handshake,
  then calls ``tls_started()``.

A message is ``StartData``, any number of ``Data``, then exactly one of
``EndOfData`` (decide), ``MessageRejected`` (the core refused it: drop what
``Data`` delivered), ``Reset``, ``Hello`` or ``ConnectionClosed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ams.protocols.smtp._replies import Reply

__all__ = [
    "AuthRequest",
    "ConnectionClosed",
    "Data",
    "EndOfData",
    "Event",
    "Hello",
    "MailFrom",
    "MessageRejected",
    "RcptTo",
    "Reset",
    "StartData",
    "StartTLS",
]

Params = Mapping[str, "str | None"]


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")


def _freeze_params(params: Params) -> Mapping[str, str | None]:
    frozen: dict[str, str | None] = {}
    for key, value in params.items():
        _check_str("parameter name", key)
        if value is not None:
            _check_str("parameter value", value)
        frozen[key.upper()] = value
    return MappingProxyType(frozen)


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every SMTP server event."""


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """EHLO (``extended``) or HELO: the client named itself; any open
    transaction is abandoned (RFC 5321 §4.1.4)."""

    name: str
    extended: bool

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        if not self.name:
            raise ValueError("Hello needs a name")


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS accepted: send ``data_to_send()``, handshake, ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class AuthRequest(Event):
    """Decoded SASL credentials (RFC 4954; PLAIN RFC 4616, or LOGIN).

    ``authzid`` is empty when the client gave none.  Decide with
    ``conn.auth_result(ok)``.
    """

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("mechanism", "authzid", "username", "password"):
            _check_str(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM: ``address`` is the reverse-path ("" for the null path <>);
    ``params`` the ESMTP parameters, names upper-cased."""

    address: str
    params: Params = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("address", self.address)
        object.__setattr__(self, "params", _freeze_params(self.params))

    @property
    def size(self) -> int | None:
        """RFC 1870 SIZE= declared by the client, if any."""
        value = self.params.get("SIZE")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def body(self) -> str | None:
        """RFC 6152 / RFC 3030 BODY= (7BIT, 8BITMIME or BINARYMIME), upper-cased."""
        value = self.params.get("BODY")
        return value.upper() if value is not None else None

    @property
    def smtputf8(self) -> bool:
        """RFC 6531: the transaction may use UTF-8 addresses and headers."""
        return "SMTPUTF8" in self.params


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO: ``address`` is the forward-path (source route dropped)."""

    address: str
    params: Params = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("address", self.address)
        if not self.address:
            raise ValueError("a forward-path cannot be empty")
        object.__setattr__(self, "params", _freeze_params(self.params))


@dataclass(frozen=True, slots=True)
class StartData(Event):
    """The message begins: after 354 to DATA, or with the first BDAT chunk."""

    chunked: bool = False


@dataclass(frozen=True, slots=True)
class Data(Event):
    """A piece of the message: dot-unstuffed, end-of-data line removed."""

    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise TypeError("Data carries bytes")


@dataclass(frozen=True, slots=True)
class EndOfData(Event):
    """The message is complete.  Store it, then ``accept()`` or ``reject()``."""

    size: int
    mail_from: str
    recipients: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError("size must be a non-negative int")
        _check_str("mail_from", self.mail_from)
        object.__setattr__(self, "recipients", tuple(self.recipients))
        if not self.recipients:
            raise ValueError("a message needs at least one recipient")


@dataclass(frozen=True, slots=True)
class MessageRejected(Event):
    """The core refused the message itself (size, long line, bare newline);
    ``reply`` is already queued.  Discard whatever ``Data`` delivered."""

    reply: Reply

    def __post_init__(self) -> None:
        if not isinstance(self.reply, Reply) or self.reply.is_positive:
            raise ValueError("MessageRejected carries a 4xx/5xx Reply")


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """RSET: any open transaction is abandoned."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over.  ``reply`` is the last reply queued (221 after
    QUIT, 421 after ``close()``), or None when the client hung up."""

    reply: Reply | None = None
