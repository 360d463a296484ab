"""``ams serve`` as a person runs it: a real process, a demo store, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from ams.config import load_config
from ams.store import Spool, Store, UserRegistry, fold


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_creates_demo_store_delivers_and_stops_cleanly(tmp_path: Path) -> None:
    with subprocess.Popen(
            [sys.executable, "-m", "ams.cli", "serve", "--root", "var/store", "--listen-smtp",
             "127.0.0.1:0"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "AMS_LOG_LEVEL": "WARNING"}) as proc:
        try:
            _drive(proc, tmp_path)
        finally:
            if proc.poll() is None:
                proc.kill()


def _drive(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    assert proc.stdout is not None
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "serve exited"
        lines.append(line)
        m = re.search(r"SMTP \(MX\) for example\.test: 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
    assert port is not None, lines
    pw = re.search(r"password (\S+)", "".join(lines))
    assert pw is not None
    cfg = load_config(tmp_path / "var" / "ams.toml")
    store = Store(cfg)
    assert UserRegistry(store).verify_password("demo", pw.group(1))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("someone@remote.test", ["demo@example.test"],
                   b"Subject: hello demo\r\n\r\nhi\r\n")
    inbox = UserRegistry(store).mailboxes("demo").open("INBOX")

    def filed() -> list[bytes]:
        st = fold(inbox.reader())
        return [inbox.read_message(m.location) for m in st.messages.values()]

    (msg,) = wait_for(filed, what="the message in demo's INBOX")
    assert b"Subject: hello demo" in msg and b"Delivered-To: demo@example.test" in msg
    assert len(Spool(store).live_workers("in")) == 2
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert Spool(store).live_workers() == []
    assert Spool(store).depth("in") == 0
