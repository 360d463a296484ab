"""A minimal IMAP client for benchmarks: one blocking socket, one command at a time.

The IMAP benchmark (benchmarks/bench_imap.py) times AMS and its peer with
this one client, so both are measured by the same code.  A command's time
runs from just before it is sent to the moment every byte of its response,
up to and including the tagged line, has been read.

Theory of operation
-------------------
Big responses (``FETCH 1:*`` on 100,000 messages: 100,000 lines, tens of MB)
must cost the client little beside the server's time, or the comparison is
void.  So :meth:`ImapClient.command` does not split lines in Python: it
cuts what it has read at the last complete line and runs ``bytes.count`` and
``bytes.find`` (C loops) over the stretch: untagged responses are the line
starts followed by ``* `` (``count(b"\\r\\n* ")``), the tagged line can only
be the last line read (nothing follows it), and ``needles`` (byte strings the caller
wants counted, such as ``\\Seen``) are counted in the same stretch.  A line
ending in ``{n}`` announces a literal: the stretch ends there and the next n
bytes are skipped unseen, so literal data can never be taken for a response
or counted.  Small responses (``keep=True``) are split into lines, literals
inline, for the caller to read.  :class:`Reply` carries the client's own CPU
time for the command, so a benchmark can show that the client was not the
bottleneck.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class ImapError(Exception):
    pass


_LITERAL = re.compile(rb"~?\{(\d+)\+?\}$")


@dataclass
class Reply:
    status: bytes  # the tagged line, without the tag
    untagged: int = 0  # untagged responses ("* ...")
    counts: dict[bytes, int] = field(default_factory=dict)  # needles outside literals
    lines: list[bytes] = field(default_factory=list)  # only with keep=True
    nbytes: int = 0  # response bytes read, tagged line included
    wall: float = 0.0
    cpu: float = 0.0  # the client's CPU time for this command

    @property
    def ok(self) -> bool:
        return self.status.startswith(b"OK")


class ImapClient:
    """One connection, one command at a time; see the module docstring ("Timing")."""

    RECV = 1 << 20

    def __init__(self, port: int, *, timeout: float = 600.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.chunk = bytearray(self.RECV)  # recv_into: no allocation per read
        self.chunk_view = memoryview(self.chunk)
        self.n = 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting[:80]!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close from any thread; a thread blocked reading this socket wakes up."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def _recv(self) -> int:
        data = self.sock.recv(self.RECV)
        if not data:
            raise ImapError("connection closed by the server")
        self.buf += data
        return len(data)

    def _line(self) -> bytes:
        """One logical line (literals inline), without its CRLF."""
        out = bytearray()
        while True:
            nl = self.buf.find(b"\r\n")
            while nl < 0:
                self._recv()
                nl = self.buf.find(b"\r\n")
            line = bytes(self.buf[:nl])
            del self.buf[:nl + 2]
            out += line
            m = _LITERAL.search(line)
            if not m:
                return bytes(out)
            n = int(m.group(1))
            while len(self.buf) < n:
                self._recv()
            out += b"\r\n" + self.buf[:n]
            del self.buf[:n]

    def send(self, command: bytes) -> bytes:
        self.n += 1
        tag = b"a%04d" % self.n
        self.sock.sendall(tag + b" " + command + b"\r\n")
        return tag

    def command(self, command: bytes, *, keep: bool = False,
                needles: Sequence[bytes] = ()) -> Reply:
        """Send ``command``, read its whole response; time it.

        ``keep`` collects the untagged lines (for small responses); otherwise
        the response is only scanned (see :meth:`_scan`)."""
        c0 = time.thread_time()
        t0 = time.perf_counter()
        tag = self.send(command)
        if keep:
            reply = Reply(b"")
            while True:
                line = self._line()
                reply.nbytes += len(line) + 2
                if line.startswith(tag + b" "):
                    reply.status = line[len(tag) + 1:]
                    break
                if line.startswith(b"* "):
                    reply.untagged += 1
                reply.lines.append(line)
        else:
            reply = self._scan(tag, needles)
        reply.wall = time.perf_counter() - t0
        reply.cpu = time.thread_time() - c0
        return reply

    def _scan(self, tag: bytes, needles: Sequence[bytes]) -> Reply:
        """Read up to the tagged line, touching each byte only in C (count/find).

        Between literals the buffer is cut at the last complete line; in that
        stretch, line starts are the position after each CRLF, so untagged
        responses are ``count(b"\\r\\n* ")`` (plus one if the stretch starts a
        line with ``* ``).  A line ending in ``{n}`` is followed by n bytes of
        literal, skipped without looking.
        """
        tagsp = tag + b" "
        buf = self.buf
        reply = Reply(b"", counts={n: 0 for n in needles})
        reply.nbytes = len(buf)
        pos = 0
        lit = 0
        at_start = True
        while True:
            if lit:
                take = min(lit, len(buf) - pos)
                pos += take
                lit -= take
            if not lit:
                literal = False
                end = buf.rfind(b"\r\n", pos)
                while end >= 0:
                    m = buf.find(b"}\r\n", pos, end + 2)
                    stop = m + 1 if m >= 0 else end
                    if at_start and buf.startswith(b"* ", pos):
                        reply.untagged += 1
                    reply.untagged += buf.count(b"\r\n* ", pos, stop)
                    for n in needles:
                        reply.counts[n] += buf.count(n, pos, stop)
                    # Nothing follows the tagged line, so it can only be the
                    # stretch's last line.
                    j = buf.rfind(b"\r\n", pos, stop)
                    t = j + 2 if j >= 0 else pos if at_start else -1
                    if t >= 0 and not buf.startswith(tagsp, t):
                        t = -1
                    if t >= 0:
                        e = buf.find(b"\r\n", t)
                        reply.status = bytes(buf[t + len(tagsp):e])
                        rest = buf[e + 2:]
                        reply.nbytes -= len(rest)
                        self.buf = bytearray(rest)
                        return reply
                    if m >= 0:
                        lm = _LITERAL.search(buf, max(pos, m - 24), m + 1)
                        pos = m + 3
                        if lm:
                            lit = int(lm.group(1))
                            at_start = False
                            literal = True
                            break
                        at_start = True
                    else:
                        pos = end + 2
                        at_start = True
                    end = buf.rfind(b"\r\n", pos)
                if literal:
                    continue
            del buf[:pos]
            pos = 0
            got = self.sock.recv_into(self.chunk)
            if not got:
                raise ImapError("connection closed by the server")
            buf += self.chunk_view[:got]
            reply.nbytes += got

    def check(self, command: bytes, **kw: object) -> Reply:
        r = self.command(command, **kw)  # type: ignore[arg-type]
        if not r.ok:
            raise ImapError(f"{command.split(b' ')[0].decode()}: "
                            f"{r.status.decode(errors='replace')[:120]}")
        return r

    def login(self, user: str, password: str) -> None:
        self.check(f'LOGIN {user} "{password}"'.encode(), keep=True)

    def select(self, mailbox: str = "INBOX") -> tuple[Reply, int]:
        r = self.check(f"SELECT {mailbox}".encode(), keep=True)
        for line in r.lines:
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                return r, int(m.group(1))
        raise ImapError("SELECT gave no EXISTS")

    def logout(self) -> None:
        try:
            self.command(b"LOGOUT", keep=True)
        except (OSError, ImapError):
            pass
        self.close()


__all__ = ["ImapClient", "ImapError", "Reply"]
