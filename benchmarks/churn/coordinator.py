"""The churn meter's fileserver: one process that every meter reports to.

Run as ``python -m benchmarks.churn.coordinator --socket PATH``; it prints
``ready`` once it listens and runs until SIGTERM or SIGINT.

Each meter (one per simulated host) connects over the unix socket and
speaks newline-delimited JSON arrays:

=====================================  =========================================
meter → coordinator                    answer
=====================================  =========================================
``["H", client]``                      (none) names the connection
``["F", rid, obj]``                    ``["A", rid, version]``: the client holds
                                       a callback on ``obj`` now
``["N", dbytes, drefetch, fbytes,      (none) data fetched under a callback
fre]``
``["C", rid, objects, acquire, drop,   ``["A", rid, {obj: version}]`` once every
created, renamed, removed, mailbox]``  other holder has acknowledged its break
``["K", bid]``                         acknowledges break ``bid``
``["R", n]``                           (none) n more FUSE requests served
``["S"]``                              ``["S", {client: counters}]``
=====================================  =========================================

and the coordinator sends ``["B", bid, obj, counted]`` to a meter whose
callback on ``obj`` it breaks.  A change is answered only after every break
it caused has been acknowledged, as an AFS fileserver breaks callbacks
while the changing client waits: so when a change returns to the
application that made it, no other client can still use what it cached
before.  The table itself is :class:`benchmarks.churn.model.CallbackServer`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

from benchmarks.churn._signals import cancel_on_signal
from benchmarks.churn.model import CallbackServer, Change

log = logging.getLogger("churn.coordinator")

#: A meter that does not acknowledge a break within this is reported and skipped.
BREAK_TIMEOUT = 60.0


class Connection:
    """One meter's connection.  Messages are queued synchronously (:meth:`post`) and
    written by one task, so they leave in the order the table changed."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.name = ""
        self.closed = False
        self._send, self._recv = trio.open_memory_channel[bytes](float("inf"))

    def post(self, msg: Any) -> None:
        if not self.closed:
            self._send.send_nowait(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    async def writer(self) -> None:
        try:
            async for data in self._recv:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True


async def lines(stream: trio.SocketStream) -> Any:
    """Newline-delimited messages from a stream, parsed."""
    buf = bytearray()
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        buf += data
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line = bytes(buf[:i])
            del buf[:i + 1]
            if line:
                yield json.loads(line)


class Coordinator:
    def __init__(self) -> None:
        self.server = CallbackServer()
        self.clients: dict[str, Connection] = {}
        self.pending: dict[int, trio.Event] = {}
        self.next_bid = 0
        self.late_acks = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = Connection(stream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.writer)
                async for msg in lines(stream):
                    kind = msg[0]
                    if kind == "F":
                        v = self.server.fetch(conn.name, int(msg[2]))
                        conn.post(["A", msg[1], v])
                    elif kind == "N":
                        self.server.account(conn.name, dir_bytes=msg[1], dir_refetch=msg[2],
                                            file_bytes=msg[3], file_refetch_bytes=msg[4])
                    elif kind == "R":
                        self.server.served(conn.name, int(msg[1]))
                    elif kind == "C":
                        # Breaks are awaited in their own task so this meter's other
                        # requests (and its break acknowledgements) keep flowing.
                        nursery.start_soon(self.change, conn, msg)
                    elif kind == "K":
                        ev = self.pending.pop(int(msg[1]), None)
                        if ev is not None:
                            ev.set()
                    elif kind == "H":
                        conn.name = str(msg[1])
                        self.clients[conn.name] = conn
                        self.server.client(conn.name)
                    elif kind == "S":
                        conn.post(["S", self.server.snapshot()])
                    else:
                        log.error("unknown message %r from %s", msg, conn.name or "?")
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.closed = True
            if conn.name and self.clients.get(conn.name) is conn:
                del self.clients[conn.name]
                for holders in self.server.holders.values():
                    holders.discard(conn.name)

    async def change(self, conn: Connection, msg: list[Any]) -> None:
        _, rid, objects, acquire, drop, created, renamed, removed, mailbox = msg
        change = Change(objects=tuple((int(o), bool(d), bool(x)) for o, d, x in objects),
                        acquire=tuple(int(o) for o in acquire),
                        drop=tuple(int(o) for o in drop),
                        created=created, renamed=renamed, removed=removed, mailbox=mailbox)
        breaks, versions = self.server.change(conn.name, change)
        waits = []
        for b in breaks:
            target = self.clients.get(b.client)
            if target is None or target.closed:
                continue
            self.next_bid += 1
            ev = self.pending[self.next_bid] = trio.Event()
            target.post(["B", self.next_bid, b.obj, b.counted])
            waits.append((self.next_bid, target, ev))
        for bid, target, ev in waits:
            await self.wait_ack(bid, target, ev)
        conn.post(["A", rid, {str(k): v for k, v in versions.items()}])

    async def wait_ack(self, bid: int, target: Connection, ev: trio.Event) -> None:
        with trio.move_on_after(BREAK_TIMEOUT) as scope:
            while not ev.is_set() and not target.closed:
                with trio.move_on_after(1.0):
                    await ev.wait()
        self.pending.pop(bid, None)
        if scope.cancelled_caught:
            self.late_acks += 1
            log.error("meter %s did not acknowledge a break in %.0f s", target.name,
                      BREAK_TIMEOUT)


async def serve(path: Path) -> None:
    coord = Coordinator()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    await sock.bind(str(path))
    sock.listen(128)
    listener = trio.SocketListener(sock)
    print("ready", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_on_signal, nursery.cancel_scope)
        nursery.start_soon(trio.serve_listeners, coord.handle, [listener])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.churn.coordinator")
    ap.add_argument("--socket", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(serve, args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
