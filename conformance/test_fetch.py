"""fetch: queue order, priority, FIFO, paused queues, count, blocking."""

from __future__ import annotations

import anyio
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message
from strego.backends.base import Backend
from strego.task import TaskInfo, TaskState

pytestmark = pytest.mark.anyio


def ids(tasks: list[TaskInfo]) -> list[str]:
    return [t.id for t in tasks]


async def test_fetch_starts_task(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a"))
    clock.advance(1_000)
    [task] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert (task.id, task.state, task.consumer) == ("a", TaskState.ACTIVE, "c1")
    assert (task.started_ms, task.deliveries) == (clock(), 1)
    stored = await backend.get_task("a", "q")
    assert stored is not None
    assert (stored.state, stored.consumer, stored.started_ms) == (TaskState.ACTIVE, "c1", clock())
    assert await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS) == []


async def test_priority_then_fifo(backend: Backend) -> None:
    for task_id, priority in [("l1", 0), ("h1", 9), ("m1", 5), ("l2", 0), ("h2", 9), ("m2", 5)]:
        await backend.enqueue(message(task_id, priority=priority))
    got = await backend.fetch(["q"], 10, "c1", lease_ms=LEASE_MS)
    assert ids(got) == ["h1", "h2", "m1", "m2", "l1", "l2"]


async def test_fifo_many(backend: Backend) -> None:
    await backend.enqueue_many([message(f"t{i:03}") for i in range(50)])
    first = await backend.fetch(["q"], 20, "c1", lease_ms=LEASE_MS)
    rest = await backend.fetch(["q"], 100, "c1", lease_ms=LEASE_MS)
    assert ids(first) + ids(rest) == [f"t{i:03}" for i in range(50)]


async def test_queue_order(backend: Backend) -> None:
    await backend.enqueue(message("a1", queue="a"))
    await backend.enqueue(message("b1", queue="b", priority=10))
    await backend.enqueue(message("a2", queue="a"))
    assert ids(await backend.fetch(["a", "b"], 1, "c1", lease_ms=LEASE_MS)) == ["a1"]
    # a later queue only when the earlier ones are empty; priority does not cross queues
    assert ids(await backend.fetch(["b", "a"], 3, "c1", lease_ms=LEASE_MS)) == ["b1", "a2"]


async def test_count_limit(backend: Backend) -> None:
    await backend.enqueue_many([message(f"t{i}") for i in range(5)])
    assert len(await backend.fetch(["q"], 3, "c1", lease_ms=LEASE_MS)) == 3
    assert len(await backend.fetch(["q"], 3, "c1", lease_ms=LEASE_MS)) == 2
    assert (await backend.queue_info("q")).counts[TaskState.ACTIVE] == 5


async def test_paused_queue_skipped(backend: Backend) -> None:
    await backend.enqueue(message("a1", queue="a"))
    await backend.enqueue(message("b1", queue="b"))
    await backend.pause("a")
    assert ids(await backend.fetch(["a", "b"], 5, "c1", lease_ms=LEASE_MS)) == ["b1"]
    assert await backend.fetch(["a"], 5, "c1", lease_ms=LEASE_MS) == []
    await backend.resume("a")
    assert ids(await backend.fetch(["a", "b"], 5, "c1", lease_ms=LEASE_MS)) == ["a1"]


async def test_scheduled_not_fetched(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("s", process_at_ms=clock() + 1_000))
    clock.advance(5_000)  # due, but not promoted yet
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
    await backend.promote(["q"])
    assert ids(await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)) == ["s"]


async def test_blocking_fetch_woken_by_enqueue(backend: Backend) -> None:
    results: list[TaskInfo] = []

    async def consumer() -> None:
        results.extend(await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS, block_ms=60_000))

    # The bound only keeps a broken backend from hanging the suite: a working one wakes at once.
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await anyio.sleep(0.05)  # let the consumer block first
            await backend.enqueue(message("a"))
    assert ids(results) == ["a"]


async def test_blocking_fetch_returns_empty_after_block_ms(backend: Backend) -> None:
    with anyio.fail_after(30):
        assert await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS, block_ms=50) == []


async def test_blocking_fetch_returns_pending_at_once(backend: Backend) -> None:
    await backend.enqueue(message("a"))
    with anyio.fail_after(30):
        got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS, block_ms=60_000)
    assert ids(got) == ["a"]


async def test_concurrent_fetchers_share_tasks(backend: Backend) -> None:
    await backend.enqueue_many([message(f"t{i}") for i in range(40)])
    seen: list[str] = []

    async def consumer(name: str) -> None:
        while got := await backend.fetch(["q"], 3, name, lease_ms=LEASE_MS):
            seen.extend(ids(got))

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(consumer, f"c{n}")
    assert sorted(seen) == sorted(f"t{i}" for i in range(40))
