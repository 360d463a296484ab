"""Shared fixtures: a fresh store per test, configured for each lock method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ams.config import Config, config_from_dict
from ams.store import Store

MakeConfig = Callable[..., Config]


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
