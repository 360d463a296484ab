"""Failed-login throttling, shared by the IMAP bridge and SMTP submission.

Each failure is remembered for ``FAILURE_MEMORY`` seconds under every key it
concerns (the client address, the user name); the next attempt under any of
them waits ``0.25 * 2**(n-1)`` seconds for ``n`` recent failures, up to
``MAX_DELAY``.  Guessing becomes slow without locking anyone out, and the
memory is per process: each bridge or submission server throttles what it
sees.
"""

from __future__ import annotations

import time

MAX_DELAY = 8.0
FAILURE_MEMORY = 600.0
#: Password verifications one server runs at once: hashing is slow and takes
#: tens of MiB on purpose, so a burst of logins waits instead of holding that
#: memory many times over.
PASSWORD_CHECKS = 2


class Throttle:
    """Failed-login counts per key (client address, user name), decaying."""

    def __init__(self) -> None:
        self._fails: dict[str, list[float]] = {}

    def delay(self, *keys: str) -> float:
        now = time.monotonic()
        worst = 0
        for k in keys:
            recent = [t for t in self._fails.get(k, []) if now - t < FAILURE_MEMORY]
            self._fails[k] = recent
            worst = max(worst, len(recent))
        return 0.0 if worst == 0 else min(0.25 * 2 ** (worst - 1), MAX_DELAY)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for k in keys:
            self._fails.setdefault(k, []).append(now)


__all__ = ["FAILURE_MEMORY", "MAX_DELAY", "PASSWORD_CHECKS", "Throttle"]
