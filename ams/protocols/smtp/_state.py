"""The SMTP server session as one transition table.

Theory of operation
-------------------
The session is always in exactly one :class:`State`.  Something happens (a
:class:`Trigger`): a command was parsed, the driver decided, a chunk ended,
TLS came up.  ``TRANSITIONS[(state, trigger)]`` is the next state.  A pair
that is not in the table is not allowed:

- for a client command, the core answers 503 (bad sequence) and the state
  does not change;
- for a driver call (``accept()`` with nothing pending, ``tls_started()``
  without STARTTLS), it is a LocalProtocolError.

Guards that depend on more than the state (no recipient yet, size over the
limit, TLS not available) live in the command handlers; they refuse the
command *before* asking the table, so the table stays the single place that
says what follows what.

States in which the core reads command lines are ``COMMAND_STATES``;
``PAUSED_STATES`` wait for the driver; DATA, BDAT and BDAT_DISCARD read
message bytes; AUTH reads SASL response lines.
"""

from __future__ import annotations

import enum

from ams.protocols.smtp import _replies as R
from ams.protocols.smtp._replies import Reply

__all__ = [
    "COMMAND_STATES",
    "PAUSED_STATES",
    "TRANSITIONS",
    "State",
    "Trigger",
    "sequence_error",
]


class State(enum.Enum):
    CONNECTED = "CONNECTED"          # greeting not yet sent
    REFUSED = "REFUSED"              # 554 greeting: only QUIT (RFC 5321 §3.1)
    INITIAL = "INITIAL"              # greeted, or TLS just started: EHLO/HELO expected
    READY = "READY"                  # after EHLO/HELO, no transaction
    MAIL_PENDING = "MAIL_PENDING"    # MailFrom emitted, driver deciding
    MAIL = "MAIL"                    # reverse-path accepted: RCPT, DATA, BDAT
    RCPT_PENDING = "RCPT_PENDING"    # RcptTo emitted, driver deciding
    DATA = "DATA"                    # reading text up to CRLF.CRLF
    BDAT = "BDAT"                    # reading an accepted BDAT chunk
    CHUNKING = "CHUNKING"            # between BDAT chunks of one message
    BDAT_DISCARD = "BDAT_DISCARD"    # reading a refused chunk to throw it away
    BDAT_FAILED = "BDAT_FAILED"      # a chunk failed: RSET needed (RFC 3030 §2)
    DATA_PENDING = "DATA_PENDING"    # EndOfData emitted, driver storing/deciding
    AUTH = "AUTH"                    # SASL exchange: 334 sent, response awaited
    AUTH_PENDING = "AUTH_PENDING"    # AuthRequest emitted, driver checking
    TLS_PENDING = "TLS_PENDING"      # 220 to STARTTLS queued, handshake awaited
    CLOSED = "CLOSED"


class Trigger(enum.Enum):
    # client commands
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"                    # a chunk the core will read
    BDAT_REFUSED = "BDAT_REFUSED"    # a chunk the core must read and discard
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    # the greeting
    GREET = "GREET"
    REFUSE = "REFUSE"
    # the driver's decisions
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    TLS_STARTED = "TLS_STARTED"
    # things the core finds in the byte stream
    SASL_CONTINUE = "SASL_CONTINUE"
    SASL_COMPLETE = "SASL_COMPLETE"
    SASL_FAILED = "SASL_FAILED"
    END_OF_DATA = "END_OF_DATA"
    DATA_REJECTED = "DATA_REJECTED"
    CHUNK_END = "CHUNK_END"
    LAST_CHUNK_END = "LAST_CHUNK_END"
    DISCARDED_BEFORE_HELLO = "DISCARDED_BEFORE_HELLO"
    DISCARDED_OUTSIDE_TRANSACTION = "DISCARDED_OUTSIDE_TRANSACTION"
    DISCARDED_IN_TRANSACTION = "DISCARDED_IN_TRANSACTION"
    # QUIT answered, EOF, a fatal error, or the driver's close()
    CLOSE = "CLOSE"


S, T = State, Trigger

COMMAND_STATES = frozenset({S.REFUSED, S.INITIAL, S.READY, S.MAIL, S.CHUNKING, S.BDAT_FAILED})
PAUSED_STATES = frozenset({S.MAIL_PENDING, S.RCPT_PENDING, S.DATA_PENDING, S.AUTH_PENDING,
                           S.TLS_PENDING})

_HELLO_STATES = (S.INITIAL, S.READY, S.MAIL, S.CHUNKING, S.BDAT_FAILED)
_TRANSACTION_STATES = (S.MAIL, S.CHUNKING, S.BDAT_FAILED)


