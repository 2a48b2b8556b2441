"""RedisBackend's management calls where Redis alone can go wrong: the queue registry (a global
key, outside every queue's script, written only when a script set the queue's `registered` flag)
against every order of enqueue's and purge's calls, the order of a pipeline's commands after a
NOSCRIPT, enqueue chunks that meet a foreign key, purge batches."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest
import redis.asyncio

import strego.backends.redis.transitions as redis_transitions
from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, make_dead, message, start
from strego.backends.base import FireResult
from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.keys import queues_key
from strego.backends.redis.redispy_transport import RedisPyTransport
from strego.backends.redis.transport import Command, Script, ScriptCall, Transport
from strego.errors import ForeignKeyError
from strego.message import TaskMessage
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


#: An actor given its gate (awaited before each of its calls).
Gated = Callable[[Callable[[], Awaitable[None]]], Awaitable[Any]]


class Interleaver:
    """Runs actors (each a coroutine over a backend of its own, on a `Stepped` transport) one call
    at a time: once every actor is blocked before its next call (or done), one of them sends its
    call. `schedule` picks, step by step, which (by index); past its end the lowest index goes.
    `trace` records each step's choices and pick, so that `explore` can enumerate every order."""

    def __init__(self, schedule: Sequence[int]) -> None:
        self.schedule = schedule
        self.trace: list[tuple[list[int], int]] = []
        self.waiting: dict[int, anyio.Event] = {}
        self.done: set[int] = set()
        self.changed = anyio.Event()

    def _move(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def turn(self, actor: int) -> None:
        go = self.waiting[actor] = anyio.Event()
        self._move()
        await go.wait()

    async def run(self, actors: Sequence[Gated]) -> None:
        async def one(i: int) -> None:
            await actors[i](lambda: self.turn(i))
            self.done.add(i)
            self._move()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(len(actors)):
                    tg.start_soon(one, i)
                while len(self.done) < len(actors):
                    while len(self.waiting) + len(self.done) < len(actors):
                        await self.changed.wait()
                    if not self.waiting:
                        continue
                    choices = sorted(self.waiting)
                    step = len(self.trace)
                    pick = self.schedule[step] if step < len(self.schedule) else choices[0]
                    assert pick in choices, "a replay took another path"
                    self.trace.append((choices, pick))
                    self.waiting.pop(pick).set()
                    # the picked actor runs until its next gate (or its end) before any other
                    while pick not in self.waiting and pick not in self.done:
                        await self.changed.wait()


async def explore(run: Callable[[Sequence[int]], Awaitable[list[tuple[list[int], int]]]]) -> int:
    """Runs `run` once per distinct order of the actors' calls (depth first: each run replays a
    prefix of an earlier one and then takes another choice); returns how many orders there were."""
    todo: list[list[int]] = [[]]
    runs = 0
    while todo:
        prefix = todo.pop()
        trace = await run(prefix)
        runs += 1
        picks = [pick for _, pick in trace]
        for i in range(len(prefix), len(trace)):
            choices, pick = trace[i]
            todo += [[*picks[:i], other] for other in choices if other != pick]
    return runs


Actor = Callable[[RedisBackend], Awaitable[Any]]


async def check_every_order(
    redis_url: str,
    setup: Actor,
    actors: Sequence[Actor],
    queues: Sequence[str],
    new: Sequence[tuple[str, str]],
) -> tuple[int, list[list[str]]]:
    """Runs `actors` (each on a backend of its own) in every order of their calls, each time on
    fresh data made by `setup`. After each: every queue that holds a task, or whose `registered`
    flag is set, is listed (a set flag with no entry would hide the queue's next tasks: no
    enqueue would SADD it); every task of `new` (id, queue) still there is found by id (a
    lookup through the registry) and cancellable; and a later enqueue to each queue lists it.
    Returns how many orders ran and the calls each actor sent, one list per run."""
    clock = FakeClock()
    inner = RedisPyTransport(redis.asyncio.Redis.from_url(redis_url))
    sent: list[list[str]] = []
    try:

        async def run(schedule: Sequence[int]) -> list[tuple[list[int], int]]:
            prefix = f"t{uuid.uuid4().hex[:8]}"
            plain = RedisBackend(inner, prefix=prefix, clock=clock)
            await setup(plain)
            interleaver = Interleaver(schedule)
            transports: list[Stepped] = []

            def actor(i: int) -> Gated:
                async def go(gate: Callable[[], Awaitable[None]]) -> Any:
                    transport = Stepped(inner, gate)
                    transports.append(transport)
                    backend = RedisBackend(transport, prefix=prefix, clock=clock)
                    backend._first_call_checked = True  # its INFO is no step of the order
                    return await actors[i](backend)

                return go

            await interleaver.run([actor(i) for i in range(len(actors))])
            listed = set(await plain.queues())
            for queue in queues:
                k = plain.keys(queue)
                held, flagged = await inner.pipeline(
                    [Command(("HLEN", k.tasks)), Command(("EXISTS", k.registered))]
                )
                assert not (held or flagged) or queue in listed, (queue, interleaver.trace)
            for task_id, queue in new:
                if await plain.get_task(task_id, queue) is not None:
                    assert await plain.cancel(task_id) is True, interleaver.trace
            for queue in queues:
                await plain.enqueue(message(f"after-{queue}", queue=queue))
            assert set(await plain.queues()) >= set(queues), interleaver.trace
            sent.extend(t.sent for t in transports)
            return interleaver.trace

        return await explore(run), sent
    finally:
        await inner.aclose()


def purging(queue: str, states: Sequence[TaskState] | None = None) -> Actor:
    async def purge(backend: RedisBackend) -> int:
        return await backend.purge(queue, states)

    return purge


def enqueuing(*messages: TaskMessage) -> Actor:
    async def enqueue(backend: RedisBackend) -> Any:
        if len(messages) == 1:
            return await backend.enqueue(messages[0])
        return await backend.enqueue_many(messages)

    return enqueue


def dead_in(*queues: str, unflagged: Sequence[str] = ()) -> Actor:
    """Setup: a dead task in each of `queues`, which are listed; those of `unflagged` without
    their `registered` flag, as data written before it existed (or once it expired)."""

    async def setup(backend: RedisBackend) -> None:
        for queue in queues:
            await make_dead(backend, f"dead-{queue}", queue=queue)
        for queue in unflagged:
            await backend.transport.execute(Command(("DEL", backend.keys(queue).registered)))

    return setup


@pytest.mark.parametrize("unflagged", [(), ("q",)], ids=["flagged", "old-data"])
async def test_no_order_of_enqueue_and_purge_hides_a_task(
    redis_url: str, unflagged: tuple[str, ...]
) -> None:
    """Enqueue runs its script, then SADDs the queue only if the script set the queue's
    `registered` flag; purge runs its script, then SREM, a count that clears the flag when the
    queue is empty, and SADD if it is not. In every order the new task stays listed."""
    runs, sent = await check_every_order(
        redis_url, dead_in("q", unflagged=unflagged),
        [enqueuing(message("new")), purging("q", [TaskState.DEAD])], ["q"], [("new", "q")],
    )  # fmt: skip
    # flagged: the enqueue's one call before the purge's script, or after its first 1, 2 or 3
    # calls; old data: its two calls (it registers) among the purge's 1 to 4
    assert runs == (10 if unflagged else 4)
    assert ["purge", "SREM", "purge", "SADD"] in sent
    assert (["enqueue", "SADD"] if unflagged else ["enqueue"]) in sent


async def test_no_order_of_enqueue_and_two_purges_hides_a_task(redis_url: str) -> None:
    """Two purges, one of the dead tasks and one of every state (which may take the new task
    too): one's SREM may come after the other's count, or its count before the enqueue."""
    runs, sent = await check_every_order(
        redis_url, dead_in("q"),
        [enqueuing(message("new")), purging("q", [TaskState.DEAD]), purging("q")],
        ["q"], [("new", "q")],
    )  # fmt: skip
    assert runs == 292
    assert ["enqueue", "SADD"] in sent


async def test_no_order_of_two_enqueues_and_a_purge_hides_a_task(redis_url: str) -> None:
    """After the purge emptied the queue, one enqueue may find the flag set by the other, whose
    SADD is still to come."""
    runs, sent = await check_every_order(
        redis_url, dead_in("q"),
        [enqueuing(message("a")), enqueuing(message("b")), purging("q")],
        ["q"], [("a", "q"), ("b", "q")],
    )  # fmt: skip
    assert runs == 26
    assert ["enqueue", "SADD"] in sent


@pytest.mark.parametrize("purged", ["q", "r"])
async def test_no_order_of_enqueue_many_and_a_purge_hides_a_task(
    redis_url: str, purged: str
) -> None:
    """enqueue_many over a registered queue (q), one written before the flag existed (r) and a
    new one (s): its three scripts, then one SADD of r and s, against a purge of q or r."""
    runs, sent = await check_every_order(
        redis_url, dead_in("q", "r", unflagged=["r"]),
        [enqueuing(message("new-q"), message("new-r", queue="r"), message("new-s", queue="s")),
         purging(purged, [TaskState.DEAD])],
        ["q", "r", "s"], [("new-q", "q"), ("new-r", "r"), ("new-s", "s")],
    )  # fmt: skip
    assert runs == {"q": 35, "r": 45}[purged]
    assert ["enqueue", "enqueue", "enqueue", "SADD"] in sent


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
    """The registry SADD after the script fails: the task the script stored is reported stored
    (it is, and servers fetch it by queue name), the failure is logged, and the queue's flag is
    cleared so that the next enqueue tries again."""
    await backend.transport.execute(Command(("SET", queues_key(backend.prefix), "foreign")))
    info = await backend.enqueue(message("a"))
    registered = backend.keys("q").registered
    assert await backend.transport.execute(Command(("EXISTS", registered))) == 0
    [other] = await backend.enqueue_many([message("b")])
    assert isinstance(other, TaskInfo)
    assert (info.id, other.id) == ("a", "b")
    assert await backend.get_task("a", "q") is not None
    assert [t.id for t in await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)] == ["a", "b"]
    errors = [r for r in caplog.records if "registry did not list" in r.getMessage()]
    assert len(errors) == 2
    await backend.transport.execute(Command(("DEL", queues_key(backend.prefix))))
    await backend.enqueue(message("c"))
    assert await backend.queues() == ["q"]


