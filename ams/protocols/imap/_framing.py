"""Cutting the byte stream into commands: lines, literals and limits.

Theory of operation
-------------------
An IMAP command is one or more lines; every line but the last ends in a
literal announcement (``{n}``, ``{n+}`` or ``~{n}``) and is followed by
exactly ``n`` octets of literal data.  The :class:`Framer` reads the
connection's receive buffer, removes what it consumes, and returns one of:

- ``None``: need more data (it never blocks and never guesses);
- :class:`Frame`: a whole command, as ``segments``: line, literal, line,
  literal, ..., line (CRLFs removed, announcements kept, so the parser sees
  exactly what the client wrote);
- :class:`LiteralAnnounced`: a line ended in an announcement that is within
  the limits.  The framer stops until the connection decides:
  ``accept_literal()`` (for ``{n}`` the connection first sends ``+``) or
  ``refuse_literal()`` (it answered the command; for ``{n}`` the client will
  send nothing more, a ``{n+}`` literal is read and thrown away);
- :class:`FrameError`: the command broke a limit.  The framer throws away
  the rest of it by itself (see below) and the connection answers.

Limits, all decided before any data they concern is buffered:

- ``max_line``: the non-literal octets of one command, all its lines
  together.  An over-long line is skipped to its CRLF without buffering; if
  it ended in ``{n+}`` the literal is skipped too.
- ``max_literal``: each literal, and all literals of one command together.
  A synchronising literal over the limit is refused before the client sends
  it; the client gets the answer instead of ``+`` and abandons the command.
- Non-synchronising literals (RFC 7888): with ``LITERAL+`` any size within
  ``max_literal``; with ``LITERAL-`` at most 4096 octets; with neither, none.
  One the framer refuses has been sent anyway, so the framer **reads and
  discards** exactly ``n`` octets and the rest of the command (counting,
  never buffering), then resumes at the next command.  Executing literal
  data as commands is what a server must never do; closing the connection
  is the alternative RFC 7888 §4 allows, and we take it only when the length
  itself cannot be trusted (see ``FRAMING_LOST``).

``FRAMING_LOST`` is fatal: a ``{n+}`` whose n is not a 32-bit number, or an
over-long line whose tail cannot be told apart from an announcement.  The
stream cannot be resynchronised, so the connection says BYE.

The framer decides only on complete evidence (a CR at the end of the buffer
is held until the next octet shows whether it is half of a CRLF), so a
stream fed whole or one octet at a time gives the same results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["FRAMING_LOST", "Frame", "FrameError", "Framer", "LiteralAnnounced", "literal_spec"]

CR = 0x0D
NON_SYNC_MINUS_LIMIT = 4096         # RFC 7888 §5, LITERAL-
MAX_LITERAL_NUMBER = 2**32 - 1
_TAIL = 32                          # enough of a skipped line to see "{4294967295+}"
_SPEC = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")

Reason = Literal["LINE_TOO_LONG", "LITERAL_TOO_BIG", "NON_SYNC_TOO_BIG", "NON_SYNC_REFUSED",
                 "BAD_LITERAL", "FRAMING_LOST"]
FRAMING_LOST: Reason = "FRAMING_LOST"


@dataclass(frozen=True, slots=True)
class Frame:
    segments: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LiteralAnnounced:
    segments: tuple[bytes, ...]      # the command so far; the last line holds the announcement
    size: int
    synchronizing: bool
    binary: bool


@dataclass(frozen=True, slots=True)
class FrameError:
    reason: Reason
    head: bytes                      # the start of the command, to find its tag
    synchronizing: bool = True


@dataclass(frozen=True, slots=True)
class _Spec:
    size: int
    synchronizing: bool
    binary: bool


def literal_spec(line: bytes) -> _Spec | None:
    """The announcement ending ``line``, if any (its size may be out of range)."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    if start > 0 and line[start - 1] == 0x7E:        # "~{n}", literal8
        start -= 1
    match = _SPEC.fullmatch(line, start)
    if match is None:
        return None
    return _Spec(int(match.group(2)), not match.group(3), bool(match.group(1)))


def _ambiguous_tail(tail: bytes) -> bool:
    """A skipped line whose kept tail is all announcement digits: whether it
    announced a literal (and how long) is lost."""
    return len(tail) == _TAIL and re.fullmatch(rb"[0-9]*\+?\}", tail) is not None


