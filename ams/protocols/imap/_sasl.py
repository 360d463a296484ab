"""AUTHENTICATE PLAIN (RFC 4616) as a pure step, and the refusal the
connection turns into a response.

The connection feeds the client's response (the SASL-IR initial response,
RFC 4959, or the line after ``+``) to :func:`plain_credentials` and gets the
credentials for an ``Authenticate`` event.  Invalid base64 is BAD (RFC 3501
§6.2.2); a decoded message that is not ``[authzid] NUL authcid NUL passwd``
in UTF-8 is NO [AUTHENTICATIONFAILED] (RFC 4616 §2: the server fails the
exchange).
"""

from __future__ import annotations

import base64
import binascii
import re

from ams.protocols.imap import _responses as R
from ams.protocols.imap._responses import ResponseCode, Text

__all__ = ["Refusal", "plain_credentials"]

_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class Refusal(Exception):
    """A command the core answers itself (never leaves the package).
    ``counted`` BADs count toward the connection's error limit."""

    def __init__(self, condition: str, text: str, code: ResponseCode | None = None, *,
                 counted: bool = True) -> None:
        super().__init__(text)
        self.condition, self.text, self.code, self.counted = condition, text, code, counted


def _decode(text: bytes) -> bytes:
    if text == b"=":                      # RFC 4959: an empty initial response
        return b""
    if not text or not _BASE64.fullmatch(text):
        raise Refusal("BAD", Text.AUTH_BAD_BASE64)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal("BAD", Text.AUTH_BAD_BASE64) from None


def plain_credentials(response: bytes) -> tuple[str, str, str]:
    """base64 of ``[authzid] NUL authcid NUL passwd`` → (authzid, user, password)."""
    parts = _decode(response).split(b"\0")
    malformed = Refusal("NO", Text.AUTH_MALFORMED, R.AUTHENTICATIONFAILED, counted=False)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise malformed
    try:
        authzid, username, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise malformed from None
    return authzid, username, password
