"""One AUTH exchange (RFC 4954 §4) for PLAIN (RFC 4616) and LOGIN.

Pure steps: the connection feeds each client response (the initial
response of SASL-IR, or a line after a 334) to :meth:`SaslExchange.respond`
and gets back either the next challenge (a 334 reply to send) or the
decoded credentials as an :class:`AuthRequest` for the driver to check.
A bad response raises :class:`CommandError` with the reply RFC 4954 names:
"*" cancels (501 5.7.0), undecodable base64 is 501 5.5.2.
"""

from __future__ import annotations

import base64
import binascii
import re

from ams.protocols.smtp import _replies as R
from ams.protocols.smtp._events import AuthRequest
from ams.protocols.smtp._parse import CommandError
from ams.protocols.smtp._replies import Reply

__all__ = ["MECHANISMS", "SaslExchange"]

MECHANISMS = ("PLAIN", "LOGIN")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _decode(text: str) -> bytes:
    """A client response: base64, or "=" for an empty initial response."""
    if text == "=":
        return b""
    if not _BASE64.fullmatch(text) or len(text) % 4:
        raise CommandError(R.AUTH_BAD_BASE64)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(R.AUTH_BAD_BASE64) from None


def _text(data: bytes) -> str:
    if b"\0" in data:
        raise CommandError(R.AUTH_MALFORMED)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(R.AUTH_MALFORMED) from None


class SaslExchange:
    """The client's side of one mechanism, one response at a time."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def first_challenge(self) -> Reply:
        """The 334 to send when the client gave no initial response."""
        return R.AUTH_CHALLENGE_EMPTY if self.mechanism == "PLAIN" else R.AUTH_CHALLENGE_USERNAME

    def respond(self, text: str) -> Reply | AuthRequest:
        if text == "*":
            raise CommandError(R.AUTH_CANCELLED)
        data = _decode(text)
        if self.mechanism == "PLAIN":
            # RFC 4616: [authzid] NUL authcid NUL passwd
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise CommandError(R.AUTH_MALFORMED)
            authzid, username, password = (_text(part) for part in parts)
            return AuthRequest("PLAIN", authzid, username, password)
        if self._username is None:
            self._username = _text(data)
            return R.AUTH_CHALLENGE_PASSWORD
        return AuthRequest("LOGIN", "", self._username, _text(data))
