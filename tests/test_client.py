"""Client on every backend, under asyncio and trio: what it stores, what it refuses before the
backend is called, enqueue_many's refusals in place, inspection and management."""

from __future__ import annotations

import math

import attrs
import pytest

import strego
from strego.backends.base import Backend
from strego.errors import TaskIdConflictError
from strego.serializers import MsgpackSerializer
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]


@attrs.define
class Signup:
    user_id: int
    email: str


async def test_enqueue_stores_a_serialized_message(backend: Backend) -> None:
    client = strego.Client(backend)
    before = backend.clock()
    info = await client.enqueue(
        strego.Task(
            "email:send",
            {"to": "a@example.com"},
            queue="critical",
            max_retry=5,
            timeout=30,
            priority=7,
            labels={"user_id": "42"},
        )
    )
    assert len(info.id) == 20  # strego.ids: 48-bit ms + 72 random bits
    assert info.state is TaskState.PENDING
    stored = await client.get_task(info.id)
    assert stored is not None
    assert stored.payload == b'{"to":"a@example.com"}'
    assert stored.encoding == "json"
    assert (stored.queue, stored.max_retry, stored.priority) == ("critical", 5, 7)
    assert stored.timeout_ms == 30_000
    assert stored.labels == {"user_id": "42"}
    assert before <= stored.created_ms <= backend.clock()


async def test_attrs_payloads_bytes_and_other_serializers(backend: Backend) -> None:
    client = strego.Client(backend)
    signup = await client.enqueue(strego.Task("signup", Signup(1, "a@b.c")))
    raw = await client.enqueue(strego.Task("blob", b"\x00\x01"))
    packed = await strego.Client(backend, serializer=MsgpackSerializer()).enqueue(
        strego.Task("packed", [1, 2])
    )
    got = {i.id: await client.get_task(i.id) for i in (signup, raw, packed)}
    assert got[signup.id].payload == b'{"user_id":1,"email":"a@b.c"}'  # type: ignore[union-attr]
    assert (got[raw.id].payload, got[raw.id].encoding) == (b"\x00\x01", "raw")  # type: ignore[union-attr]
    assert got[packed.id].encoding == "msgpack"  # type: ignore[union-attr]


async def test_times_are_converted_to_ms(backend: Backend) -> None:
    client = strego.Client(backend)
    now = backend.clock()
    later = await client.enqueue(strego.Task("t", process_in=60))
    assert later.state is TaskState.SCHEDULED
    assert later.next_run_ms is not None and now + 60_000 <= later.next_run_ms
    assert later.next_run_ms <= backend.clock() + 60_000
    at = (now + 120_000) / 1000
    fixed = await client.enqueue(strego.Task("t", process_at=at))
    assert fixed.next_run_ms == math.ceil(at * 1000)
    past = await client.enqueue(strego.Task("t", process_at=(now - 5000) / 1000))
    assert past.state is TaskState.PENDING


async def test_refusals_write_nothing(backend: Backend) -> None:
    client = strego.Client(backend, max_payload_bytes=100)
    with pytest.raises(strego.PayloadTooLargeError) as too_big:
        await client.enqueue(strego.Task("t", "x" * 200))
    assert too_big.value.limit == 100
    with pytest.raises(strego.SerializationError):
        await client.enqueue(strego.Task("t", {"not json": object()}))
    with pytest.raises(strego.InvalidTaskError):
        await client.enqueue("not a task")  # type: ignore[arg-type]
    assert await client.queues() == []


async def test_enqueue_many_refuses_locally_all_or_nothing(backend: Backend) -> None:
    client = strego.Client(backend)
    with pytest.raises(strego.SerializationError):
        await client.enqueue_many([strego.Task("ok"), strego.Task("bad", float("nan"))])
    assert await client.queues() == []
    assert await client.enqueue_many([]) == []


async def test_enqueue_many_returns_backend_refusals_in_place(backend: Backend) -> None:
    client = strego.Client(backend)
    first = await client.enqueue(strego.Task("t", unique_key="k", unique_ttl=60))
    results = await client.enqueue_many(
        [
            strego.Task("t", 1),
            strego.Task("t", 2, unique_key="k", unique_ttl=60),
            strego.Task("t", 3, id=first.id),
            strego.Task("t", 4),
        ]
    )
    assert isinstance(results[0], strego.TaskInfo)
    assert isinstance(results[1], strego.DuplicateTaskError)
    assert results[1].holder_id == first.id
    assert isinstance(results[2], TaskIdConflictError)
    assert isinstance(results[3], strego.TaskInfo)
    info = await client.queue_info("default")
    assert info.counts[TaskState.PENDING] == 3


