"""MemoryBackend.purge and requeue_all_dead do bounded work per synchronous step: other tasks run
between their batches, so a big queue or dead-letter queue does not hold the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from conformance.clock import FakeClock
from conformance.helpers import make_dead, message
from strego.backends.memory import PURGE_BATCH, MemoryBackend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def ticks_during(call: Callable[[], Awaitable[int]]) -> tuple[int, int]:
    """What `call` returns, and how often another task ran while it did."""
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()  # the ticker starts
        before = ticks
        result = await call()
        done.set()
    return result, ticks - before


async def test_purge_yields_between_batches() -> None:
    backend = MemoryBackend(clock=FakeClock())
    n = 3 * PURGE_BATCH + 1
    await backend.enqueue_many([message(f"t{i}") for i in range(n)])
    purged, ticks = await ticks_during(lambda: backend.purge("q"))
    assert purged == n
    # one checkpoint after each batch of PURGE_BATCH: the ticker ran in between
    assert ticks >= 3
    assert (await backend.queue_info("q")).counts == {s: 0 for s in TaskState}


async def test_requeue_all_dead_yields_between_batches() -> None:
    backend = MemoryBackend(clock=FakeClock())
    n = 2 * PURGE_BATCH + 1
    for i in range(n):
        await make_dead(backend, f"d{i}")
    requeued, ticks = await ticks_during(lambda: backend.requeue_all_dead("q"))
    assert requeued == n
    assert ticks >= 2
    assert (await backend.queue_info("q")).counts[TaskState.PENDING] == n
