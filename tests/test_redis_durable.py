"""The durability switch: with durable=True an enqueue returns once a replica has its tasks (WAIT
after the enqueue's writes), and raises NotReplicatedError when none confirms in time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.backends.redis.transport import Command, ScriptCall
from strego.errors import NotReplicatedError
from tests.redis_server import RedisServer, running_redis_server
from tests.runtime_support import eventually

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


async def test_durable_registry_entry_is_waited_for_too() -> None:
    # The queue's first enqueue SADDs it to the registry after the script (and its WAIT): that
    # SADD must be waited for as well, or a failover right after could lose the queue's entry.
    # The replica is cut off just before the SADD: the tasks were confirmed, the entry cannot be.
    with running_redis_server() as master, running_redis_server() as replica:
        import redis

        redis.Redis(port=replica.port).replicaof("127.0.0.1", master.port)
        await eventually(
            lambda: (
                redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up"
            ),
            "the replica in sync",
        )
        backend = RedisBackend.from_url(
            # generous: the tasks' own WAIT must not fall short on a loaded machine (the
            # entry's does, after its full timeout)
            f"{master.url}?durable=true&durable_timeout_ms=3000",
            prefix="reg",
        )
        transport = backend.transport
        real_execute, real_pipeline = transport.execute, transport.pipeline

        def cut_before_sadd(calls: list[Any]) -> None:
            if any(isinstance(c, Command) and c.args[0] == "SADD" for c in calls):
                redis.Redis(port=replica.port).replicaof("NO", "ONE")

        async def execute(command: Command) -> Any:
            cut_before_sadd([command])
            return await real_execute(command)

        async def pipeline(calls: Sequence[ScriptCall | Command]) -> list[Any]:
            cut_before_sadd(list(calls))
            return await real_pipeline(calls)

        transport.execute = execute  # type: ignore[method-assign]
        transport.pipeline = pipeline  # type: ignore[method-assign]
        try:
            with pytest.raises(NotReplicatedError, match="registry"):
                await backend.enqueue(message("t1", queue="fresh"))
        finally:
            await backend.aclose()
        # the task had reached the replica before it was cut off, the registry entry had not
        on_replica = RedisBackend.from_url(replica.url, prefix="reg")
        try:
            assert await on_replica.get_task("t1", "fresh") is not None
        finally:
            await on_replica.aclose()
        assert redis.Redis(port=replica.port).exists("reg:v1:queues") == 0
