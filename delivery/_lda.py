"""The local delivery agent: ``ams deliver -r ADDRESS [-r ADDRESS…] [-f SENDER] < message``.

Theory of operation
-------------------
For scripts and for other MTAs (Postfix ``pipe``/``mailbox_command``, Exim
``pipe`` transports, procmail-style hooks).  It files one message from stdin
straight into each recipient's mailbox, without the spool, and answers with
a sysexits(3) status, which those MTAs understand:

==  ===============  =====================================================
 0  EX_OK            filed for every recipient
64  EX_USAGE         no recipient given
65  EX_DATAERR       the message (or ``-f``) is malformed: empty, has NUL
                     bytes, is over ``limits.max_message_bytes``, or does
                     not start with a header field
67  EX_NOUSER        a recipient is unknown, disabled, malformed or not in
                     a local domain
69  EX_UNAVAILABLE   a recipient is a members-only bboard the ``-f``
                     sender may not post to, or a forwarding loop
75  EX_TEMPFAIL      try again later: lock timeout, I/O error, store damage,
                     or anything unexpected (never a traceback)
78  EX_CONFIG        the config or the store it names is unusable
==  ===============  =====================================================

An MTA applies the status to every recipient it passed, so refusals are
decided before anything is filed: if any recipient is refused permanently
nothing is filed and the status is that refusal's.  (Configure the MTA to
pass one recipient per run, as for dovecot-lda, to refuse per recipient.)
On failure one line goes to stderr.

Exactly once across MTA retries.  An MTA that timed out waiting for us
runs us again with the same bytes.  Each copy is filed with delivery id
``lda-H/RECIPIENT``, H being the first 32 hex digits of
``sha256(sender NUL message)``, and appends look back
``LDA_DEDUPE_SECONDS`` (one hour) for that id ([W7] in ams.store.log).  So
a retry within the hour files only what is missing; a temporary failure
half way (75) is safe to retry.  The hash covers the whole message, not just
its Message-ID: two different messages that share a Message-ID (it happens:
broken generators, resent copies) are both filed, while the same bytes
delivered to the same recipient twice within the hour are taken as a retry
and filed once.  An MTA adds its own Received field with a queue id and
time to every message, so genuinely separate submissions differ.

A leading mbox ``From `` line (Postfix's ``F`` flag) is dropped.  Forwards
are enqueued to the ``out`` spool as the worker does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import BinaryIO, TextIO

from ams.config import Config, load_config
from ams.errors import ConfigError, StoreError
from ams.store import Spool, Store, _fs
from delivery._filing import (
    Filer,
    Plan,
    delivery_prefix,
    group_by_mailbox,
    local_offset_minutes,
    plan_message,
)
from delivery._resolve import (
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_TEMPFAIL,
    TEMPORARY_ERRORS,
    Resolver,
    parse_address,
)
from delivery._resolve import _describe as describe

log = logging.getLogger("delivery.lda")

EX_USAGE = 64
#: How far back an append looks for the same delivery id (an MTA's retry).
LDA_DEDUPE_SECONDS = 3600.0
_HEADER_START = re.compile(rb"[!-9;-~]+[ \t]*:")


class _Exit(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def deliver_main(config: Config, recipients: Sequence[str], sender: str | None,
                 message: bytes, *, dedupe_seconds: float = LDA_DEDUPE_SECONDS,
                 stderr: TextIO | None = None) -> int:
    """File ``message`` for ``recipients``; return a sysexits status."""
    err = stderr or sys.stderr
    try:
        return _deliver(config, recipients, sender, message, dedupe_seconds)
    except _Exit as e:
        print(f"ams deliver: {e}", file=err)
        return e.code
    except Exception as e:  # never a traceback; a retry is the safe answer
        log.debug("ams deliver: internal error", exc_info=True)  # AMS_LOG_LEVEL=DEBUG
        print(f"ams deliver: internal error: {type(e).__name__}: {e}", file=err)
        return EX_TEMPFAIL


def deliver_command(config_path: str | None, recipients: Sequence[str], sender: str | None,
                    stdin: BinaryIO | None = None, stderr: TextIO | None = None) -> int:
    """What the CLI calls: load the config (EX_CONFIG if unusable), read stdin.

    Its only output is the one line on failure: store warnings and the
    delivery log line stay quiet unless ``AMS_LOG_LEVEL`` asks for them.
    """
    previous = logging.root.manager.disable
    if "AMS_LOG_LEVEL" not in os.environ:
        logging.disable(logging.CRITICAL)
    try:
        return _command(config_path, recipients, sender, stdin, stderr or sys.stderr)
    finally:
        logging.disable(previous)


def _command(config_path: str | None, recipients: Sequence[str], sender: str | None,
             stdin: BinaryIO | None, err: TextIO) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"ams deliver: {e}", file=err)
        return EX_CONFIG
    stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        message = stream.read()
    except OSError as e:
        print(f"ams deliver: cannot read the message: {e}", file=err)
        return EX_TEMPFAIL
    return deliver_main(config, recipients, sender, message, stderr=err)


def check_message(message: bytes, max_bytes: int) -> bytes:
    """The message without an mbox ``From `` line; _Exit(EX_DATAERR) if malformed."""
    if message.startswith(b"From "):
        nl = message.find(b"\n")
        message = message[nl + 1:] if nl >= 0 else b""
    if not message.strip():
        raise _Exit(EX_DATAERR, "empty message")
    if len(message) > max_bytes:
        raise _Exit(EX_DATAERR, f"message is {len(message)} bytes; the limit is {max_bytes}")
    if b"\0" in message:
        raise _Exit(EX_DATAERR, "message contains NUL bytes")
    if not _HEADER_START.match(message):
        raise _Exit(EX_DATAERR, "message does not start with a header field")
    return message


def _check_sender(sender: str | None) -> str | None:
    if sender is None:
        return None
    s = sender.strip()
    if s in ("", "<>"):
        return ""
    a = parse_address(s)
    if a is None:
        raise _Exit(EX_DATAERR, f"bad sender address {sender!r}")
    return a.raw


def _open_store(config: Config) -> Store:
    from ams.doctor import startup_check

    try:
        store = Store(config)
        store.check()
        startup_check(config, require_verdict=config.store.require_doctor)
    except StoreError as e:  # EX_CONFIG: the MTA keeps the message and retries
        raise _Exit(EX_CONFIG, str(e)) from None
    except OSError as e:
        raise _Exit(EX_TEMPFAIL, f"cannot open the store: {describe(e)}") from None
    return store


def _deliver(config: Config, recipients: Sequence[str], sender: str | None, message: bytes,
             dedupe_seconds: float) -> int:
    started = time.monotonic()
    if not recipients:
        raise _Exit(EX_USAGE, "no recipient given (-r ADDRESS)")
    message = check_message(message, config.limits.max_message_bytes)
    sender = _check_sender(sender)
    store = _open_store(config)
    now = time.time()
    digest = hashlib.sha256((sender or "").encode("utf-8") + b"\0" + message).hexdigest()[:32]
    # No RCPT came first: a members-only bboard admits the -f sender here.
    plan = plan_message(recipients, partial(Resolver(store).resolve, sender=sender or ""),
                        sender=sender, message=message,
                        delivery_id=lambda rcpt: f"lda-{digest}/{rcpt}",
                        internal_date=int(now), tz_minutes=local_offset_minutes(now))
    # Refusals first, so a refused run files nothing: the status speaks for all.
    if plan.permanent:
        raise _Exit(plan.permanent[0].exit_code, "; ".join(map(str, plan.permanent)))
    if plan.temporary:
        raise _Exit(EX_TEMPFAIL, "; ".join(map(str, plan.temporary)))
    duplicates = _file(store, plan, _fs.now_us() - int(dedupe_seconds * 1_000_000))
    _forward(store, plan, sender, message, f"lda-{digest}")
    targets = ",".join(f"{r}={'+'.join(t)}" for r, t in plan.targets.items())
    log.info("delivered lda-%s from=<%s> rcpts=%d filed=%d dup=%d targets=[%s] ms=%.1f",
             digest, sender or "", len(recipients), len(plan.filings), duplicates, targets,
             (time.monotonic() - started) * 1000)
    return EX_OK


def _file(store: Store, plan: Plan, since_us: int) -> int:
    """File every mailbox's copy; how many were there already [W7]."""
    filer = Filer(store)
    failed: list[str] = []
    duplicates = 0
    for group in group_by_mailbox(plan.filings).values():
        target = group[0].target
        try:
            appended = filer.append(target, group, dedupe_since_us=since_us)
        except TEMPORARY_ERRORS as e:
            failed.append(f"{group[0].recipient} -> {target}: {describe(e)}")
            continue
        duplicates += sum(a.duplicate for a in appended)
    if failed:  # what was filed is found by delivery id on the MTA's retry
        raise _Exit(EX_TEMPFAIL, "; ".join(failed))
    return duplicates


def _forward(store: Store, plan: Plan, sender: str | None, message: bytes,
             origin: str) -> None:
    """Forwards go out only once every filing succeeded (at-least-once)."""
    if not plan.forwards:
        return
    spool = Spool(store)
    for rcpt, fwd in plan.forwards:
        try:
            spool.enqueue("out", mail_from=sender or "", rcpt_to=[fwd.address],
                          message=delivery_prefix(None, rcpt, message) + message,
                          extra={"forwarded_for": rcpt, "origin": origin})
        except TEMPORARY_ERRORS as e:
            raise _Exit(EX_TEMPFAIL, f"{rcpt} -> forward to {fwd.address}: "
                                     f"{describe(e)}") from None


__all__ = ["EX_USAGE", "LDA_DEDUPE_SECONDS", "check_message", "deliver_command", "deliver_main"]
