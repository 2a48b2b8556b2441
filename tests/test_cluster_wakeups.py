"""Waiting on a real Redis Cluster (strego/backends/redis/wakeups.py): an idle server holds one
waiting connection per node that owns one of its queues, not one per slot; an enqueue to any of
its queues wakes it at once; a failover or a slot migrating mid-wait loses nothing; and a single
Redis never publishes the wake-ups (its scripts keep SHARDED_NOTIFY off)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

import strego
from conformance.helpers import message
from strego.backends.redis import RedisBackend
from strego.backends.redis.cluster import ClusterTransport
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.scripts import script
from strego.backends.redis.slots import key_slot
from strego.errors import StregoError, TaskIdConflictError
from strego.message import TaskMessage
from tests.cluster_setup import ClusterSetup
from tests.runtime_support import eventually, make_server

pytestmark = pytest.mark.anyio

QUEUES = 12
#: the fetches' and the scheduler's waits: a wake-up must come well before half of them (a
#: loaded machine may take a second), a missed one only at their end
BLOCK_MS = 5000
SCHEDULE_WAIT_MS = 10_000


def _owners(cluster: ClusterSetup) -> dict[int, int]:
    """The primary port serving each slot."""
    owners: dict[int, int] = {}
    for first, last, primary, *_ in cluster.client(cluster.primaries()[0]).execute_command(
        "CLUSTER SLOTS"
    ):
        for slot in range(first, last + 1):
            owners[slot] = int(primary[1])
    return owners


def spread_queues(cluster: ClusterSetup, backend: RedisBackend) -> list[str]:
    """QUEUES queue names, in as many slots, every primary owning at least three."""
    owners = _owners(cluster)
    per_node: dict[int, list[str]] = {p: [] for p in set(owners.values())}
    slots: set[int] = set()
    while sum(len(q) for q in per_node.values()) < QUEUES:
        name = f"w{uuid.uuid4().hex[:8]}"
        slot = key_slot(backend.keys(name).tasks)
        node = per_node[owners[slot]]
        if slot not in slots and len(node) < QUEUES // len(per_node):
            slots.add(slot)
            node.append(name)
    return [q for names in per_node.values() for q in names]


def subscribed_only(cluster: ClusterSetup, port: int) -> bool:
    """The node holds a sharded subscriber and no blocked XREAD. Just after a failover or a
    slot move a wait may fall back on XREAD once (its subscription refused by a node that has
    not learnt the new map yet); the next wait subscribes."""
    return cluster.blocked_clients(port) == 0 and waiting_connections(cluster, port) > 0


def waiting_connections(cluster: ClusterSetup, port: int, kind: str = "ssub") -> int:
    """Connections on this node that wait for a fetch or a scheduler: blocked (XREAD BLOCK) or
    in sharded subscribe mode. With kind="sub": those in plain subscribe mode (the backend's one
    connection for results and cancel requests, notify.py)."""
    count = 0
    for client in cluster.client(port).execute_command("CLIENT LIST"):
        if kind == "sub":
            count += int(client["sub"]) > 0
        else:
            count += "b" in client["flags"] or int(client.get("ssub", 0)) > 0
    return count


@pytest.fixture
async def cluster_backend(redis_cluster: ClusterSetup) -> AsyncIterator[RedisBackend]:
    redis_cluster.wait_healthy()
    backend = RedisBackend.from_url(redis_cluster.url(), prefix=f"c{uuid.uuid4().hex[:8]}")
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_an_idle_server_holds_one_waiting_connection_per_node(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    backend = cluster_backend
    queues = spread_queues(redis_cluster, backend)
    primaries = redis_cluster.primaries()
    before = {p: waiting_connections(redis_cluster, p) for p in primaries}
    done: list[float] = []

    server = make_server(backend, queues=queues, concurrency=4)

    @server.handler("job")
    async def handler(task: strego.Task) -> None:
        done.append(time.monotonic())

    async with server:
        # the server's fetch and its scheduler both wait: one subscriber per node between them
        transport = backend.transport
        assert isinstance(transport, ClusterTransport)
        await eventually(lambda: len(transport.wakeups.nodes) == len(primaries), "subscribers")
        await anyio.sleep(0.5)
        waiting = {p: waiting_connections(redis_cluster, p) - before[p] for p in primaries}
        assert waiting == {p: 1 for p in primaries}, waiting
        assert sum(redis_cluster.blocked_clients(p) for p in primaries) == 0
        # besides: the server's watch of cancel requests, one plain subscriber on one node
        assert sum(waiting_connections(redis_cluster, p, "sub") for p in primaries) <= 1
        # an enqueue to any queue (so any node) wakes the wait well before BLOCK_MS
        client = strego.Client(backend)
        delays: list[float] = []
        for queue in queues:
            sent = time.monotonic()
            await client.enqueue(strego.Task("job", 1, queue=queue))
            seen = len(done)
            await eventually(lambda n=seen: len(done) > n, "the task run")
            delays.append(done[-1] - sent)
        assert max(delays) < BLOCK_MS / 2000, delays
        waiting = {p: waiting_connections(redis_cluster, p) - before[p] for p in primaries}
        assert waiting == {p: 1 for p in primaries}, waiting


async def _woken_by_enqueue(backend: RedisBackend, queues: list[str], target: str) -> float:
    """Start a blocking fetch over `queues`, enqueue to `target` once it waits; the seconds
    from the enqueue to the fetch's return (it must return that task)."""
    got: list[str] = []
    returned = anyio.Event()
    transport = backend.transport
    assert isinstance(transport, ClusterTransport)

    async def fetch() -> None:
        with anyio.fail_after(30):
            while not got:
                tasks = await backend.fetch(queues, 1, "w", lease_ms=60_000, block_ms=BLOCK_MS)
                got.extend(t.id for t in tasks)
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch)
        await anyio.sleep(0.3)  # subscribed and waiting
        sent = time.monotonic()
        await backend.enqueue(message("t1", queue=target))
        await returned.wait()
    assert got == ["t1"]
    return time.monotonic() - sent


