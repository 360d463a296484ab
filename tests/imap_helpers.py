"""Helpers for tests that run real IMAP bridges on loopback ports."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path

from ams.config import Config, render_config
from ams.imap import serve_imap
from tests.mx_helpers import running

ROOT = Path(__file__).resolve().parent.parent


def plaintext(cfg: Config) -> Config:
    return cfg.replace(tls=dataclasses.replace(cfg.tls, allow_plaintext_auth=True))


def running_imap(config: Config) -> AbstractAsyncContextManager[int]:
    """An IMAP bridge in this process on 127.0.0.1:<free port>; yields the port."""
    return running(serve_imap, config)


@contextmanager
def bridge_process(config: Config, path: Path) -> Iterator[int]:
    """``ams imap`` as a separate process with its own config; yields its port."""
    path.write_text(render_config(config))
    with subprocess.Popen([sys.executable, "-m", "ams.cli", "--config", str(path), "imap",
                           "--listen", "127.0.0.1:0"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "AMS_LOG_LEVEL": "WARNING"}) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = re.search(r"IMAP listening on 127\.0\.0\.1:(\d+)", line)
            assert m, line + (proc.stderr.read() if proc.stderr else "")
            yield int(m.group(1))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class RawIMAP:
    """A minimal blocking IMAP client over a socket: one command at a time,
    every response line kept verbatim (literals inline), for tests that
    check the exact wire form of responses imaplib does not parse."""

    def __init__(self, port: int, *, timeout: float = 20.0) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
        self._tag = 0

    def line(self) -> bytes:
        """One response line, with any literals it announces appended."""
        out = self.file.readline()
        if not out:
            raise ConnectionError("server closed the connection")
        while (m := re.search(rb"\{(\d+)\}\r\n$", out)) is not None:
            out += self.file.read(int(m.group(1)))
            out += self.file.readline()
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: str) -> tuple[list[bytes], bytes]:
        """Send ``tag text``; return (untagged lines, tagged line)."""
        self._tag += 1
        tag = b"r%d" % self._tag
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged = []
        while True:
            ln = self.line()
            if ln.startswith(tag + b" "):
                return untagged, ln
            untagged.append(ln)

    def ok(self, text: str) -> list[bytes]:
        untagged, done = self.command(text)
        assert b" OK " in done, (text, done, untagged)
        return untagged

    def close(self) -> None:
        self.file.close()
        self.sock.close()
