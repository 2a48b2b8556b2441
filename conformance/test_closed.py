"""A closed backend: after `aclose()` every call raises BackendClosedError, and closing again is
harmless."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from conformance.helpers import LEASE_MS, message
from conformance.test_schedules import definition
from strego.backends.base import Backend, ScheduleInfo
from strego.errors import BackendClosedError
from strego.task import TaskState

pytestmark = pytest.mark.anyio

#: One call of every method of the contract, with valid arguments.
CALLS: dict[str, Callable[[Backend], Awaitable[Any]]] = {
    "enqueue": lambda b: b.enqueue(message("new")),
    "enqueue_many": lambda b: b.enqueue_many([message("new1"), message("new2")]),
    "fetch": lambda b: b.fetch(["q"], 1, "c1", lease_ms=LEASE_MS),
    "blocking fetch": lambda b: b.fetch(["q"], 1, "c1", lease_ms=LEASE_MS, block_ms=60_000),
    "ack": lambda b: b.ack("q", "t1", "c1"),
    "ack_many": lambda b: b.ack_many([("q", "t1")], "c1"),
    "fail": lambda b: b.fail("q", "t1", "c1", "boom", retry_in_ms=None),
    "release": lambda b: b.release("q", ["t1"], "c1"),
    "renew": lambda b: b.renew("q", ["t1"], "c1", lease_ms=LEASE_MS),
    "claim_stale": lambda b: b.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5),
    "promote": lambda b: b.promote(["q"]),
    "wait_schedule_change": lambda b: b.wait_schedule_change(["q"], 60_000),
    "cancel": lambda b: b.cancel("t1", "q"),
    "delete": lambda b: b.delete("t1", "q"),
    "cancel in any queue": lambda b: b.cancel("t1"),
    "requeue_dead": lambda b: b.requeue_dead("q", "t1"),
    "requeue_all_dead": lambda b: b.requeue_all_dead("q"),
    "purge": lambda b: b.purge("q"),
    "pause": lambda b: b.pause("q"),
    "resume": lambda b: b.resume("q"),
    "queues": lambda b: b.queues(),
    "queue_info": lambda b: b.queue_info("q"),
    "list_tasks": lambda b: b.list_tasks("q", TaskState.PENDING),
    "get_task": lambda b: b.get_task("t1", "q"),
    "get_task in any queue": lambda b: b.get_task("t1"),
    "consumers": lambda b: b.consumers("q"),
    "held_by": lambda b: b.held_by(["q"], "c1"),
    "remove_idle_consumers": lambda b: b.remove_idle_consumers("q", 0),
    "put_schedule": lambda b: b.put_schedule(definition(), 1000),
    "remove_schedule": lambda b: b.remove_schedule("s"),
    "list_schedules": lambda b: b.list_schedules(),
    "fire_schedule": lambda b: b.fire_schedule(ScheduleInfo(definition(), 1, 1000), 1000, 2000),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_every_call_on_a_closed_backend_raises(backend: Backend, call: str) -> None:
    await backend.enqueue(message("t1"))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)  # t1 active, held by c1
    await backend.aclose()
    # at once: a blocking call does not wait out its 60 s first
    with anyio.fail_after(30), pytest.raises(BackendClosedError, match="closed"):
        await CALLS[call](backend)


async def test_closing_twice_is_harmless(backend: Backend) -> None:
    await backend.aclose()
    await backend.aclose()
    with pytest.raises(BackendClosedError):
        await backend.queues()
