"""Fixtures of the web API tests: a backend of each kind (memory, and Redis over the anyio
transport), under asyncio and trio (the root conftest's anyio_backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from conformance.clock import FakeClock
from strego.backends.base import Backend
from tests.backend_fixtures import BACKENDS

#: The backends the API is tested on: the contract's two ends.
WEB_BACKENDS = ["memory", "anyio-redis"]


@pytest.fixture(params=WEB_BACKENDS)
def make_backend(request: pytest.FixtureRequest) -> Any:
    return BACKENDS[request.param].factory(request)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(make_backend: Any, clock: FakeClock) -> AsyncIterator[Backend]:
    async with make_backend(clock=clock) as b:
        yield b
