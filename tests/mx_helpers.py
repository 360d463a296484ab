"""Helpers for tests that run a real MX on a loopback port."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import argon2
import trio

from ams.config import Config
from ams.store import Store, UserRegistry
from gateways import serve_mx

FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def add_users(store: Store, *names: str) -> UserRegistry:
    users = UserRegistry(store, hasher=FAST_HASHER)
    for n in names:
        users.add(n, f"{n}-pw")
    return users


@asynccontextmanager
async def running(serve: Callable[..., Awaitable[None]], config: Config) -> AsyncIterator[int]:
    """Start a listening role on 127.0.0.1:<free port> in this process; yield the port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(serve, config, listen="127.0.0.1:0"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def running_mx(config: Config) -> AbstractAsyncContextManager[int]:
    return running(serve_mx, config)
