"""RedisBackend's fetch over many idle queues: the queues a consumer found idle are not peeked
again while their `ready` counters hold (one MGET of the counters instead of a script per queue);
transitions that make nothing pending leave the counters alone; every `idle_recheck_s` all queues
are peeked anyway; foreign `ready` keys are isolated like any other foreign key; the remembered
state is bounded; a fetch whose order is only a preference takes from the first queue not known
idle in the round trip of that MGET. Calls and round trips are counted by a transport wrapper,
over redis-py, fakeredis and the anyio transport."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start
from conformance.test_fetch_idle_queues import (
    WAYS,
    Way,
    check_a_queue_found_idle_is_not_starved,
)
from strego.backends.redis import RedisBackend
from strego.backends.redis.fetching import IDLE_CONSUMERS
from strego.backends.redis.keys import Keys
from strego.backends.redis.redispy_transport import RedisPyTransport
from strego.backends.redis.transport import Command, ScriptCall, Transport
from strego.errors import ForeignKeyError

pytestmark = pytest.mark.anyio

IDLE = [f"idle{i}" for i in range(40)]
_TAG = re.compile(r"\{(.*?)\}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only (the conformance suite covers trio)


class Recording:
    """A transport that notes every call it forwards: (script name or command, queue or '')."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.round_trips = 0

    def _note(self, call: ScriptCall | Command) -> None:
        if isinstance(call, ScriptCall):
            m = _TAG.search(str(call.keys[0]))
            self.calls.append((call.script.name, m.group(1) if m else ""))
        else:
            self.calls.append((str(call.args[0]), ""))

    async def run_script(self, call: ScriptCall) -> Any:
        self._note(call)
        self.round_trips += 1
        return await self.inner.run_script(call)

    async def execute(self, command: Command) -> Any:
        self._note(command)
        self.round_trips += 1
        return await self.inner.execute(command)

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        for call in calls:
            self._note(call)
        self.round_trips += 1
        return await self.inner.pipeline(calls)

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        self._note(command)
        self.round_trips += 1
        return await self.inner.blocking(command, timeout_ms)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def taken(self) -> list[tuple[str, str]]:
        calls, self.calls, self.round_trips = self.calls, [], 0
        return calls


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["redis", "fakeredis", "anyio"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A redis-py client on the server the backend uses (for raw writes)."""
    if kind == "fakeredis":
        import fakeredis

        c: Any = fakeredis.FakeAsyncRedis()
    else:
        c = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    yield c
    await c.aclose()


@pytest.fixture
async def backend(
    kind: str, client: Any, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[RedisBackend]:
    if kind == "anyio":
        from strego.backends.redis.anyio_transport import AnyioTransport

        inner: Transport = AnyioTransport.from_url(request.getfixturevalue("redis_url"))
    else:
        # a client of its own (the backend closes it), on the same server
        own = client.__class__(connection_pool=client.connection_pool.__class__(
            connection_class=client.connection_pool.connection_class,
            **client.connection_pool.connection_kwargs,
        ))  # fmt: skip
        inner = RedisPyTransport(own)
    b = RedisBackend(Recording(inner), prefix=f"t{uuid.uuid4().hex[:8]}", clock=clock)
    b.idle_recheck_s = math.inf  # no full peek in the middle of a test
    yield b
    await b.aclose()


def calls(backend: RedisBackend) -> list[tuple[str, str]]:
    assert isinstance(backend.transport, Recording)
    return backend.transport.taken()


def calls_and_round_trips(backend: RedisBackend) -> tuple[list[tuple[str, str]], int]:
    assert isinstance(backend.transport, Recording)
    trips = backend.transport.round_trips
    return backend.transport.taken(), trips


async def _idle_in_every_way(backend: RedisBackend) -> None:
    """IDLE: never used, used and emptied, holding an active task only, paused with a task."""
    await backend.enqueue(message("old", queue="idle1"))
    [task] = await backend.fetch(["idle1"], 1, "c0", lease_ms=LEASE_MS)
    assert await backend.ack("idle1", task.id, "c0")
    await start(backend, "running", "idle2", consumer="c0")
    await backend.enqueue(message("held", queue="idle3"))
    await backend.pause("idle3")


async def test_fetch_over_idle_queues_sends_one_mget_and_no_peek(backend: RedisBackend) -> None:
    await _idle_in_every_way(backend)
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    first = calls(backend)
    # the first fetch looks at every queue: it fetches from the first, peeks at the others
    assert [n for n, _ in first].count("peek") == len(IDLE) - 1
    assert ("fetch", "idle0") in first
    assert ("fetch", "idle2") in first, "its stream has an entry: fetch finds nothing to deliver"
    for _ in range(3):
        assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
        assert calls(backend) == [("MGET", "")]


async def test_a_busy_queue_after_idle_ones_is_peeked_beside_one_mget_then_fetched(
    backend: RedisBackend,
) -> None:
    # in order: whether the queues before it are still idle is known before the fetch
    await backend.enqueue_many([message(f"b{i}", queue="busy") for i in range(10)])
    queues = [*IDLE, "busy"]
    assert len(await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS)) == 2
    calls(backend)
    assert len(await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS)) == 2
    assert calls_and_round_trips(backend) == (
        [("MGET", ""), ("peek", "busy"), ("fetch", "busy")],
        2,
    )


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_busy_first_queue_is_fetched_beside_one_mget(
    backend: RedisBackend, ordered: bool
) -> None:
    # nothing comes before it, so the order holds in one round trip
    await backend.enqueue_many([message(f"b{i}", queue="busy") for i in range(10)])
    queues = ["busy", *IDLE]
    calls(backend)
    for _ in range(3):
        got = await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS, ordered=ordered)
        assert [t.queue for t in got] == ["busy", "busy"]
        assert calls_and_round_trips(backend)[1] == 1
    assert calls(backend) == []
    await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS, ordered=ordered)
    assert calls(backend) == [("fetch", "busy"), ("MGET", "")]


async def test_an_unordered_fetch_takes_from_a_busy_queue_in_the_round_trip_of_the_mget(
    backend: RedisBackend,
) -> None:
    await backend.enqueue_many([message(f"b{i}", queue="busy") for i in range(10)])
    queues = [*IDLE, "busy"]
    got = await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS, ordered=False)
    assert [t.id for t in got] == ["b0", "b1"]
    calls(backend)
    got = await backend.fetch(queues, 2, "c1", lease_ms=LEASE_MS, ordered=False)
    assert [t.id for t in got] == ["b2", "b3"]
    # the fetch runs first in the pipeline: a counter that held then proves the queues before
    # "busy" were idle when it ran
    assert calls_and_round_trips(backend) == ([("fetch", "busy"), ("MGET", "")], 1)


async def test_claim_stale_over_many_queues_runs_the_script_only_where_a_lease_expired(
    backend: RedisBackend, clock: FakeClock
) -> None:
    queues = [*IDLE, "busy"]
    await start(backend, "fresh", "idle3", consumer="c0")
    await backend.enqueue(message("stale", queue="busy"))
    await backend.fetch(["busy"], 1, "died", lease_ms=1_000)
    calls(backend)
    assert await backend.claim_stale(queues, "c1", 10, lease_ms=LEASE_MS, max_deliveries=5) == []
    assert calls_and_round_trips(backend) == ([("ZRANGEBYSCORE", "")] * len(queues), 1)
    clock.advance(2_000)
    claimed = await backend.claim_stale(queues, "c1", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert [t.id for t in claimed] == ["stale"]
    assert calls(backend)[len(queues) :] == [("claim_stale", "busy")]


async def test_held_by_over_many_queues_takes_two_round_trips(backend: RedisBackend) -> None:
    queues = [*IDLE, "busy"]
    await start(backend, "mine", "idle3", consumer="me")
    await start(backend, "theirs", "busy", consumer="other")
    calls(backend)
    assert await backend.held_by(queues, "me") == {"idle3": ["mine"]}
    # the leases of every queue, then the records of the two queues holding any
    assert calls_and_round_trips(backend) == (
        [("ZRANGE", "")] * len(queues) + [("HMGET", "")] * 2,
        2,
    )
    # no leases at all: no second round trip
    assert await backend.held_by(IDLE[4:9], "me") == {}
    assert calls_and_round_trips(backend) == ([("ZRANGE", "")] * 5, 1)


async def test_held_by_isolates_a_queue_with_a_foreign_key(
    backend: RedisBackend, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await start(backend, "mine", "good", consumer="me")
    await client.set(Keys(backend.prefix, "bad").leases, "someone else's")
    with caplog.at_level("ERROR", logger="strego.backends.redis"):
        assert await backend.held_by(["bad", "good"], "me") == {"good": ["mine"]}
    assert any("queue 'bad'" in r.getMessage() for r in caplog.records)
    with pytest.raises(ForeignKeyError, match=r"its leases key .* is a string, not a zset"):
        await backend.held_by(["bad"], "me")


async def test_transitions_that_make_nothing_pending_keep_idle_queues_skipped(
    backend: RedisBackend, clock: FakeClock
) -> None:
    await start(backend, "running", "idle5", consumer="c0")
    await backend.enqueue(message("later", queue="idle6", process_at_ms=clock() + 60_000))
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    # none of these makes a task pending: no counter moves
    await backend.enqueue(message("later2", queue="idle7", process_at_ms=clock() + 60_000))
    assert await backend.promote(IDLE) == 60_000
    assert await backend.release("idle5", ["running"], "someone-else") == 0
    assert not await backend.requeue_dead("idle5", "running")
    assert await backend.ack("idle5", "running", "c0")
    await backend.pause("idle8")
    calls(backend)
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    assert calls(backend) == [("MGET", "")]


@pytest.mark.parametrize("way", WAYS, ids=[w.name for w in WAYS])
async def test_each_way_a_task_becomes_pending_moves_the_counter(
    backend: RedisBackend, clock: FakeClock, way: Way
) -> None:
    # the conformance scenario, with no full peek that could hide a counter left alone
    await check_a_queue_found_idle_is_not_starved(backend, clock, way)


@pytest.mark.parametrize("way", WAYS, ids=[w.name for w in WAYS])
async def test_a_preference_passes_a_queue_that_woke_over_once_then_takes_it(
    backend: RedisBackend, clock: FakeClock, way: Way
) -> None:
    # "busy" is fetched before the MGET tells that TARGET moved; the next fetch looks at TARGET
    assert await check_a_queue_found_idle_is_not_starved(backend, clock, way, ordered=False) == 2


async def test_every_queue_is_peeked_again_after_idle_recheck_s(
    backend: RedisBackend, clock: FakeClock
) -> None:
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    clock.advance(5_000)
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    [seen] = await backend.consumers("idle9")
    assert seen.idle_ms == 5_000, "a skipped queue does not hear from the consumer"
    backend.idle_recheck_s = 0
    calls(backend)
    assert await backend.fetch(IDLE, 5, "c1", lease_ms=LEASE_MS) == []
    # every queue is looked at: the first fetched from, the others peeked
    assert sorted(calls(backend)) == [("fetch", "idle0"), *(("peek", q) for q in sorted(IDLE[1:]))]
    [seen] = await backend.consumers("idle9")
    assert seen.idle_ms == 0, "the recheck refreshes the consumer's last-seen time"


async def test_foreign_ready_key_fails_writes_before_anything_is_written(
    backend: RedisBackend, client: Any
) -> None:
    k = Keys(backend.prefix, "bad")
    await client.hset(k.ready, "x", "someone else's")
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.enqueue(message("a", queue="bad", unique_key="u", unique_ttl_ms=1000))
    assert await client.exists(k.tasks, k.unique, k.unique_exp, *k.streams) == 0
    with pytest.raises(ForeignKeyError, match=r"its ready key .* is a hash, not a string"):
        await backend.resume("bad")
    assert await client.hgetall(k.ready) == {b"x": b"someone else's"}


async def test_a_ready_key_that_is_no_counter_fails_writes_before_anything_is_written(
    backend: RedisBackend, client: Any, clock: FakeClock
) -> None:
    """A string `ready` that INCR would refuse is refused before the first write, by every
    script that INCRs it: else the task is stored and the call reports it refused."""
    k = Keys(backend.prefix, "bad")
    await backend.enqueue(message("due", queue="bad", process_at_ms=clock() + 1_000))
    await backend.enqueue(message("run", queue="bad"))
    await backend.fetch(["bad"], 1, "c1", lease_ms=LEASE_MS)
    await backend.enqueue(message("dies", queue="bad"))
    [dies] = await backend.fetch(["bad"], 1, "c1", lease_ms=LEASE_MS)
    await backend.fail("bad", dies.id, "c1", "x", retry_in_ms=None)
    before = await client.hgetall(k.tasks)
    await client.set(k.ready, "not a number")
    clock.advance(1_000)
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.enqueue(message("a", queue="bad"))
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.release("bad", ["run"], "c1")
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.requeue_dead("bad", "dies")
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.run_now("due", "bad")
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await backend.promote(["bad"])
    assert await client.hgetall(k.tasks) == before, "nothing was written"


async def test_foreign_ready_key_of_a_queue_found_idle_is_isolated(
    backend: RedisBackend, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    k = Keys(backend.prefix, "bad")
    await backend.enqueue(message("a", queue="bad"))
    [task] = await backend.fetch(["bad", "good"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.ack("bad", task.id, "c1")
    assert await backend.fetch(["bad", "good"], 1, "c1", lease_ms=LEASE_MS) == []
    # the counter turns into another type: MGET reads it as nil, which differs from its value
    await client.delete(k.ready)
    await client.hset(k.ready, "x", "y")
    await backend.enqueue(message("g", queue="good"))
    with caplog.at_level("ERROR", logger="strego.backends.redis"):
        for i in range(3):
            got = await backend.fetch(["bad", "good"], 1, "c1", lease_ms=LEASE_MS)
            assert [t.id for t in got] == (["g"] if i == 0 else [])
    named = [r.getMessage() for r in caplog.records if repr(k.ready) in r.getMessage()]
    assert len(named) == 1 and "queue 'bad'" in named[0]
    assert await client.hgetall(k.ready) == {b"x": b"y"}


async def test_remembered_idle_queues_are_bounded(backend: RedisBackend) -> None:
    for i in range(IDLE_CONSUMERS + 10):
        assert await backend.fetch(IDLE[:3], 1, f"c{i}", lease_ms=LEASE_MS) == []
    assert len(backend._idle) == IDLE_CONSUMERS
    assert "c0" not in backend._idle and f"c{IDLE_CONSUMERS + 9}" in backend._idle
    # one state per consumer: for the last set of queues it asked for
    last = f"c{IDLE_CONSUMERS + 9}"
    assert set(backend._idle[last].idle) == set(IDLE[:3])
    await backend.fetch(IDLE[3:6], 1, last, lease_ms=LEASE_MS)
    assert set(backend._idle[last].idle) == set(IDLE[3:6])
