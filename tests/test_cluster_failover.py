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
from strego.task import TaskInfo, TaskState
from tests.cluster_setup import ClusterSetup
from tests.runtime_support import eventually

pytestmark = pytest.mark.anyio

TASKS = 5000
QUEUES = 12
BATCH = 100
LEASE_MS = 5000
#: The trigger fires once this many tasks were completed.
TRIGGER_AT = 1000


async def run_through(
    cluster: ClusterSetup,
    trigger: Callable[[list[str], ClusterTransport], None],
    *,
    durable: bool = False,
) -> tuple[Counter[str], float, ClusterTransport]:
    """Run TASKS tasks through `trigger` (called in a thread with the queue names and the
    transport); return how many times each task's ack returned True, and the longest time
    without a completion."""
    cluster.wait_healthy()
    prefix = f"c{uuid.uuid4().hex[:8]}"
    queues = [f"q{i}-{uuid.uuid4().hex[:6]}" for i in range(QUEUES)]
    query = "cluster_timeout=30" + ("&durable=true" if durable else "")
    backend = RedisBackend.from_url(cluster.url(query), prefix=prefix)
    transport = backend.transport
    assert isinstance(transport, ClusterTransport)
    completed: Counter[str] = Counter()
    uncertain: set[str] = set()
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

    async def ack(tasks: list[TaskInfo], name: str) -> None:
        try:
            acked = await backend.ack_many([(t.queue, t.id) for t in tasks], name)
        except StregoError:
            # The acks may have been applied (a reply lost with a primary): told apart at the end
            uncertain.update(t.id for t in tasks)
            return
        for task, ok in zip(tasks, acked, strict=True):
            if ok:
                completed[task.id] += 1
                completed_at.append(time.monotonic())
        if len(completed) >= TRIGGER_AT:
            warm.set()
        if len(completed.keys() | uncertain) >= TASKS:
            all_done.set()

    async def consume(name: str) -> None:
        while not all_done.is_set():
            try:
                tasks = await backend.fetch(queues, 50, name, lease_ms=LEASE_MS, block_ms=200)
            except StregoError:
                continue  # what it took is claimed after its lease
            if tasks:
                await ack(tasks, name)

    async def claim() -> None:
        while not all_done.is_set():
            try:
                tasks = await backend.claim_stale(
                    queues, "claimer", 100, lease_ms=LEASE_MS, max_deliveries=100
                )
                if tasks:
                    await ack(tasks, "claimer")
            except StregoError:
                pass
            with anyio.move_on_after(0.5):
                await all_done.wait()

    async def fire() -> None:
        await warm.wait()
        await anyio.to_thread.run_sync(trigger, [backend.keys(q).tasks for q in queues], transport)

    try:
        # (a bound, not a timing: the figures below say what was missing when it was hit)
        with anyio.move_on_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for n in range(4):
                    tg.start_soon(consume, f"w{n}")
                tg.start_soon(claim)
                tg.start_soon(fire)
        # An ack whose reply was lost completed its task if the task is completed now.
        for task_id in uncertain - completed.keys():
            info = await backend.get_task(task_id, queues[int(task_id[1:]) % QUEUES])
            if info is not None and info.state is TaskState.COMPLETED:
                completed[task_id] += 1
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


def _waiting(cluster: ClusterSetup, port: int) -> bool:
    """Does a connection wait on this node: blocked, or in sharded subscribe mode?"""
    clients = cluster.client(port).execute_command("CLIENT LIST")
    return any("b" in c["flags"] or int(c.get("ssub", 0)) > 0 for c in clients)


def _replica_of(cluster: ClusterSetup, primary: int) -> int:
    info = cluster.client(primary).info("replication")
    return int(info["slave0"]["port"])


def check(completed: Counter[str], pause: float, name: str, transport: ClusterTransport) -> None:
    twice = [task_id for task_id, n in completed.items() if n > 1]
    print(
        f"\n{name}: completed={len(completed)} twice={len(twice)} pause={pause:.2f}s "
        f"stats={transport.stats}"
    )
    assert len(completed) == TASKS, f"{TASKS - len(completed)} tasks never completed"
    assert not twice, f"{len(twice)} tasks completed twice"


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
        replica = _replica_of(redis_cluster, primary)
        redis_cluster.server(primary).stop()  # SIGKILL
        killed.append(primary)
        # Restarted once its replica took over, it comes back as that one's replica: then
        # durable enqueues to that shard have a replica to wait for again.
        redis_cluster.wait_role(replica, "master")
        redis_cluster.server(primary).start()
        killed.remove(primary)

    try:
        # Without the durability switch an enqueue the primary took but had not replicated is
        # lost with it (docs/deploy.md); with it, every acknowledged enqueue survives.
        completed, pause, transport = await run_through(redis_cluster, kill, durable=True)
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


async def test_blocked_fetch_and_held_tasks_across_a_primary_kill(
    redis_cluster: ClusterSetup,
) -> None:
    """A fetch blocked on a queue whose primary is killed resumes on the promoted replica; the
    tasks that primary's consumer held are claimed there once their lease expires."""
    redis_cluster.wait_healthy()
    backend = RedisBackend.from_url(redis_cluster.url(), prefix=f"c{uuid.uuid4().hex[:8]}")
    queue = f"q-{uuid.uuid4().hex[:6]}"
    primary = _owner_port(redis_cluster, backend.keys(queue).tasks)
    killed = False
    try:
        await backend.enqueue(message("held", queue=queue))
        (held,) = await backend.fetch([queue], 1, "gone", lease_ms=1000)
        redis_cluster.wait_replicated()
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def blocked_fetch() -> None:
                tasks = await backend.fetch([queue], 1, "w", lease_ms=60_000, block_ms=30_000)
                got.extend(t.id for t in tasks)
                tg.cancel_scope.cancel()

            tg.start_soon(blocked_fetch)
            # it waits on a sharded subscription there (wakeups.py), or blocks there
            await eventually(lambda: _waiting(redis_cluster, primary), "the fetch to wait")
            redis_cluster.server(primary).stop()  # SIGKILL
            killed = True
            await backend.enqueue(message("after", queue=queue))  # waits for the new primary
            with anyio.fail_after(30):
                await anyio.sleep_forever()
        assert got == ["after"]
        claimed: list[str] = []

        async def claim() -> bool:
            tasks = await backend.claim_stale([queue], "w", 10, lease_ms=60_000, max_deliveries=10)
            claimed.extend(t.id for t in tasks)
            return bool(claimed)

        await eventually(claim, "the held task claimed")
        assert claimed == [held.id]
    finally:
        await backend.aclose()
        if killed:
            redis_cluster.server(primary).start()
