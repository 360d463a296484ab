"""An outbound gateway SIGKILLed mid-transaction: the message is still
delivered, and a second copy reaches the remote only when the kill fell in
SMTP's own window (after the remote's 250, before the gateway recorded it).

The gateway runs as a real process (``python -m tests.test_outbound_crash
gateway CONFIG_JSON MODE``); the remote is an SMTP server in the test.  Each
case is made to happen at a known point, and the test says which one it hit:

- ``mid-transaction``: the remote holds the gateway's RCPT unanswered while
  the test kills the gateway, so no 250 for the message was ever sent;
- ``after-250``: the gateway got the remote's 250 and is stopped just
  before it records the result (it prints ``SETTLING`` and waits there).

A second gateway then reclaims the dead one's claim after its lease and
delivers the message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ams.config import config_from_dict
from ams.protocols.smtp import RcptTo, Reply
from ams.store import Place, Spool, Store
from gateways._smtp_server import Session
from tests.test_outbound import SinkPolicy, sink

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
MSG = b"From: alice@example.test\r\nSubject: crash test\r\n\r\nbody\r\n"


def config_dict(tmp: Path, port: int) -> dict[str, Any]:
    return {
        "store": {"root": str(tmp / "store"), "fsync": "always", "lease_seconds": 1.0,
                  "clock_skew": 0.2},
        "host": {"name": "h1", "cache_dir": str(tmp / "cache")},
        "mail": {"domains": ["example.test"]},
        "outbound": {"routes": {"one.test": f"127.0.0.1:{port}"}, "dns": False,
                     "retry_schedule": [0.3], "bucket_seconds": 1, "connect_timeout": 5.0,
                     "command_timeout": 30.0, "data_timeout": 30.0},
    }


class HoldingSink(SinkPolicy):
    """Holds the first RCPT of the session unanswered until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = trio.Event()
        self.release = trio.Event()

    async def rcpt_to(self, s: Session, ev: RcptTo) -> Reply | None:
        if not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        return None


def spawn(cfg: dict[str, Any], mode: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AMS_LOG_LEVEL": "INFO"}
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "tests.test_outbound_crash", "gateway",
                                 json.dumps(cfg), mode], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=err)


async def read_until(proc: subprocess.Popen[bytes], prefix: bytes) -> bytes:
    assert proc.stdout is not None
    with trio.fail_after(WAIT):
        while True:
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            if not line:
                raise AssertionError("the gateway exited before " + prefix.decode())
            if line.startswith(prefix):
                return line


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


async def wait_until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(cond):
            await trio.sleep(0.05)


@pytest.mark.parametrize("case", ["mid-transaction", "after-250"])
async def test_gateway_killed_mid_delivery_still_delivers(tmp_path: Path, case: str) -> None:
    policy = HoldingSink() if case == "mid-transaction" else SinkPolicy()
    async with sink(policy) as (remote, port):
        cfg = config_dict(tmp_path, port)
        store = Store.initialise(config_from_dict(cfg))
        spool = Spool(store)
        env = spool.enqueue("out", mail_from="alice@example.test", rcpt_to=["x@one.test"],
                            message=MSG)
        log = tmp_path / "gateways.log"
        first = spawn(cfg, "hang-before-settle", log)
        second = None
        try:
            if case == "mid-transaction":
                assert isinstance(policy, HoldingSink)
                with trio.fail_after(WAIT):
                    await policy.holding.wait()
                kill(first)
                hit = "killed mid-transaction: the remote never answered 250"
                policy.release.set()
            else:
                line = await read_until(first, b"SETTLING")
                assert f"{env.id} x@one.test=sent".encode() in line
                assert len(remote.messages) == 1  # the remote has it and said 250
                kill(first)
                hit = "killed between the remote's 250 and the gateway recording it"
            print(f"case hit: {hit}")
            # The dead gateway still holds the entry; the next one reclaims it.
            assert spool.depth("out", Place.CLAIMED) == 1
            second = spawn(cfg, "normal", log)
            await read_until(second, b"SETTLING")
            await wait_until(lambda: spool.depth("out", Place.CLAIMED) == 0
                             and spool.depth("out") == 0)
            await trio.sleep(0.3)  # room for a wrong extra copy to arrive
        finally:
            kill(first)
            if second is not None:
                kill(second, signal.SIGTERM)
                assert second.returncode == 0, log.read_text()
    copies = [m for m in remote.messages if m.rcpts == ["x@one.test"]]
    expected = 1 if case == "mid-transaction" else 2
    assert len(copies) == expected, (hit, log.read_text())
    assert all(m.data == copies[0].data for m in copies)
    assert spool.depth("out", Place.FAILED) == 0 and spool.live_workers() == []


# -- the gateway process -------------------------------------------------------------------


def _gateway(cfg_json: str, mode: str) -> int:
    from gateways import _outbound
    original = _outbound.GatewayPool._settle

    def settle(self: Any, worker: Any, claim: Any, entry: Any, state: Any,
               outcomes: Any) -> str:
        results = ",".join(f"{r}={res.status}" for r, res in outcomes.items())
        print(f"SETTLING {claim.entry_id} {results}", flush=True)
        if mode == "hang-before-settle":
            time.sleep(3600)  # the test kills us here
        return original(self, worker, claim, entry, state, outcomes)

    _outbound.GatewayPool._settle = settle  # type: ignore[method-assign]
    return _outbound.gateway_main(config_from_dict(json.loads(cfg_json)), 1)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit({"gateway": _gateway}[command](*args))
