"""Delivery test helpers, and entry points for separate, killable processes.

Run as ``python -m tests.delivery_procs COMMAND CONFIG_JSON ARGS…``:

``worker CONFIG COUNT [--crash-after N] [--torn] [--slow MS]``
    :func:`delivery.worker_main` itself.  ``--crash-after N`` SIGKILLs the
    process right after its Nth mailbox append returned (``--torn``: tears
    the next append in half and dies inside it instead); ``--slow MS``
    sleeps before every append, so a test can signal it mid-batch.
``deliver CONFIG SENDER RCPT…``
    :func:`delivery.deliver_main` with the message on stdin (SENDER ``-``
    for none); exits with its status.
``hold-lock CONFIG USER MAILBOX``
    takes that mailbox log's lock, prints ``locked`` and holds it until
    stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from ams.config import Config, config_from_dict
from ams.store import Place, Spool, Store, UserRegistry, fold
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
#: The bound on every wait for a process or a condition.


# -- helpers for the tests ----------------------------------------------------------------


def config_dict(tmp: Path, *, fsync: str = "never", lease: float = 30.0, skew: float = 5.0,
                attempts: int = 10, lock_timeout: float = 60.0, lock_method: str = "fcntl",
                host: str = "h1", domains: Sequence[str] = ("example.test",),
                ) -> dict[str, Any]:
    return {
        "store": {"root": str(tmp / "store"), "lock_method": lock_method, "fsync": fsync,
                  "lease_seconds": lease, "clock_skew": skew, "lock_timeout": lock_timeout},
        "host": {"name": host, "cache_dir": str(tmp / f"cache-{host}")},
        "mail": {"domains": list(domains)},
        "limits": {"delivery_attempts": attempts},
    }


def setup_store(cfg: dict[str, Any], users: Iterable[str] = ()) -> tuple[Config, Store,
                                                                          UserRegistry]:
    config = config_from_dict(cfg)
    store = Store.initialise(config)
    reg = UserRegistry(store, hasher=HASHER)
    for name in users:
        reg.add(name, "pw")
    return config, store, reg


def folded(reg: UserRegistry, user: str, mailbox: str = "INBOX") -> Any:
    return fold(reg.mailboxes(user).open(mailbox).reader())


def delivery_ids(reg: UserRegistry, user: str, mailbox: str = "INBOX") -> Counter[str]:
    return Counter(m.delivery_id for m in folded(reg, user, mailbox).messages.values())


def messages(reg: UserRegistry, user: str, mailbox: str = "INBOX") -> list[bytes]:
    lg = reg.mailboxes(user).open(mailbox)
    st = folded(reg, user, mailbox)
    return [lg.read_message(st.messages[u].location) for u in sorted(st.messages)]


def spool_idle(spool: Spool, queue: str = "in") -> bool:
    """Nothing queued or claimed, judged safely while entries move.

    Listings are not atomic: an entry released from a claims dir back to
    its shard (a reclaim, a retry) after the queue was listed but before
    the claims were would be missed by both.  So the claims are listed
    before and after the queue, and the whole check must hold twice.
    """
    for attempt in range(2):
        if attempt:
            time.sleep(0.02)
        if (spool.depth(queue, Place.CLAIMED) or spool.depth(queue)
                or spool.depth(queue, Place.CLAIMED)):
            return False
    return True


def spawn(command: str, cfg: dict[str, Any], *args: str, log: Path | None = None,
          stdin: int | None = None, stdout: int = subprocess.DEVNULL,
          ) -> subprocess.Popen[bytes]:
    """Start a process; its stderr (the delivery log) goes to ``log``, never a pipe
    that could fill up and stall it."""
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("AMS_LOG_LEVEL", None)  # the delivered-message lines are INFO by default
    err = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", "tests.delivery_procs", command,
                                 json.dumps(cfg), *args], cwd=ROOT, env=e, stdin=stdin,
                                stdout=stdout, stderr=err)
    finally:
        if log is not None:
            err.close()  # type: ignore[union-attr]


def run(command: str, cfg: dict[str, Any], *args: str, stdin: bytes = b"",
        timeout: float = WAIT) -> subprocess.CompletedProcess[bytes]:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tests.delivery_procs", command,
                           json.dumps(cfg), *args], cwd=ROOT, env=e, input=stdin,
                          capture_output=True, timeout=timeout, check=False)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


# -- entry points ----------------------------------------------------------------------------


def _instrument(crash_after: int, torn: bool, slow_ms: float) -> None:
    """Wrap MailboxLog.append to die after N appends, or to be slow."""
    import ams.store.log as log_mod

    original = log_mod.MailboxLog.append
    count = 0

    def append(self: Any, msgs: Any, **kw: Any) -> Any:
        nonlocal count
        if slow_ms:
            time.sleep(slow_ms / 1000)
        if crash_after and torn and count >= crash_after:
            log_mod._CRASHPOINT = "append-torn"  # dies half way through this write
        result = original(self, msgs, **kw)
        count += 1
        if crash_after and count >= crash_after and not torn:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    log_mod.MailboxLog.append = append  # type: ignore[method-assign,assignment]


def _worker(cfg: str, count: str, *opts: str) -> int:
    from delivery import worker_main
    crash_after, torn, slow = 0, False, 0.0
    it = iter(opts)
    for o in it:
        if o == "--crash-after":
            crash_after = int(next(it))
        elif o == "--torn":
            torn = True
        elif o == "--slow":
            slow = float(next(it))
        else:
            raise SystemExit(f"unknown option {o}")
    if crash_after or slow:
        _instrument(crash_after, torn, slow)
    return worker_main(config_from_dict(json.loads(cfg)), int(count))


def _deliver(cfg: str, sender: str, *rcpts: str) -> int:
    from delivery import deliver_main
    return deliver_main(config_from_dict(json.loads(cfg)), list(rcpts),
                        None if sender == "-" else sender, sys.stdin.buffer.read())


def _hold_lock(cfg: str, user: str, mailbox: str) -> int:
    store = Store(config_from_dict(json.loads(cfg)))
    lg = UserRegistry(store).mailboxes(user).open(mailbox)
    with lg.lock:
        print("locked", flush=True)
        sys.stdin.read()
    return 0


def main() -> None:
    cmd, *args = sys.argv[1:]
    commands: dict[str, Callable[..., int]] = {
        "worker": _worker, "deliver": _deliver, "hold-lock": _hold_lock}
    sys.exit(commands[cmd](*args))


if __name__ == "__main__":
    main()
