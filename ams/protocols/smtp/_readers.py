"""Readers that cut the byte stream into command lines and message text.

Theory of operation
-------------------
Both readers work on the connection's receive buffer (a ``bytearray``),
remove what they consume, and return "need more data" (``None``) instead of
blocking.  They never consume a byte whose meaning depends on a byte not yet
received, so feeding a stream whole or one byte at a time gives the same
result (a test checks this).

Line ends are CRLF and nothing else (RFC 5321 §2.3.8).  That one rule is the
SMTP smuggling defence: a bare LF or bare CR never ends a command line, and
never takes part in the end-of-data sequence, which is CRLF "." CRLF and
nothing else.  ``DotReader`` can also *report* a bare CR or LF, so the
connection can apply its policy (close, reject, or keep as data).

A trailing CR in the buffer is always held back: whether it is half of a
CRLF is not known until the next byte arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BARE_NEWLINE", "END_OF_DATA", "DotReader", "LineReader", "LineTooLong"]

CR, LF, DOT = 0x0D, 0x0A, 0x2E
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line passed its limit; it has been consumed and thrown away."""

    auth: bool  # the line was an AUTH command or a SASL response


class LineReader:
    """Command lines, CRLF-terminated, with a length limit.

    ``limit`` counts the CRLF (RFC 5321 §4.5.3.1.4: 512 for commands).  AUTH
    lines get ``auth_limit`` (RFC 4954 §4: 12288), decided from the first
    five bytes so the decision does not depend on how the bytes arrived.
    An over-long line is skipped to its CRLF without being buffered.
    """

    def __init__(self, limit: int, auth_limit: int) -> None:
        self.limit = limit
        self.auth_limit = auth_limit
        self._skipping: LineTooLong | None = None

    def reset(self) -> None:
        self._skipping = None

    def _limit_for(self, buf: bytearray, sasl: bool) -> tuple[int, bool]:
        if sasl or bytes(buf[:5]).upper() == b"AUTH ":
            return self.auth_limit, True
        return self.limit, False

    def read(self, buf: bytearray, *, sasl: bool = False) -> bytes | LineTooLong | None:
        end = buf.find(b"\r\n")
        if self._skipping is not None:
            if end < 0:
                keep = 1 if buf and buf[-1] == CR else 0
                del buf[:len(buf) - keep]
                return None
            del buf[:end + 2]
            result, self._skipping = self._skipping, None
            return result
        limit, auth = self._limit_for(buf, sasl)
        if end < 0:
            if len(buf) >= limit:
                # No CRLF within the first `limit` bytes: too long, whatever follows.
                self._skipping = LineTooLong(auth)
                return self.read(buf, sasl=sasl)
            return None
        if end + 2 > limit:
            del buf[:end + 2]
            return LineTooLong(auth)
        line = bytes(buf[:end])
        del buf[:end + 2]
        return line


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


END_OF_DATA = _Marker("END_OF_DATA")
BARE_NEWLINE = _Marker("BARE_NEWLINE")


class DotReader:
    """DATA text: dot-unstuffing, the CRLF.CRLF end, line length, bare CR/LF.

    ``read`` returns a chunk of unstuffed message bytes, ``END_OF_DATA``
    (the terminating ".CRLF" consumed), ``BARE_NEWLINE`` (only with
    ``stop_on_bare``: the next byte is a bare CR or LF, not consumed) or
    None (need more data).  ``too_long`` and ``saw_bare`` are sticky flags.

    The message includes the CRLF before the final "."; an empty message
    is "DATA", then ".CRLF" at once.
    """

    def __init__(self, max_line: int | None, *, stop_on_bare: bool) -> None:
        self.max_line = max_line
        self.stop_on_bare = stop_on_bare
        self.too_long = False
        self.saw_bare = False
        self._at_line_start = True
        self._line_len = 0   # octets of the current line so far, as transmitted

    def read(self, buf: bytearray) -> bytes | _Marker | None:
        if not buf:
            return None
        if self._at_line_start:
            if buf[0] == DOT:
                if len(buf) < 3 and b".\r\n".startswith(buf):
                    return None
                if buf[:3] == b".\r\n":
                    del buf[:3]
                    return END_OF_DATA
                del buf[0]           # RFC 5321 §4.5.2: drop the stuffed dot
                self._line_len = 1
            else:
                self._line_len = 0
            self._at_line_start = False
            if not buf:
                return None
        return self._read_text(buf)

    def _read_text(self, buf: bytearray) -> bytes | _Marker | None:
        size = len(buf)
        stop = size - 1 if buf[-1] == CR else size
        # Both searches are bounded by the region, so a buffer of many short
        # dot-stuffed lines costs linear, not quadratic, time.
        dot = buf.find(b"\r\n.", 0, min(stop + 1, size))
        if dot >= 0:
            stop = dot + 2
        # endpos one past `stop` lets the lookahead see the byte after a CR.
        bare = _BARE.search(buf, 0, min(stop + 1, size))
        if bare is not None and bare.start() < stop:
            if self.stop_on_bare:
                if bare.start() == 0:
                    return BARE_NEWLINE
                stop = bare.start()
            else:
                self.saw_bare = True
        if stop == 0:
            return None
        chunk = bytes(buf[:stop])
        del buf[:stop]
        self._at_line_start = chunk.endswith(b"\r\n")
        self._measure(chunk)
        return chunk

    def _measure(self, chunk: bytes) -> None:
        lines = chunk.split(b"\r\n")
        if len(lines) == 1:
            longest = self._line_len + len(lines[0])
            self._line_len = longest
        else:
            longest = max(self._line_len + len(lines[0]), *map(len, lines[1:-1]), 0)
            self._line_len = len(lines[-1])
            longest = max(longest, self._line_len)
        # Content beyond max_line - 2 cannot fit with its CRLF.
        if self.max_line is not None and longest > self.max_line - 2:
            self.too_long = True
