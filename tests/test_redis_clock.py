"""One clock decides (docs/architecture.md, invariant 7): with no clock injected, every script
judges time by Redis TIME, and the host clock of the process that calls plays no part. (The
faketime tests in tests/faults/test_clock_skew.py shift real processes' clocks.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.transport import Command
from strego.task import TaskState

pytestmark = pytest.mark.anyio

HOUR_MS = 3_600_000


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(AnyioTransport.from_url(redis_url), prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        yield b
    finally:
        await b.aclose()


async def redis_ms(backend: RedisBackend) -> int:
    sec, usec = await backend.transport.execute(Command(("TIME",)))
    return int(sec) * 1000 + int(usec) // 1000


@pytest.fixture
def host_clock_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's host clock an hour ahead (asked before `backend`, so the backend built
    takes it): what the scripts decide must not move."""
    import strego.backends.redis.backend as module

    real = module.system_clock
    monkeypatch.setattr(module, "system_clock", lambda: real() + HOUR_MS)


async def test_due_times_leases_and_retries_come_from_redis_time(
    host_clock_off: None, backend: RedisBackend
) -> None:
    before = await redis_ms(backend)
    info = await backend.enqueue(message("later", process_in_ms=60_000))
    await backend.enqueue(message("now"))
    [started] = await backend.fetch(["q"], 1, "c1", lease_ms=30_000)
    after = await redis_ms(backend)
    assert info.state is TaskState.SCHEDULED
    assert info.next_run_ms is not None and before + 60_000 <= info.next_run_ms <= after + 60_000
    assert started.started_ms is not None and before <= started.started_ms <= after
    lease = await backend.transport.execute(
        Command(("ZSCORE", backend.keys("q").leases, started.id))
    )
    assert before + 30_000 <= float(lease) <= after + 30_000
    # the task is not due by Redis's clock, whatever the host says
    assert 0 < (await backend.promote(["q"]) or 0) <= 60_000
    assert (await backend.get_task("later", "q")).state is TaskState.SCHEDULED  # type: ignore[union-attr]
    assert await backend.fail("q", "now", "c1", "boom", retry_in_ms=5_000) is TaskState.RETRY
    retried = await backend.get_task("now", "q")
    assert retried is not None and retried.next_run_ms is not None
    assert before + 5_000 <= retried.next_run_ms <= await redis_ms(backend) + 5_000


async def test_a_live_lease_is_not_stale_by_redis_time(
    host_clock_off: None, backend: RedisBackend
) -> None:
    await backend.enqueue(message("a"))
    await backend.fetch(["q"], 1, "c1", lease_ms=30_000)
    got = await backend.claim_stale(["q", "other"], "c2", 10, lease_ms=30_000, max_deliveries=5)
    assert got == []
    # an expired one is claimed (lease 0 ms: expired at once)
    await backend.enqueue(message("b"))
    await backend.fetch(["q"], 1, "c1", lease_ms=0)
    got = await backend.claim_stale(["q", "other"], "c2", 10, lease_ms=30_000, max_deliveries=5)
    assert [t.id for t in got] == ["b"]


async def test_reads_filter_retention_by_redis_time(backend: RedisBackend) -> None:
    """queue_info and get_task count a completed task as retained by Redis's clock (the read
    clock's offset to TIME), not the host's."""
    short = RedisBackend(backend.transport, prefix=backend.prefix, completed_ttl_ms=HOUR_MS)
    await short.enqueue(message("a"))
    await short.fetch(["q"], 1, "c1", lease_ms=30_000)
    assert await short.ack("q", "a", "c1")
    assert (await short.queue_info("q")).counts[TaskState.COMPLETED] == 1
    assert await short.get_task("a", "q") is not None
    assert abs(await short._read_now() - await redis_ms(short)) < 1_000
