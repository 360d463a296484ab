"""Shared fixtures: a fresh store per test, configured for each lock method."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from ams.config import Config, config_from_dict
from ams.store import Store

MakeConfig = Callable[..., Config]

# No per-example deadline: this suite runs on 2 shared cores, where timing is
# noise, not a property.  In CI the examples are also derandomised, so a run
# is reproducible; locally they stay random and keep exploring.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Build a Config rooted in this test's tmp dir; keyword sections override."""

    def make(*, lock_method: str = "fcntl", fsync: str = "never", host: str = "h1",
             **store: Any) -> Config:
        return config_from_dict({
            "store": {"root": str(tmp_path / "store"), "lock_method": lock_method,
                      "fsync": fsync, **store},
            "host": {"name": host, "cache_dir": str(tmp_path / f"cache-{host}")},
            "mail": {"domains": ["example.test"]},
        })

    return make


@pytest.fixture
def store(make_config: MakeConfig) -> Store:
    return Store.initialise(make_config())


@pytest.fixture(params=["fcntl", "dotlock"])
def lock_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)
