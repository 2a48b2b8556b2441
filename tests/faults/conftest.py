"""Fixtures of the fault tests: a redis-server of the test's own (faults restart it, fill its
memory, kill its clients), and worker subprocesses on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import Workers
from tests.redis_server import RedisServer, running_redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A throwaway redis-server for one test (faults restart it, fill it, kill its clients)."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"fault{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers(own_redis: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    w = Workers(own_redis.url, prefix, log_dir)
    try:
        yield w
    finally:
        w.close()