def _fail_over(cluster: ClusterSetup, replica: int) -> None:
    """CLUSTER FAILOVER on `replica`, sent again when it timed out: a shard that has just failed
    over ignores the next manual failover until the nodes agree on it."""
    for _ in range(5):
        cluster.client(replica).execute_command("CLUSTER FAILOVER")
        try:
            cluster.wait_role(replica, "master", timeout=6)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{replica} did not take over")


async def _enqueue(backend: RedisBackend, task: TaskMessage) -> None:
    """Enqueue, again while the nodes still disagree about who serves the slot."""
    with anyio.fail_after(30):
        while True:
            try:
                await backend.enqueue(task)
                return
            except TaskIdConflictError:
                return  # stored by a try whose reply was lost
            except StregoError:
                await anyio.sleep(0.05)


async def test_a_fetch_wait_resumes_across_a_failover(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    """CLUSTER FAILOVER of the node that serves the queue, while a fetch waits on it: the
    subscriber there is dropped (moved slots, or the node demoted), the fetch looks again and
    waits on the new primary, and a task enqueued after the failover reaches it."""
    backend = cluster_backend
    queue = f"f{uuid.uuid4().hex[:8]}"
    primary = _owners(redis_cluster)[key_slot(backend.keys(queue).tasks)]
    replica = int(redis_cluster.client(primary).info("replication")["slave0"]["port"])
    got: list[str] = []

    async def fetch() -> None:
        with anyio.fail_after(40):
            while not got:
                try:
                    tasks = await backend.fetch([queue], 1, "w", lease_ms=60_000, block_ms=BLOCK_MS)
                except StregoError:  # a pass while the nodes disagree: a server fetches again
                    continue
                got.extend(t.id for t in tasks)

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch)
        await eventually(lambda: waiting_connections(redis_cluster, primary) > 0, "the wait")
        await anyio.to_thread.run_sync(_fail_over, redis_cluster, replica)
        await eventually(lambda: subscribed_only(redis_cluster, replica), "the new wait")
        await _enqueue(backend, message("after", queue=queue))
    assert got == ["after"]
    redis_cluster.wait_healthy()


async def test_a_fetch_wait_resumes_across_a_slot_migration(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    """The queue's slot moves to another primary while a fetch waits on it: Redis drops the
    subscription there (SUNSUBSCRIBE), the fetch looks again, subscribes on the new owner, and
    the next enqueue wakes it promptly."""
    backend = cluster_backend
    queue = f"m{uuid.uuid4().hex[:8]}"
    slot = key_slot(backend.keys(queue).tasks)
    source = _owners(redis_cluster)[slot]
    target = next(p for p in redis_cluster.primaries() if p != source)
    await backend.enqueue(message("before", queue=queue))
    assert [t.id for t in await backend.fetch([queue], 1, "w", lease_ms=60_000)] == ["before"]
    got: list[str] = []
    woken: list[float] = []

    async def fetch() -> None:
        with anyio.fail_after(40):
            while not got:
                tasks = await backend.fetch([queue], 1, "w", lease_ms=60_000, block_ms=BLOCK_MS)
                got.extend(t.id for t in tasks)
        woken.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch)
        await eventually(lambda: waiting_connections(redis_cluster, source) > 0, "the wait")
        await anyio.to_thread.run_sync(redis_cluster.migrate_slot, slot, source, target)
        # subscribed there, not (or no longer) fallen back on a blocking XREAD
        await eventually(lambda: subscribed_only(redis_cluster, target), "the new wait")
        sent = time.monotonic()
        await backend.enqueue(message("after", queue=queue))
    assert got == ["after"]
    assert woken[0] - sent < BLOCK_MS / 2000, f"woken after {woken[0] - sent:.2f}s"


