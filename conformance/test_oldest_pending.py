"""QueueInfo.oldest_pending_age_ms: how long ago the oldest pending task became pending."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start
from strego.backends.base import Backend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def age(backend: Backend, queue: str = "q") -> int | None:
    return (await backend.queue_info(queue)).oldest_pending_age_ms


async def test_none_when_nothing_is_pending(backend: Backend, clock: FakeClock) -> None:
    assert await age(backend, "never-used") is None
    await backend.enqueue(message("later", process_at_ms=clock() + 60_000))
    await start(backend, "running")
    assert await age(backend) is None  # scheduled and active tasks are not pending


async def test_the_oldest_across_priorities(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("low"))
    clock.advance(1_000)
    await backend.enqueue(message("high", priority=10))
    clock.advance(4_000)
    assert await age(backend) == 5_000
    # the high one is fetched first; the low one is still the oldest
    got = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["high"]
    assert await age(backend) == 5_000
    await backend.pause("q")  # a paused queue's tasks wait all the same
    assert await age(backend) == 5_000
    await backend.resume("q")
    await backend.enqueue(message("next"))
    got = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["low"]
    assert await age(backend) == 0
    clock.advance(250)
    assert await age(backend) == 250
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await age(backend) is None


async def test_counted_from_when_the_task_became_pending(
    backend: Backend, clock: FakeClock
) -> None:
    # a scheduled task: from its promotion, not its creation nor its due time
    await backend.enqueue(message("s", process_at_ms=clock() + 10_000))
    clock.advance(15_000)
    assert await age(backend) is None  # due, but not promoted yet
    await backend.promote(["q"])
    clock.advance(2_000)
    assert await age(backend) == 2_000
    await backend.purge("q", [TaskState.PENDING])
    assert await age(backend) is None
    # a released task: from its release
    await start(backend, "r")
    clock.advance(7_000)
    assert await backend.release("q", ["r"], "c1") == 1
    clock.advance(1_000)
    assert await age(backend) == 1_000
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    # a retry made to run now: from then
    assert await backend.fail("q", "r", "c1", "x", retry_in_ms=60_000) == TaskState.RETRY
    clock.advance(3_000)
    assert await backend.run_now("r", "q")
    clock.advance(500)
    assert await age(backend) == 500
    # a dead task requeued: from the requeue
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", "r", "c1", "x", retry_in_ms=None) == TaskState.DEAD
    clock.advance(9_000)
    assert await backend.requeue_dead("q", "r")
    assert await age(backend) == 0
