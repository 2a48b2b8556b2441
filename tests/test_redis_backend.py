"""RedisBackend behaviour only Redis has: byte-exact payloads through the record codec, the key
layout (one hash tag per queue, schema version), consumer groups surviving purge, foreign keys."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys, queues_key
from strego.backends.redis.transitions import CONSUMER_BATCH
from strego.errors import ForeignKeyError
from strego.ids import new_task_id
from strego.message import TaskMessage
from strego.task import TaskState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["redis", "fakeredis"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "redis":
        c: Any = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        import fakeredis

        c = fakeredis.FakeAsyncRedis()
    yield c
    await c.aclose()


@pytest.fixture
async def backend(client: Any, clock: FakeClock) -> AsyncIterator[RedisBackend]:
    # a client of its own (the backend closes it), on the same server
    own = client.__class__(connection_pool=client.connection_pool.__class__(
        connection_class=client.connection_pool.connection_class,
        **client.connection_pool.connection_kwargs,
    ))  # fmt: skip
    b = RedisBackend(own, prefix=f"t{uuid.uuid4().hex[:8]}", clock=clock)
    yield b
    await b.aclose()


PAYLOADS = [
    b"[]",
    b"{}",
    b"3.141592653589793",
    b"",
    bytes(range(256)),
    b"\xff\xfe not utf-8 \x80",
    b'{"a":[],"b":{},"c":1e400,"d":"\\u0000"}',
    b";,;;,",
]


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_payload_round_trips_byte_exact(backend: RedisBackend, payload: bytes) -> None:
    await backend.enqueue(message("t", payload=payload))
    assert (await backend.list_tasks("q", TaskState.PENDING)).tasks[0].payload == payload
    (got,) = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert got.payload == payload
    assert await backend.fail("q", "t", "c1", "err", retry_in_ms=None) == TaskState.DEAD
    info = await backend.get_task("t")
    assert info is not None and info.payload == payload


async def test_every_field_round_trips(backend: RedisBackend, clock: FakeClock) -> None:
    m = TaskMessage(
        id="id:1-x.y",
        type="emails.send;é,",
        queue="q",
        payload=b"\x00;1,2",
        encoding="msgpack",
        max_retry=7,
        priority=9,
        timeout_ms=1500,
        labels={"tenant": "ácme;,", "k": ""},
        unique_key="user:1;é",
        unique_ttl_ms=60_000,
        created_ms=123,
        process_at_ms=clock() + 1_000,
    )
    await backend.enqueue(m)
    clock.advance(1_000)
    await backend.promote(["q"])
    (got,) = await backend.fetch(["q"], 1, "wörker;1,2", lease_ms=LEASE_MS)
    assert await backend.fail("q", m.id, "x", "bad; news, é", retry_in_ms=5)
    info = await backend.get_task(m.id, "q")
    assert info is not None
    assert (info.type, info.payload, info.encoding, info.labels) == (
        m.type, m.payload, m.encoding, m.labels,
    )  # fmt: skip
    assert (info.max_retry, info.priority, info.timeout_ms, info.unique_key, info.created_ms) == (
        7, 9, 1500, m.unique_key, 123,
    )  # fmt: skip
    assert (info.state, info.retried, info.deliveries, info.last_error) == (
        TaskState.RETRY, 1, 1, "bad; news, é",
    )  # fmt: skip
    assert got.consumer == "wörker;1,2"


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the hash Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % 16384


def test_crc16_matches_the_cluster_spec() -> None:
    assert crc16(b"123456789") == 0x31C3


async def test_every_key_of_a_queue_shares_one_slot_and_the_schema_version(
    backend: RedisBackend, client: Any, clock: FakeClock
) -> None:
    # make the backend create every kind of key
    await start(backend, "late")
    await backend.fail("q", "late", "c1", "x", retry_in_ms=10**5)
    await backend.enqueue_many(
        [message(f"p{p}", priority=p) for p in range(11)]
        + [message("s", process_at_ms=clock() + 10**6), message("u", unique_key="k",
                                                                  unique_ttl_ms=10**6)]
    )  # fmt: skip
    got = await backend.fetch(["q"], 3, "c1", lease_ms=LEASE_MS)
    await backend.ack("q", got[0].id, "c1")
    await backend.fail("q", got[1].id, "c1", "x", retry_in_ms=None)
    await backend.cancel("s", "q")
    await backend.pause("q")
    stored = {k.decode() async for k in client.scan_iter(match=f"{backend.prefix}:*")}
    queue_keys = stored - {queues_key(backend.prefix)}
    assert queue_keys <= set(Keys(backend.prefix, "q").all())
    assert len(queue_keys) >= 12 + 11 - 1  # everything but the signal stream of no earlier task
    assert all(k.startswith(f"{backend.prefix}:v1:{{q}}:") for k in queue_keys)
    assert len({key_slot(k) for k in Keys(backend.prefix, "q").all()}) == 1
    assert queues_key(backend.prefix) == f"{backend.prefix}:v1:queues"


async def test_purge_keeps_the_consumer_group_and_active_tasks(
    backend: RedisBackend, client: Any
) -> None:
    stream = Keys(backend.prefix, "q").streams[0]
    await start(backend, "running")
    await backend.enqueue_many([message("a"), message("b")])
    assert await backend.purge("q") == 2
    groups = await client.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"strego"]
    assert await backend.ack("q", "running", "c1")
    await backend.enqueue(message("c"))
    assert [t.id for t in await backend.fetch(["q"], 5, "c2", lease_ms=LEASE_MS)] == ["c"]


async def test_wrong_type_where_a_stream_belongs_raises_foreign_key_error(
    redis_url: str, clock: FakeClock
) -> None:
    # real Redis only: fakeredis crashes on XGROUP over a string key instead of replying WRONGTYPE
    client = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisBackend(client, prefix=f"t{uuid.uuid4().hex[:8]}", clock=clock)
    await client.set(Keys(backend.prefix, "q").streams[0], "not a stream")
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.enqueue(message("a", unique_key="k", unique_ttl_ms=1000))
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    keys = Keys(backend.prefix, "q")
    assert await client.exists(keys.tasks, keys.unique, keys.unique_exp) == 0, "nothing written"
    await backend.aclose()


async def test_unreadable_record_is_left_out_of_listings(
    backend: RedisBackend, client: Any
) -> None:
    # a header that does not parse has no state to show (docs/redis.md, "Unreadable records")
    await client.hset(Keys(backend.prefix, "q").tasks, "t", b"v2 something else")
    assert await backend.get_task("t", "q") is None
    assert await backend.get_task("t") is None


async def test_pending_record_stays_compact(backend: RedisBackend, client: Any) -> None:
    m = message("01HZX3K5J8Q9ZV7W2N4M6P8R0T", payload=b"null")
    await backend.enqueue(m)
    record = await client.hget(Keys(backend.prefix, "q").tasks, m.id)
    # header + envelope overhead beyond type, encoding and payload (the stream entry id is most)
    assert len(record) - len(m.type) - len(m.encoding) - len(m.payload) <= 48


async def test_fresh_pending_task_has_the_short_header_until_it_changes(
    backend: RedisBackend, client: Any, clock: FakeClock
) -> None:
    # the short form keeps a no-op task's record within a 32-byte allocation (docs/redis.md)
    m = message(new_task_id(clock()), payload=b"null", created_ms=clock())
    await backend.enqueue(m)
    tasks = Keys(backend.prefix, "q").tasks
    record = await client.hget(tasks, m.id)
    assert record.startswith(b"P")
    assert len(record) - len(m.type) - len(m.payload) <= 20  # "noop", "null": 28 bytes
    assert await backend.get_task(m.id) == m.info(TaskState.PENDING)
    [task] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert (task.id, task.state, task.deliveries) == (m.id, TaskState.ACTIVE, 1)
    assert (await client.hget(tasks, m.id)).startswith(b"a")
    assert await backend.ack("q", task.id, "c1")
    info = await backend.get_task(m.id)
    assert info is not None and info.state is TaskState.COMPLETED
    assert sum([await client.xlen(s) for s in Keys(backend.prefix, "q").streams]) == 0


async def test_remove_idle_consumers_looks_at_one_batch_per_call(
    backend: RedisBackend, client: Any, clock: FakeClock
) -> None:
    """Bounded work per call: one HSCAN batch of the consumers hash, not every consumer (nor
    every lease); the next call goes on from there, and the batches go round to every one."""
    await start(backend, "held", consumer="holder")
    k = backend.keys("q")
    await client.hset(k.consumers, mapping={f"idle-{i:04}": clock() for i in range(1_000)})
    clock.advance(20_000)
    first = await backend.remove_idle_consumers("q", 10_000)
    assert 0 < len(first) <= 2 * CONSUMER_BATCH  # HSCAN's COUNT is a hint
    removed = set(first)
    for _ in range(100):
        removed.update(await backend.remove_idle_consumers("q", 10_000))
    assert removed == {f"idle-{i:04}" for i in range(1_000)}
    assert [c.name for c in await backend.consumers("q")] == ["holder"]


async def test_fetch_drops_a_bounded_number_of_stray_entries_per_call(
    backend: RedisBackend, client: Any
) -> None:
    """Entries whose task is gone are dropped 1,000 a call at most (bounded work), and a fetch
    that stopped there returns at once instead of waiting: the next one goes on."""
    await backend.enqueue(message("gone"))
    assert await backend.cancel("gone", "q")  # the stream and its group stay
    stream = backend.keys("q").streams[0]
    for i in range(2_500):
        await client.xadd(stream, {"t": f"missing-{i}"})
    await backend.enqueue(message("real"))
    started = time.monotonic()
    assert await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS, block_ms=60_000) == []
    assert time.monotonic() - started < 30  # it did not wait out block_ms
    assert await client.xlen(stream) == 1_501
    assert await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS) == []
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert got.id == "real"


async def test_claim_stale_settles_a_bounded_number_per_call(
    backend: RedisBackend, clock: FakeClock
) -> None:
    """Stale tasks past max_deliveries go to dead 1,000 a call at most (bounded work); the next
    calls go on until every one is settled."""
    await backend.enqueue_many([message(f"t{i:04}") for i in range(2_500)])
    assert len(await backend.fetch(["q"], 2_500, "gone", lease_ms=LEASE_MS)) == 2_500
    clock.advance(LEASE_MS + 1)
    dead = []
    for _ in range(3):
        assert await backend.claim_stale(["q"], "c1", 10, lease_ms=LEASE_MS, max_deliveries=1) == []
        dead.append((await backend.queue_info("q")).counts[TaskState.DEAD])
    assert dead == [1_000, 2_000, 2_500]
