"""delete, and unknown ids (TaskNotFoundError) apart from wrong states (False) in cancel,
requeue_dead and delete."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.conftest import SHORT_COMPLETED_TTL_MS
from conformance.helpers import LEASE_MS, message, start, state_of
from conformance.test_manage import put_in
from strego.backends.base import Backend
from strego.errors import TaskNotFoundError
from strego.task import TaskState

pytestmark = pytest.mark.anyio

NOT_ACTIVE = [
    TaskState.SCHEDULED,
    TaskState.PENDING,
    TaskState.RETRY,
    TaskState.DEAD,
    TaskState.COMPLETED,
]


async def put(backend: Backend, clock: FakeClock, task_id: str, state: TaskState) -> None:
    if state == TaskState.CANCELLED:
        await put_in(backend, clock, task_id, TaskState.PENDING)
        assert await backend.cancel(task_id, "q") is True
    else:
        await put_in(backend, clock, task_id, state)


@pytest.mark.parametrize("state", [*NOT_ACTIVE, TaskState.CANCELLED])
async def test_delete(backend: Backend, clock: FakeClock, state: TaskState) -> None:
    await put(backend, clock, "a", state)
    assert await backend.delete("a", "q") is True
    assert await backend.get_task("a", "q") is None
    assert await backend.get_task("a") is None
    assert (await backend.queue_info("q")).counts == {s: 0 for s in TaskState}
    for s in TaskState:
        assert (await backend.list_tasks("q", s)).tasks == []
    # never run nor promoted later; deleting again finds nothing
    clock.advance(120_000)
    assert await backend.promote(["q"]) is None
    assert await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS) == []
    with pytest.raises(TaskNotFoundError):
        await backend.delete("a", "q")
    # the id is free again, and the queue stays listed
    await backend.enqueue(message("a"))
    assert await state_of(backend, "a") == TaskState.PENDING
    assert await backend.queues() == ["q"]


@pytest.mark.parametrize("state", [TaskState.SCHEDULED, TaskState.PENDING, TaskState.DEAD])
async def test_delete_releases_the_unique_key(
    backend: Backend, clock: FakeClock, state: TaskState
) -> None:
    due = clock() + 60_000 if state == TaskState.SCHEDULED else None
    await backend.enqueue(message("a", unique_key="k", unique_ttl_ms=600_000, process_at_ms=due))
    if state == TaskState.DEAD:
        await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
        assert await backend.fail("q", "a", "c1", "x", retry_in_ms=None) == TaskState.DEAD
    assert await backend.delete("a") is True
    await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=600_000))
    assert await state_of(backend, "b") == TaskState.PENDING


async def test_delete_leaves_an_active_task(backend: Backend) -> None:
    await start(backend, "a")
    before = await backend.get_task("a", "q")
    assert await backend.delete("a", "q") is False
    assert await backend.delete("a") is False
    assert await backend.get_task("a", "q") == before
    assert await backend.ack("q", "a", "c1") is True


async def test_delete_leaves_the_other_tasks(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message(f"p{i}") for i in range(3)])
    await backend.enqueue(message("s", process_at_ms=clock() + 1_000))
    assert await backend.delete("p1") is True
    assert await backend.delete("s", "q") is True
    got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["p0", "p2"]


async def test_unknown_ids_raise(backend: Backend) -> None:
    await backend.enqueue(message("a", queue="one"))
    for call in (backend.cancel, backend.delete):
        for args in (("nope",), ("nope", "one"), ("a", "two")):
            with pytest.raises(TaskNotFoundError) as exc_info:
                await call(*args)
            assert exc_info.value.task_id == args[0]
    with pytest.raises(TaskNotFoundError):
        await backend.requeue_dead("two", "a")
    # wrong states are False, not an error
    assert await backend.requeue_dead("one", "a") is False
    assert await state_of(backend, "a", "one") == TaskState.PENDING


async def test_ended_retention_is_unknown(short_backend: Backend, clock: FakeClock) -> None:
    """A task whose retention ended is gone, even before promote sweeps it away."""
    backend = short_backend
    await start(backend, "done")
    assert await backend.ack("q", "done", "c1") is True
    await backend.enqueue(message("gone"))
    assert await backend.cancel("gone", "q") is True
    assert await backend.cancel("done") is False  # completed: a wrong state
    clock.advance(SHORT_COMPLETED_TTL_MS + 1_000)
    for task_id in ("done", "gone"):
        with pytest.raises(TaskNotFoundError):
            await backend.cancel(task_id, "q")
        with pytest.raises(TaskNotFoundError):
            await backend.requeue_dead("q", task_id)
        with pytest.raises(TaskNotFoundError):
            await backend.delete(task_id, "q")