async def test_inspection_and_management(backend: Backend) -> None:
    client = strego.Client(backend)
    a = await client.enqueue(strego.Task("t", "a", queue="q1"))
    await client.enqueue(strego.Task("t", "b", queue="q2", process_in=60))
    assert await client.queues() == ["q1", "q2"]
    pending = await client.list_tasks("q1", TaskState.PENDING)
    assert ([t.id for t in pending.tasks], pending.next_cursor) == ([a.id], None)
    await client.pause("q1")
    assert (await client.queue_info("q1")).paused
    assert await backend.fetch(["q1"], 1, "c", lease_ms=1000) == []
    await client.resume("q1")
    taken = await backend.fetch(["q1"], 1, "c", lease_ms=1000)
    assert [t.id for t in taken] == [a.id]
    assert [c.held for c in await client.consumers("q1")] == [(a.id,)]
    assert await backend.fail("q1", a.id, "c", "boom", retry_in_ms=None) is TaskState.DEAD
    assert await client.requeue_dead("q1", a.id)
    assert not await client.requeue_dead("q1", a.id)
    again = await client.get_task(a.id)
    assert again is not None and again.state is TaskState.PENDING
    assert await client.requeue_all_dead("q1") == 0
    with pytest.raises(strego.InvalidQueueNameError):
        await client.queue_info("no spaces")


async def test_delete_purge_and_unknown_ids(backend: Backend) -> None:
    client = strego.Client(backend)
    a = await client.enqueue(strego.Task("t", "a", queue="q1", unique_key="k", unique_ttl=60))
    b = await client.enqueue(strego.Task("t", "b", queue="q1", process_in=60))
    c = await client.enqueue(strego.Task("t", "c", queue="q2"))
    [running] = await backend.fetch(["q2"], 1, "w", lease_ms=60_000)
    assert running.id == c.id
    # unknown ids raise TaskNotFoundError (a LookupError); a wrong state is False
    for call in (client.cancel, client.delete):
        with pytest.raises(strego.TaskNotFoundError) as exc_info:
            await call("nope")
        assert isinstance(exc_info.value, LookupError)
        assert isinstance(exc_info.value, strego.StregoError)
        assert exc_info.value.task_id == "nope"
        with pytest.raises(strego.TaskNotFoundError):
            await call(a.id, "q2")
    with pytest.raises(strego.TaskNotFoundError):
        await client.requeue_dead("q2", a.id)
    assert await client.requeue_dead("q1", a.id) is False
    assert await client.cancel(c.id) is True  # running: its cancel is requested
    assert await client.delete(c.id, "q2") is False  # running
    with pytest.raises(strego.InvalidQueueNameError):
        await client.delete(a.id, "no spaces")
    # delete frees the task's unique key
    assert await client.delete(a.id) is True
    assert await client.get_task(a.id) is None
    await client.enqueue(strego.Task("t", "a2", queue="q1", unique_key="k", unique_ttl=60))
    # purge is public; active tasks are refused
    assert await client.purge("q1", [TaskState.SCHEDULED]) == 1
    assert await client.get_task(b.id) is None
    with pytest.raises(strego.InvalidTaskError):
        await client.purge("q2", [TaskState.ACTIVE])
    assert await client.purge("q1") == 1
    assert await client.queues() == ["q2"]  # q1 holds no task any more; q2 a running one
    assert await client.purge("q2") == 0
    assert await client.queues() == ["q2"]


async def test_run_now_throughput_and_the_oldest_pending_age(backend: Backend) -> None:
    # by the backend's own clock (Redis TIME on Redis): no injected clock here
    client = strego.Client(backend)
    later = await client.enqueue(strego.Task("report", {}, queue="ops", process_in=3600))
    assert (await client.queue_info("ops")).oldest_pending_age_ms is None
    assert await client.run_now(later.id) is True
    assert await client.run_now(later.id, "ops") is False  # pending now
    with pytest.raises(strego.TaskNotFoundError):
        await client.run_now("no-such-task")
    age = (await client.queue_info("ops")).oldest_pending_age_ms
    assert age is not None and 0 <= age < 60_000
    [task] = await backend.fetch(["ops"], 1, "c1", lease_ms=60_000)
    assert task.id == later.id
    assert await backend.ack("ops", task.id, "c1")
    history = await client.throughput("ops", minutes=2)
    assert [h.minute_ms % 60_000 for h in history] == [0, 0]
    assert history[1].minute_ms - history[0].minute_ms == 60_000

    async def counted(task_type: str | None) -> bool:
        # the read clock may be a few ms behind the script's at a minute's start: read again
        got = await client.throughput("ops", minutes=2, task_type=task_type)
        return sum(h.completed for h in got) == 1

    await eventually(lambda: counted(None), "the ack counted")
    await eventually(lambda: counted("report"), "the ack counted by type")
    with pytest.raises(strego.InvalidQueueNameError):
        await client.throughput("")
