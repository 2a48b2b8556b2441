"""Server end to end on every backend, under asyncio and trio: delivery, concurrency, queue order,
failures, timeouts, typed and sync handlers, scheduling."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import anyio
import anyio.lowlevel
import attrs
import pytest

import strego
from strego.backends.base import Backend
from strego.message import TaskMessage
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually, make_server, wait_for_state

__all__ = ["backend"]  # the fixture, imported for pytest

#: the runtime runs on MemoryBackend and on RedisBackend over redis-py, anyio and fakeredis
pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]


@attrs.define
class Welcome:
    user_id: int
    name: str


@dataclasses.dataclass
class Resize:
    width: int
    height: int


async def test_every_task_runs_exactly_once(backend: Backend) -> None:
    server = make_server(backend, concurrency=8)
    runs: Counter[str] = Counter()

    @server.handler("count")
    async def count(task: strego.Task) -> None:
        assert task.id is not None
        runs[task.id] += 1
        await anyio.lowlevel.checkpoint()

    client = strego.Client(backend)
    infos = await client.enqueue_many([strego.Task("count", {"i": i}) for i in range(200)])
    ids = {info.id for info in infos if isinstance(info, strego.TaskInfo)}
    assert len(ids) == 200
    async with server:
        await eventually(lambda: len(runs) == 200, "200 tasks to run")
        await eventually(lambda: server.stats.processed == 200, "200 acks")
    assert set(runs) == ids
    assert set(runs.values()) == {1}
    info = await client.queue_info("default")
    assert info.counts[TaskState.COMPLETED] == 200
    assert info.counts[TaskState.ACTIVE] == 0


async def test_concurrency_is_really_n(backend: Backend) -> None:
    server = make_server(backend, concurrency=5)
    running = 0
    peak = 0
    done = 0

    @server.handler("sleepy")
    async def sleepy(task: strego.Task) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1
        done += 1

    client = strego.Client(backend)
    await client.enqueue_many([strego.Task("sleepy") for _ in range(20)])
    async with server:
        await eventually(lambda: done == 20, "20 tasks")
    assert peak == 5


async def test_strict_queues_run_in_priority_order(backend: Backend) -> None:
    client = strego.Client(backend)
    await client.enqueue_many([strego.Task("job", "low", queue="low") for _ in range(5)])
    await client.enqueue_many([strego.Task("job", "high", queue="high") for _ in range(5)])
    order: list[str] = []
    server = make_server(backend, queues={"low": 1, "high": 5}, strict=True, concurrency=1)

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        order.append(task.payload)

    async with server:
        await eventually(lambda: len(order) == 10, "10 tasks")
    assert order == ["high"] * 5 + ["low"] * 5


async def test_strict_order_holds_for_a_queue_that_wakes_while_a_later_one_is_busy(
    backend: Backend,
) -> None:
    # "high" is found idle by the first fetches, then gets a task while "low" is busy: a strict
    # server asks the backend for its exact order, so no later "low" task goes first
    client = strego.Client(backend)
    await client.enqueue_many([strego.Task("job", f"low{i}", queue="low") for i in range(5)])
    order: list[str] = []
    server = make_server(backend, queues=["high", "low"], strict=True, concurrency=1, prefetch=0)

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        order.append(task.payload)
        if task.payload == "low1":
            await client.enqueue(strego.Task("job", "high", queue="high"))

    async with server:
        await eventually(lambda: len(order) == 6, "6 tasks")
    assert order == ["low0", "low1", "high", "low2", "low3", "low4"]


async def test_weighted_queues_favour_the_heavier(backend: Backend) -> None:
    client = strego.Client(backend)
    for queue in ("light", "heavy"):
        await client.enqueue_many([strego.Task("job", queue, queue=queue) for _ in range(60)])
    order: list[str] = []
    server = make_server(backend, queues={"light": 1, "heavy": 9}, concurrency=1)

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        order.append(task.payload)

    async with server:
        await eventually(lambda: len(order) >= 40, "40 tasks")
    first = Counter(order[:40])
    # expected 36 heavy; below 25 has a probability far under one in a million
    assert first["heavy"] >= 25
    assert first["light"] >= 1 or first["heavy"] == 40


async def test_failures_retry_then_go_dead(backend: Backend) -> None:
    server = make_server(backend)
    runs = 0

    @server.handler("flaky")
    async def flaky(task: strego.Task) -> None:
        nonlocal runs
        runs += 1
        raise ValueError(f"boom {runs}")

    info = await strego.Client(backend).enqueue(strego.Task("flaky", max_retry=2))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert runs == 3
    assert dead.retried == 2
    assert dead.last_error is not None
    assert dead.last_error.startswith("ValueError: boom 3")
    assert "in flaky" in dead.last_error  # the traceback summary names the handler
    assert server.stats.retried == 2
    assert server.stats.dead == 1


async def test_skip_retry_goes_dead_at_once(backend: Backend) -> None:
    server = make_server(backend)
    runs = 0

    @server.handler("hopeless")
    async def hopeless(task: strego.Task) -> None:
        nonlocal runs
        runs += 1
        raise strego.SkipRetry("bad input")

    info = await strego.Client(backend).enqueue(strego.Task("hopeless", max_retry=5))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert runs == 1
    assert dead.retried == 0
    assert dead.last_error is not None and "SkipRetry: bad input" in dead.last_error


async def test_task_without_handler_retries_then_dies(backend: Backend) -> None:
    server = make_server(backend)

    @server.handler("known")
    async def known(task: strego.Task) -> None: ...

    info = await strego.Client(backend).enqueue(strego.Task("unknown:type", max_retry=1))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert dead.retried == 1
    assert dead.last_error == "no handler for task type 'unknown:type'"


async def test_undecodable_payload_goes_dead_at_once(backend: Backend) -> None:
    server = make_server(backend)
    runs = 0

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        nonlocal runs
        runs += 1

    bad = TaskMessage(
        id="bad-json", type="job", queue="default", payload=b"{not json", encoding="json"
    )
    odd = TaskMessage(id="odd-enc", type="job", queue="default", payload=b"x", encoding="nope")
    await backend.enqueue(bad)
    await backend.enqueue(odd)
    async with server:
        bad_info = await wait_for_state(backend, "bad-json", TaskState.DEAD)
        odd_info = await wait_for_state(backend, "odd-enc", TaskState.DEAD)
    assert runs == 0
    assert bad_info.retried == 0
    assert bad_info.last_error is not None and "not valid JSON" in bad_info.last_error
    assert odd_info.last_error == "unknown payload encoding 'nope'"


async def test_payload_that_does_not_structure_goes_dead(backend: Backend) -> None:
    server = make_server(backend)
    got: list[Welcome] = []

    @server.handler("welcome")
    async def welcome(payload: Welcome) -> None:
        got.append(payload)

    client = strego.Client(backend)
    good = await client.enqueue(strego.Task("welcome", Welcome(42, "Ada")))
    bad = await client.enqueue(strego.Task("welcome", {"user_id": "x"}, max_retry=3))
    async with server:
        await wait_for_state(backend, good.id, TaskState.COMPLETED)
        dead = await wait_for_state(backend, bad.id, TaskState.DEAD)
    assert got == [Welcome(42, "Ada")]
    assert dead.retried == 0
    assert dead.last_error is not None
    assert dead.last_error.startswith("payload does not structure as Welcome")


async def test_typed_handlers_receive_structured_payloads(backend: Backend) -> None:
    server = make_server(backend)
    got: list[object] = []

    @server.handler("resize")
    async def resize(payload: Resize) -> None:
        got.append(payload)

    @server.handler("plain")
    async def plain(payload: dict[str, int]) -> None:
        got.append(payload)

    @server.handler("blob")
    async def blob(payload: bytes) -> None:
        got.append(payload)

    client = strego.Client(backend)
    await client.enqueue(strego.Task("resize", {"width": 3, "height": 4}))
    await client.enqueue(strego.Task("plain", {"a": 1}))
    await client.enqueue(strego.Task("blob", b"\x00\xff"))
    async with server:
        await eventually(lambda: len(got) == 3, "3 tasks")
    assert Resize(3, 4) in got
    assert {"a": 1} in got
    assert b"\x00\xff" in got


async def test_raw_task_handler_sees_task_fields(backend: Backend) -> None:
    seen: list[tuple[strego.Task, strego.TaskInfo]] = []

    async def send(task: strego.Task) -> None:
        seen.append((task, strego.current_task()))

    info = await strego.Client(backend).enqueue(
        strego.Task("email:send", {"to": "a@example.com"}, queue="mail", labels={"u": "1"})
    )
    server2 = make_server(backend, queues=["mail"])
    server2.handler("email:send")(send)
    async with server2:
        await eventually(lambda: len(seen) == 1, "the task")
    task, current = seen[0]
    assert task.id == info.id
    assert task.payload == {"to": "a@example.com"}
    assert task.queue == "mail"
    assert task.labels == {"u": "1"}
    assert current.id == info.id
    assert current.retried == 0
    assert current.deliveries == 1


async def test_sync_handlers_run_in_threads(backend: Backend) -> None:
    server = make_server(backend, concurrency=3)
    seen: list[tuple[str, str]] = []

    @server.handler("sync")
    def sync(payload: Welcome) -> None:
        time.sleep(0.01)
        seen.append((strego.current_task().id, f"{payload.name}{payload.user_id}"))

    client = strego.Client(backend)
    infos = [await client.enqueue(strego.Task("sync", Welcome(i, "u"))) for i in range(6)]
    async with server:
        await eventually(lambda: len(seen) == 6, "6 sync tasks")
    assert sorted(seen) == sorted((info.id, f"u{i}") for i, info in enumerate(infos))


async def test_timeout_cancels_the_handler(backend: Backend) -> None:
    server = make_server(backend)
    finished = False

    @server.handler("slow")
    async def slow(task: strego.Task) -> None:
        nonlocal finished
        await anyio.sleep(30)
        finished = True

    info = await strego.Client(backend).enqueue(strego.Task("slow", timeout=0.2, max_retry=0))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert not finished
    assert dead.last_error == "timed out after 0.2s"


async def test_default_timeout_applies_to_tasks_without_one(backend: Backend) -> None:
    server = make_server(backend, default_timeout=0.1)

    @server.handler("slow")
    async def slow(task: strego.Task) -> None:
        await anyio.sleep(30)

    info = await strego.Client(backend).enqueue(strego.Task("slow", max_retry=0))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
    assert dead.last_error == "timed out after 0.1s"


async def test_scheduled_task_is_neither_early_nor_late(backend: Backend) -> None:
    server = make_server(backend)
    started: list[int] = []

    @server.handler("later")
    async def later(task: strego.Task) -> None:
        started.append(backend.clock())

    async with server:
        info = await strego.Client(backend).enqueue(strego.Task("later", process_in=0.4))
        assert info.state is TaskState.SCHEDULED
        assert info.next_run_ms is not None
        await eventually(lambda: bool(started), "the scheduled task")
    lateness = started[0] - info.next_run_ms
    assert 0 <= lateness < 1000  # loose bound: never early, not badly late


async def test_retry_delay_is_honoured(backend: Backend) -> None:
    server = make_server(backend, retry_delay=lambda n, exc, info: 0.3)
    starts: list[int] = []

    @server.handler("once-fails")
    async def once_fails(task: strego.Task) -> None:
        starts.append(backend.clock())
        if len(starts) == 1:
            raise RuntimeError("first attempt fails")

    info = await strego.Client(backend).enqueue(strego.Task("once-fails"))
    async with server:
        done = await wait_for_state(backend, info.id, TaskState.COMPLETED)
    assert done.retried == 1
    assert starts[1] - starts[0] >= 300


async def test_cancelled_task_never_runs(backend: Backend) -> None:
    server = make_server(backend)
    ran: list[str] = []

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        ran.append(task.payload)

    client = strego.Client(backend)
    doomed = await client.enqueue(strego.Task("job", "doomed", process_in=0.3))
    assert await client.cancel(doomed.id)
    assert not await client.cancel(doomed.id)
    kept = await client.enqueue(strego.Task("job", "kept", process_in=0.4))
    async with server:
        await wait_for_state(backend, kept.id, TaskState.COMPLETED)
    assert ran == ["kept"]
    cancelled = await client.get_task(doomed.id)
    assert cancelled is not None and cancelled.state is TaskState.CANCELLED


async def test_unique_key_frees_after_completion(backend: Backend) -> None:
    server = make_server(backend)
    ran: list[str] = []

    @server.handler("welcome")
    async def welcome(task: strego.Task) -> None:
        ran.append(task.payload)

    client = strego.Client(backend)
    first = await client.enqueue(strego.Task("welcome", "1", unique_key="w:42", unique_ttl=60))
    with pytest.raises(strego.DuplicateTaskError) as refused:
        await client.enqueue(strego.Task("welcome", "2", unique_key="w:42", unique_ttl=60))
    assert refused.value.holder_id == first.id
    async with server:
        await wait_for_state(backend, first.id, TaskState.COMPLETED)
        again = await client.enqueue(strego.Task("welcome", "3", unique_key="w:42", unique_ttl=60))
        await wait_for_state(backend, again.id, TaskState.COMPLETED)
    assert ran == ["1", "3"]