class Recording(Stepped):
    """Sends every call at once, recording each (command name or script name, and SADD's
    arguments)."""

    def __init__(self, inner: Transport) -> None:
        async def open_gate() -> None:
            pass

        super().__init__(inner, open_gate)
        self.sadds: list[tuple[Any, ...]] = []

    async def _one(self, call: ScriptCall | Command) -> Any:
        if isinstance(call, Command) and call.args[0] == "SADD":
            self.sadds.append(tuple(call.args[2:]))
        return await super()._one(call)


async def test_only_a_queues_first_task_touches_the_registry(redis_url: str) -> None:
    """The hot path: an enqueue into a registered queue sends its script only. The registry is
    SADDed once per queue whose flag the script set: at its first task, after a purge emptied
    it, or after the flag's TTL (or for data written before the flag existed)."""
    inner = RedisPyTransport(redis.asyncio.Redis.from_url(redis_url))
    recording = Recording(inner)
    backend = RedisBackend(recording, prefix=f"t{uuid.uuid4().hex[:8]}", clock=FakeClock())
    backend._first_call_checked = True
    try:
        await backend.enqueue(message("a"))
        assert (recording.sent, recording.sadds) == (["enqueue", "SADD"], [("q",)])
        ttl = await inner.execute(Command(("PTTL", backend.keys("q").registered)))
        assert 0 < ttl <= 60_000
        recording.sent.clear()
        await backend.enqueue(message("b"))
        await backend.enqueue_many([message(f"c{i}") for i in range(150)])  # two chunks
        assert recording.sent == ["enqueue"] * 3
        # a chunk of q, two of r, one of s: r and s SADDed at once
        await backend.enqueue_many(
            [message("d"), *(message(f"r{i}", queue="r") for i in range(101)),
             message("s", queue="s"), message("a", queue="s")]
        )  # fmt: skip
        assert recording.sadds[1:] == [("r", "s")]
        # a duplicate stores nothing: no flag set, nothing to register
        await inner.execute(Command(("DEL", backend.keys("s").registered)))
        await backend.enqueue_many([message("s", queue="s")])
        assert recording.sadds[1:] == [("r", "s")]
        # the flag gone (its TTL, or data written before it existed): registered again
        await backend.enqueue(message("e", queue="s"))
        assert recording.sadds[2:] == [("s",)]
        assert await backend.queues() == ["q", "r", "s"]
        assert await backend.purge("s") == 3
        assert await inner.execute(Command(("EXISTS", backend.keys("s").registered))) == 0
        await backend.enqueue(message("f", queue="s"))
        assert recording.sadds[3:] == [("s",)]
        assert await backend.queues() == ["q", "r", "s"]
    finally:
        await inner.aclose()


