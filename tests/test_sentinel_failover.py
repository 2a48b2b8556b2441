"""Failovers of a real Sentinel setup (one master, two replicas, three sentinels on loopback)
while producers enqueue and a consumer fetches and acks, through a redis+sentinel:// URL:

- SIGKILL of the master (restarted afterwards: it comes back as a replica) and SENTINEL FAILOVER;
- with and without the durability switch (WAIT 1 before an enqueue returns).

Each run counts enqueues accepted (returned), refused (raised) and lost (accepted, then missing
after the failover), and the pause: the longest time without an accepted enqueue. Work must resume
within PAUSE_WINDOW_S; with durable=True and SIGKILL nothing accepted is lost. The figures are
printed (pytest -s) for docs/deploy.md."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import attrs
import pytest

from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.errors import StregoError
from tests.runtime_support import eventually
from tests.sentinel_setup import SentinelSetup, running_sentinel_setup

pytestmark = pytest.mark.anyio

#: The documented bound on the pause (docs/deploy.md): down-after (1 s here) plus the election
#: and promotion, plus the client's backoff; measured at 1.5-4 s on a loaded 2-core machine.
PAUSE_WINDOW_S = 15.0
#: The pause when enqueues wait for every replica (see test_sentinel_failover).
ALL_REPLICAS_WINDOW_S = 30.0
PRODUCERS = 8
#: Accepted enqueues before the failover, and after the new master took its first write.
BEFORE = 300
AFTER = 300


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[SentinelSetup]:
    with running_sentinel_setup() as setup:
        yield setup


@attrs.define
class Run:
    accepted: list[str] = attrs.Factory(list)
    accepted_at: list[float] = attrs.Factory(list)
    refused: Counter[str] = attrs.Factory(Counter)
    acked: int = 0
    acked_after: int = 0
    lost: int = 0
    pause: float = 0.0
    switch_after: float = 0.0

    def report(self, name: str) -> str:
        return (
            f"{name}: accepted={len(self.accepted)} refused={sum(self.refused.values())} "
            f"{dict(self.refused)} lost={self.lost} pause={self.pause:.2f}s "
            f"switched after {self.switch_after:.2f}s "
            f"acked={self.acked} (after the failover {self.acked_after})"
        )


async def run_through_failover(
    setup: SentinelSetup, trigger: Callable[[], None], *, durable: int
) -> Run:
    """Enqueue and consume through a failover that `trigger` starts; `durable` is the number of
    replicas an enqueue waits for (0: not durable)."""
    setup.wait_healthy()
    old_master = setup.master_port()
    queue = f"q{uuid.uuid4().hex[:8]}"
    query = "failover_timeout=20" + (f"&durable=true&durable_replicas={durable}" * bool(durable))
    backend = RedisBackend.from_url(setup.url(query=query), prefix=f"f{uuid.uuid4().hex[:8]}")
    run = Run()
    warm = anyio.Event()
    switched = anyio.Event()
    done = anyio.Event()
    accepted_after_switch = 0

    async def produce(p: int) -> None:
        nonlocal accepted_after_switch
        i = 0
        while not done.is_set():
            task_id = f"{p}-{i}"
            i += 1
            try:
                await backend.enqueue(message(task_id, queue=queue))
            except StregoError as exc:
                run.refused[type(exc).__name__] += 1
                continue
            run.accepted.append(task_id)
            run.accepted_at.append(time.monotonic())
            if len(run.accepted) >= BEFORE:
                warm.set()
            if switched.is_set():
                accepted_after_switch += 1
                if accepted_after_switch >= AFTER:
                    done.set()

    async def consume() -> None:
        while not done.is_set():
            try:
                tasks = await backend.fetch([queue], 20, "c", lease_ms=60_000, block_ms=100)
                if tasks:
                    await backend.ack_many([(queue, t.id) for t in tasks], "c")
            except StregoError:
                continue
            run.acked += len(tasks)
            if switched.is_set():
                run.acked_after += len(tasks)

    async def fail_over() -> None:
        await warm.wait()
        await anyio.to_thread.run_sync(trigger)
        triggered = time.monotonic()
        # the switch is seen when the transport has moved to another server
        await eventually(
            lambda: backend.transport.settings.port != old_master,  # type: ignore[attr-defined]
            "the transport following the new master",
            patience=PAUSE_WINDOW_S,
        )
        run.switch_after = time.monotonic() - triggered
        switched.set()

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for p in range(PRODUCERS):
                    tg.start_soon(produce, p)
                tg.start_soon(consume)
                tg.start_soon(fail_over)
        missing = 0
        for task_id in run.accepted:
            if await backend.get_task(task_id, queue) is None:
                missing += 1
        run.lost = missing
        gaps = [b - a for a, b in zip(run.accepted_at, run.accepted_at[1:], strict=False)]
        run.pause = max(gaps, default=0.0)
    finally:
        await backend.aclose()
    return run


@pytest.mark.parametrize("durable", [0, 1], ids=["plain", "durable"])
async def test_sigkill_of_the_master(sentinel_setup: SentinelSetup, durable: int) -> None:
    killed: list[int] = []

    def kill() -> None:
        killed.append(sentinel_setup.kill_master().port)

    try:
        run = await run_through_failover(sentinel_setup, kill, durable=durable)
    finally:
        for port in killed:  # back as a replica of the new master (the sentinels see to it)
            sentinel_setup.server(port).start()
    print("\n" + run.report(f"SIGKILL, durable_replicas={durable}"))
    assert run.pause < PAUSE_WINDOW_S
    assert run.acked_after > 0
    if durable:
        # what a replica confirmed is on the replica promoted (the one furthest ahead)
        assert run.lost == 0


@pytest.mark.parametrize("durable", [0, 1, 2], ids=["plain", "durable", "durable-2"])
async def test_sentinel_failover(sentinel_setup: SentinelSetup, durable: int) -> None:
    def failover() -> None:
        assert sentinel_setup.sentinel_client().sentinel_failover("mymaster")

    run = await run_through_failover(sentinel_setup, failover, durable=durable)
    print("\n" + run.report(f"SENTINEL FAILOVER, durable_replicas={durable}"))
    assert run.acked_after > 0
    if durable < 2:
        assert run.pause < PAUSE_WINDOW_S
    else:
        # The old master takes writes until the sentinels reconfigure it, and the replica not
        # promoted still confirms them: only waiting for both replicas refuses those. The price:
        # enqueues are refused until the new master has two replicas again (the old master is
        # converted 8-18 s after the switch).
        assert run.lost == 0
        assert run.pause < ALL_REPLICAS_WINDOW_S
