"""Which queues `queues()` lists: from a queue's first enqueue until a purge leaves it with no
task at all; nothing else unlists it."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.conftest import SHORT_COMPLETED_TTL_MS
from conformance.helpers import LEASE_MS, make_dead, message, start
from strego.backends.base import Backend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def test_a_purge_that_empties_the_queue_unlists_it(
    backend: Backend, clock: FakeClock
) -> None:
    await make_dead(backend, "d")
    await backend.enqueue_many([message("p"), message("s", process_at_ms=clock() + 5_000)])
    await backend.enqueue(message("o", queue="other"))
    assert await backend.queues() == ["other", "q"]
    assert await backend.purge("q") == 3
    assert await backend.queues() == ["other"]
    await backend.enqueue(message("again"))
    assert await backend.queues() == ["other", "q"]


async def test_a_purge_of_some_states_unlists_only_an_empty_queue(backend: Backend) -> None:
    await backend.enqueue(message("p"))
    await make_dead(backend, "d", queue="other")
    assert await backend.purge("q", [TaskState.DEAD]) == 0
    assert await backend.purge("other", [TaskState.PENDING]) == 0
    assert await backend.queues() == ["other", "q"]
    assert await backend.purge("q", [TaskState.PENDING]) == 1
    assert await backend.queues() == ["other"]


async def test_active_tasks_keep_a_purged_queue_listed(backend: Backend) -> None:
    await start(backend, "a")
    await backend.enqueue(message("p"))
    assert await backend.purge("q") == 1
    assert await backend.queues() == ["q"]
    assert await backend.ack("q", "a", "c1") is True
    assert await backend.purge("q") == 1  # the completed one
    assert await backend.queues() == []


async def test_only_a_purge_unlists(short_backend: Backend, clock: FakeClock) -> None:
    backend = short_backend
    await backend.enqueue_many([message("x"), message("y")])
    await backend.pause("q")
    assert await backend.delete("x") is True
    assert await backend.cancel("y") is True
    clock.advance(SHORT_COMPLETED_TTL_MS + 1_000)
    await backend.promote(["q"])
    assert await backend.get_task("y") is None
    assert await backend.queues() == ["q"]  # no task left, but no purge either
    # tasks whose retention ended count as none, swept yet or not
    await backend.resume("q")
    await backend.enqueue(message("z"))
    assert await backend.cancel("z") is True
    clock.advance(SHORT_COMPLETED_TTL_MS + 1_000)
    assert await backend.purge("q", [TaskState.PENDING]) == 0
    assert await backend.queues() == []


async def test_pausing_lists_nothing(backend: Backend) -> None:
    await backend.pause("q")
    await backend.resume("q")
    await backend.pause("r")
    assert await backend.queues() == []
    assert await backend.fetch(["q", "r"], 1, "c1", lease_ms=LEASE_MS) == []
    assert await backend.queues() == []
