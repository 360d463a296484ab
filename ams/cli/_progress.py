"""Progress display for long operations (reindex, fsck, import, benchmarks).

On a terminal it redraws one line; otherwise (CI logs, pipes) it prints a
line at most every few seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, *, unit: str = "",
                 stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.1 if self.tty else interval
        self.start = time.monotonic()
        self._last = 0.0
        self.n = 0

    def update(self, n: int, total: int | None = None, *, force: bool = False) -> None:
        self.n = n
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        if self.total:
            pct = 100.0 * self.n / self.total
            text = f"{self.label}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {rate:,.0f}/s"
        else:
            text = f"{self.label}: {self.n} {self.unit}, {rate:,.0f}/s"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, summary: str = "") -> None:
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        if summary:
            self.stream.write(f"{self.label}: {summary}\n")
        self.stream.flush()
