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
