"""enqueue and enqueue_many: immediate, scheduled, unique keys, id conflicts."""

from __future__ import annotations

import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, make_dead, message, start, state_of
from strego.backends.base import Backend
from strego.errors import DuplicateTaskError, InvalidTaskError, TaskIdConflictError
from strego.task import TaskInfo, TaskState

pytestmark = pytest.mark.anyio


async def test_enqueue_now_is_pending(backend: Backend) -> None:
    info = await backend.enqueue(message("a", payload=b'{"x":1}', priority=3, max_retry=5))
    assert (info.id, info.queue, info.state) == ("a", "q", TaskState.PENDING)
    assert (info.payload, info.encoding, info.type) == (b'{"x":1}', "json", "test.task")
    assert (info.priority, info.max_retry, info.retried, info.deliveries) == (3, 5, 0, 0)
    assert info.next_run_ms is None and info.consumer is None
    stored = await backend.get_task("a", "q")
    assert stored is not None and stored.state == TaskState.PENDING


async def test_enqueue_reports_the_task_as_stored(backend: Backend, clock: FakeClock) -> None:
    # every field, for tasks that set each option: what enqueue returns is what a read gives
    full = attrs.evolve(
        message("full", payload=b"[1]", priority=7, max_retry=0, created_ms=clock()),
        encoding="msgpack", timeout_ms=2_500, labels={"k": "v"}, unique_key="u",
        unique_ttl_ms=60_000,
    )  # fmt: skip
    later = message("later", process_at_ms=clock() + 60_000, created_ms=clock())
    for m in (full, later, message("plain", created_ms=clock())):
        info = await backend.enqueue(m)
        assert info == await backend.get_task(m.id, m.queue)


async def test_process_at_now_or_past_is_pending(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("now", process_at_ms=clock()))
    await backend.enqueue(message("past", process_at_ms=clock() - 5_000))
    assert await state_of(backend, "now") == TaskState.PENDING
    assert await state_of(backend, "past") == TaskState.PENDING


async def test_process_at_future_is_scheduled(backend: Backend, clock: FakeClock) -> None:
    due = clock() + 30_000
    info = await backend.enqueue(message("later", process_at_ms=due))
    assert info.state == TaskState.SCHEDULED
    assert info.next_run_ms == due
    assert await backend.fetch(["q"], 10, "c1", lease_ms=LEASE_MS) == []


async def test_enqueue_registers_queue(backend: Backend) -> None:
    await backend.enqueue(message("a", queue="beta"))
    await backend.enqueue(message("b", queue="alpha"))
    assert await backend.queues() == ["alpha", "beta"]


async def test_unique_key_held_refuses_duplicate(backend: Backend) -> None:
    await backend.enqueue(message("first", unique_key="k", unique_ttl_ms=60_000))
    with pytest.raises(DuplicateTaskError) as exc_info:
        await backend.enqueue(message("second", unique_key="k", unique_ttl_ms=60_000))
    assert (exc_info.value.unique_key, exc_info.value.holder_id) == ("k", "first")
    assert await backend.get_task("second", "q") is None
    assert (await backend.queue_info("q")).counts[TaskState.PENDING] == 1


async def test_unique_key_held_while_scheduled_active_retry_and_dead(
    backend: Backend, clock: FakeClock
) -> None:
    await backend.enqueue(
        message("s", unique_key="ks", unique_ttl_ms=600_000, process_at_ms=clock() + 1_000)
    )
    await backend.enqueue(message("a", unique_key="ka", unique_ttl_ms=600_000))
    [task] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert task.id == "a"
    await backend.enqueue(message("r", unique_key="kr", unique_ttl_ms=600_000))
    await backend.enqueue(message("d", unique_key="kd", unique_ttl_ms=600_000))
    got = await backend.fetch(["q"], 2, "c1", lease_ms=LEASE_MS)
    assert {t.id for t in got} == {"r", "d"}
    await backend.fail("q", "r", "c1", "x", retry_in_ms=60_000)
    await backend.fail("q", "d", "c1", "x", retry_in_ms=None)
    for key, holder in [("ks", "s"), ("ka", "a"), ("kr", "r"), ("kd", "d")]:
        with pytest.raises(DuplicateTaskError) as exc_info:
            await backend.enqueue(message(f"{key}-2", unique_key=key, unique_ttl_ms=600_000))
        assert exc_info.value.holder_id == holder


async def test_unique_key_released_on_completion(backend: Backend) -> None:
    await backend.enqueue(message("first", unique_key="k", unique_ttl_ms=60_000))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.ack("q", "first", "c1")
    info = await backend.enqueue(message("second", unique_key="k", unique_ttl_ms=60_000))
    assert info.state == TaskState.PENDING


@pytest.mark.parametrize("scheduled", [False, True], ids=["pending", "scheduled"])
async def test_unique_key_released_on_cancel(
    backend: Backend, clock: FakeClock, scheduled: bool
) -> None:
    due = clock() + 10_000 if scheduled else None
    await backend.enqueue(message("first", unique_key="k", unique_ttl_ms=60_000, process_at_ms=due))
    assert await backend.cancel("first", "q")
    await backend.enqueue(message("second", unique_key="k", unique_ttl_ms=60_000))
    assert await state_of(backend, "second") == TaskState.PENDING


