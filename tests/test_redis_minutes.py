"""RedisBackend's per-minute history and queue latency where Redis alone can go wrong: the
history hash's fields and their index, pruning that keeps them bounded, a foreign history key
that must not break a transition, `throughput` in one round trip, and the age of the oldest
pending task by Redis's own clock (no injected clock) and when a stream already holds a later
entry id than the injected clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start
from strego.backends.base import MINUTE_MS
from strego.backends.redis import RedisBackend
from strego.task import TaskState

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

RETENTION_MS = 5 * MINUTE_MS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only (the conformance suite covers trio)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    c: Any = redis.asyncio.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(client: Any, clock: FakeClock) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(
        client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=clock, stats_retention_ms=RETENTION_MS
    )
    yield b
    await b.aclose()


async def complete(backend: RedisBackend, task_id: str, task_type: str = "t") -> None:
    await start(backend, task_id, task_type=task_type)
    assert await backend.ack("q", task_id, "c1")


async def test_fields_and_index(backend: RedisBackend, client: Any, clock: FakeClock) -> None:
    minute = clock() // MINUTE_MS
    await complete(backend, "a", "send")
    await complete(backend, "b", "send")
    await start(backend, "c", task_type="x:y")
    assert await backend.fail("q", "c", "c1", "boom", retry_in_ms=1_000) == TaskState.RETRY
    k = backend.keys("q")
    expected = {f"{minute}c": 2, f"{minute}c:send": 2, f"{minute}f": 1, f"{minute}f:x:y": 1}
    fields = await client.hgetall(k.minutes)
    assert {f.decode(): int(v) for f, v in fields.items()} == expected
    index = await client.zrange(k.minutes_index, 0, -1, withscores=True)
    assert {f.decode(): int(s) for f, s in index} == dict.fromkeys(expected, minute)


async def test_pruning_keeps_the_history_bounded(
    backend: RedisBackend, client: Any, clock: FakeClock
) -> None:
    k = backend.keys("q")
    for i in range(30):  # half an hour, one completion a minute, two types
        await complete(backend, f"t{i}", task_type=f"type{i % 2}")
        clock.advance(MINUTE_MS)
    # at most the retention window's minutes (5), plus the one a count opened, each with its
    # total and one type's field
    assert await client.hlen(k.minutes) <= 2 * (RETENTION_MS // MINUTE_MS + 1)
    assert await client.zcard(k.minutes_index) == await client.hlen(k.minutes)
    history = await backend.throughput("q", minutes=30)
    # the window: this minute (nothing yet) and the four before it
    assert sum(m.completed for m in history) == RETENTION_MS // MINUTE_MS - 1


async def test_throughput_is_one_round_trip(backend: RedisBackend) -> None:
    sent: list[Any] = []
    inner = backend.transport

    class Counting:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(inner, name)

            async def call(*args: Any, **kwargs: Any) -> Any:
                sent.append(name)
                return await attr(*args, **kwargs)

            return call

    backend.transport = Counting()  # type: ignore[assignment]
    try:
        assert len(await backend.throughput("q", minutes=1440, task_type="t")) == 1440
    finally:
        backend.transport = inner
    assert sent == ["execute"]  # one HMGET (the injected clock needs no TIME)


async def test_a_foreign_history_key_does_not_break_a_transition(
    backend: RedisBackend, client: Any
) -> None:
    k = backend.keys("q")
    await client.set(k.minutes, "someone else's")
    await complete(backend, "a")
    await start(backend, "b")
    assert await backend.fail("q", "b", "c1", "x", retry_in_ms=None) == TaskState.DEAD
    assert (await backend.get_task("a", "q")).state == TaskState.COMPLETED  # type: ignore[union-attr]
    assert await client.get(k.minutes) == b"someone else's"
    await client.delete(k.minutes)
    await client.set(k.minutes_index, "theirs")
    await complete(backend, "c")
    assert [m.completed for m in await backend.throughput("q", minutes=1)] == [1]


async def test_oldest_pending_by_redis_time(client: Any) -> None:
    # no injected clock: stream entries and the script's now are both Redis TIME
    backend = RedisBackend(client, prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        assert (await backend.queue_info("q")).oldest_pending_age_ms is None
        await backend.enqueue(message("a", created_ms=backend.clock()))
        age = (await backend.queue_info("q")).oldest_pending_age_ms
        assert age is not None and 0 <= age < 5_000
        await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
        assert (await backend.queue_info("q")).oldest_pending_age_ms is None
    finally:
        await backend.aclose()


async def test_an_injected_clock_behind_the_stream_still_pushes(
    backend: RedisBackend, clock: FakeClock
) -> None:
    # an entry stamped by Redis TIME (later than the fake clock) is already in the stream
    real = RedisBackend(backend.transport, prefix=backend.prefix)
    await real.enqueue(message("real"))
    await backend.enqueue(message("fake"))
    got = await backend.fetch(["q"], 2, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["real", "fake"]
    assert (await backend.queue_info("q")).oldest_pending_age_ms is None
