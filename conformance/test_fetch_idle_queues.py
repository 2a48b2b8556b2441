"""fetch over many queues, most of them idle (RedisBackend remembers which queues a consumer found
idle and, while nothing became pending there, skips them): queue order, blocking wake-ups from an
idle queue, paused queues and consumer registration hold as with one queue, and a task that
becomes pending in a queue found idle, in any way, is fetched. Part of the conformance suite: it
runs on every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start
from strego.backends.base import Backend, FireResult, ScheduleDefinition
from strego.task import TaskState

pytestmark = pytest.mark.anyio

IDLE = [f"idle{i}" for i in range(30)]


async def _use_and_empty(backend: Backend, queue: str) -> None:
    """Leave `queue` empty after it held a task (its streams exist in Redis, with no entry)."""
    await backend.enqueue(message(f"{queue}-old", queue=queue))
    [task] = await backend.fetch([queue], 1, "c0", lease_ms=LEASE_MS)
    assert await backend.ack(queue, task.id, "c0")


async def test_fetch_takes_queues_in_order_past_idle_ones(backend: Backend) -> None:
    await _use_and_empty(backend, "idle3")
    await backend.enqueue_many(
        [message("late", queue="idle20"), message("early", queue="idle10"),
         message("early2", queue="idle10")]
    )  # fmt: skip
    got = await backend.fetch(IDLE, 2, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["early", "early2"]
    got = await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["late"]


async def test_blocking_fetch_over_idle_queues_wakes_on_enqueue(backend: Backend) -> None:
    await _use_and_empty(backend, "idle7")
    got: list[str] = []

    async def fetcher() -> None:
        tasks = await backend.fetch(IDLE, 1, "c1", lease_ms=LEASE_MS, block_ms=20_000)
        got.extend(t.id for t in tasks)

    with anyio.fail_after(15):  # far below block_ms: only the enqueue can end the wait
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetcher)
            await anyio.sleep(0.2)
            await backend.enqueue(message("wake", queue="idle7"))
    assert got in (["wake"], [])  # a spurious wake-up may return empty (contract)
    if not got:
        assert [t.id for t in await backend.fetch(IDLE, 1, "c1", lease_ms=LEASE_MS)] == ["wake"]


async def test_fetch_skips_paused_queues_and_registers_the_consumer(backend: Backend) -> None:
    await backend.enqueue_many([message("held", queue="idle1"), message("free", queue="idle2")])
    await backend.pause("idle1")
    got = await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["free"]
    # an idle queue knows the consumer that asked it, as after a fetch of that queue alone
    assert "c1" in [c.name for c in await backend.consumers("idle25")]
    await backend.resume("idle1")
    assert [t.id for t in await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS)] == ["held"]


# -- a task becoming pending in a queue already found idle --------------------------------------

Step = Callable[[Backend, FakeClock, str], Awaitable[None]]


@attrs.frozen
class Way:
    """One way a task `id` becomes pending in a queue: `before` runs before the fetches that find
    the queue idle (the task must not be pending yet), `then` makes it pending."""

    name: str
    id: str
    before: Step
    then: Step


async def _nothing(backend: Backend, clock: FakeClock, queue: str) -> None:
    pass


async def _enqueue(backend: Backend, clock: FakeClock, queue: str) -> None:
    await backend.enqueue(message("t-enqueue", queue=queue))


async def _schedule(backend: Backend, clock: FakeClock, queue: str) -> None:
    await backend.enqueue(message("t-promote", queue=queue, process_at_ms=clock() + 1000))


async def _come_due(backend: Backend, clock: FakeClock, queue: str) -> None:
    clock.advance(1000)
    await backend.promote([queue])


async def _hold(backend: Backend, clock: FakeClock, queue: str) -> None:
    await start(backend, "t-release", queue, consumer="c2")


async def _release(backend: Backend, clock: FakeClock, queue: str) -> None:
    assert await backend.release(queue, ["t-release"], "c2") == 1


async def _fail_for_retry(backend: Backend, clock: FakeClock, queue: str) -> None:
    await start(backend, "t-retry", queue, consumer="c2")
    assert await backend.fail(queue, "t-retry", "c2", "boom", retry_in_ms=1000) == (TaskState.RETRY)


async def _kill(backend: Backend, clock: FakeClock, queue: str) -> None:
    await start(backend, "t-requeue", queue, consumer="c2")
    assert await backend.fail(queue, "t-requeue", "c2", "boom", retry_in_ms=None) == (
        TaskState.DEAD
    )


async def _requeue(backend: Backend, clock: FakeClock, queue: str) -> None:
    assert await backend.requeue_dead(queue, "t-requeue")


async def _enqueue_paused(backend: Backend, clock: FakeClock, queue: str) -> None:
    await backend.enqueue(message("t-resume", queue=queue))
    await backend.pause(queue)


async def _resume(backend: Backend, clock: FakeClock, queue: str) -> None:
    await backend.resume(queue)


async def _schedule_far(backend: Backend, clock: FakeClock, queue: str) -> None:
    await backend.enqueue(message("t-run-now", queue=queue, process_at_ms=clock() + 3_600_000))


async def _run_now(backend: Backend, clock: FakeClock, queue: str) -> None:
    assert await backend.run_now("t-run-now", queue)


#: the tick a schedule put by `_put_schedule` fires first (the fake clock starts on a whole second)
CRON_TICK = FakeClock.START_MS + 1000


async def _put_schedule(backend: Backend, clock: FakeClock, queue: str) -> None:
    assert clock() + 1000 == CRON_TICK
    template = message("cron", queue=queue)
    definition = ScheduleDefinition("cron", "every 1000ms", "UTC", "latest", template)
    await backend.put_schedule(definition, CRON_TICK)


async def _fire(backend: Backend, clock: FakeClock, queue: str) -> None:
    clock.advance(1000)
    [info] = (await backend.list_schedules()).schedules
    assert await backend.fire_schedule(info, CRON_TICK, CRON_TICK + 1000) is FireResult.FIRED


WAYS = [
    Way("enqueue", "t-enqueue", _nothing, _enqueue),
    Way("scheduled-due", "t-promote", _schedule, _come_due),
    Way("release", "t-release", _hold, _release),
    Way("retry-due", "t-retry", _fail_for_retry, _come_due),
    Way("requeue-dead", "t-requeue", _kill, _requeue),
    Way("resume", "t-resume", _enqueue_paused, _resume),
    Way("run-now", "t-run-now", _schedule_far, _run_now),
    Way("cron-fire", f"cron:{CRON_TICK}", _put_schedule, _fire),
]

#: the idle queues come first: each fetch must look at them before it takes from "busy"
ORDER = [*IDLE[:8], "busy"]
TARGET = "idle4"


async def check_a_queue_found_idle_is_not_starved(
    backend: Backend, clock: FakeClock, way: Way, *, ordered: bool = True
) -> int:
    """The scenario, shared with the Redis tests (which run it with idle checks never timed).
    Returns how many fetches it took to get the task: 1 in order; at most 2 when the order is a
    preference (`ordered=False`), the first then taking from "busy"."""
    await backend.enqueue_many([message(f"busy{i}", queue="busy") for i in range(5)])
    await way.before(backend, clock, TARGET)
    for _ in range(3):  # the first finds the other queues idle, the next ones rely on that
        got = await backend.fetch(ORDER, 1, "c1", lease_ms=LEASE_MS, ordered=ordered)
        assert [t.queue for t in got] == ["busy"]
    await way.then(backend, clock, TARGET)
    got = await backend.fetch(ORDER, 1, "c1", lease_ms=LEASE_MS, ordered=ordered)
    if ordered or [t.id for t in got] == [way.id]:
        assert [t.id for t in got] == [way.id], f"{way.name}: the task in {TARGET} was passed over"
        return 1
    assert [t.queue for t in got] == ["busy"]
    got = await backend.fetch(ORDER, 1, "c1", lease_ms=LEASE_MS, ordered=ordered)
    assert [t.id for t in got] == [way.id], f"{way.name}: {TARGET} was passed over twice"
    return 2


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "preference"])
@pytest.mark.parametrize("way", WAYS, ids=[w.name for w in WAYS])
async def test_a_task_becoming_pending_in_a_queue_found_idle_is_fetched(
    backend: Backend, clock: FakeClock, way: Way, ordered: bool
) -> None:
    await check_a_queue_found_idle_is_not_starved(backend, clock, way, ordered=ordered)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "preference"])
async def test_fetches_take_queues_in_order_while_none_changes(
    backend: Backend, ordered: bool
) -> None:
    # with no task arriving during the fetches, a preference is kept as exactly as an order
    await _use_and_empty(backend, "idle3")
    await backend.enqueue_many(
        [*(message(f"b{i}", queue="idle20") for i in range(3)),
         *(message(f"a{i}", queue="idle10") for i in range(3))]
    )  # fmt: skip
    got = []
    for _ in range(4):
        got += [
            t.id for t in await backend.fetch(IDLE, 2, "c1", lease_ms=LEASE_MS, ordered=ordered)
        ]
    assert got == ["a0", "a1", "a2", "b0", "b1", "b2"]


async def test_blocking_fetch_wakes_on_a_queue_found_idle(backend: Backend) -> None:
    # idle in three ways: never used, used and emptied, holding only an active task
    await _use_and_empty(backend, "idle2")
    await start(backend, "running", "idle5", consumer="c2")
    for _ in range(3):
        assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []

    async def fetcher(got: list[str]) -> None:
        tasks = await backend.fetch(IDLE, 1, "c1", lease_ms=LEASE_MS, block_ms=20_000)
        got.extend(t.id for t in tasks)

    for queue in ("idle2", "idle5", "idle9"):
        got: list[str] = []
        with anyio.fail_after(15):  # far below block_ms: only the enqueue can end the wait
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetcher, got)
                await anyio.sleep(0.2)
                await backend.enqueue(message(f"wake-{queue}", queue=queue))
        if not got:  # a spurious wake-up may return empty (contract)
            got = [t.id for t in await backend.fetch(IDLE, 1, "c1", lease_ms=LEASE_MS)]
        assert got == [f"wake-{queue}"]
