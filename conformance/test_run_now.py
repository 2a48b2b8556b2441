"""run_now: a scheduled or retry task becomes pending at once."""

from __future__ import annotations

import anyio
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, ids_in, message, start, state_of
from conformance.test_manage import put_in
from strego.backends.base import Backend
from strego.errors import DuplicateTaskError, TaskNotFoundError
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def test_a_scheduled_task_runs_now(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", priority=5, process_at_ms=clock() + 3_600_000))
    await backend.enqueue(message("b"))  # pending before it
    clock.advance(500)
    assert await backend.run_now("a", "q") is True
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.next_run_ms, info.retried, info.priority) == (
        TaskState.PENDING,
        None,
        0,
        5,
    )
    counts = (await backend.queue_info("q")).counts
    assert (counts[TaskState.SCHEDULED], counts[TaskState.PENDING]) == (0, 2)
    assert await ids_in(backend, TaskState.SCHEDULED) == []
    assert await backend.promote(["q"]) is None  # nothing waits any more
    # fetched by its priority, once: its old due time promotes nothing later
    got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["a", "b"]
    clock.advance(3_600_000)
    assert await backend.promote(["q"]) is None
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
    assert await backend.ack("q", "a", "c1")


async def test_a_retry_runs_now_keeping_its_retries(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    assert await backend.fail("q", "a", "c1", "boom", retry_in_ms=600_000) == TaskState.RETRY
    assert await backend.run_now("a") is True  # found in any queue
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.retried, info.last_error, info.deliveries) == (
        TaskState.PENDING,
        1,
        "boom",
        1,
    )
    assert (await backend.queue_info("q")).counts[TaskState.RETRY] == 0
    got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert [(t.id, t.retried, t.deliveries) for t in got] == [("a", 1, 2)]


async def test_a_task_run_now_keeps_its_unique_key(backend: Backend, clock: FakeClock) -> None:
    later = clock() + 60_000
    await backend.enqueue(message("a", process_at_ms=later, unique_key="k", unique_ttl_ms=600_000))
    assert await backend.run_now("a", "q")
    with pytest.raises(DuplicateTaskError):
        await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=600_000))


@pytest.mark.parametrize(
    "state", [TaskState.PENDING, TaskState.ACTIVE, TaskState.COMPLETED, TaskState.DEAD]
)
async def test_run_now_refused(backend: Backend, clock: FakeClock, state: TaskState) -> None:
    await put_in(backend, clock, "a", state)
    before = await backend.get_task("a", "q")
    assert await backend.run_now("a", "q") is False
    assert await backend.get_task("a", "q") == before


async def test_run_now_refused_when_cancelled(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", process_at_ms=clock() + 60_000))
    assert await backend.cancel("a", "q")
    assert await backend.run_now("a", "q") is False
    assert await state_of(backend, "a") == TaskState.CANCELLED


async def test_run_now_unknown_and_queue_lookup(backend: Backend, clock: FakeClock) -> None:
    with pytest.raises(TaskNotFoundError) as exc_info:
        await backend.run_now("nope")
    assert exc_info.value.task_id == "nope"
    with pytest.raises(TaskNotFoundError):
        await backend.run_now("nope", "q")
    await backend.enqueue(message("a", queue="one", process_at_ms=clock() + 60_000))
    with pytest.raises(TaskNotFoundError):
        await backend.run_now("a", "two")
    assert await state_of(backend, "a", "one") == TaskState.SCHEDULED
    assert await backend.run_now("a", "one") is True


async def test_concurrent_run_now_moves_a_task_once(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", process_at_ms=clock() + 60_000))
    results: list[bool] = []

    async def run() -> None:
        results.append(await backend.run_now("a", "q"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(run)
    assert sorted(results) == [False] * 4 + [True]
    assert [t.id for t in await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)] == ["a"]
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