async def test_a_lost_sadd_lasts_until_the_flag_expires(backend: RedisBackend) -> None:
    """A queue whose flag is set but whose registry entry is gone (its producer died between
    script and SADD; a purge by an older strego, whose count does not clear the flag) is not
    listed by the next enqueues, until the flag's TTL ends: the next task registers it again."""
    await backend.enqueue(message("a"))
    registered = backend.keys("q").registered
    await backend.transport.execute(Command(("SREM", queues_key(backend.prefix), "q")))
    await backend.enqueue(message("b"))
    assert await backend.queues() == []  # the flag still says "taken care of"
    await backend.transport.execute(Command(("PEXPIRE", registered, 1)))
    await anyio.sleep(0.01)
    await backend.enqueue(message("c"))
    assert await backend.queues() == ["q"]


async def test_a_fired_schedule_registers_its_queue(backend: RedisBackend) -> None:
    from conformance.test_schedules import definition

    now = backend.clock()
    info = await backend.put_schedule(definition(queue="cron"), now)
    assert await backend.queues() == []
    assert await backend.fire_schedule(info, now, now + 1000) is FireResult.FIRED
    assert await backend.queues() == ["cron"]
    assert await backend.purge("cron") == 1
    assert await backend.queues() == []
    info = (await backend.list_schedules()).schedules[0]
    clock = backend.clock
    assert isinstance(clock, FakeClock)
    clock.advance(1000)
    assert await backend.fire_schedule(info, now + 1000, now + 2000) is FireResult.FIRED
    assert await backend.queues() == ["cron"]


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
