"""Retention: completed, cancelled and dead entries disappear after their TTL."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.conftest import SHORT_COMPLETED_TTL_MS, SHORT_DEAD_TTL_MS
from conformance.helpers import make_dead, message, start, state_of
from strego.backends.base import Backend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def ended(backend: Backend, state: TaskState) -> None:
    if state == TaskState.COMPLETED:
        await start(backend, "a")
        assert await backend.ack("q", "a", "c1")
    elif state == TaskState.CANCELLED:
        await backend.enqueue(message("a"))
        assert await backend.cancel("a", "q")
    else:
        await make_dead(backend, "a")


@pytest.mark.parametrize(
    ("state", "ttl_ms"),
    [
        (TaskState.COMPLETED, SHORT_COMPLETED_TTL_MS),
        (TaskState.CANCELLED, SHORT_COMPLETED_TTL_MS),
        (TaskState.DEAD, SHORT_DEAD_TTL_MS),
    ],
)
async def test_entry_expires_after_ttl(
    short_backend: Backend, clock: FakeClock, state: TaskState, ttl_ms: int
) -> None:
    await ended(short_backend, state)
    clock.advance(ttl_ms - 1)
    await short_backend.promote(["q"])
    assert await state_of(short_backend, "a") == state
    assert (await short_backend.queue_info("q")).counts[state] == 1
    clock.advance(2)
    await short_backend.promote(["q"])
    assert await short_backend.get_task("a", "q") is None
    assert await short_backend.get_task("a") is None
    assert (await short_backend.list_tasks("q", state)).tasks == []
    assert (await short_backend.queue_info("q")).counts[state] == 0
    # the id is free again
    info = await short_backend.enqueue(message("a"))
    assert info.state == TaskState.PENDING


async def test_expired_marker_treated_as_absent(short_backend: Backend, clock: FakeClock) -> None:
    await start(short_backend, "a")
    await short_backend.ack("q", "a", "c1")
    clock.advance(SHORT_COMPLETED_TTL_MS + 1)
    # no promote in between: an expired marker must not refuse the id
    info = await short_backend.enqueue(message("a"))
    assert info.state == TaskState.PENDING


async def test_default_retention_keeps_entries(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    await backend.ack("q", "a", "c1")
    await make_dead(backend, "d")
    clock.advance(SHORT_DEAD_TTL_MS + 1)
    await backend.promote(["q"])
    assert await state_of(backend, "a") == TaskState.COMPLETED
    assert await state_of(backend, "d") == TaskState.DEAD


async def test_requeued_dead_task_is_not_expired(short_backend: Backend, clock: FakeClock) -> None:
    await make_dead(short_backend, "d")
    assert await short_backend.requeue_dead("q", "d")
    clock.advance(SHORT_DEAD_TTL_MS + 1)
    await short_backend.promote(["q"])
    assert await state_of(short_backend, "d") == TaskState.PENDING
