"""Periodic schedules: put_schedule (unchanged, changed, moved to another queue), remove_schedule,
list_schedules and fire_schedule (one fire per tick however many callers race, EARLY and STALE
change nothing, a skipped tick, a dead tick that does not block the next, a tick id taken)."""

from __future__ import annotations

import anyio
import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, ids_in, message, state_of
from strego.backends.base import Backend, FireResult, ScheduleDefinition, ScheduleInfo
from strego.errors import InvalidScheduleError
from strego.task import TaskState

pytestmark = pytest.mark.anyio

SECOND = 1000


def definition(
    schedule_id: str = "s",
    spec: str = "every 1000ms",
    *,
    queue: str = "q",
    catchup: str = "latest",
    priority: int = 0,
    max_retry: int = 3,
    payload: bytes = b'{"n":1}',
) -> ScheduleDefinition:
    template = attrs.evolve(
        message(schedule_id, queue=queue, payload=payload, priority=priority, max_retry=max_retry),
        labels={"from": "cron"},
        timeout_ms=5000,
    )
    return ScheduleDefinition(schedule_id, spec, "UTC", catchup, template)  # type: ignore[arg-type]


async def stored(backend: Backend, schedule_id: str = "s") -> ScheduleInfo | None:
    found = [s for s in (await backend.list_schedules()).schedules if s.id == schedule_id]
    return found[0] if found else None


async def test_put_then_list(backend: Backend, clock: FakeClock) -> None:
    d = definition()
    info = await backend.put_schedule(d, clock() + SECOND)
    assert (info.revision, info.next_ms, info.last_fire_ms, info.last_task_id) == (
        1, clock() + SECOND, None, None,
    )  # fmt: skip
    listing = await backend.list_schedules()
    assert listing.now_ms == clock()
    assert listing.schedules == [info]
    assert listing.schedules[0].definition == d


async def test_list_is_sorted_by_id(backend: Backend, clock: FakeClock) -> None:
    for schedule_id, queue in (("b", "q1"), ("c", "q0"), ("a", "q2")):
        await backend.put_schedule(definition(schedule_id, queue=queue), clock() + SECOND)
    assert [s.id for s in (await backend.list_schedules()).schedules] == ["a", "b", "c"]


async def test_putting_the_same_definition_changes_nothing(
    backend: Backend, clock: FakeClock
) -> None:
    first = await backend.put_schedule(definition(), clock() + SECOND)
    again = await backend.put_schedule(definition(), clock() + 5 * SECOND)
    assert again == first
    assert await stored(backend) == first


async def test_a_changed_definition_moves_the_revision_and_keeps_the_last_fire(
    backend: Backend, clock: FakeClock
) -> None:
    tick = clock() + SECOND
    first = await backend.put_schedule(definition(), tick)
    clock.advance(SECOND)
    assert await backend.fire_schedule(first, tick, tick + SECOND) is FireResult.FIRED
    changed = await backend.put_schedule(definition(spec="*/5 * * * *"), clock() + 60 * SECOND)
    assert changed.revision == 2
    assert changed.next_ms == clock() + 60 * SECOND
    assert (changed.last_fire_ms, changed.last_task_id) == (tick, f"s:{tick}")
    assert changed.definition.spec == "*/5 * * * *"
    assert await stored(backend) == changed


async def test_a_schedule_moved_to_another_queue_leaves_the_old_one(
    backend: Backend, clock: FakeClock
) -> None:
    await backend.put_schedule(definition(queue="q1"), clock() + SECOND)
    moved = await backend.put_schedule(definition(queue="q2"), clock() + SECOND)
    listing = (await backend.list_schedules()).schedules
    assert listing == [moved]
    assert moved.queue == "q2"
    clock.advance(SECOND)
    assert await backend.fire_schedule(moved, moved.next_ms, moved.next_ms + SECOND) is (
        FireResult.FIRED
    )
    assert await ids_in(backend, TaskState.PENDING, "q2") == [f"s:{moved.next_ms}"]
    assert await ids_in(backend, TaskState.PENDING, "q1") == []


async def test_remove(backend: Backend, clock: FakeClock) -> None:
    info = await backend.put_schedule(definition(), clock() + SECOND)
    assert await backend.remove_schedule("s") is True
    assert (await backend.list_schedules()).schedules == []
    assert await backend.remove_schedule("s") is False
    clock.advance(SECOND)
    # a server that read it before the removal fires nothing
    assert await backend.fire_schedule(info, info.next_ms, info.next_ms + SECOND) is (
        FireResult.STALE
    )
    assert await ids_in(backend, TaskState.PENDING) == []


async def test_remove_refuses_an_invalid_id(backend: Backend) -> None:
    with pytest.raises(InvalidScheduleError):
        await backend.remove_schedule("no:colons")