class Framer:
    """See the module docstring.  ``non_sync`` is "+" (LITERAL+), "-"
    (LITERAL-) or None."""

    def __init__(self, max_line: int, max_literal: int, non_sync: Literal["+", "-"] | None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.non_sync = non_sync
        self.reset()

    def reset(self) -> None:
        """Forget everything, including a command half read (STARTTLS)."""
        self._segments: list[bytes] = []
        self._head = b""                         # the first octets of the command
        self._line_total = 0
        self._literal_total = 0
        self._literal: bytearray | None = None   # the literal being read, if kept
        self._literal_left = -1                  # >= 0 while reading literal data
        self._announced: _Spec | None = None     # waiting for accept/refuse
        self._discarding = False                 # the command was refused: drop the rest
        self._skipping = False                   # inside an over-long line
        self._tail = b""
        self._scan = 0

    # --- decisions on an announced literal -------------------------------------------

    def accept_literal(self) -> None:
        spec = self._take_announced()
        self._literal_total += spec.size
        self._start_literal(spec.size, keep=True)

    def refuse_literal(self) -> None:
        spec = self._take_announced()
        if spec.synchronizing:
            self._end_command()              # the client waits: nothing more comes
        else:
            self._discarding = True
            self._start_literal(spec.size, keep=False)

    def _take_announced(self) -> _Spec:
        if self._announced is None:
            raise RuntimeError("no literal is announced")
        spec, self._announced = self._announced, None
        return spec

    def _start_literal(self, size: int, *, keep: bool) -> None:
        self._literal = bytearray() if keep else None
        self._literal_left = size

    # --- reading ------------------------------------------------------------------------

    def read(self, buf: bytearray) -> Frame | LiteralAnnounced | FrameError | None:
        if self._announced is not None:
            raise RuntimeError("decide on the announced literal first")
        while True:
            if self._literal_left >= 0:
                if not self._read_literal(buf):
                    return None
                continue
            if self._skipping:
                if not self._skip_line(buf):
                    return None
                result = self._after_line(self._tail, skipped=True)
            else:
                line = self._next_line(buf)
                if line is None:
                    if self._skipping:
                        continue
                    return None
                if isinstance(line, FrameError):
                    return line
                result = self._after_line(line, skipped=False)
            if result is not None:
                return result

    def read_line(self, buf: bytearray) -> bytes | FrameError | None:
        """One plain line (SASL responses, DONE): no literals."""
        while True:
            if self._skipping:
                if not self._skip_line(buf):
                    return None
                self._end_command()
                continue
            line = self._next_line(buf)
            if line is None and self._skipping:
                continue
            if isinstance(line, bytes):
                self._end_command()
            return line

    def _next_line(self, buf: bytearray) -> bytes | FrameError | None:
        end = buf.find(b"\r\n", self._scan)
        room = self.max_line - self._line_total
        if end < 0:
            pending = len(buf) - (1 if buf and buf[-1] == CR else 0)
            if pending <= room:
                self._scan = max(0, len(buf) - 1)
                return None
        elif end <= room:
            line = bytes(buf[:end])
            del buf[:end + 2]
            self._scan = 0
            self._line_total += end
            if not self._segments:
                self._head = line[:64]
            return line
        # Too long: skip it from here, without buffering it.
        if not self._segments:
            self._head = bytes(buf[:64])
        error = None if self._discarding else FrameError("LINE_TOO_LONG", self._head)
        self._discarding = self._skipping = True
        self._tail = b""
        self._scan = 0
        return error

    def _skip_line(self, buf: bytearray) -> bool:
        """Drop the over-long line up to its CRLF; True once it is gone."""
        end = buf.find(b"\r\n")
        if end < 0:
            keep = 1 if buf and buf[-1] == CR else 0
            self._tail = (self._tail + bytes(buf[:len(buf) - keep]))[-_TAIL:]
            del buf[:len(buf) - keep]
            return False
        self._tail = (self._tail + bytes(buf[:end]))[-_TAIL:]
        del buf[:end + 2]
        self._skipping = False
        return True

    def _read_literal(self, buf: bytearray) -> bool:
        """Move literal data out of ``buf``; True once the literal is complete."""
        take = min(self._literal_left, len(buf))
        if self._literal is not None:
            self._literal += buf[:take]
        del buf[:take]
        self._literal_left -= take
        if self._literal_left:
            return False
        if self._literal is not None:
            self._segments.append(bytes(self._literal))
        self._literal = None
        self._literal_left = -1
        return True

    def _after_line(self, line: bytes, *, skipped: bool) -> Frame | LiteralAnnounced | FrameError | None:
        if skipped and _ambiguous_tail(line):
            self._end_command()
            return FrameError(FRAMING_LOST, self._head)
        spec = literal_spec(line)
        if self._discarding:
            return self._discard_after(spec)
        if spec is None:
            self._segments.append(line)
            frame = Frame(tuple(self._segments))
            self._end_command()
            return frame
        self._segments.append(line)
        if spec.size > MAX_LITERAL_NUMBER:
            self._end_command()
            return FrameError("BAD_LITERAL" if spec.synchronizing else FRAMING_LOST, self._head)
        refusal = self._refusal(spec)
        if refusal is None:
            self._announced = spec
            return LiteralAnnounced(tuple(self._segments), spec.size, spec.synchronizing,
                                    spec.binary)
        head = self._head
        if spec.synchronizing:
            self._end_command()
        else:
            self._discarding = True
            self._start_literal(spec.size, keep=False)
        return FrameError(refusal, head, spec.synchronizing)

    def _discard_after(self, spec: _Spec | None) -> FrameError | None:
        """The rest of a refused command: its non-synchronising literals are
        skipped; anything else ends it."""
        if spec is not None and not spec.synchronizing:
            if spec.size > MAX_LITERAL_NUMBER:
                self._end_command()
                return FrameError(FRAMING_LOST, self._head)
            self._start_literal(spec.size, keep=False)
            return None
        self._end_command()
        return None

    def _refusal(self, spec: _Spec) -> Reason | None:
        if not spec.synchronizing:
            if self.non_sync is None:
                return "NON_SYNC_REFUSED"
            if self.non_sync == "-" and spec.size > NON_SYNC_MINUS_LIMIT:
                return "NON_SYNC_TOO_BIG"
        if self._literal_total + spec.size > self.max_literal:
            return "LITERAL_TOO_BIG"
        return None

    def _end_command(self) -> None:
        self._segments = []
        self._line_total = 0
        self._literal_total = 0
        self._discarding = False
        self._scan = 0
