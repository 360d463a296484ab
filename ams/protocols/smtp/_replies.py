"""Replies are data: every reply the server core can send, in one table.

A :class:`Reply` is a reply code (RFC 5321 §4.2), an enhanced status code
(RFC 3463, sent per RFC 2034) and text.  Text may hold several lines
separated by ``\\n``; it is rendered as a multi-line reply.  The token
``{hostname}`` in text is replaced by the server's name when rendered.

RFC 2034 §3: the enhanced code is sent on every 2xx, 4xx and 5xx reply
except the greeting and the replies to HELO and EHLO; 3xx replies (354,
334) carry none either.  Those entries have ``enhanced=None``.

The driver answers decisions with these constants (``USER_UNKNOWN``,
``RELAY_DENIED``, ``TOO_MANY_RECIPIENTS``, ``LOCAL_ERROR`` ...), or builds its
own :class:`Reply`, which is validated so that driver text can never inject
a second reply line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["Reply", "chunk_received", "ehlo", "queued"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_FORBIDDEN_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, optional ``enhanced`` code, ``text`` lines."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200..599, not {self.code!r}")
        if self.enhanced is not None:
            if not _ENHANCED.fullmatch(self.enhanced):
                raise ValueError(f"malformed enhanced status code {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        if not isinstance(self.text, str) or _FORBIDDEN_TEXT.search(self.text.replace("\n", " ")):
            raise ValueError("reply text must be a str without control characters")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    def with_text(self, text: str) -> Reply:
        """The same codes with other text."""
        return replace(self, text=text)

    def render(self, hostname: str = "") -> bytes:
        """Wire form: ``250-2.0.0 first\\r\\n250 2.0.0 last\\r\\n``."""
        lines = self.text.replace("{hostname}", hostname).split("\n")
        out = []
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            body = " ".join(part for part in (self.enhanced, line) if part)
            # "334" SP [base64] (RFC 4954 §4): the space stays even when empty.
            if body or (last and self.code // 100 == 3):
                out.append(f"{self.code}{' ' if last else '-'}{body}\r\n")
            else:
                out.append(f"{self.code}{'' if last else '-'}\r\n")
        return "".join(out).encode("utf-8")


def queued(queue_id: str) -> Reply:
    """The reply to an accepted message, naming the id it was stored under."""
    return Reply(250, "2.0.0", f"OK: queued as {queue_id}")


def ehlo(*, max_size: int | None, smtputf8: bool, chunking: bool, starttls: bool,
         auth: tuple[str, ...]) -> Reply:
    """The EHLO reply: our name, then one service extension per line."""
    lines = ["{hostname}", "PIPELINING", "SIZE" if max_size is None else f"SIZE {max_size}",
             "8BITMIME", *(["SMTPUTF8"] if smtputf8 else []), "ENHANCEDSTATUSCODES",
             *(["CHUNKING", "BINARYMIME"] if chunking else []),
             *(["STARTTLS"] if starttls else []), *([f"AUTH {' '.join(auth)}"] if auth else []),
             "HELP"]
    return Reply(250, None, "\n".join(lines))


def chunk_received(size: int) -> Reply:
    """RFC 3030 §2: a 250 reply to every BDAT chunk that is not the last."""
    return Reply(250, "2.0.0", f"{size} octets received")


# --- Connection ------------------------------------------------------------
GREETING = Reply(220, None, "{hostname} ESMTP AMS")
GREETING_REFUSED = Reply(554, None, "{hostname} No SMTP service here")
HELO = Reply(250, None, "{hostname}")
CLOSING = Reply(221, "2.0.0", "{hostname} Service closing transmission channel")
SHUTTING_DOWN = Reply(421, "4.3.2", "{hostname} Service shutting down, closing connection")
TIMEOUT = Reply(421, "4.4.2", "{hostname} Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "{hostname} Too many errors, closing connection")
NON_SMTP_COMMAND = Reply(421, "4.7.0", "{hostname} Non-SMTP command, closing connection")

# --- Positive --------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK: message accepted")
CANNOT_VRFY = Reply(252, "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY "
                           "HELP STARTTLS AUTH")
START_MAIL_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
READY_TO_START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
AUTH_CHALLENGE_EMPTY = Reply(334, None, "")
AUTH_CHALLENGE_USERNAME = Reply(334, None, "VXNlcm5hbWU6")  # base64("Username:")
AUTH_CHALLENGE_PASSWORD = Reply(334, None, "UGFzc3dvcmQ6")  # base64("Password:")

# --- Decisions the driver makes (RCPT, message, AUTH) ------------------------
USER_UNKNOWN = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
SENDER_REJECTED = Reply(550, "5.7.1", "Sender rejected")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
LOCAL_ERROR = Reply(451, "4.3.0", "Requested action aborted: local error in processing")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# --- Syntax (RFC 5321 §4.2.4, §4.5.3.1) --------------------------------------
COMMAND_UNRECOGNIZED = Reply(500, "5.5.2", "Syntax error, command unrecognized")
INVALID_CHARACTERS = Reply(500, "5.5.2", "Syntax error, invalid characters in command")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY address")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]; cannot resynchronise, closing")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
PATH_TOO_LONG = Reply(501, "5.5.4", "Path too long")
PARAMETERS_UNRECOGNIZED = Reply(555, "5.5.4",
                                "MAIL FROM/RCPT TO parameters not recognized or not implemented")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")

# --- Sequence (503) ---------------------------------------------------------
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELLO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_RSET = Reply(503, "5.5.1", "Previous BDAT failed; send RSET")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
NOT_IN_TRANSACTION = Reply(503, "5.5.1", "Command not allowed during a mail transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")

# --- Policy ------------------------------------------------------------------
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11",
                            "Encryption required for requested authentication mechanism")
AUTH_MECHANISM_UNKNOWN = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 response")
AUTH_MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")

# --- Message content ---------------------------------------------------------
# RFC 5321 §4.5.3.1: "500 Line too long" is the reply for an over-long line;
# for DATA it answers the whole message, after its end.
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long in message data")
# Bare CR or LF in DATA (SMTP smuggling).  ``bare_newline="close"``: answer at
# once and drop the session, as Postfix (smtpd_forbid_bare_newline) and
# sendmail do; 521 so the sender does not retry the same bytes forever.
BARE_NEWLINE_CLOSE = Reply(521, "5.5.2",
                           "{hostname} Bare CR or LF in message data, closing connection")
# ``bare_newline="reject"``: read to the real CRLF.CRLF, then fail the message.
BARE_NEWLINE_REJECT = Reply(554, "5.5.2", "Bare CR or LF in message data")
