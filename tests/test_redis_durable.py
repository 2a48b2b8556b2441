"""The durability switch: with durable=True an enqueue returns once a replica has its tasks (WAIT
after the enqueue's writes), and raises NotReplicatedError when none confirms in time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.errors import NotReplicatedError
from tests.redis_server import RedisServer, running_redis_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def master_with_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with (
        running_redis_server() as master,
        running_redis_server() as replica,
    ):
        import redis

        redis.Redis(port=replica.port).replicaof("127.0.0.1", master.port)
        yield master, replica


async def test_durable_enqueue_waits_for_a_replica(
    master_with_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_with_replica
    prefix = uuid.uuid4().hex[:8]
    backend = RedisBackend.from_url(
        f"{master.url}?durable=true&durable_timeout_ms=5000", prefix=prefix
    )
    try:
        await backend.enqueue(message("t1"))
        await backend.enqueue_many([message("t2"), message("t3", queue="other")])
    finally:
        await backend.aclose()
    # returned only once the replica had them: they are there already
    on_replica = RedisBackend.from_url(replica.url, prefix=prefix)
    try:
        for task_id, queue in [("t1", "q"), ("t2", "q"), ("t3", "other")]:
            assert await on_replica.get_task(task_id, queue) is not None
    finally:
        await on_replica.aclose()


async def test_no_replica_confirms(redis_url: str) -> None:
    prefix = uuid.uuid4().hex[:8]
    backend = RedisBackend.from_url(redis_url, durable=True, durable_timeout_ms=20, prefix=prefix)
    plain = RedisBackend.from_url(redis_url, prefix=prefix)
    try:
        with pytest.raises(NotReplicatedError, match="0 replica"):
            await backend.enqueue(message("lonely", queue="durable-q"))
        with pytest.raises(NotReplicatedError):
            await backend.enqueue_many([message("lonely2", queue="durable-q")])
        # stored all the same (not undone), and a plain enqueue does not wait
        assert await plain.get_task("lonely", "durable-q") is not None
        assert await plain.get_task("lonely2", "durable-q") is not None
        await plain.enqueue(message("plain", queue="durable-q"))
    finally:
        await backend.aclose()
        await plain.aclose()
