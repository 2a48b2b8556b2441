"""Redis itself misbehaving under a running producer and servers (in this process, under asyncio
over redis-py and under trio over the anyio transport): a restart, SCRIPT FLUSH, connections
killed, out of memory. Each test has a redis-server of its own."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
import redis

import strego
from strego.backends.redis import RedisBackend
from strego.errors import (
    BackendConnectionError,
    BackendError,
    OutOfMemoryError,
    StregoError,
    TaskIdConflictError,
)
from strego.task import TaskState
from tests.faults.support import make_backend, wait_for_progress
from tests.redis_server import RedisServer, running_redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@contextlib.asynccontextmanager
async def servers(
    url: str, prefix: str, anyio_backend: object, ran: Counter[str], count: int = 2
) -> AsyncIterator[list[strego.Server]]:
    """`count` servers, each on a backend of its own; every handler run is counted in `ran`."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(count):
            backend = make_backend(url, prefix, anyio_backend)
            stack.push_async_callback(backend.aclose)
            server = strego.Server(
                backend, concurrency=8, claim_stale_after=1.0, retry_delay=lambda *_: 0.05
            )

            @server.handler("job")
            async def job(task: strego.Task) -> None:
                assert task.id is not None
                ran[task.id] += 1
                if isinstance(task.payload, int | float):  # else ballast (the OOM test)
                    await anyio.sleep(task.payload)

            await stack.enter_async_context(server)
            out.append(server)
        yield out


async def all_completed(backend: RedisBackend, ids: list[str]) -> None:
    """Wait until every task completed, failing only when none completes for a long while (a
    loaded machine is slow, a hang makes no progress)."""
    done: set[str] = set()

    async def count() -> int:
        try:
            for task_id in ids:
                if task_id not in done:
                    info = await backend.get_task(task_id, "default")
                    if info is not None and info.state is TaskState.COMPLETED:
                        done.add(task_id)
        except BackendConnectionError:  # the check's own connection was dropped: ask again
            pass
        return len(done)

    await wait_for_progress(count, len(ids), "tasks completed")


async def enqueue_surely(client: strego.Client, task: strego.Task) -> None:
    """Enqueue with a fixed id, again after a dropped connection; TaskIdConflictError on a retry
    means the earlier attempt was stored."""
    for attempt in range(50):
        try:
            await client.enqueue(task)
            return
        except TaskIdConflictError:
            assert attempt > 0
            return
        except BackendConnectionError:
            await anyio.sleep(0.01)
    raise AssertionError(f"could not enqueue {task.id}")


