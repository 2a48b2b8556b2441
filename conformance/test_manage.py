"""cancel, requeue_dead, requeue_all_dead, purge, pause and resume."""

from __future__ import annotations

import anyio
import pytest

from conformance.clock import FakeClock
from conformance.conftest import SHORT_DEAD_TTL_MS
from conformance.helpers import LEASE_MS, ids_in, make_dead, message, start, state_of
from strego.backends.base import Backend
from strego.errors import InvalidTaskError, TaskNotFoundError
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def put_in(backend: Backend, clock: FakeClock, task_id: str, state: TaskState) -> None:
    """Create a task `task_id` in queue "q" in `state` (the queue must hold no other pending)."""
    if state == TaskState.SCHEDULED:
        await backend.enqueue(message(task_id, process_at_ms=clock() + 60_000))
    elif state == TaskState.PENDING:
        await backend.enqueue(message(task_id))
    elif state == TaskState.DEAD:
        await make_dead(backend, task_id)
    else:
        await start(backend, task_id)
        if state == TaskState.RETRY:
            await backend.fail("q", task_id, "c1", "x", retry_in_ms=60_000)
        elif state == TaskState.COMPLETED:
            await backend.ack("q", task_id, "c1")
        elif state == TaskState.CANCELLED:
            raise AssertionError("cancel it from pending instead")
    assert await state_of(backend, task_id) == state


# -- cancel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [TaskState.SCHEDULED, TaskState.PENDING, TaskState.RETRY])
async def test_cancel(backend: Backend, clock: FakeClock, state: TaskState) -> None:
    await put_in(backend, clock, "a", state)
    clock.advance(500)
    assert await backend.cancel("a", "q") is True
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.ended_ms, info.next_run_ms) == (TaskState.CANCELLED, clock(), None)
    assert (await backend.queue_info("q")).counts[state] == 0
    # never run, promoted, retried or dead-lettered
    clock.advance(120_000)
    assert await backend.promote(["q"]) is None
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
    assert await state_of(backend, "a") == TaskState.CANCELLED
    assert await backend.cancel("a", "q") is False


@pytest.mark.parametrize("state", [TaskState.COMPLETED, TaskState.DEAD])
async def test_cancel_refused(backend: Backend, clock: FakeClock, state: TaskState) -> None:
    await put_in(backend, clock, "a", state)
    before = await backend.get_task("a", "q")
    assert await backend.cancel("a", "q") is False
    assert await backend.get_task("a", "q") == before


async def test_cancel_unknown_and_queue_lookup(backend: Backend) -> None:
    with pytest.raises(TaskNotFoundError) as exc_info:
        await backend.cancel("nope")
    assert exc_info.value.task_id == "nope"
    await backend.enqueue(message("a", queue="one"))
    await backend.enqueue(message("b", queue="two"))
    with pytest.raises(TaskNotFoundError):
        await backend.cancel("a", "two")
    assert await backend.cancel("a") is True
    assert await backend.cancel("b", "two") is True
    assert await state_of(backend, "a", "one") == TaskState.CANCELLED


# -- requeue --------------------------------------------------------------------------------------


async def test_requeue_dead(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", max_retry=1))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    await backend.fail("q", "a", "c1", "x", retry_in_ms=0)
    await backend.promote(["q"])
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", "a", "c1", "x", retry_in_ms=0) == TaskState.DEAD
    assert await backend.requeue_dead("q", "a") is True
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.retried) == (TaskState.PENDING, 0)
    assert await backend.requeue_dead("q", "a") is False
    [task] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert task.id == "a"


async def test_requeue_dead_refuses_other_states(backend: Backend) -> None:
    await backend.enqueue(message("p"))
    assert await backend.requeue_dead("q", "p") is False
    with pytest.raises(TaskNotFoundError):
        await backend.requeue_dead("q", "unknown")
    with pytest.raises(TaskNotFoundError):
        await backend.requeue_dead("other", "p")
    assert await state_of(backend, "p") == TaskState.PENDING


