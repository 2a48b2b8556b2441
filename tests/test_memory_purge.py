"""MemoryBackend.purge and requeue_all_dead do bounded work per synchronous step: other tasks run
between their batches, so a big queue or dead-letter queue does not hold the event loop."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from conformance.clock import FakeClock
from conformance.helpers import make_dead, message
from strego.backends.memory import PURGE_BATCH, MemoryBackend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def test_purge_yields_between_batches() -> None:
    backend = MemoryBackend(clock=FakeClock())
    n = 3 * PURGE_BATCH + 1
    await backend.enqueue_many([message(f"t{i}") for i in range(n)])
    ticks = 0
    purged = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not purged.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()  # the ticker starts
        before = ticks
        assert await backend.purge("q") == n
        purged.set()
    # one checkpoint after each batch of PURGE_BATCH: the ticker ran in between
    assert ticks - before >= 3
    assert (await backend.queue_info("q")).counts == {s: 0 for s in TaskState}


async def test_requeue_all_dead_yields_between_batches() -> None:
    backend = MemoryBackend(clock=FakeClock())
    n = 2 * PURGE_BATCH + 1
    for i in range(n):
        await make_dead(backend, f"d{i}")
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        assert await backend.requeue_all_dead("q") == n
        done.set()
    assert ticks - before >= 2
    assert (await backend.queue_info("q")).counts[TaskState.PENDING] == n
