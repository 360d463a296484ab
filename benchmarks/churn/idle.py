"""IMAP clients that sit in IDLE on many mailboxes and count what they are told.

Run as ``python -m benchmarks.churn.idle --port P --password PW --status FILE
USER…``: one connection per user (LOGIN, SELECT INBOX, IDLE), opened
``--concurrency`` at a time.  Every 0.2 s it rewrites FILE with one JSON
object: ``idle`` (connections in IDLE), ``new`` (messages announced by
``* N EXISTS`` since each SELECT, summed), ``errors`` (connections lost, with
the first reason in ``error``).  It runs until SIGTERM or SIGINT.

This is the reader side of scenarios A and B: each reader host's IMAP
server (an AMS bridge or a Dovecot instance) has one of these in front of
it, as a host serving a hundred users who all left a client open.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import trio

from benchmarks.churn._signals import cancel_on_signal

_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


class Session:
    def __init__(self, user: str) -> None:
        self.user = user
        self.base = -1
        self.exists = 0
        self.idle = False

    @property
    def new(self) -> int:
        return max(0, self.exists - self.base) if self.base >= 0 else 0


class Lines:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data


async def run_session(port: int, password: str, s: Session, limit: trio.CapacityLimiter,
                      errors: list[str]) -> None:
    try:
        async with limit:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            rd = Lines(stream)
            if not (await rd.line()).startswith(b"* OK"):
                raise ConnectionError("no greeting")

            async def command(tag: bytes, text: bytes) -> list[bytes]:
                await stream.send_all(tag + b" " + text + b"\r\n")
                got = []
                while True:
                    ln = await rd.line()
                    if ln.startswith(tag + b" "):
                        if not ln.startswith(tag + b" OK"):
                            raise ConnectionError(f"{text.split()[0].decode()}: {ln[:80]!r}")
                        return got
                    got.append(ln)

            await command(b"a", b"LOGIN " + s.user.encode() + b" " + password.encode())
            for ln in await command(b"b", b"SELECT INBOX"):
                m = _EXISTS.match(ln)
                if m:
                    s.exists = int(m.group(1))
            s.base = s.exists
            await stream.send_all(b"c IDLE\r\n")
            while not (ln := await rd.line()).startswith(b"+"):
                if (m := _EXISTS.match(ln)) is not None:
                    s.exists = int(m.group(1))
        s.idle = True
        while True:
            ln = await rd.line()
            m = _EXISTS.match(ln)
            if m:
                s.exists = int(m.group(1))
    except (OSError, ConnectionError, trio.BrokenResourceError) as e:
        s.idle = False
        errors.append(f"{s.user}: {e}")


def write_status(path: Path, sessions: list[Session], errors: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({
        "idle": sum(s.idle for s in sessions),
        "new": sum(s.new for s in sessions),
        "per_user": {s.user: s.new for s in sessions},
        "errors": len(errors), "error": errors[0] if errors else ""}))
    os.replace(tmp, path)


async def main_async(args: argparse.Namespace) -> None:
    sessions = [Session(u) for u in args.users]
    errors: list[str] = []
    limit = trio.CapacityLimiter(args.concurrency)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_on_signal, nursery.cancel_scope)
        for s in sessions:
            nursery.start_soon(run_session, args.port, args.password, s, limit, errors)
        while True:
            write_status(args.status, sessions, errors)
            await trio.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.churn.idle")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--status", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("users", nargs="+")
    trio.run(main_async, ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
