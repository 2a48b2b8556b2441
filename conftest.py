"""Shared test fixtures: the event loops to run under and a throwaway redis-server per session.

Set STREGO_TEST_REDIS_URL to use an existing server instead (its database is flushed per test).
With CI=true, a test that needs Redis fails when no server can be started; elsewhere it is skipped
with the reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, running_redis_server

#: make_backend, parametrized over our backends (runs the conformance suite on each); the
#: PostgreSQL fixtures (pg_dsn, history, ...)
pytest_plugins = ["tests.backend_fixtures", "tests.postgres_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help="run the chaos soak at full size (20,000 tasks) instead of the CI size",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--soak"):  # read by tests/faults/test_chaos_soak.py when it is imported
        os.environ["STREGO_SOAK"] = "1"


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """A redis-server started for this session, or None when STREGO_TEST_REDIS_URL is set."""
    if os.environ.get("STREGO_TEST_REDIS_URL"):
        yield None
        return
    with running_redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("STREGO_TEST_REDIS_URL") or redis_server.url  # type: ignore[union-attr]


@pytest.fixture
def clean_redis_url(redis_url: str) -> Iterator[str]:
    """The session's Redis URL, with its database flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    yield redis_url