async def test_unique_key_expires_with_ttl(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("first", unique_key="k", unique_ttl_ms=10_000))
    clock.advance(9_999)
    with pytest.raises(DuplicateTaskError):
        await backend.enqueue(message("second", unique_key="k", unique_ttl_ms=10_000))
    clock.advance(2)
    await backend.enqueue(message("third", unique_key="k", unique_ttl_ms=10_000))
    assert await state_of(backend, "first") == TaskState.PENDING
    assert await state_of(backend, "third") == TaskState.PENDING
    # The new holder's key lives on after the first task completes.
    [first, third] = await backend.fetch(["q"], 2, "c1", lease_ms=LEASE_MS)
    assert (first.id, third.id) == ("first", "third")
    assert await backend.ack("q", "first", "c1")
    with pytest.raises(DuplicateTaskError) as exc_info:
        await backend.enqueue(message("fourth", unique_key="k", unique_ttl_ms=10_000))
    assert exc_info.value.holder_id == "third"


async def test_dead_task_keeps_unique_key_until_ttl(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("d", unique_key="k", unique_ttl_ms=30_000))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    await backend.fail("q", "d", "c1", "x", retry_in_ms=None)
    with pytest.raises(DuplicateTaskError):
        await backend.enqueue(message("again", unique_key="k", unique_ttl_ms=30_000))
    clock.advance(30_001)
    await backend.enqueue(message("again", unique_key="k", unique_ttl_ms=30_000))
    assert await state_of(backend, "d") == TaskState.DEAD


@pytest.mark.parametrize("state", ["pending", "scheduled", "active", "completed", "dead"])
async def test_id_conflict_in_any_state(backend: Backend, clock: FakeClock, state: str) -> None:
    if state == "scheduled":
        await backend.enqueue(message("a", process_at_ms=clock() + 60_000))
    elif state == "dead":
        await make_dead(backend, "a")
    else:
        await backend.enqueue(message("a"))
        if state in ("active", "completed"):
            await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
        if state == "completed":
            assert await backend.ack("q", "a", "c1")
    before = await backend.get_task("a", "q")
    with pytest.raises(TaskIdConflictError) as exc_info:
        await backend.enqueue(message("a", payload=b"other"))
    assert exc_info.value.task_id == "a"
    assert await backend.get_task("a", "q") == before


async def test_id_conflict_on_cancelled(backend: Backend) -> None:
    await backend.enqueue(message("a"))
    await backend.cancel("a", "q")
    with pytest.raises(TaskIdConflictError):
        await backend.enqueue(message("a"))


async def test_enqueue_many_with_refused_members(backend: Backend) -> None:
    await start(backend, "holder2")  # the conflicting id belongs to an active task
    await backend.enqueue(message("holder", unique_key="k", unique_ttl_ms=60_000))
    results = await backend.enqueue_many(
        [
            message("a"),
            message("dup", unique_key="k", unique_ttl_ms=60_000),
            message("holder2"),
            message("b", priority=2),
        ]
    )
    assert len(results) == 4
    first, dup, conflict, last = results
    assert isinstance(first, TaskInfo) and first.id == "a" and first.state == TaskState.PENDING
    assert isinstance(dup, DuplicateTaskError) and dup.holder_id == "holder"
    assert isinstance(conflict, TaskIdConflictError) and conflict.task_id == "holder2"
    assert isinstance(last, TaskInfo) and last.id == "b"
    assert await state_of(backend, "a") == TaskState.PENDING
    assert await state_of(backend, "b") == TaskState.PENDING
    assert await backend.get_task("dup", "q") is None
    assert await state_of(backend, "holder2") == TaskState.ACTIVE


async def test_enqueue_many_unique_within_batch(backend: Backend) -> None:
    results = await backend.enqueue_many(
        [
            message("x", unique_key="k", unique_ttl_ms=60_000),
            message("y", unique_key="k", unique_ttl_ms=60_000),
        ]
    )
    assert isinstance(results[0], TaskInfo)
    assert isinstance(results[1], DuplicateTaskError) and results[1].holder_id == "x"


async def test_enqueue_many_scheduled_and_queues(backend: Backend, clock: FakeClock) -> None:
    results = await backend.enqueue_many(
        [message("a", queue="one"), message("b", queue="two", process_at_ms=clock() + 1_000)]
    )
    assert [r.state for r in results if isinstance(r, TaskInfo)] == [
        TaskState.PENDING,
        TaskState.SCHEDULED,
    ]
    assert await backend.queues() == ["one", "two"]


# -- a unique key needs a TTL ---------------------------------------------------------------------


async def test_unique_key_without_ttl_is_refused(backend: Backend) -> None:
    """A unique key with no TTL could only be freed by hand: refused before anything is written,
    by enqueue and by enqueue_many (the whole call), as strego.Task refuses it."""
    bad = message("b", unique_key="k")
    with pytest.raises(InvalidTaskError):
        await backend.enqueue(bad)
    with pytest.raises(InvalidTaskError):
        await backend.enqueue_many([message("a"), bad, message("c", queue="other")])
    assert await backend.queues() == []
    for task_id in ("a", "b", "c"):
        assert await backend.get_task(task_id) is None
    # the key was never taken
    await backend.enqueue(message("d", unique_key="k", unique_ttl_ms=60_000))
    assert (await backend.get_task("d", "q")) is not None
