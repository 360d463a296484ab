"""What the churn benchmark's helper processes share: stopping on a signal."""

from __future__ import annotations

import signal

import trio


async def cancel_on_signal(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGTERM or SIGINT (start it in a nursery)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return
