"""Building a post from a subject and a body, checking raw ones, and showing posts.

Pure functions over bytes and strings (the stdlib ``email`` package); no
store access.

A built post is a complete RFC 5322 message with CRLF line endings::

    From: alice@example.org
    To: bb+andrew.general@example.org
    Subject: =?utf-8?q?Caf=C3=A9?=          (RFC 2047 when not ASCII)
    Date: Mon, 10 Jun 2024 10:00:00 +0200
    Message-ID: <32 hex digits@example.org>
    In-Reply-To: <parent>                   (a reply only)
    References: <grandparent> <parent>      (a reply only)
    MIME-Version: 1.0
    Content-Type: text/plain; charset="utf-8"
    Content-Transfer-Encoding: 7bit | 8bit | quoted-printable | base64

The transfer encoding is the ``email`` package's choice for the body: 7bit
for ASCII, otherwise whichever of 8bit, quoted-printable or base64 keeps the
lines short.  ``To`` is the board's posting address, so a reply from a mail
client goes back to the board.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

from ams.errors import UsageError

#: At most this many Message-IDs are kept in a reply's References.
MAX_REFERENCES = 20
_HEADER_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_MSGID = re.compile(r"<[^<>\s]+>")
_RE = re.compile(r"^\s*(re|aw|sv)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Parent:
    """What a reply needs from the post it answers."""

    message_id: str
    references: tuple[str, ...]
    subject: str


def build_post(*, author: str, board_address: str, subject: str, body: str, domain: str,
               parent: Parent | None = None, date: float | None = None) -> bytes:
    """A complete message for a post; UsageError for a subject or body that cannot be one."""
    if any(c in subject for c in "\r\n\x00"):
        raise UsageError("a subject is one line")
    if "\x00" in body:
        raise UsageError("the body contains a NUL character")
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = author
    msg["To"] = board_address
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(date, localtime=True)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
    if parent is not None:
        msg["In-Reply-To"] = parent.message_id
        refs = [*parent.references, parent.message_id][-MAX_REFERENCES:]
        msg["References"] = " ".join(refs)
    text = body.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    msg.set_content(text)
    return msg.as_bytes(policy=email.policy.SMTP)


def reply_subject(subject: str) -> str:
    return subject if _RE.match(subject) else f"Re: {subject}"


def check_raw(message: bytes, max_bytes: int) -> bytes:
    """A raw post must look like a message: UsageError naming what is wrong."""
    if not message.strip():
        raise UsageError("the message is empty")
    if len(message) > max_bytes:
        raise UsageError(f"the message is {len(message)} bytes; the limit is {max_bytes}")
    if b"\x00" in message:
        raise UsageError("the message contains NUL bytes")
    if not _HEADER_START.match(message):
        raise UsageError("the message does not start with a header field (--raw takes a "
                         "whole RFC 5322 message)")
    return message


def parse_headers(message: bytes) -> EmailMessage:
    """The message parsed for its header fields only (fast, never raises)."""
    parser = BytesParser(policy=email.policy.default)
    return parser.parsebytes(message, headersonly=True)


def header_text(msg: EmailMessage, name: str) -> str:
    """A header field decoded to one line of text ('' if absent or unreadable)."""
    try:
        value = msg.get(name)
        text = "" if value is None else str(value)
    except (ValueError, IndexError, AttributeError, TypeError, LookupError):
        # A field the parser cannot make sense of: show it as it was written.
        text = next((str(v) for k, v in msg.raw_items() if k.lower() == name.lower()), "")
    return " ".join(text.split())


def parent_of(message: bytes) -> Parent:
    """Message-ID, References and Subject of a post being answered."""
    msg = parse_headers(message)
    mid = _MSGID.findall(header_text(msg, "Message-ID"))
    if not mid:
        raise UsageError("the post replied to has no Message-ID")
    refs = tuple(_MSGID.findall(header_text(msg, "References")))
    if not refs:
        refs = tuple(_MSGID.findall(header_text(msg, "In-Reply-To")))[:1]
    return Parent(mid[0], refs, header_text(msg, "Subject"))


def render_post(message: bytes, *, heading: str) -> str:
    """A post as text for a terminal: a heading, From/Date/Subject, the body text."""
    msg = BytesParser(policy=email.policy.default).parsebytes(message)
    lines = [heading]
    for name in ("From", "Date", "Subject"):
        lines.append(f"{name}: {header_text(msg, name)}")
    lines.append("")
    lines.append(_body_text(msg).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _body_text(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return f"[no text part: {msg.get_content_type()}]"
        try:
            content = part.get_content()
        except LookupError:  # an unknown charset: show the bytes as UTF-8
            raw = part.get_payload(decode=True)
            content = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    except (LookupError, ValueError, AssertionError, KeyError, AttributeError) as e:
        return f"[body could not be decoded: {type(e).__name__}]"
    if not isinstance(content, str):
        return f"[no text part: {msg.get_content_type()}]"
    return content.replace("\r\n", "\n")


__all__ = [
    "MAX_REFERENCES", "Parent", "build_post", "check_raw", "header_text", "parent_of",
    "parse_headers", "render_post", "reply_subject",
]
