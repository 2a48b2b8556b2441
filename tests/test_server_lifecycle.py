"""Server lifecycle on every backend, under asyncio and trio: graceful shutdown, releasing
unfinished tasks, lease renewal for long handlers, taking over a dead consumer's tasks."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

import strego
from strego.backends.base import Backend
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually, wait_for_state

__all__ = ["backend"]  # the fixture, imported for pytest

#: the runtime runs on MemoryBackend and on RedisBackend over redis-py, anyio and fakeredis
pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]


async def test_run_returns_after_stop_and_in_flight_handlers_finish(backend: Backend) -> None:
    server = strego.Server(backend, shutdown_timeout=10)
    finished: list[str] = []

    @server.handler("stopper")
    async def stopper(task: strego.Task) -> None:
        server.stop()  # stop while this handler is still running: it must still finish
        await anyio.sleep(0.2)
        finished.append(task.payload)

    info = await strego.Client(backend).enqueue(strego.Task("stopper", "x"))
    with anyio.fail_after(20):
        await server.run(handle_signals=False)
    assert finished == ["x"]
    done = await backend.get_task(info.id)
    assert done is not None and done.state is TaskState.COMPLETED


async def test_shutdown_releases_tasks_held_under_its_name_in_every_queue(
    backend: Backend,
) -> None:
    # tasks started for the server's name that never reached it (a fetch cut short by the
    # shutdown after the backend had started them) go back to pending, in each of its queues:
    # more queues than a redis-py pool has connections, a few of them holding one
    client = strego.Client(backend)
    queues = [f"q{i}" for i in range(120)]
    holding = queues[::25] + queues[-3:]
    infos = [await client.enqueue(strego.Task("work", queue=q)) for q in holding]
    server = strego.Server(backend, queues=queues, name="holder", concurrency=1)

    @server.handler("work")
    async def work(task: strego.Task) -> None:
        raise AssertionError("a held task is not fetched again")

    for queue in holding:
        assert len(await backend.fetch([queue], 1, "holder", lease_ms=600_000)) == 1
    async with server:
        pass
    for info in infos:
        now = await backend.get_task(info.id)
        assert now is not None and now.state is TaskState.PENDING
    assert server.stats.released == len(holding)


async def test_shutdown_releases_unfinished_tasks_to_another_server(backend: Backend) -> None:
    client = strego.Client(backend)
    infos = [await client.enqueue(strego.Task("work", i)) for i in range(4)]
    entered: list[int] = []
    after_await: list[int] = []
    # no prefetch: exactly the two running tasks are held (prefetch has a test of its own)
    first = strego.Server(backend, concurrency=2, prefetch=0, shutdown_timeout=0.2)

    @first.handler("work")
    async def stuck(task: strego.Task) -> None:
        entered.append(task.payload)
        await anyio.sleep(60)
        after_await.append(task.payload)

    async with first:
        await eventually(lambda: len(entered) == 2, "two handlers to start")
    assert after_await == []
    # released at once: nothing is left active, nothing waits for a lease to expire
    for info in infos:
        now = await backend.get_task(info.id)
        assert now is not None and now.state is TaskState.PENDING
        assert now.retried == 0
    assert first.stats.released == 2

    ran: Counter[int] = Counter()
    second = strego.Server(backend, concurrency=4)

    @second.handler("work")
    async def quick(task: strego.Task) -> None:
        ran[task.payload] += 1

    async with second:
        for info in infos:
            await wait_for_state(backend, info.id, TaskState.COMPLETED)
    assert ran == Counter(range(4))


async def test_cancel_running_skips_the_shutdown_timeout(backend: Backend) -> None:
    server = strego.Server(backend, shutdown_timeout=60)
    entered = anyio.Event()

    @server.handler("work")
    async def stuck(task: strego.Task) -> None:
        entered.set()
        await anyio.sleep(60)

    info = await strego.Client(backend).enqueue(strego.Task("work"))
    with anyio.fail_after(20):  # a hang guard: without cancel_running this would take 60 s
        async with server:
            await entered.wait()
            server.cancel_running()
    now = await backend.get_task(info.id)
    assert now is not None and now.state is TaskState.PENDING


async def test_long_handler_keeps_its_lease_with_two_servers_up(backend: Backend) -> None:
    runs: Counter[str] = Counter()

    async def long_job(task: strego.Task) -> None:
        assert task.id is not None
        runs[task.id] += 1
        await anyio.sleep(1.2)  # four times claim_stale_after

    servers = [strego.Server(backend, claim_stale_after=0.3, concurrency=2) for _ in range(2)]
    for server in servers:
        server.handler("long")(long_job)
    client = strego.Client(backend)
    infos = [await client.enqueue(strego.Task("long")) for _ in range(3)]
    async with servers[0], servers[1]:
        for info in infos:
            done = await wait_for_state(backend, info.id, TaskState.COMPLETED)
            assert done.deliveries == 1
    assert runs == Counter({info.id: 1 for info in infos})
    assert servers[0].stats.claimed == servers[1].stats.claimed == 0


async def test_tasks_of_a_dead_consumer_are_claimed_and_run(backend: Backend) -> None:
    client = strego.Client(backend)
    infos = [await client.enqueue(strego.Task("orphan", i)) for i in range(3)]
    # a consumer that fetched the tasks and died: its lease is never renewed
    taken = await backend.fetch(["default"], 3, "dead-host:1:x", lease_ms=200)
    assert len(taken) == 3
    ran: list[int] = []
    server = strego.Server(backend, claim_stale_after=0.5)

    @server.handler("orphan")
    async def orphan(task: strego.Task) -> None:
        ran.append(task.payload)

    async with server:
        for info in infos:
            done = await wait_for_state(backend, info.id, TaskState.COMPLETED)
            assert done.deliveries == 2
    assert sorted(ran) == [0, 1, 2]
    assert server.stats.claimed == 3


async def test_task_whose_consumers_keep_dying_goes_dead(backend: Backend) -> None:
    info = await strego.Client(backend).enqueue(strego.Task("poison"))
    for i in range(2):
        assert await backend.claim_stale(["default"], f"c{i}", 1, lease_ms=1, max_deliveries=9) or (
            await backend.fetch(["default"], 1, f"c{i}", lease_ms=1)
        )
        await anyio.sleep(0.01)
    server = strego.Server(backend, claim_stale_after=0.5, max_deliveries=2)

    @server.handler("poison")
    async def poison(task: strego.Task) -> None:
        raise AssertionError("must not run")

    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert dead.last_error is not None and "exceeded max deliveries (2)" in dead.last_error
