"""Delivery status notifications (bounces): RFC 3464 reports, built with stdlib email.

A DSN is a ``multipart/report; report-type=delivery-status`` (RFC 6522) of
three parts:

1. ``text/plain``: what happened, for people;
2. ``message/delivery-status`` (RFC 3464 2.2-2.3): one block of
   per-message fields (``Reporting-MTA``, ``Arrival-Date``), then one block
   per recipient (``Final-Recipient``, ``Action``, ``Status``, and where a
   remote answered, ``Remote-MTA`` and ``Diagnostic-Code`` with its reply);
3. ``text/rfc822-headers``: the header section of the message that failed
   (not the body: a bounce should not carry a large message back).

It is sent from the null reverse-path with ``Auto-Submitted: auto-replied``
(RFC 3834), so it is never bounced and never answered automatically: no
bounce loops.  The caller never builds a DSN for a message whose own sender
is null.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Sequence
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from ams.store.outqueue import Result
from ams.store.spool_entry import Envelope

_SMTP_REPLY = re.compile(r"[245][0-9][0-9]( |$)")


def header_section(message: bytes) -> bytes:
    """The header section of ``message``: everything before the first empty line."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = message.find(sep)
        if i >= 0:
            return message[:i + len(sep) // 2]
    return message


def _date(us: int) -> str:
    return email.utils.formatdate(us / 1e6, localtime=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_dsn(*, envelope: Envelope, failures: Sequence[tuple[str, Result]], original: bytes,
              reporting_mta: str, domain: str, now_us: int) -> bytes:
    """The DSN telling ``envelope.mail_from`` that ``failures`` got nothing."""
    if not envelope.mail_from:
        raise ValueError("a message with the null sender is never bounced")
    if not failures:
        raise ValueError("a DSN needs at least one failed recipient")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{domain}>"
    report["To"] = f"<{envelope.mail_from}>"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = _date(now_us)
    report["Message-ID"] = f"<{envelope.id}.{now_us:x}.dsn@{domain}>"
    report["Auto-Submitted"] = "auto-replied"
    report.preamble = "This is a MIME-encapsulated message."
    report.attach(_text(_human(envelope, failures, reporting_mta), "plain"))
    report.attach(_delivery_status(envelope, failures, reporting_mta, now_us))
    headers = header_section(original).decode("utf-8", "replace")
    report.attach(_text(headers, "rfc822-headers"))
    return report.as_bytes(policy=email.policy.SMTP)


def _text(text: str, subtype: str) -> MIMEText:
    """Plain 7-bit when it is ASCII (readable as is), else UTF-8 (base64)."""
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")


def _human(envelope: Envelope, failures: Sequence[tuple[str, Result]], mta: str) -> str:
    many = len(failures) > 1
    lines = [
        f"This is the mail system at host {mta}.",
        "",
        f"Your message (queued as {envelope.id}) could not be delivered to "
        f"{'these recipients' if many else 'this recipient'}. "
        "It was delivered to any other recipients.",
        "",
    ]
    for rcpt, res in failures:
        who = f" (from {res.remote})" if res.remote else ""
        lines.append(f"<{rcpt}>{who}:")
        lines.append(f"    {_one_line(res.reply) or res.code}")
        lines.append("")
    lines.append("The header of your message is attached.")
    return "\n".join(lines) + "\n"


def _delivery_status(envelope: Envelope, failures: Sequence[tuple[str, Result]], mta: str,
                     now_us: int) -> MIMEBase:
    part = MIMEBase("message", "delivery-status")
    del part["MIME-Version"]
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {mta}"
    per_message["Arrival-Date"] = _date(envelope.received_us)
    blocks = [per_message]
    for rcpt, res in failures:
        b = Message()
        b["Final-Recipient"] = f"rfc822; {rcpt}"
        b["Action"] = "failed"
        b["Status"] = res.code if res.code[:1] in "45" else "5.0.0"
        if res.remote:
            b["Remote-MTA"] = f"dns; {res.remote}"
        # "smtp" only for a remote's reply; our own reasons are "x-ams".
        kind = "smtp" if _SMTP_REPLY.match(res.reply) else "x-ams"
        b["Diagnostic-Code"] = f"{kind}; {_one_line(res.reply)}"
        b["Last-Attempt-Date"] = _date(res.at_us or now_us)
        blocks.append(b)
    part.set_payload(blocks)
    return part


__all__ = ["build_dsn", "header_section"]
