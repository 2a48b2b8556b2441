"""`Client.result` on Redis: every waiter of a backend shares one pub/sub connection, and a lost
pub/sub connection wakes the waiters (they read again) and is made again, so a task's end is
found without waiting for the fallback poll. Over the anyio transport (asyncio and trio) and
redis-py (asyncio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis

import strego
from strego import client as client_module
from strego.backends.base import Backend
from strego.clock import wall_clock_ms
from tests.runtime_support import eventually

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.parametrize("make_backend", ["redis", "anyio-redis"], indirect=True),
]

LEASE_MS = 60_000


@pytest.fixture
async def backend(make_backend: Any) -> AsyncIterator[Backend]:
    async with make_backend(clock=wall_clock_ms) as b:
        yield b


def _pubsub_clients(url: str) -> int:
    admin = redis.Redis.from_url(url)
    try:
        return len(admin.client_list(_type="pubsub"))
    finally:
        admin.close()


async def test_every_waiter_shares_one_pubsub_connection(
    backend: Backend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RESULT_POLL_S", 60.0)  # ends come by pub/sub only
    client = strego.Client(backend)
    infos = await client.enqueue_many([strego.Task("t", i) for i in range(10)])
    ids = [i.id for i in infos if isinstance(i, strego.TaskInfo)]
    results: dict[str, object] = {}

    async def wait(task_id: str) -> None:
        results[task_id] = await client.result(task_id, timeout=20)

    before = _pubsub_clients(redis_url)
    async with anyio.create_task_group() as tg:
        for task_id in ids:
            tg.start_soon(wait, task_id)
        await eventually(lambda: _pubsub_clients(redis_url) == before + 1, "the subscription")
        got = await backend.fetch(["default"], 10, "w", lease_ms=LEASE_MS)
        done = await backend.ack_many([(t.queue, t.id, b"json\n" + t.payload) for t in got], "w")
        assert all(done)
    assert _pubsub_clients(redis_url) == before + 1
    assert results == {task_id: n for n, task_id in enumerate(ids)}


async def test_a_lost_pubsub_connection_wakes_the_waiters(
    backend: Backend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RESULT_POLL_S", 60.0)  # the poll must not be the one
    client = strego.Client(backend)
    info = await client.enqueue(strego.Task("t", 1))
    admin = redis.Redis.from_url(redis_url)
    found: list[object] = []

    async def wait() -> None:
        found.append(await client.result(info.id, timeout=20))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await eventually(lambda: len(admin.client_list(_type="pubsub")) >= 1, "subscription")
            admin.client_kill_filter(_type="pubsub")  # the notification channel is cut
            [got] = await backend.fetch(["default"], 1, "w", lease_ms=LEASE_MS)
            assert await backend.ack("default", got.id, "w", result=b"json\n7")
    finally:
        admin.close()
    assert found == [7]
