"""Failovers and slot migration on a real 6-node Redis Cluster during a run of TASKS tasks over 12
queues spread across the primaries (producers with enqueue_many, four consumers fetching over
every queue with a blocking fetch, one claiming stale tasks):

- `CLUSTER FAILOVER` on a replica (coordinated: nothing is lost);
- SIGKILL of a primary, restarted afterwards (its replica takes over; its held tasks are claimed);
- a slot migrating mid-run (MIGRATING/IMPORTING: ASK and TRYAGAIN until it is done).

Every task must complete exactly once: the ack of each returns True once, and all of them do."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable

import anyio
import pytest

from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.backends.redis.cluster import ClusterTransport
from strego.backends.redis.slots import key_slot
from strego.errors import StregoError, TaskIdConflictError
from tests.cluster_setup import ClusterSetup

pytestmark = pytest.mark.anyio

TASKS = 5000
QUEUES = 12
BATCH = 100
LEASE_MS = 5000
#: The trigger fires once this many tasks were completed.
TRIGGER_AT = 1000


async def run_through(
    cluster: ClusterSetup, trigger: Callable[[list[str], ClusterTransport], None]
) -> tuple[Counter[str], float, ClusterTransport]:
    """Run TASKS tasks through `trigger` (called in a thread with the queue names and the
    transport); return how many times each task's ack returned True, and the longest time
    without a completion."""
    cluster.wait_healthy()
    prefix = f"c{uuid.uuid4().hex[:8]}"
    queues = [f"q{i}-{uuid.uuid4().hex[:6]}" for i in range(QUEUES)]
    backend = RedisBackend.from_url(cluster.url("cluster_timeout=30"), prefix=prefix)
    transport = backend.transport
    assert isinstance(transport, ClusterTransport)
    completed: Counter[str] = Counter()
    completed_at: list[float] = []
    all_done = anyio.Event()
    warm = anyio.Event()

    async def produce() -> None:
        ids = [f"t{i}" for i in range(TASKS)]
        for start in range(0, TASKS, BATCH):
            batch = [message(i, queue=queues[int(i[1:]) % QUEUES]) for i in ids[start:][:BATCH]]
            while True:  # a batch whose reply was lost is sent again: stored ones conflict
                try:
                    results = await backend.enqueue_many(batch)
                except StregoError:
                    continue
                batch = [
                    m
                    for m, r in zip(batch, results, strict=True)
                    if isinstance(r, StregoError) and not isinstance(r, TaskIdConflictError)
                ]
                if not batch:
                    break

    async def consume(name: str) -> None:
        while not all_done.is_set():
            try:
                tasks = await backend.fetch(queues, 50, name, lease_ms=LEASE_MS, block_ms=200)
                if not tasks:
                    continue
                acked = await backend.ack_many([(t.queue, t.id) for t in tasks], name)
            except StregoError:
                continue  # what it held is claimed after its lease
            for task, ok in zip(tasks, acked, strict=True):
                if ok:
                    completed[task.id] += 1
                    completed_at.append(time.monotonic())
            if len(completed) >= TRIGGER_AT:
                warm.set()
            if len(completed) >= TASKS:
                all_done.set()

    async def claim() -> None:
        while not all_done.is_set():
            try:
                tasks = await backend.claim_stale(
                    queues, "claimer", 100, lease_ms=LEASE_MS, max_deliveries=100
                )
                if tasks:
                    acked = await backend.ack_many([(t.queue, t.id) for t in tasks], "claimer")
                    for task, ok in zip(tasks, acked, strict=True):
                        if ok:
                            completed[task.id] += 1
                            completed_at.append(time.monotonic())
            except StregoError:
                pass
            with anyio.move_on_after(0.5):
                await all_done.wait()

    async def fire() -> None:
        await warm.wait()
        await anyio.to_thread.run_sync(trigger, [backend.keys(q).tasks for q in queues], transport)

    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for n in range(4):
                    tg.start_soon(consume, f"w{n}")
                tg.start_soon(claim)
                tg.start_soon(fire)
    finally:
        await backend.aclose()
    gaps = [b - a for a, b in itertools.pairwise(completed_at)]
    return completed, max(gaps, default=0.0), transport


def _owner_port(cluster: ClusterSetup, key: str) -> int:
    """The port of the primary serving `key`'s slot (asked of the cluster itself)."""
    slot = key_slot(key)
    for port in cluster.primaries():
        for first, last, *_ in cluster.client(port).execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return int(_[0][1])
    raise AssertionError(f"no primary serves slot {slot}")


def _replica_of(cluster: ClusterSetup, primary: int) -> int:
    info = cluster.client(primary).info("replication")
    return int(info["slave0"]["port"])


def check(completed: Counter[str], pause: float, name: str, transport: ClusterTransport) -> None:
    twice = [task_id for task_id, n in completed.items() if n > 1]
    print(
        f"\n{name}: completed={len(completed)} twice={len(twice)} pause={pause:.2f}s "
        f"stats={transport.stats}"
    )
    assert len(completed) == TASKS
    assert not twice


async def test_cluster_failover_on_a_replica(redis_cluster: ClusterSetup) -> None:
    def failover(keys: list[str], transport: ClusterTransport) -> None:
        primary = _owner_port(redis_cluster, keys[0])
        replica = _replica_of(redis_cluster, primary)
        assert redis_cluster.client(replica).execute_command("CLUSTER FAILOVER")

    completed, pause, transport = await run_through(redis_cluster, failover)
    check(completed, pause, "CLUSTER FAILOVER", transport)


async def test_sigkill_of_a_primary(redis_cluster: ClusterSetup) -> None:
    killed: list[int] = []

    def kill(keys: list[str], transport: ClusterTransport) -> None:
        primary = _owner_port(redis_cluster, keys[0])
        redis_cluster.server(primary).stop()  # SIGKILL
        killed.append(primary)

    try:
        completed, pause, transport = await run_through(redis_cluster, kill)
    finally:
        for port in killed:  # back, as a replica of the primary that replaced it
            redis_cluster.server(port).start()
    check(completed, pause, "SIGKILL of a primary", transport)
    assert transport.stats.refreshes > 1


async def test_slot_migrating_mid_run(redis_cluster: ClusterSetup) -> None:
    def migrate(keys: list[str], transport: ClusterTransport) -> None:
        source = _owner_port(redis_cluster, keys[0])
        target = next(p for p in redis_cluster.primaries() if p != source)
        redis_cluster.migrate_slot(key_slot(keys[0]), source, target)

    completed, pause, transport = await run_through(redis_cluster, migrate)
    check(completed, pause, "slot migration", transport)
    assert transport.stats.moved + transport.stats.ask > 0
