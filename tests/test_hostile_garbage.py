"""Garbage written straight into Redis under strego's keys, with a server running on the Redis
backend (asyncio over redis-py, trio over the anyio transport): stream entries that name no task
or lack fields are dropped and the queue keeps being served."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

import strego
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys
from strego.task import TaskState
from tests.faults.support import make_backend
from tests.runtime_support import wait_for_state

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def raw(clean_redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(clean_redis_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
async def backend(clean_redis_url: str, anyio_backend: object) -> AsyncIterator[RedisBackend]:
    b = make_backend(clean_redis_url, "hostile", anyio_backend)
    try:
        yield b
    finally:
        await b.aclose()


def serving(backend: RedisBackend, ran: list[str], queues: list[str]) -> strego.Server:
    server = strego.Server(backend, queues=queues, claim_stale_after=1.0, recovery_interval=0.2)

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        assert task.id is not None
        ran.append(task.id)

    return server


async def test_stream_entries_naming_no_task_are_dropped(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    good = await strego.Client(backend).enqueue(strego.Task("job", 1, queue="q"))
    raw.xadd(k.streams[0], {"foo": "bar"})  # no `t` field
    raw.xadd(k.streams[0], {"t": "no-such-task"})
    raw.xadd(k.streams[0], {"t": "", "x": "\xff"})
    ran: list[str] = []
    async with serving(backend, ran, ["q"]):
        await wait_for_state(backend, good.id, TaskState.COMPLETED)
    assert ran == [good.id]
    assert sum(raw.xlen(s) for s in k.streams) == 0  # the garbage entries are gone
    counts = (await backend.queue_info("q")).counts
    assert counts[TaskState.PENDING] == counts[TaskState.ACTIVE] == 0
