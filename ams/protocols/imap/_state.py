"""The IMAP session as transition tables.

Theory of operation
-------------------
Two machines, both here, in the manner of h11's two roles:

1. The **session state** of RFC 3501 §3: NOT_AUTHENTICATED, AUTHENTICATED,
   SELECTED, LOGOUT.  ``TRANSITIONS[(state, trigger)]`` is the next state.
   A command name is a trigger: its entry says the command is valid in that
   state (it leaves the state as it is; outcomes move it).  A command whose
   (state, name) pair is missing is answered ``BAD`` and changes nothing.
   Outcomes are triggers too: a successful LOGIN/AUTHENTICATE
   (AUTHENTICATED_OK), a PREAUTH greeting, SELECT/EXAMINE succeeding
   (SELECT_OK) or failing (SELECT_FAILED: RFC 3501 §6.3.1, a failed SELECT
   leaves no mailbox selected), CLOSE/UNSELECT done (CLOSED), BYE.

2. The **reader mode**: what the core does with the next bytes.
   COMMAND reads commands; PENDING waits for the driver's ``complete()``;
   SASL reads AUTHENTICATE responses; IDLE reads only DONE; TLS_PENDING
   waits for the handshake; CLOSED reads nothing.  ``MODES`` is its table;
   a driver call that is not in it is a LocalProtocolError.

Guards that depend on more than the state (LOGINDISABLED, capabilities not
advertised, QRESYNC not enabled) live in the connection, which refuses the
command before asking the table.
"""

from __future__ import annotations

import enum

__all__ = ["MODES", "TRANSITIONS", "Mode", "ModeTrigger", "State", "Trigger"]


class State(enum.Enum):
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    SELECTED = "SELECTED"
    LOGOUT = "LOGOUT"


class Trigger(enum.Enum):
    # commands: any state
    CAPABILITY = "CAPABILITY"
    NOOP = "NOOP"
    LOGOUT = "LOGOUT"
    ID = "ID"
    # not authenticated
    STARTTLS = "STARTTLS"
    AUTHENTICATE = "AUTHENTICATE"
    LOGIN = "LOGIN"
    # authenticated (and selected)
    ENABLE = "ENABLE"
    SELECT = "SELECT"
    EXAMINE = "EXAMINE"
    CREATE = "CREATE"
    DELETE = "DELETE"
    RENAME = "RENAME"
    SUBSCRIBE = "SUBSCRIBE"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    LIST = "LIST"
    LSUB = "LSUB"
    STATUS = "STATUS"
    APPEND = "APPEND"
    NAMESPACE = "NAMESPACE"
    IDLE = "IDLE"
    # selected
    CHECK = "CHECK"
    CLOSE = "CLOSE"
    UNSELECT = "UNSELECT"
    EXPUNGE = "EXPUNGE"
    SEARCH = "SEARCH"
    FETCH = "FETCH"
    STORE = "STORE"
    COPY = "COPY"
    MOVE = "MOVE"
    UID = "UID"
    # outcomes
    PREAUTH = "PREAUTH"
    AUTHENTICATED_OK = "AUTHENTICATED_OK"
    SELECT_OK = "SELECT_OK"
    SELECT_FAILED = "SELECT_FAILED"
    CLOSED = "CLOSED"
    BYE = "BYE"


S, T = State, Trigger

_ANY = (T.CAPABILITY, T.NOOP, T.LOGOUT, T.ID)
_NOT_AUTHENTICATED = (T.STARTTLS, T.AUTHENTICATE, T.LOGIN)
_AUTHENTICATED = (T.SELECT, T.EXAMINE, T.CREATE, T.DELETE, T.RENAME, T.SUBSCRIBE,
                  T.UNSUBSCRIBE, T.LIST, T.LSUB, T.STATUS, T.APPEND, T.NAMESPACE, T.IDLE)
_SELECTED = (T.CHECK, T.CLOSE, T.UNSELECT, T.EXPUNGE, T.SEARCH, T.FETCH, T.STORE, T.COPY,
             T.MOVE, T.UID)


def _build() -> dict[tuple[State, Trigger], State]:
    table: dict[tuple[State, Trigger], State] = {
        (S.NOT_AUTHENTICATED, T.PREAUTH): S.AUTHENTICATED,
        (S.NOT_AUTHENTICATED, T.AUTHENTICATED_OK): S.AUTHENTICATED,
        # RFC 5161 §3.1: ENABLE only before a mailbox is selected.
        (S.AUTHENTICATED, T.ENABLE): S.AUTHENTICATED,
        (S.SELECTED, T.CLOSED): S.AUTHENTICATED,
    }
    live = (S.NOT_AUTHENTICATED, S.AUTHENTICATED, S.SELECTED)
    for state in live:
        for trigger in _ANY:
            table[state, trigger] = state
        table[state, T.BYE] = S.LOGOUT
    for trigger in _NOT_AUTHENTICATED:
        table[S.NOT_AUTHENTICATED, trigger] = S.NOT_AUTHENTICATED
    for state in (S.AUTHENTICATED, S.SELECTED):
        for trigger in _AUTHENTICATED:
            table[state, trigger] = state
        table[state, T.SELECT_OK] = S.SELECTED
        table[state, T.SELECT_FAILED] = S.AUTHENTICATED
    for trigger in _SELECTED:
        table[S.SELECTED, trigger] = S.SELECTED
    return table


TRANSITIONS: dict[tuple[State, Trigger], State] = _build()


class Mode(enum.Enum):
    GREETING = "GREETING"            # greeting() not yet called
    COMMAND = "COMMAND"              # reading commands
    PENDING = "PENDING"              # a command event is out: complete() awaited
    SASL = "SASL"                    # "+ " sent, AUTHENTICATE response awaited
    IDLE = "IDLE"                    # "+ idling" sent, DONE awaited
    TLS_PENDING = "TLS_PENDING"      # STARTTLS answered, handshake awaited
    CLOSED = "CLOSED"


class ModeTrigger(enum.Enum):
    GREET = "GREET"
    EMIT = "EMIT"                    # a command event was returned
    SASL_START = "SASL_START"
    SASL_FAILED = "SASL_FAILED"
    IDLE_START = "IDLE_START"
    DONE = "DONE"
    COMPLETE = "COMPLETE"
    STARTTLS = "STARTTLS"
    TLS_STARTED = "TLS_STARTED"
    CLOSE = "CLOSE"


M, MT = Mode, ModeTrigger

MODES: dict[tuple[Mode, ModeTrigger], Mode] = {
    (M.GREETING, MT.GREET): M.COMMAND,
    (M.COMMAND, MT.EMIT): M.PENDING,
    (M.COMMAND, MT.SASL_START): M.SASL,
    (M.SASL, MT.EMIT): M.PENDING,
    (M.SASL, MT.SASL_FAILED): M.COMMAND,
    (M.COMMAND, MT.IDLE_START): M.IDLE,
    (M.IDLE, MT.DONE): M.PENDING,
    (M.PENDING, MT.COMPLETE): M.COMMAND,
    (M.COMMAND, MT.STARTTLS): M.TLS_PENDING,
    (M.TLS_PENDING, MT.TLS_STARTED): M.COMMAND,
    **{(mode, MT.CLOSE): M.CLOSED for mode in Mode if mode is not M.CLOSED},
}