async def repeat(action: Callable[[], object], every: float, stop: anyio.Event) -> int:
    """Run a blocking `action` in a thread every `every` seconds until `stop`; returns the count."""
    n = 0
    while not stop.is_set():
        await anyio.to_thread.run_sync(action)
        n += 1
        await anyio.sleep(every)
    return n


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    with running_redis_server(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


async def test_redis_restart_mid_run(
    aof_redis: RedisServer, prefix: str, anyio_backend: object
) -> None:
    """Producers get a typed error or succeed; every enqueue that returned is processed; the
    servers reconnect on their own and finish."""
    backend = make_backend(aof_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    ran: Counter[str] = Counter()
    accepted: list[str] = []
    refused: list[StregoError] = []
    restarted = anyio.Event()

    async def restart() -> None:
        await anyio.sleep(0.3)
        await anyio.to_thread.run_sync(aof_redis.restart)
        restarted.set()

    async with anyio.create_task_group() as tg, servers(aof_redis.url, prefix, anyio_backend, ran):
        tg.start_soon(restart)
        # producing goes on while Redis is down and after it is back
        while len(accepted) + len(refused) < 300 or not restarted.is_set():
            try:
                accepted.append((await client.enqueue(strego.Task("job", 0.01))).id)
            except BackendError as exc:  # anything else fails the test
                refused.append(exc)
            await anyio.sleep(0.002)
        await all_completed(backend, accepted)
    await backend.aclose()
    print(f"\nredis restart: {len(accepted)} accepted, {len(refused)} refused"
          f" ({', '.join(sorted({type(e).__name__ for e in refused}))}),"
          f" {sum(ran.values()) - len(ran)} duplicate runs, 0 lost")  # fmt: skip
    assert set(accepted) <= set(ran)


async def test_script_flush_mid_run_changes_nothing(
    own_redis: RedisServer, prefix: str, anyio_backend: object
) -> None:
    backend = make_backend(own_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    r = redis.Redis.from_url(own_redis.url)
    ran: Counter[str] = Counter()
    stop = anyio.Event()
    ids: list[str] = []
    async with anyio.create_task_group() as tg, servers(own_redis.url, prefix, anyio_backend, ran):
        tg.start_soon(repeat, r.script_flush, 0.01, stop)
        for _ in range(30):
            infos = await client.enqueue_many([strego.Task("job", 0) for _ in range(10)])
            ids += [i.id for i in infos if isinstance(i, strego.TaskInfo)]
            await anyio.sleep(0.01)
        await all_completed(backend, ids)
        stop.set()
    counts = (await backend.queue_info("default")).counts
    await backend.aclose()
    r.close()
    assert len(ids) == 300
    assert ran == Counter(ids)  # each ran exactly once: no failure, no redelivery
    assert counts[TaskState.COMPLETED] == 300 and counts[TaskState.DEAD] == 0


async def test_connections_killed_in_a_loop(
    own_redis: RedisServer, prefix: str, anyio_backend: object
) -> None:
    """CLIENT KILL TYPE normal every 50 ms: every task still completes, exactly once in the
    backend (a lost fetch reply is claimed once its lease ends)."""
    backend = make_backend(own_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    r = redis.Redis.from_url(own_redis.url)
    ran: Counter[str] = Counter()
    stop = anyio.Event()
    ids = [f"drop-{i}" for i in range(200)]
    kills = [0]

    async def killer() -> None:
        kills[0] = await repeat(lambda: r.client_kill_filter(_type="normal"), 0.05, stop)

    async with anyio.create_task_group() as tg, servers(own_redis.url, prefix, anyio_backend, ran):
        tg.start_soon(killer)
        for task_id in ids:
            await enqueue_surely(client, strego.Task("job", 0.005, id=task_id))
            await anyio.sleep(0.005)  # spread the run over many kill rounds
        await all_completed(backend, ids)
        stop.set()
    counts = (await backend.queue_info("default")).counts
    await backend.aclose()
    r.close()
    print(f"\nconnection drops: {len(ids)} tasks, {kills[0]} CLIENT KILL rounds,"
          f" {sum(ran.values()) - len(ran)} duplicate runs, 0 lost")  # fmt: skip
    assert set(ran) == set(ids)
    assert counts == {s: (200 if s is TaskState.COMPLETED else 0) for s in TaskState}


async def test_out_of_memory(own_redis: RedisServer, prefix: str, anyio_backend: object) -> None:
    """maxmemory + noeviction: enqueue raises OutOfMemoryError and writes nothing, nothing queued
    is lost, a server keeps running through it and finishes once memory is available."""
    backend = make_backend(own_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    r = redis.Redis.from_url(own_redis.url)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 300_000)
    accepted: list[str] = []
    with pytest.raises(OutOfMemoryError):
        for _ in range(2000):
            accepted.append((await client.enqueue(strego.Task("job", "x" * 2000))).id)
    refused_id = "oom-refused"
    before = (await backend.queue_info("default")).counts
    with pytest.raises(OutOfMemoryError):
        await client.enqueue(strego.Task("job", "x" * 2000, id=refused_id))
    with pytest.raises(OutOfMemoryError):
        await client.enqueue_many([strego.Task("job", 0, id=f"{refused_id}-{i}") for i in range(3)])
    assert await backend.get_task(refused_id) is None
    assert (await backend.queue_info("default")).counts == before
    assert before[TaskState.PENDING] == len(accepted) > 0

    ran: Counter[str] = Counter()
    async with servers(own_redis.url, prefix, anyio_backend, ran, count=1) as (server,):
        await anyio.sleep(1.5)  # the server meets OOM on its writes and keeps going
        for task_id in accepted:  # nothing lost: each accepted task is still stored
            assert await backend.get_task(task_id, "default") is not None
        r.config_set("maxmemory", 0)
        await all_completed(backend, accepted)
    await backend.aclose()
    r.close()
    assert set(ran) == set(accepted)
    assert server.stats.processed >= len(accepted)