async def test_fire_enqueues_the_tick_task_and_advances(backend: Backend, clock: FakeClock) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(priority=4, max_retry=7), tick)
    clock.advance(SECOND + 250)  # found a little late: the tick is what counts
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.FIRED
    task = await backend.get_task(f"s:{tick}", "q")
    assert task is not None
    assert task.state == TaskState.PENDING
    assert (task.type, task.payload, task.encoding) == ("test.task", b'{"n":1}', "json")
    assert (task.priority, task.max_retry, task.timeout_ms) == (4, 7, 5000)
    assert task.labels == {"from": "cron"}
    assert task.created_ms == tick
    assert "q" in await backend.queues()
    after = await stored(backend)
    assert after == attrs.evolve(
        info, next_ms=tick + SECOND, last_fire_ms=tick, last_task_id=f"s:{tick}"
    )
    got = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == [f"s:{tick}"]


async def test_a_tick_ahead_of_the_backend_clock_is_early(
    backend: Backend, clock: FakeClock
) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(SECOND - 1)
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.EARLY
    assert await stored(backend) == info
    assert await ids_in(backend, TaskState.PENDING) == []
    clock.advance(1)
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.FIRED


async def test_a_fire_on_an_old_view_is_stale(backend: Backend, clock: FakeClock) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(2 * SECOND)
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.FIRED
    # the same view again (a second server that read it at the same time): nothing
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.STALE
    assert await backend.fire_schedule(info, tick + SECOND, tick + 2 * SECOND) is (FireResult.STALE)
    assert await ids_in(backend, TaskState.PENDING) == [f"s:{tick}"]
    # a view of another revision: nothing either
    current = await stored(backend)
    assert current is not None
    changed = await backend.put_schedule(definition(spec="every 2000ms"), current.next_ms)
    assert await backend.fire_schedule(current, current.next_ms, current.next_ms + SECOND) is (
        FireResult.STALE
    )
    assert await backend.fire_schedule(changed, changed.next_ms, changed.next_ms + 2 * SECOND) is (
        FireResult.FIRED
    )
    assert await ids_in(backend, TaskState.PENDING) == [f"s:{tick}", f"s:{changed.next_ms}"]


async def test_racing_fires_of_one_tick_fire_it_once(backend: Backend, clock: FakeClock) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(SECOND)
    results: list[FireResult] = []

    async def fire() -> None:
        results.append(await backend.fire_schedule(info, tick, tick + SECOND))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(fire)
    assert sorted(results) == sorted([FireResult.FIRED] + [FireResult.STALE] * 7)
    assert await ids_in(backend, TaskState.PENDING) == [f"s:{tick}"]


async def test_a_skipped_tick_enqueues_nothing(backend: Backend, clock: FakeClock) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(5 * SECOND)
    result = await backend.fire_schedule(info, tick + 4 * SECOND, tick + 5 * SECOND, enqueue=False)
    assert result is FireResult.FIRED
    assert await ids_in(backend, TaskState.PENDING) == []
    assert await stored(backend) == attrs.evolve(info, next_ms=tick + 5 * SECOND)


async def test_a_dead_tick_does_not_block_the_next(backend: Backend, clock: FakeClock) -> None:
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(SECOND)
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.FIRED
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", got.id, "c1", "boom", retry_in_ms=None) == TaskState.DEAD
    clock.advance(SECOND)
    info = attrs.evolve(info, next_ms=tick + SECOND)
    assert await backend.fire_schedule(info, tick + SECOND, tick + 2 * SECOND) is (FireResult.FIRED)
    assert await state_of(backend, f"s:{tick}") == TaskState.DEAD
    assert await state_of(backend, f"s:{tick + SECOND}") == TaskState.PENDING


async def test_a_tick_fired_before_is_not_enqueued_twice(
    backend: Backend, clock: FakeClock
) -> None:
    """A schedule removed and put again at a tick it fired already (by a server whose clock read
    earlier): the schedule advances, the task that ran is left as it is."""
    tick = clock() + SECOND
    info = await backend.put_schedule(definition(), tick)
    clock.advance(SECOND)
    assert await backend.fire_schedule(info, tick, tick + SECOND) is FireResult.FIRED
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.ack("q", got.id, "c1") is True
    await backend.remove_schedule("s")
    again = await backend.put_schedule(definition(), tick)
    assert again.revision == 1
    assert await backend.fire_schedule(again, tick, tick + SECOND) is FireResult.FIRED
    assert await state_of(backend, f"s:{tick}") == TaskState.COMPLETED
    assert await ids_in(backend, TaskState.PENDING) == []
    after = await stored(backend)
    assert after is not None
    assert after.next_ms == tick + SECOND


def test_definitions_are_checked_when_built() -> None:
    good = definition()
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, id="a:b")
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, spec="61 * * * *")
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, tz="Mars/Olympus")
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, catchup="some")
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, template=attrs.evolve(good.template, unique_key="k", unique_ttl_ms=1))
    with pytest.raises(InvalidScheduleError):
        attrs.evolve(good, template=attrs.evolve(good.template, process_in_ms=5))