async def test_concurrent_requeue_moves_once(backend: Backend) -> None:
    await make_dead(backend, "a")
    results: list[bool] = []

    async def requeue() -> None:
        results.append(await backend.requeue_dead("q", "a"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(requeue)
    assert sorted(results) == [False, False, False, False, True]
    assert await ids_in(backend, TaskState.PENDING) == ["a"]


async def test_requeue_all_dead(backend: Backend) -> None:
    for i in range(4):
        await make_dead(backend, f"d{i}")
    await backend.enqueue(message("p"))
    assert await backend.requeue_all_dead("q") == 4
    assert await backend.requeue_all_dead("q") == 0
    counts = (await backend.queue_info("q")).counts
    assert (counts[TaskState.DEAD], counts[TaskState.PENDING]) == (0, 5)


# -- purge ----------------------------------------------------------------------------------------

PURGEABLE = [s for s in TaskState if s != TaskState.ACTIVE]


async def populate(backend: Backend, clock: FakeClock) -> None:
    """Two tasks in every state of queue "q"; the active ones are held by "c1"."""
    for state in [TaskState.DEAD, TaskState.RETRY, TaskState.COMPLETED, TaskState.ACTIVE]:
        for n in range(2):
            await put_in(backend, clock, f"{state}{n}", state)
    for n in range(2):
        await put_in(backend, clock, f"cancelled{n}", TaskState.PENDING)
        await backend.cancel(f"cancelled{n}", "q")
        await put_in(backend, clock, f"scheduled{n}", TaskState.SCHEDULED)
    await backend.enqueue_many([message("pending0"), message("pending1")])


@pytest.mark.parametrize("state", PURGEABLE)
async def test_purge_one_state(backend: Backend, clock: FakeClock, state: TaskState) -> None:
    await populate(backend, clock)
    assert await backend.purge("q", [state]) == 2
    counts = (await backend.queue_info("q")).counts
    assert counts == {s: 0 if s == state else 2 for s in TaskState}
    assert await backend.get_task(f"{state}0", "q") is None


async def test_purge_default_keeps_active(backend: Backend, clock: FakeClock) -> None:
    await populate(backend, clock)
    assert await backend.purge("q") == 12
    counts = (await backend.queue_info("q")).counts
    assert counts == {s: 2 if s == TaskState.ACTIVE else 0 for s in TaskState}
    assert await backend.ack("q", "active0", "c1") is True


async def test_purge_active_refused(backend: Backend, clock: FakeClock) -> None:
    await populate(backend, clock)
    with pytest.raises(InvalidTaskError):
        await backend.purge("q", [TaskState.PENDING, TaskState.ACTIVE])
    assert (await backend.queue_info("q")).counts == {s: 2 for s in TaskState}


async def test_fetch_and_pause_survive_purge(backend: Backend, clock: FakeClock) -> None:
    await populate(backend, clock)
    await backend.pause("other")
    await backend.enqueue(message("o", queue="other"))
    await backend.purge("q")
    await backend.purge("other")
    assert (await backend.queue_info("other")).paused is True
    await backend.enqueue(message("new"))
    [task] = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert task.id == "new"
    assert await backend.ack("q", "new", "c1") is True


async def test_purge_releases_unique_keys(backend: Backend) -> None:
    await backend.enqueue(message("a", unique_key="k", unique_ttl_ms=60_000))
    assert await backend.purge("q", [TaskState.PENDING]) == 1
    await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=60_000))
    assert await state_of(backend, "b") == TaskState.PENDING


# -- pause / resume -------------------------------------------------------------------------------


async def test_pause_resume(backend: Backend) -> None:
    await start(backend, "running")
    await backend.pause("q")
    assert (await backend.queue_info("q")).paused is True
    await backend.enqueue(message("waiting"))  # producing goes on
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
    assert await backend.ack("q", "running", "c1") is True  # so does finishing
    await backend.resume("q")
    assert (await backend.queue_info("q")).paused is False
    [task] = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert task.id == "waiting"


# -- bounded work: more than one batch ------------------------------------------------------------


async def test_requeue_all_dead_past_a_batch_of_expired(
    short_backend: Backend, clock: FakeClock
) -> None:
    """More than a batch (1,000) of dead tasks whose retention ended, older than live dead ones:
    the live ones are requeued all the same, the expired ones are not."""
    backend = short_backend
    n = 1_050
    await backend.enqueue_many([message(f"old{i:04}") for i in range(n)])
    got = await backend.fetch(["q"], n, "c1", lease_ms=LEASE_MS)
    assert len(got) == n
    for task in got:
        await backend.fail("q", task.id, "c1", "x", retry_in_ms=None)
    clock.advance(SHORT_DEAD_TTL_MS + 1_000)  # no promote: the expired entries stay in place
    for i in range(3):
        await make_dead(backend, f"new{i}")
    assert await backend.requeue_all_dead("q") == 3
    assert sorted(await ids_in(backend, TaskState.PENDING)) == ["new0", "new1", "new2"]
    assert await backend.requeue_all_dead("q") == 0
    assert await backend.get_task("old0000", "q") is None


async def test_purge_more_than_a_batch(backend: Backend, clock: FakeClock) -> None:
    """Thousands of pending tasks (with active ones among them, which stay) and of scheduled
    ones: everything is purged and counted once, the active tasks survive."""
    await backend.enqueue_many([message(f"a{i}", priority=i % 2) for i in range(30)])
    active = await backend.fetch(["q"], 30, "c1", lease_ms=LEASE_MS)
    await backend.enqueue_many([message(f"p{i:04}", priority=i % 3) for i in range(2_500)])
    await backend.enqueue_many(
        [message(f"s{i:04}", process_at_ms=clock() + 60_000 + i) for i in range(1_200)]
    )
    assert await backend.purge("q") == 3_700
    counts = (await backend.queue_info("q")).counts
    assert counts == {s: 30 if s == TaskState.ACTIVE else 0 for s in TaskState}
    assert (await backend.list_tasks("q", TaskState.PENDING)).tasks == []
    assert await backend.queues() == ["q"]  # active tasks keep it listed
    for task in active:
        assert await backend.ack("q", task.id, "c1") is True