def _build() -> dict[tuple[State, Trigger], State]:
    t: dict[tuple[State, Trigger], State] = {
        (S.CONNECTED, T.GREET): S.INITIAL,
        (S.CONNECTED, T.REFUSE): S.REFUSED,
        (S.REFUSED, T.QUIT): S.CLOSED,
        # RSET before EHLO is harmless and keeps EHLO required.
        (S.INITIAL, T.RSET): S.INITIAL,
        # STARTTLS (RFC 3207): outside a transaction only; afterwards the
        # session starts again from INITIAL and EHLO must be repeated.
        (S.INITIAL, T.STARTTLS): S.TLS_PENDING,
        (S.READY, T.STARTTLS): S.TLS_PENDING,
        (S.TLS_PENDING, T.TLS_STARTED): S.INITIAL,
        # AUTH (RFC 4954 §4): after EHLO, not during a transaction.
        (S.READY, T.AUTH): S.AUTH,
        (S.AUTH, T.SASL_CONTINUE): S.AUTH,
        (S.AUTH, T.SASL_COMPLETE): S.AUTH_PENDING,
        (S.AUTH, T.SASL_FAILED): S.READY,
        (S.AUTH_PENDING, T.ACCEPT): S.READY,
        (S.AUTH_PENDING, T.REJECT): S.READY,
        # The mail transaction (RFC 5321 §3.3).
        (S.READY, T.MAIL): S.MAIL_PENDING,
        (S.MAIL_PENDING, T.ACCEPT): S.MAIL,
        (S.MAIL_PENDING, T.REJECT): S.READY,
        (S.MAIL, T.RCPT): S.RCPT_PENDING,
        (S.RCPT_PENDING, T.ACCEPT): S.MAIL,
        (S.RCPT_PENDING, T.REJECT): S.MAIL,
        (S.MAIL, T.DATA): S.DATA,
        (S.DATA, T.END_OF_DATA): S.DATA_PENDING,
        (S.DATA, T.DATA_REJECTED): S.READY,
        # CHUNKING (RFC 3030 §2).
        (S.MAIL, T.BDAT): S.BDAT,
        (S.CHUNKING, T.BDAT): S.BDAT,
        (S.BDAT, T.CHUNK_END): S.CHUNKING,
        (S.BDAT, T.LAST_CHUNK_END): S.DATA_PENDING,
        (S.BDAT_DISCARD, T.DISCARDED_BEFORE_HELLO): S.INITIAL,
        (S.BDAT_DISCARD, T.DISCARDED_OUTSIDE_TRANSACTION): S.READY,
        (S.BDAT_DISCARD, T.DISCARDED_IN_TRANSACTION): S.BDAT_FAILED,
        (S.DATA_PENDING, T.ACCEPT): S.READY,
        (S.DATA_PENDING, T.REJECT): S.READY,
    }
    for state in _HELLO_STATES:
        # EHLO/HELO anywhere commands are read resets the session (§4.1.4).
        t[state, T.EHLO] = S.READY
        t[state, T.HELO] = S.READY
        t[state, T.NOOP] = state
        t[state, T.QUIT] = S.CLOSED
        # RFC 3030 §2: a refused chunk is still read (and thrown away), so
        # its bytes are never taken for commands.
        t[state, T.BDAT_REFUSED] = S.BDAT_DISCARD
    for state in (S.INITIAL, S.READY, S.MAIL, S.CHUNKING):
        t[state, T.VRFY] = state
        t[state, T.HELP] = state
    for state in (S.READY, *_TRANSACTION_STATES):
        t[state, T.RSET] = S.READY
    for state in State:
        if state is not S.CLOSED:
            t[state, T.CLOSE] = S.CLOSED
    return t


TRANSITIONS: dict[tuple[State, Trigger], State] = _build()


def sequence_error(state: State, trigger: Trigger) -> Reply:
    """The 503 for a command the table does not allow, worded for the case."""
    if state is S.INITIAL and trigger in (T.MAIL, T.RCPT, T.DATA, T.BDAT, T.AUTH):
        return R.NEED_HELLO
    if state is S.BDAT_FAILED:
        return R.NEED_RSET
    if trigger is T.MAIL:
        return R.NESTED_MAIL
    if state is S.READY and trigger in (T.RCPT, T.DATA, T.BDAT):
        return R.NEED_MAIL
    if state is S.CHUNKING and trigger is T.DATA:
        return R.DATA_AFTER_BDAT              # RFC 3030 §2
    if trigger in (T.AUTH, T.STARTTLS):
        return R.NOT_IN_TRANSACTION
    return R.BAD_SEQUENCE
