"""History on (`history=True`): every transition writes one event, in order, with the enqueue's
envelope; a drainer reads the events not acknowledged, and acknowledging forgets them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, make_dead, message
from strego.backends.base import Backend
from strego.errors import InvalidTaskError
from strego.history import HistoryEvent, history_source
from strego.history.events import release_history
from strego.task import TaskState

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hbackend(make_backend: Any, clock: FakeClock) -> AsyncIterator[Backend]:
    async with make_backend(clock=clock, history=True, history_cap=1_000) as b:
        yield b


async def _events(backend: Backend) -> list[HistoryEvent]:
    return await history_source(backend).read_history(10_000)


def _story(events: list[HistoryEvent], task_id: str) -> list[str]:
    return [e.state for e in events if e.task_id == task_id]


async def test_every_transition_writes_an_event(hbackend: Backend, clock: FakeClock) -> None:
    b = hbackend
    t0 = clock()
    labelled = attrs.evolve(message("a", payload=b'{"to": "x@y"}'), labels={"order": "1234"})
    await b.enqueue(labelled)
    await b.enqueue(message("s", process_at_ms=clock() + 1_000))
    await b.enqueue(message("k"))
    await b.enqueue(message("g"))
    [a] = await b.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert a.id == "a"
    assert await b.fail("q", "a", "c1", "boom", retry_in_ms=10) == TaskState.RETRY
    clock.advance(1_000)
    await b.promote(["q"])  # a and s -> pending
    assert await b.cancel("k", "q")
    assert await b.delete("g", "q")
    fetched = await b.fetch(["q"], 2, "c2", lease_ms=LEASE_MS)
    assert {t.id for t in fetched} == {"a", "s"}
    assert await b.ack("q", "a", "c2")
    assert await b.fail("q", "s", "c2", "fatal", retry_in_ms=None) == TaskState.DEAD
    assert await b.requeue_dead("q", "s")
    [again] = await b.fetch(["q"], 1, "c3", lease_ms=LEASE_MS)
    assert again.id == "s"
    assert await b.release("q", ["s"], "c3") == 1
    await b.fetch(["q"], 1, "c4", lease_ms=1)
    clock.advance(10)
    [claimed] = await b.claim_stale(["q"], "c5", 1, lease_ms=LEASE_MS, max_deliveries=10)
    assert claimed.id == "s"
    await b.enqueue(message("p"))
    await b.purge("q", [TaskState.PENDING])

    events = await _events(b)
    assert _story(events, "a") == ["pending", "active", "retry", "pending", "active", "completed"]
    assert _story(events, "s") == [
        "scheduled", "pending", "active", "dead", "pending", "active", "pending", "active",
        "active",
    ]  # fmt: skip
    assert _story(events, "k") == ["pending", "cancelled"]
    assert _story(events, "g") == ["pending", "deleted"]
    assert _story(events, "p") == ["pending", "deleted"]
    first = next(e for e in events if e.task_id == "a")
    assert (first.type, first.labels) == ("test.task", {"order": "1234"})
    assert first.payload == b'{"to": "x@y"}'
    assert first.queue == "q" and first.at_ms == t0
    failed = [e for e in events if e.task_id == "a" and e.state == "retry"]
    assert failed[0].error == "boom" and failed[0].retried == 1
    dead = next(e for e in events if e.task_id == "s" and e.state == "dead")
    assert dead.error == "fatal"
    started = [e for e in events if e.task_id == "s" and e.state == "active"]
    assert [e.consumer for e in started] == ["c2", "c3", "c4", "c5"]
    # one order per queue: the sequence increases
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_unacknowledged_events_come_again_after_rewind(hbackend: Backend) -> None:
    source = history_source(hbackend, "d1")
    for i in range(5):
        await hbackend.enqueue(message(f"t{i}"))
    first = await source.read_history(3)
    assert [e.task_id for e in first] == ["t0", "t1", "t2"]
    assert [e.task_id for e in await source.read_history(10)] == ["t3", "t4"]
    assert await source.read_history(10) == []
    source.rewind()  # the batch was not stored: every event not acknowledged comes again
    again = await source.read_history(10)
    assert again == [*first, *again[3:]] and len(again) == 5
    assert await source.history_backlog() == {"q": 5}
    await source.ack_history(again[:4])
    source.rewind()
    assert [e.task_id for e in await source.read_history(10)] == ["t4"]
    assert await source.history_backlog() == {"q": 1}
    # a new source under the same name (a drainer restarted) starts with what was never
    # acknowledged
    assert [e.task_id for e in await history_source(hbackend, "d1").read_history(10)] == ["t4"]
    # another drainer takes it over once the first one hands it on (or after CLAIM_IDLE_MS)
    await release_history(hbackend, "d1")
    assert [e.task_id for e in await history_source(hbackend, "d2").read_history(10)] == ["t4"]


async def test_events_of_a_queue_purged_empty_are_still_read(hbackend: Backend) -> None:
    """A purge that empties a queue takes it out of the registry (Redis), where drainers find
    history streams: its `deleted` events, and those not stored before it, are read all the
    same, and the purged queue is forgotten once they are stored."""
    source = history_source(hbackend, "d1")
    await make_dead(hbackend, "t1")
    await hbackend.enqueue(message("t2", queue="other"))
    await source.ack_history(await source.read_history(100))
    await hbackend.enqueue(message("t3"))
    assert await hbackend.purge("q", [TaskState.DEAD, TaskState.PENDING]) == 2
    assert "q" not in await hbackend.queues()
    events = await source.read_history(100)
    assert sorted((e.task_id, e.state) for e in events) == [
        ("t1", "deleted"), ("t3", "deleted"), ("t3", "pending"),
    ]  # fmt: skip
    assert (await source.history_backlog()).get("q") == 3
    await source.ack_history(events)
    assert await source.read_history(100) == []
    assert (await source.history_backlog()).get("q", 0) == 0
    # a drainer that starts now finds nothing either
    assert await history_source(hbackend, "d2").read_history(100) == []


async def test_the_cap_bounds_the_backlog(make_backend: Any, clock: FakeClock) -> None:
    async with make_backend(clock=clock, history=True, history_cap=10) as b:
        for i in range(300):  # one entry each (a batch is one entry in Redis)
            await b.enqueue(message(f"t{i:03}"))
        backlog = (await history_source(b).history_backlog())["q"]
        # exact in memory; MAXLEN ~ trims whole stream nodes (100 entries each by default)
        assert 10 <= backlog <= 110


async def test_history_off_writes_nothing(backend: Backend) -> None:
    await backend.enqueue(message("a"))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.ack("q", "a", "c1")
    queues = await backend.queues()
    assert queues == ["q"]
    history = getattr(backend, "history", None)
    assert history is None or history is False


async def test_a_bad_cap_is_refused(make_backend: Any, clock: FakeClock) -> None:
    with pytest.raises(InvalidTaskError):
        async with make_backend(clock=clock, history=True, history_cap=0):
            pass
