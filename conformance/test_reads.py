"""queues, queue_info, list_tasks, get_task, consumers, held_by, remove_idle_consumers."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, ids_in, make_dead, message, start
from strego.backends.base import Backend
from strego.task import TaskState

pytestmark = pytest.mark.anyio


async def test_queues_sorted(backend: Backend) -> None:
    assert await backend.queues() == []
    for name in ["zeta", "alpha", "mid", "alpha"]:
        await backend.enqueue(message(f"{name}-{len(await backend.queues())}", queue=name))
    assert await backend.queues() == ["alpha", "mid", "zeta"]


async def test_queue_info_every_state_present(backend: Backend) -> None:
    info = await backend.queue_info("empty")
    assert (info.name, info.paused) == ("empty", False)
    assert info.counts == {state: 0 for state in TaskState}


async def test_counts_agree_with_listings(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message(f"p{i}", priority=i % 3) for i in range(7)])
    await backend.enqueue_many([message(f"s{i}", process_at_ms=clock() + i + 1) for i in range(3)])
    active = await backend.fetch(["q"], 5, "c1", lease_ms=LEASE_MS)
    await backend.ack("q", active[0].id, "c1")
    await backend.fail("q", active[1].id, "c1", "x", retry_in_ms=10)
    await backend.fail("q", active[2].id, "c1", "x", retry_in_ms=None)
    await backend.cancel("s0", "q")
    info = await backend.queue_info("q")
    expected = {
        TaskState.SCHEDULED: 2,
        TaskState.PENDING: 2,
        TaskState.ACTIVE: 2,
        TaskState.RETRY: 1,
        TaskState.DEAD: 1,
        TaskState.COMPLETED: 1,
        TaskState.CANCELLED: 1,
    }
    assert info.counts == expected
    seen: set[str] = set()
    for state in TaskState:
        listed = await backend.list_tasks("q", state)
        assert len(listed) == info.counts[state]
        assert all(t.state == state and t.queue == "q" for t in listed)
        seen.update(t.id for t in listed)
    assert len(seen) == 10  # every task listed once, none lost


async def test_pending_listed_in_fetch_order(backend: Backend) -> None:
    priorities = [0, 5, 0, 10, 5, 0, 10]
    await backend.enqueue_many([message(f"t{i}", priority=p) for i, p in enumerate(priorities)])
    listed = await ids_in(backend, TaskState.PENDING)
    fetched = [t.id for t in await backend.fetch(["q"], 10, "c1", lease_ms=LEASE_MS)]
    assert listed == fetched == ["t3", "t6", "t1", "t4", "t0", "t2", "t5"]


async def test_waiting_listed_by_due_time(backend: Backend, clock: FakeClock) -> None:
    t0 = clock()
    for task_id, delay in [("b", 2_000), ("c", 3_000), ("a", 1_000)]:
        await backend.enqueue(message(task_id, process_at_ms=t0 + delay))
    assert await ids_in(backend, TaskState.SCHEDULED) == ["a", "b", "c"]
    await backend.enqueue_many([message("r1"), message("r2"), message("r3")])
    await backend.fetch(["q"], 3, "c1", lease_ms=LEASE_MS)
    for task_id, delay in [("r1", 3_000), ("r2", 1_000), ("r3", 2_000)]:
        await backend.fail("q", task_id, "c1", "x", retry_in_ms=delay)
    assert await ids_in(backend, TaskState.RETRY) == ["r2", "r3", "r1"]


async def test_active_listed_by_start_time(backend: Backend, clock: FakeClock) -> None:
    for task_id in ["x", "y", "z"]:
        await start(backend, task_id)
        clock.advance(10)
    assert await ids_in(backend, TaskState.ACTIVE) == ["x", "y", "z"]
    listed = await backend.list_tasks("q", TaskState.ACTIVE)
    assert [t.consumer for t in listed] == ["c1"] * 3
    assert [t.started_ms for t in listed] == [clock() - 30, clock() - 20, clock() - 10]


async def test_ended_listed_most_recent_first(backend: Backend, clock: FakeClock) -> None:
    for task_id in ["d1", "d2", "d3"]:
        await make_dead(backend, task_id)
        clock.advance(10)
    assert await ids_in(backend, TaskState.DEAD) == ["d3", "d2", "d1"]
    for task_id in ["c1", "c2", "c3"]:
        await start(backend, task_id)
        clock.advance(10)
    for task_id in ["c2", "c3", "c1"]:
        await backend.ack("q", task_id, "c1")
        clock.advance(10)
    assert await ids_in(backend, TaskState.COMPLETED) == ["c1", "c3", "c2"]
    for task_id in ["x1", "x2"]:
        await backend.enqueue(message(task_id))
    for task_id in ["x1", "x2"]:
        await backend.cancel(task_id, "q")
        clock.advance(10)
    assert await ids_in(backend, TaskState.CANCELLED) == ["x2", "x1"]


async def test_paging(backend: Backend) -> None:
    await backend.enqueue_many([message(f"t{i:02}") for i in range(25)])
    pages = [
        [t.id for t in await backend.list_tasks("q", TaskState.PENDING, offset=o, limit=10)]
        for o in (0, 10, 20, 30)
    ]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    assert [task_id for page in pages for task_id in page] == [f"t{i:02}" for i in range(25)]


async def test_get_task(backend: Backend) -> None:
    await backend.enqueue(message("a", queue="one"))
    await backend.enqueue(message("b", queue="two"))
    found = await backend.get_task("b")
    assert found is not None and (found.id, found.queue) == ("b", "two")
    found = await backend.get_task("a", "one")
    assert found is not None and found.queue == "one"
    assert await backend.get_task("a", "two") is None
    assert await backend.get_task("nope") is None
    assert await backend.get_task("nope", "one") is None


async def test_consumers(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message("a"), message("b")])
    await backend.fetch(["q"], 2, "holder", lease_ms=LEASE_MS)
    clock.advance(1_000)
    assert await backend.fetch(["q"], 1, "idle", lease_ms=LEASE_MS) == []
    clock.advance(4_000)
    consumers = {c.name: c for c in await backend.consumers("q")}
    assert set(consumers) == {"holder", "idle"}
    assert sorted(consumers["holder"].held) == ["a", "b"]
    assert consumers["idle"].held == ()
    assert (consumers["holder"].idle_ms, consumers["idle"].idle_ms) == (5_000, 4_000)
    assert all(c.queue == "q" for c in consumers.values())
    # activity resets idle time
    await backend.renew("q", ["a", "b"], "holder", lease_ms=LEASE_MS)
    consumers = {c.name: c for c in await backend.consumers("q")}
    assert consumers["holder"].idle_ms == 0


async def test_held_by_names_the_active_tasks_of_one_consumer_by_queue(
    backend: Backend, clock: FakeClock
) -> None:
    await backend.enqueue_many(
        [message(i, queue=q) for q in ("one", "two") for i in (f"{q}-a", f"{q}-b", f"{q}-c")]
    )
    await backend.fetch(["one"], 2, "me", lease_ms=LEASE_MS)
    await backend.fetch(["two"], 1, "other", lease_ms=LEASE_MS)
    await backend.fetch(["two"], 1, "me", lease_ms=LEASE_MS)
    queues = ["one", "two", "never-used"]
    assert await backend.held_by(queues, "me") == {"one": ["one-a", "one-b"], "two": ["two-b"]}
    assert await backend.held_by(queues, "other") == {"two": ["two-a"]}
    assert await backend.held_by(["one"], "other") == {}
    assert await backend.held_by([], "me") == {}
    # only active tasks count: acked, failed and released ones are no longer held
    await backend.ack("one", "one-a", "me")
    await backend.fail("two", "two-b", "me", "x", retry_in_ms=10)
    assert await backend.held_by(queues, "me") == {"one": ["one-b"]}
    await backend.release("one", ["one-b"], "me")
    assert await backend.held_by(queues, "me") == {}
    # a task claimed by another consumer is held by that one
    clock.advance(LEASE_MS + 1)
    await backend.claim_stale(["two"], "me", 5, lease_ms=LEASE_MS, max_deliveries=5)
    assert await backend.held_by(queues, "me") == {"two": ["two-a"]}
    assert await backend.held_by(queues, "other") == {}


async def test_remove_idle_consumers_keeps_holders(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a"))
    await backend.fetch(["q"], 1, "holder", lease_ms=LEASE_MS)
    await backend.fetch(["q"], 1, "idle", lease_ms=LEASE_MS)
    clock.advance(2_000)
    await backend.fetch(["q"], 1, "recent", lease_ms=LEASE_MS)
    clock.advance(10_000)
    assert await backend.remove_idle_consumers("q", 11_000) == ["idle"]
    names = sorted(c.name for c in await backend.consumers("q"))
    assert names == ["holder", "recent"]
    # the holder goes once its task is done
    await backend.ack("q", "a", "holder")
    clock.advance(20_000)
    assert sorted(await backend.remove_idle_consumers("q", 11_000)) == ["holder", "recent"]
    assert await backend.consumers("q") == []
