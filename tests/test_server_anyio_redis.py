"""The runtime scenarios of test_server and test_server_lifecycle on RedisBackend over strego's
anyio transport, so Redis is covered under trio as well as asyncio (redis-py covers asyncio only,
in the main parametrization)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from strego.backends.base import Backend
from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport
from tests import test_server as server_scenarios
from tests import test_server_lifecycle as lifecycle_scenarios

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SCENARIOS: list[Callable[[Backend], Awaitable[None]]] = [
    server_scenarios.test_every_task_runs_exactly_once,
    server_scenarios.test_concurrency_is_really_n,
    server_scenarios.test_failures_retry_then_go_dead,
    server_scenarios.test_timeout_cancels_the_handler,
    server_scenarios.test_scheduled_task_is_neither_early_nor_late,
    server_scenarios.test_sync_handlers_run_in_threads,
    lifecycle_scenarios.test_shutdown_releases_unfinished_tasks_to_another_server,
    lifecycle_scenarios.test_long_handler_keeps_its_lease_with_two_servers_up,
    lifecycle_scenarios.test_tasks_of_a_dead_consumer_are_claimed_and_run,
]


@pytest.fixture
async def anyio_redis(redis_url: str) -> AsyncIterator[Backend]:
    backend = RedisBackend(AnyioTransport.from_url(redis_url), prefix=f"ar{uuid.uuid4().hex[:10]}")
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
async def test_scenario(
    scenario: Callable[[Backend], Awaitable[None]], anyio_redis: Backend
) -> None:
    await scenario(anyio_redis)