async def test_enqueues_wake_a_fetch_on_every_node(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    backend = cluster_backend
    queues = spread_queues(redis_cluster, backend)
    for queue in queues[:: QUEUES // 3]:  # one queue of each node
        delay = await _woken_by_enqueue(backend, queues, queue)
        assert delay < BLOCK_MS / 2000, f"woken after {delay:.2f}s (the wait is {BLOCK_MS} ms)"
        await backend.ack_many([(queue, "t1")], "w")
        await backend.delete("t1", queue)


async def test_a_scheduler_wait_ends_on_an_earlier_schedule(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    backend = cluster_backend
    queues = spread_queues(redis_cluster, backend)
    # the first wait's look records each signal stream's last entry
    await backend.wait_schedule_change(queues, 150)
    for queue in queues[:: QUEUES // 3]:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                await backend.wait_schedule_change(queues, SCHEDULE_WAIT_MS)
                tg.cancel_scope.cancel()

            tg.start_soon(wait)
            await anyio.sleep(0.3)
            await backend.enqueue(message(f"s-{queue}", queue=queue, process_in_ms=60_000))
            with anyio.fail_after(5):
                await anyio.sleep_forever()
        assert time.monotonic() - started < SCHEDULE_WAIT_MS / 2000


def test_single_redis_scripts_never_publish() -> None:
    """The gate: a script as a single Redis loads it has SHARDED_NOTIFY false, so it never runs
    SPUBLISH (a command Redis 6 does not have); on Cluster it is true."""
    for name in ("enqueue", "promote", "release", "requeue_dead", "run_now", "fire_schedule"):
        assert "local SHARDED_NOTIFY = false\n" in script(name).source
        assert "local SHARDED_NOTIFY = true\n" in script(name, 0, True).source
        assert "SPUBLISH" in script(name).source  # present, and only behind the gate


async def test_resume_wakes_a_fetch_waiting_on_a_paused_queue(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend
) -> None:
    backend = cluster_backend
    queue = f"r{uuid.uuid4().hex[:8]}"
    await backend.pause(queue)
    await backend.enqueue(message("held", queue=queue))
    got: list[str] = []

    async def fetch() -> None:
        with anyio.fail_after(30):
            while not got:
                tasks = await backend.fetch([queue], 1, "w", lease_ms=60_000, block_ms=BLOCK_MS)
                got.extend(t.id for t in tasks)

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch)
        await anyio.sleep(0.3)  # subscribed and waiting
        sent = time.monotonic()
        await backend.resume(queue)
    assert got == ["held"]
    assert time.monotonic() - sent < BLOCK_MS / 2000


async def test_waits_keep_their_time_while_the_pubsub_connection_cannot_open(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose pub/sub connection hangs opening (a failover): a waiting fetch and a
    scheduler's wait still return at their time limit, not SUBSCRIBE_TIMEOUT_S (5 s) later."""
    backend = cluster_backend
    queues = spread_queues(redis_cluster, backend)
    await backend.fetch(queues, 1, "w", lease_ms=60_000, block_ms=0)  # the first call's checks

    async def hang(*args: object, **kwargs: object) -> AnyioPubSub:
        await anyio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(AnyioPubSub, "open", staticmethod(hang))
    started = time.monotonic()
    assert await backend.fetch(queues, 1, "w", lease_ms=60_000, block_ms=300) == []
    assert time.monotonic() - started < 0.3 + 2
    started = time.monotonic()
    await backend.wait_schedule_change(queues, 300)
    assert time.monotonic() - started < 0.3 + 2


async def test_an_unreachable_node_at_the_first_call_leaves_wake_ups_on(
    redis_cluster: ClusterSetup, cluster_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis version check could not reach a node (a failover at the process's first call):
    the waits block on the streams meanwhile, and the check is made again later, so the
    process's scripts publish wake-ups once the cluster answers, not never."""
    from strego.backends.redis import core

    backend = cluster_backend
    transport = backend.transport
    assert isinstance(transport, ClusterTransport)
    queues = spread_queues(redis_cluster, backend)
    asked: list[bool | None] = []
    real = core.sharded_pubsub_supported

    async def flaky(cluster: ClusterTransport) -> bool | None:
        asked.append(None if not asked else await real(cluster))
        return asked[-1]

    monkeypatch.setattr(core, "sharded_pubsub_supported", flaky)
    monkeypatch.setattr(core, "SHARDED_RECHECK_S", 0.2)
    await backend.enqueue(message("a", queue=queues[0]))
    assert asked == [None]
    assert not backend._sharded_notify and backend._wakeups is None
    await backend.enqueue(message("b", queue=queues[0]))  # too soon: not asked again
    assert asked == [None]
    await anyio.sleep(0.3)
    await backend.enqueue(message("c", queue=queues[0]))
    assert asked == [None, True]
    assert backend._sharded_notify and backend._wakeups is transport.wakeups
