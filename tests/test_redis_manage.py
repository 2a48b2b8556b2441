"""RedisBackend's management calls where Redis alone can go wrong: the queue registry (a global
key, outside every queue's script) against interleaved enqueue and purge, the order of a
pipeline's commands after a NOSCRIPT, enqueue chunks that meet a foreign key, purge batches."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest
import redis.asyncio

import strego.backends.redis.transitions as redis_transitions
from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, make_dead, message, start
from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.keys import queues_key
from strego.backends.redis.redispy_transport import RedisPyTransport
from strego.backends.redis.transport import Command, Script, ScriptCall, Transport
from strego.errors import ForeignKeyError
from strego.task import TaskInfo, TaskState

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


class Stepped:
    """A transport that sends every call on its own (a pipeline call by call, as Redis may
    interleave another client's commands between them), each after `gate` lets it."""

    def __init__(self, inner: Transport, gate: Callable[[], Awaitable[None]]) -> None:
        self.inner, self.gate = inner, gate
        self.sent: list[str] = []

    async def _one(self, call: ScriptCall | Command) -> Any:
        await self.gate()
        reply = (await self.inner.pipeline([call]))[0]
        name = call.script.name if isinstance(call, ScriptCall) else str(call.args[0])
        self.sent.append(name)
        return reply

    async def run_script(self, call: ScriptCall) -> Any:
        reply = await self._one(call)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def execute(self, command: Command) -> Any:
        reply = await self._one(command)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        return [await self._one(call) for call in calls]

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        return await self.inner.blocking(command, timeout_ms)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        pass


#: A purge of one small queue that ends empty sends at most 4 calls (the purge script, SREM, the
#: count, SADD); positions 0..4 cover every place between and around them.
PURGE_POSITIONS = range(5)


@pytest.mark.parametrize(
    "at",
    [p for p in itertools.product(PURGE_POSITIONS, repeat=3) if p[0] <= p[1] <= p[2]],
    ids=lambda p: "-".join(map(str, p)),
)
async def test_no_interleaving_of_enqueue_and_purge_hides_a_task(
    redis_url: str, at: tuple[int, int, int]
) -> None:
    """Enqueue sends three calls (SADD to the registry, its script, SADD again); purge sends its
    script, then SREM, a count and maybe SADD. Enqueue's k-th call runs after purge has sent
    at[k] calls: whatever the order, the new task stays visible, listed and cancellable."""
    clock = FakeClock()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    inner = RedisPyTransport(redis.asyncio.Redis.from_url(redis_url))
    plain = RedisBackend(inner, prefix=prefix, clock=clock)
    purged = enqueued = 0  # calls sent so far by each side
    purge_done = enqueue_done = False

    moved = anyio.Event()  # set (and replaced) each time either side sent a call or ended

    def move() -> None:
        nonlocal moved
        moved.set()
        moved = anyio.Event()

    async def purge_gate() -> None:
        # purge's next call waits for the enqueue calls placed before it
        while not enqueue_done and enqueued < sum(1 for p in at if p <= purged):
            await moved.wait()

    async def enqueue_gate() -> None:
        while not purge_done and purged < at[enqueued]:
            await moved.wait()

    purger = Stepped(inner, purge_gate)
    producer = Stepped(inner, enqueue_gate)
    try:
        await make_dead(plain, "dead")

        def counted(transport: Stepped, sent: Callable[[], None]) -> RedisBackend:
            """A backend over `transport` that calls `sent` after each call it sent."""
            original = transport._one

            async def one(call: ScriptCall | Command) -> Any:
                reply = await original(call)
                sent()
                move()
                return reply

            transport._one = one  # type: ignore[method-assign]
            backend = RedisBackend(transport, prefix=prefix, clock=clock)
            backend._first_call_checked = True  # its INFO is no step of the interleaving
            return backend

        def purge_sent() -> None:
            nonlocal purged
            purged += 1

        def enqueue_sent() -> None:
            nonlocal enqueued
            enqueued += 1

        async def purge() -> None:
            nonlocal purge_done
            backend = counted(purger, purge_sent)
            assert await backend.purge("q", [TaskState.DEAD]) == 1
            purge_done = True
            move()

        async def enqueue() -> None:
            nonlocal enqueue_done
            await counted(producer, enqueue_sent).enqueue(message("new"))
            enqueue_done = True
            move()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(purge)
                tg.start_soon(enqueue)
        order = (producer.sent, purger.sent)
        assert await plain.queues() == ["q"], order
        assert await plain.get_task("new") is not None, order
        assert await plain.cancel("new") is True, order
        assert producer.sent == ["SADD", "enqueue", "SADD"]
    finally:
        await inner.aclose()


INCR = Script("incr_registry_test", "return redis.call('INCR', KEYS[1])")


@pytest.mark.parametrize("kind", ["redis-py", "anyio"])
async def test_idempotent_commands_after_a_script_run_after_it_on_noscript(
    redis_url: str, kind: str
) -> None:
    """A script that meets NOSCRIPT is loaded and sent again after the rest of its pipeline: the
    idempotent commands after it (enqueue's SADD to the registry) are sent again after it."""
    transport: Transport = (
        RedisPyTransport(redis.asyncio.Redis.from_url(redis_url))
        if kind == "redis-py"
        else AnyioTransport.from_url(redis_url)
    )
    key = f"t{uuid.uuid4().hex[:8]}"
    try:
        await transport.execute(Command(("SCRIPT", "FLUSH")))
        replies = await transport.pipeline(
            [
                Command(("GET", key), idempotent=True),
                ScriptCall(INCR, [key], []),
                Command(("GET", key), idempotent=True),
                Command(("GET", key)),  # not idempotent: sent once, before the script ran again
            ]
        )
        assert replies == [None, 1, b"1", None]
    finally:
        await transport.aclose()


# -- enqueue chunks are all or nothing ------------------------------------------------------------


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(
        redis.asyncio.Redis.from_url(redis_url),
        prefix=f"t{uuid.uuid4().hex[:8]}",
        clock=FakeClock(),
    )
    yield b
    await b.aclose()


@pytest.mark.parametrize("foreign", ["scheduled", "unique", "signal", "p5"])
async def test_a_foreign_key_fails_a_whole_chunk(backend: RedisBackend, foreign: str) -> None:
    """A chunk whose later task needs a key that holds another type writes nothing, not even
    its earlier tasks; enqueue_many says so for each of its messages and accepts the others."""
    k = backend.keys("q")
    key = k.streams[5] if foreign == "p5" else getattr(k, foreign)
    await backend.transport.execute(Command(("SET", key, "foreign")))
    now = backend.clock()
    chunk = [
        message("a"),
        message("b", priority=3),
        message("c", process_at_ms=now + 60_000, priority=5, unique_key="u", unique_ttl_ms=9_000),
        message("e", priority=5),
    ]
    results = await backend.enqueue_many([*chunk, message("o", queue="other")])
    for result in results[:4]:
        assert isinstance(result, ForeignKeyError)
        assert foreign in str(result)
    assert isinstance(results[4], TaskInfo) and results[4].id == "o"
    for task_id in ("a", "b", "c", "e"):
        assert await backend.get_task(task_id, "q") is None
    lengths = await backend.transport.pipeline(
        [Command(("XLEN", s)) for s in k.streams[:4]]
        + [Command(("HLEN", k.tasks)), Command(("EXISTS", k.ready))]
    )
    assert lengths == [0] * 6
    with pytest.raises(ForeignKeyError):  # every chunk failed: raised, as enqueue does
        await backend.enqueue_many(chunk)
    assert await backend.get_task("a", "q") is None
    single = chunk[3] if foreign == "p5" else chunk[2]
    with pytest.raises(ForeignKeyError):
        await backend.enqueue(single)
    assert await backend.get_task(single.id, "q") is None


async def test_a_foreign_registry_never_refuses_a_stored_task(
    backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry SADDs around the script both fail: the task the script stored is reported
    stored (it is, and servers fetch it by queue name), and the registry's failure is logged."""
    await backend.transport.execute(Command(("SET", queues_key(backend.prefix), "foreign")))
    info = await backend.enqueue(message("a"))
    [other] = await backend.enqueue_many([message("b")])
    assert isinstance(other, TaskInfo)
    assert (info.id, other.id) == ("a", "b")
    assert await backend.get_task("a", "q") is not None
    assert [t.id for t in await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)] == ["a", "b"]
    errors = [r for r in caplog.records if "registry did not list" in r.getMessage()]
    assert len(errors) == 2


# -- purge batches --------------------------------------------------------------------------------


async def test_purge_looks_at_a_batch_per_call(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_transitions, "PURGE_BATCH", 4)
    clock = backend.clock
    for i in range(3):
        await make_dead(backend, f"d{i}")
    await start(backend, "active")
    await backend.enqueue_many([message(f"p{i}", priority=i % 3) for i in range(9)])
    await backend.enqueue_many([message(f"s{i}", process_at_ms=clock() + 5_000) for i in range(6)])
    calls = 0
    original = backend._purge_call

    async def counted(queue: str, cursor: str, letters: str) -> tuple[int, str, int]:
        nonlocal calls
        calls += 1
        return await original(queue, cursor, letters)

    backend._purge_call = counted  # type: ignore[method-assign]
    assert await backend.purge("q") == 18
    # 6 scheduled and 3 dead entries, then 10 stream entries (the active one stays): 19 in all
    assert calls == 5
    counts = (await backend.queue_info("q")).counts
    assert counts == {s: 1 if s == TaskState.ACTIVE else 0 for s in TaskState}
    assert await backend.fetch(["q"], 10, "c9", lease_ms=LEASE_MS) == []
    assert await backend.queues() == ["q"]


async def test_purge_deletes_a_pending_record_that_does_not_parse(backend: RedisBackend) -> None:
    """A pending task whose record is garbage goes with its stream entry: left behind it would be
    in no set and no stream, seen by nothing, and never purged."""
    await backend.enqueue_many([message("good"), message("garbage")])
    k = backend.keys("q")
    await backend.transport.execute(Command(("HSET", k.tasks, "garbage", "not a record")))
    assert await backend.purge("q", [TaskState.PENDING]) == 2
    assert await backend.transport.execute(Command(("HLEN", k.tasks))) == 0
    assert await backend.queues() == []


# -- requeue_all_dead ------------------------------------------------------------------------------


async def test_requeue_all_dead_walks_only_the_tasks_dead_when_it_began(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks requeued by one call and dead again before the next (a fast-failing worker) are not
    requeued twice: the walk ends at the tasks dead when it began."""
    monkeypatch.setattr(redis_transitions, "REQUEUE_BATCH", 2)
    clock = backend.clock
    assert isinstance(clock, FakeClock)
    for i in range(5):
        await make_dead(backend, f"d{i}")
    original = backend._requeue

    async def requeue_then_fail(queue: str, ids: Sequence[str], until: Any = "") -> Any:
        out = await original(queue, ids, until)
        clock.advance(1)
        for task in await backend.fetch([queue], 10, "w", lease_ms=LEASE_MS):
            await backend.fail(queue, task.id, "w", "dies again", retry_in_ms=None)
        return out

    backend._requeue = requeue_then_fail  # type: ignore[method-assign]
    assert await backend.requeue_all_dead("q") == 5
    assert (await backend.queue_info("q")).counts[TaskState.DEAD] == 5


async def test_requeue_all_dead_keeps_a_dead_record_that_does_not_parse(
    backend: RedisBackend,
) -> None:
    """An unparsable record met in the dead set stays dead, under a fresh header with its reason:
    dropped from the set it would be in no set and no stream, seen and purged by nothing."""
    await make_dead(backend, "good")
    await make_dead(backend, "garbage")
    k = backend.keys("q")
    await backend.transport.execute(Command(("HSET", k.tasks, "garbage", "not a record")))
    assert await backend.requeue_all_dead("q") == 1
    buried = await backend.get_task("garbage", "q")
    assert buried is not None and buried.state is TaskState.DEAD
    assert buried.last_error is not None and "unreadable" in buried.last_error
    assert await backend.purge("q", [TaskState.DEAD]) == 1
    assert await backend.get_task("garbage", "q") is None


async def test_enqueue_never_overwrites_a_record_that_does_not_parse(
    backend: RedisBackend,
) -> None:
    from strego.errors import TaskIdConflictError

    k = backend.keys("q")
    await backend.transport.execute(Command(("HSET", k.tasks, "taken", "not a record")))
    with pytest.raises(TaskIdConflictError):
        await backend.enqueue(message("taken"))
    assert await backend.transport.execute(Command(("HGET", k.tasks, "taken"))) == b"not a record"
