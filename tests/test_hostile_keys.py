"""Queue names that try to escape their hash tag or namespace are refused before anything is
written, on every public entry point; keys stay inside their prefix, and one application's prefix
never sees another's queues or tasks."""

from __future__ import annotations

import uuid

import pytest
import redis

import strego
from strego.backends.memory import MemoryBackend
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys, queues_key
from strego.errors import InvalidQueueNameError

ESCAPES = ["a}b", "{a}", "x}:v1:{y", "a:b", "a b", "tab\tq", "new\nline", "", "q" * 101,
           "é", "a/b", "*", "a\x00b"]  # fmt: skip


@pytest.mark.parametrize("name", ESCAPES)
def test_escaping_queue_names_are_refused_by_task(name: str) -> None:
    with pytest.raises(InvalidQueueNameError):
        strego.Task("t", queue=name)
    with pytest.raises(InvalidQueueNameError):
        strego.Server(MemoryBackend(), queues=[name])


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py
@pytest.mark.parametrize("name", ESCAPES)
async def test_escaping_queue_names_write_nothing_in_redis(clean_redis_url: str, name: str) -> None:
    backend = RedisBackend.from_url(clean_redis_url, prefix="app")
    client = strego.Client(backend)
    try:
        for call in (client.queue_info, client.pause, client.resume, client.requeue_all_dead,
                     client.consumers):  # fmt: skip
            with pytest.raises(InvalidQueueNameError):
                await call(name)
        with pytest.raises(InvalidQueueNameError):
            await client.requeue_dead(name, "x")
        with pytest.raises(InvalidQueueNameError):
            backend.keys(name)
    finally:
        await backend.aclose()
    r = redis.Redis.from_url(clean_redis_url)
    assert r.keys("*") == []
    r.close()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_prefixes_are_isolated(clean_redis_url: str) -> None:
    one = RedisBackend.from_url(clean_redis_url, prefix="app")
    # prefixes that share a start, or that look like one of app's keys
    others = [RedisBackend.from_url(clean_redis_url, prefix=p)
              for p in ("app2", "ap", "app:v1", "app:v1:{default}")]  # fmt: skip
    try:
        mine = await strego.Client(one).enqueue(strego.Task("t", 1, id=f"id{uuid.uuid4().hex}"))
        for other in others:
            assert await other.queues() == []
            assert await other.get_task(mine.id) is None
            assert await other.get_task(mine.id, "default") is None
            assert await other.fetch(["default"], 10, "c", lease_ms=1000) == []
        assert (await one.get_task(mine.id)) is not None
        r = redis.Redis.from_url(clean_redis_url)
        names = [k.decode() for k in r.keys("*")]
        r.close()
        ours = set(Keys("app", "default").all()) | {queues_key("app")}
        # no key of another prefix is one of app's; app's keys are its queue's and registry
        for other in others:
            theirs = set(Keys(other.prefix, "default").all()) | {queues_key(other.prefix)}
            assert not theirs & ours
        assert {n for n in names if n in ours} >= {queues_key("app"), Keys("app", "default").tasks}
        # every key of a queue carries its hash tag
        assert all("{default}" in k for k in Keys("app", "default").all())
    finally:
        for b in (one, *others):
            await b.aclose()
