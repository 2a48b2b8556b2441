"""Fixtures of the conformance suite. Whoever runs it supplies one fixture, `make_backend` (see
README.md); everything here is built on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from conformance.clock import FakeClock
from strego.backends.base import Backend

# The helpers assert too: give their failures pytest's detailed messages.
pytest.register_assert_rewrite("conformance.helpers")


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every test runs under asyncio and trio (deselect one with `-k "not trio"`)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(make_backend: Any, clock: FakeClock) -> AsyncIterator[Backend]:
    """A fresh, empty backend on the fake clock, with the default retention."""
    async with make_backend(clock=clock) as b:
        yield b


#: Retention short enough to expire in a test (completed/cancelled, dead).
SHORT_COMPLETED_TTL_MS = 10_000
SHORT_DEAD_TTL_MS = 20_000


@pytest.fixture
async def short_backend(make_backend: Any, clock: FakeClock) -> AsyncIterator[Backend]:
    """A fresh backend whose retention is SHORT_COMPLETED_TTL_MS / SHORT_DEAD_TTL_MS."""
    async with make_backend(
        clock=clock, completed_ttl_ms=SHORT_COMPLETED_TTL_MS, dead_ttl_ms=SHORT_DEAD_TTL_MS
    ) as b:
        yield b


#: Per-minute counts kept for five minutes (`throughput`'s retention window in a test).
SHORT_STATS_RETENTION_MS = 300_000


@pytest.fixture
async def short_stats_backend(make_backend: Any, clock: FakeClock) -> AsyncIterator[Backend]:
    """A fresh backend that keeps per-minute counts for SHORT_STATS_RETENTION_MS."""
    async with make_backend(clock=clock, stats_retention_ms=SHORT_STATS_RETENTION_MS) as b:
        yield b
