"""Prefetch on every backend, under asyncio and trio: how many tasks a server holds beyond those
running, that they are leased like running ones, and that shutdown gives them back."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

import strego
from strego.backends.base import Backend
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually, wait_for_state

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]


async def _states(backend: Backend, ids: list[str]) -> Counter[TaskState]:
    states: Counter[TaskState] = Counter()
    for task_id in ids:
        info = await backend.get_task(task_id)
        assert info is not None
        states[info.state] += 1
    return states


@pytest.mark.parametrize(("prefetch", "held"), [(0, 2), (1, 3), (3, 5), (None, 6)])
async def test_a_server_holds_concurrency_plus_prefetch_tasks(
    backend: Backend, prefetch: int | None, held: int
) -> None:
    # None: the default, two batches (2 x concurrency) ahead of the runners
    client = strego.Client(backend)
    ids = [(await client.enqueue(strego.Task("work", i))).id for i in range(8)]
    entered: list[int] = []
    server = strego.Server(backend, concurrency=2, prefetch=prefetch, shutdown_timeout=0.1)
    assert server.prefetch == held - 2

    @server.handler("work")
    async def stuck(task: strego.Task) -> None:
        entered.append(task.payload)
        await anyio.sleep(60)

    async with server:
        await eventually(lambda: len(entered) == 2, "two handlers to start")

        async def holding() -> bool:
            return (await _states(backend, ids))[TaskState.ACTIVE] == held

        await eventually(holding, f"{held} tasks to be held")
        # and no more than that, however long it runs
        await anyio.sleep(0.2)
        states = await _states(backend, ids)
        assert states[TaskState.ACTIVE] == held
        assert states[TaskState.PENDING] == 8 - held
        assert len(entered) == 2
    # shutdown gives back the running tasks and the prefetched ones alike
    assert server.stats.released == held
    assert (await _states(backend, ids))[TaskState.PENDING] == 8


async def test_prefetched_tasks_keep_their_lease_and_run_here(backend: Backend) -> None:
    client = strego.Client(backend)
    first = await client.enqueue(strego.Task("slow", "first"))
    second = await client.enqueue(strego.Task("slow", "second"))
    ran: list[tuple[str, str]] = []
    release = anyio.Event()
    # leases of 1 s, renewed every third of it: a stall of 0.6 s would still not lose one
    holder = strego.Server(backend, concurrency=1, prefetch=1, claim_stale_after=1.0)
    rival = strego.Server(backend, concurrency=1, recovery_interval=0.05, claim_stale_after=1.0)

    @holder.handler("slow")
    async def slow(task: strego.Task) -> None:
        ran.append(("holder", task.payload))
        if task.payload == "first":
            await release.wait()

    @rival.handler("slow")
    async def taken(task: strego.Task) -> None:
        ran.append(("rival", task.payload))

    async with holder:
        await eventually(lambda: ran == [("holder", "first")], "the first task to start")
        # the second waits in the holder's buffer, leased: it is not stale, so the rival (which
        # looks for stale tasks every 50 ms) must not take it over 2.5 lease periods
        async with rival:
            await anyio.sleep(2.5)
            assert rival.stats.claimed == 0
            release.set()
            await wait_for_state(backend, second.id, TaskState.COMPLETED)
    await wait_for_state(backend, first.id, TaskState.COMPLETED)
    assert ran == [("holder", "first"), ("holder", "second")]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
async def test_prefetch_must_be_a_non_negative_integer(backend: Backend, bad: object) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        strego.Server(backend, prefetch=bad)  # type: ignore[arg-type]
