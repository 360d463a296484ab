"""Waiting for a condition in tests: bounded polling, never a blind sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT = 30.0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
