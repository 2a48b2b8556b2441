"""Periodic schedules in Redis: where they are stored (the index, each queue's `crons` and
`cron_defs`), the definition's bytes stable, and a foreign key refused before anything is
written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from conformance.clock import FakeClock
from conformance.test_schedules import definition
from strego.backends.base import FireResult
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys, schedules_key
from strego.backends.redis.schedules import decode_definition, encode_definition
from strego.errors import ForeignKeyError

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    c = redis.asyncio.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend.from_url(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}", clock=FakeClock())
    yield b
    await b.aclose()


def test_a_definition_is_the_same_bytes_each_time_and_reads_back() -> None:
    d = definition(payload=b"\xff\x00 not utf-8")
    assert encode_definition(d) == encode_definition(definition(payload=b"\xff\x00 not utf-8"))
    assert decode_definition("s", encode_definition(d)) == d


async def test_layout(backend: RedisBackend, client: Any) -> None:
    now = backend.clock()
    info = await backend.put_schedule(definition(queue="q1"), now)
    k = Keys(backend.prefix, "q1")
    assert await client.hgetall(schedules_key(backend.prefix)) == {b"s": b"q1"}
    assert await client.hget(k.crons, "s") == f"1,{now},,".encode()
    assert await client.hget(k.cron_defs, "s") == encode_definition(info.definition)
    assert await backend.fire_schedule(info, now, now + 1000) is FireResult.FIRED
    assert await client.hget(k.crons, "s") == f"1,{now + 1000},{now},s:{now}".encode()
    assert await backend.remove_schedule("s") is True
    assert await client.exists(k.crons, k.cron_defs, schedules_key(backend.prefix)) == 0


async def test_a_foreign_crons_key_is_refused_with_nothing_written(
    backend: RedisBackend, client: Any
) -> None:
    k = Keys(backend.prefix, "q")
    await client.set(k.crons, "not ours")
    with pytest.raises(ForeignKeyError, match="crons"):
        await backend.put_schedule(definition(), backend.clock())
    assert await client.exists(k.cron_defs) == 0
    assert await client.get(k.crons) == b"not ours"
    # the schedules of other queues are still listed (and so still fire)
    other = await backend.put_schedule(definition("other", queue="q2"), backend.clock())
    assert (await backend.list_schedules()).schedules == [other]
