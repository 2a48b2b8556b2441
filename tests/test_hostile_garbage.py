"""Garbage written straight into Redis under strego's keys, with a server running on the Redis
backend (asyncio over redis-py, trio over the anyio transport): stream entries that name no task
or lack fields are dropped and the queue keeps being served; task records that do not decode go
to dead with the reason, never stall a fetch nor vanish, and listings show what can be read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import redis

import strego
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys
from strego.backends.redis.record import UNREADABLE_TYPE
from strego.errors import ForeignKeyError
from strego.task import TaskState
from tests.faults.support import make_backend
from tests.runtime_support import wait_for_state

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def raw(clean_redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(clean_redis_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
async def backend(clean_redis_url: str, anyio_backend: object) -> AsyncIterator[RedisBackend]:
    b = make_backend(clean_redis_url, "hostile", anyio_backend)
    try:
        yield b
    finally:
        await b.aclose()


def serving(backend: RedisBackend, ran: list[str], queues: list[str]) -> strego.Server:
    server = strego.Server(backend, queues=queues, claim_stale_after=1.0, recovery_interval=0.2)

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        assert task.id is not None
        ran.append(task.id)

    return server


async def test_stream_entries_naming_no_task_are_dropped(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    good = await strego.Client(backend).enqueue(strego.Task("job", 1, queue="q"))
    raw.xadd(k.streams[0], {"foo": "bar"})  # no `t` field
    raw.xadd(k.streams[0], {"t": "no-such-task"})
    raw.xadd(k.streams[0], {"t": "", "x": "\xff"})
    ran: list[str] = []
    async with serving(backend, ran, ["q"]):
        await wait_for_state(backend, good.id, TaskState.COMPLETED)
    assert ran == [good.id]
    assert sum(raw.xlen(s) for s in k.streams) == 0  # the garbage entries are gone
    counts = (await backend.queue_info("q")).counts
    assert counts[TaskState.PENDING] == counts[TaskState.ACTIVE] == 0


def header_end(record: bytes) -> int:
    return record.index(b";") + 1


async def test_unreadable_envelope_goes_dead_and_fetch_returns_the_rest(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    client = strego.Client(backend)
    good = [await client.enqueue(strego.Task("job", i, queue="q")) for i in range(2)]
    bad_labels = await client.enqueue(strego.Task("job", 0, queue="q", labels={"a": "b"}))
    cut = await client.enqueue(strego.Task("job", 0, queue="q"))
    rec = raw.hget(k.tasks, bad_labels.id)
    assert isinstance(rec, bytes)
    raw.hset(k.tasks, bad_labels.id, rec.replace(b'{"a":"b"}', b'{"a":"b"X'))
    rec = raw.hget(k.tasks, cut.id)
    assert isinstance(rec, bytes)
    raw.hset(k.tasks, cut.id, rec[: header_end(rec) + 3])  # valid header, envelope cut short

    fetched = await backend.fetch(["q"], 10, "c1", lease_ms=60_000)

    assert sorted(t.id for t in fetched) == sorted(t.id for t in good)
    for task_id in (bad_labels.id, cut.id):
        info = await backend.get_task(task_id)
        assert info is not None and info.state is TaskState.DEAD
        assert info.type == UNREADABLE_TYPE and info.payload == b""
        assert info.last_error is not None
        assert info.last_error.startswith("unreadable task record: ")
    dead = (await backend.list_tasks("q", TaskState.DEAD)).tasks
    assert sorted(t.id for t in dead) == sorted([bad_labels.id, cut.id])
    counts = (await backend.queue_info("q")).counts
    assert counts[TaskState.DEAD] == 2 and counts[TaskState.ACTIVE] == 2
    assert counts[TaskState.PENDING] == 0


async def test_listing_shows_unreadable_records_without_failing(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    client = strego.Client(backend)
    good = await client.enqueue(strego.Task("job", 1, queue="q"))
    bad = await client.enqueue(strego.Task("job", 2, queue="q"))
    rec = raw.hget(k.tasks, bad.id)
    assert isinstance(rec, bytes)
    raw.hset(k.tasks, bad.id, rec[: header_end(rec) + 3])
    pending = (await backend.list_tasks("q", TaskState.PENDING)).tasks
    assert [t.id for t in pending] == [good.id, bad.id]
    assert pending[1].type == UNREADABLE_TYPE and pending[1].payload == b""
    assert pending[1].last_error is not None
    assert pending[1].last_error.startswith("unreadable task record: ")
    # a record with no header at all has no state to show: listings leave it out
    raw.hset(k.tasks, bad.id, b"garbage")
    assert [t.id for t in (await backend.list_tasks("q", TaskState.PENDING)).tasks] == [good.id]
    assert await backend.get_task(bad.id, "q") is None


async def test_unreadable_envelope_of_a_stale_task_goes_dead_on_claim(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    task = await strego.Client(backend).enqueue(strego.Task("job", 1, queue="q"))
    [active] = await backend.fetch(["q"], 1, "gone", lease_ms=1)
    rec = raw.hget(k.tasks, active.id)
    assert isinstance(rec, bytes)
    raw.hset(k.tasks, task.id, rec[: header_end(rec) + 3])
    await anyio.sleep(0.01)  # let the 1 ms lease run out

    claimed = await backend.claim_stale(["q"], "c2", 10, lease_ms=60_000, max_deliveries=5)

    assert claimed == []
    info = await backend.get_task(task.id)
    assert info is not None and info.state is TaskState.DEAD
    assert info.last_error is not None
    assert info.last_error.startswith("unreadable task record: ")


async def test_server_buries_unreadable_tasks_and_keeps_serving(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    client = strego.Client(backend)
    bad = await client.enqueue(strego.Task("job", 0, queue="q"))
    rec = raw.hget(k.tasks, bad.id)
    assert isinstance(rec, bytes)
    raw.hset(k.tasks, bad.id, rec[: header_end(rec) + 3])
    first = await client.enqueue(strego.Task("job", 1, queue="q"))
    ran: list[str] = []
    async with serving(backend, ran, ["q"]):
        await wait_for_state(backend, bad.id, TaskState.DEAD)
        await wait_for_state(backend, first.id, TaskState.COMPLETED)
        later = await client.enqueue(strego.Task("job", 2, queue="q"))
        await wait_for_state(backend, later.id, TaskState.COMPLETED)
    assert sorted(ran) == sorted([first.id, later.id])


@pytest.mark.parametrize("where", ["pending", "scheduled", "active"])
async def test_record_without_a_header_goes_dead_with_a_reason(
    backend: RedisBackend, raw: redis.Redis, where: str
) -> None:
    k = Keys("hostile", "q")
    client = strego.Client(backend)
    good = await client.enqueue(strego.Task("job", 1, queue="q"))
    if where == "scheduled":
        bad = await client.enqueue(strego.Task("job", 2, queue="q", process_in=0.01))
    else:
        bad = await client.enqueue(strego.Task("job", 2, queue="q", priority=5))
    if where == "active":
        [active] = await backend.fetch(["q"], 1, "gone", lease_ms=1)
        assert active.id == bad.id
    garbage = b"\xffnot a record"
    raw.hset(k.tasks, bad.id, garbage)
    await anyio.sleep(0.02)  # the schedule or the 1 ms lease is due

    if where == "scheduled":
        await backend.promote(["q"])
    if where == "active":
        assert await backend.claim_stale(["q"], "c2", 10, lease_ms=60_000, max_deliveries=5) == []
    fetched = await backend.fetch(["q"], 10, "c1", lease_ms=60_000)

    assert [t.id for t in fetched] == [good.id]
    [dead] = (await backend.list_tasks("q", TaskState.DEAD)).tasks
    assert dead.id == bad.id and dead.type == UNREADABLE_TYPE
    assert dead.last_error == "unreadable task record: its header does not parse"
    rec = raw.hget(k.tasks, bad.id)
    assert isinstance(rec, bytes) and rec.endswith(garbage)  # its bytes are kept
    counts = (await backend.queue_info("q")).counts
    assert counts[TaskState.DEAD] == 1 and counts[TaskState.ACTIVE] == 1
    assert counts[TaskState.PENDING] == counts[TaskState.SCHEDULED] == 0
    assert sum(raw.xlen(s) for s in k.streams) == 1  # only the fetched good task's entry


@pytest.mark.parametrize("kind", ["tasks", "stream", "scheduled", "signal"])
async def test_foreign_key_skips_its_queue_and_serves_the_others(
    backend: RedisBackend, raw: redis.Redis, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = Keys("hostile", "bad")
    client = strego.Client(backend)
    await client.enqueue(strego.Task("job", 0, queue="bad"))
    key = {"tasks": bad.tasks, "stream": bad.streams[0], "scheduled": bad.scheduled,
           "signal": bad.signal}[kind]  # fmt: skip
    raw.delete(key)
    raw.set(key, "someone else's")
    now = await client.enqueue(strego.Task("job", 1, queue="good"))
    later = await client.enqueue(strego.Task("job", 2, queue="good", process_in=0.3))
    ran: list[str] = []
    with caplog.at_level("ERROR", logger="strego.backends.redis"):
        async with serving(backend, ran, ["bad", "good"]):
            await wait_for_state(backend, now.id, TaskState.COMPLETED, queue="good")
            await wait_for_state(backend, later.id, TaskState.COMPLETED, queue="good")
    assert {now.id, later.id} <= set(ran)
    assert raw.get(key) == b"someone else's"  # never touched
    named = [r.getMessage() for r in caplog.records if repr(key) in r.getMessage()]
    assert named and all("queue 'bad'" in m for m in named)
    # logged once per queue and interval, not once per fetch
    assert len(named) <= 4  # fetch, claim_stale, promote, wait_schedule_change at most


async def test_a_server_whose_only_queue_is_foreign_does_not_log_every_fetch(
    backend: RedisBackend, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    k = Keys("hostile", "q")
    raw.set(k.tasks, "x")
    raw.xadd(k.streams[0], {"t": "a"})
    with caplog.at_level("WARNING", logger="strego"):
        async with serving(backend, [], ["q"]):
            await anyio.sleep(3.5)  # the fetch loop retries every second: 4 failures at least
    fetch_lines = [r.getMessage() for r in caplog.records if "fetch failed" in r.getMessage()]
    assert len(fetch_lines) == 1
    assert "queue 'q': its tasks key" in fetch_lines[0]


async def test_foreign_key_of_the_only_queue_names_queue_and_key(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    raw.set(k.tasks, "x")
    raw.xadd(k.streams[0], {"t": "a"})
    with pytest.raises(
        ForeignKeyError, match=r"queue 'q': its tasks key .* is a string, not a hash"
    ):
        await backend.fetch(["q"], 1, "c1", lease_ms=60_000)


async def test_stream_without_its_group_is_recreated(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    k = Keys("hostile", "q")
    client = strego.Client(backend)
    first = await client.enqueue(strego.Task("job", 1, queue="q"))
    raw.xgroup_destroy(k.streams[0], "strego")
    second = await client.enqueue(strego.Task("job", 2, queue="q"))
    fetched = await backend.fetch(["q", "other"], 10, "c1", lease_ms=60_000)
    assert sorted(t.id for t in fetched) == sorted([first.id, second.id])
