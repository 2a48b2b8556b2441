"""promote and wait_schedule_change."""

from __future__ import annotations

import anyio
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start, state_of
from strego.backends.base import Backend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def test_promote_moves_due_and_returns_earliest(backend: Backend, clock: FakeClock) -> None:
    t0 = clock()
    for task_id, delay in [("s3", 3_000), ("s1", 1_000), ("s2", 2_000)]:
        await backend.enqueue(message(task_id, process_at_ms=t0 + delay))
    assert await backend.promote(["q"]) == 1_000  # until the earliest is due
    clock.advance(2_000)  # s1 overdue, s2 due exactly now
    assert await backend.promote(["q"]) == 1_000
    assert await state_of(backend, "s1") == TaskState.PENDING
    assert await state_of(backend, "s2") == TaskState.PENDING
    assert await state_of(backend, "s3") == TaskState.SCHEDULED
    info = await backend.get_task("s1", "q")
    assert info is not None and info.next_run_ms is None
    clock.advance(1_000)
    assert await backend.promote(["q"]) is None
    got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert sorted(t.id for t in got) == ["s1", "s2", "s3"]


async def test_process_in_is_measured_by_the_backend_clock(
    backend: Backend, clock: FakeClock
) -> None:
    """A delay is resolved when the backend stores the task, by its own clock: the producer's
    clock plays no part (it may be minutes off)."""
    info = await backend.enqueue(message("later", process_in_ms=1_500))
    assert (info.state, info.next_run_ms) == (TaskState.SCHEDULED, clock() + 1_500)
    assert (await backend.enqueue(message("now", process_in_ms=0))).state == TaskState.PENDING
    [many] = await backend.enqueue_many([message("batch", process_in_ms=2_000)])
    assert not isinstance(many, Exception) and many.next_run_ms == clock() + 2_000
    stored = await backend.get_task("later", "q")
    assert stored is not None and stored.next_run_ms == clock() + 1_500
    assert await backend.promote(["q"]) == 1_500
    clock.advance(1_500)
    await backend.promote(["q"])
    assert await state_of(backend, "later") == TaskState.PENDING
    assert await state_of(backend, "batch") == TaskState.SCHEDULED


async def test_process_at_in_the_past_is_pending(backend: Backend, clock: FakeClock) -> None:
    info = await backend.enqueue(message("late", process_at_ms=clock() - 5_000))
    assert (info.state, info.next_run_ms) == (TaskState.PENDING, None)
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert got.id == "late"


async def test_promote_with_nothing_waiting(backend: Backend) -> None:
    assert await backend.promote(["q"]) is None
    await backend.enqueue(message("a"))
    assert await backend.promote(["q", "other"]) is None


async def test_promote_across_queues_and_retry(backend: Backend, clock: FakeClock) -> None:
    t0 = clock()
    await backend.enqueue(message("s", queue="one", process_at_ms=t0 + 5_000))
    await start(backend, "r", queue="two")
    await backend.fail("two", "r", "c1", "x", retry_in_ms=2_000)
    assert await backend.promote(["one", "two"]) == 2_000
    assert await backend.promote(["one"]) == 5_000
    clock.advance(2_000)
    assert await backend.promote(["one", "two"]) == 3_000
    assert await state_of(backend, "r", "two") == TaskState.PENDING


async def test_wait_schedule_change_wakes_on_earlier_task(
    backend: Backend, clock: FakeClock
) -> None:
    await backend.enqueue(message("late", process_at_ms=clock() + 3_600_000))
    woke = anyio.Event()

    async def scheduler() -> None:
        await backend.wait_schedule_change(["q"], 600_000)
        woke.set()

    # The bound only keeps a broken backend from hanging the suite: a working one wakes at once.
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler)
            await anyio.sleep(0.05)  # let the scheduler start waiting
            await backend.enqueue(message("soon", process_at_ms=clock() + 60_000))
            await woke.wait()
    assert await backend.promote(["q"]) == 60_000


async def test_wait_schedule_change_wakes_on_earlier_retry(
    backend: Backend, clock: FakeClock
) -> None:
    await start(backend, "a")
    await backend.enqueue(message("late", process_at_ms=clock() + 3_600_000))
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.wait_schedule_change, ["q"], 600_000)
            await anyio.sleep(0.05)
            await backend.fail("q", "a", "c1", "x", retry_in_ms=1_000)


async def test_wait_schedule_change_times_out(backend: Backend) -> None:
    with anyio.fail_after(30):
        await backend.wait_schedule_change(["q"], 50)
