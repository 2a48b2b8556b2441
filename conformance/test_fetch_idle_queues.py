"""fetch over many queues, most of them idle (RedisBackend peeks at every queue in one pipelined
round trip and fetches only from those with entries): queue order, blocking wake-ups from an idle
queue, paused queues and consumer registration hold as with one queue. Part of the conformance
suite: it runs on every backend."""

from __future__ import annotations

import anyio
import pytest

from conformance.helpers import LEASE_MS, message
from strego.backends.base import Backend

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
