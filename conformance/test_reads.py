"""queues, queue_info, list_tasks, get_task, consumers, held_by, remove_idle_consumers."""

from __future__ import annotations

import base64
import json

import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, ids_in, make_dead, message, start
from strego.backends.base import MAX_PAGE, Backend
from strego.errors import InvalidCursorError, InvalidTaskError
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
        listed = (await backend.list_tasks("q", state)).tasks
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


async def test_active_listed_in_fetch_order(backend: Backend, clock: FakeClock) -> None:
    for task_id in ["x", "y", "z"]:
        await start(backend, task_id)
        clock.advance(10)
    assert await ids_in(backend, TaskState.ACTIVE) == ["x", "y", "z"]
    listed = (await backend.list_tasks("q", TaskState.ACTIVE)).tasks
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


async def pages(backend: Backend, state: TaskState, limit: int) -> list[list[str]]:
    """The ids of each page of a listing, walked by cursor."""
    out: list[list[str]] = []
    cursor = None
    while True:
        page = await backend.list_tasks("q", state, cursor=cursor, limit=limit)
        out.append([t.id for t in page.tasks])
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def test_paging(backend: Backend) -> None:
    await backend.enqueue_many([message(f"t{i:02}") for i in range(25)])
    assert [len(p) for p in await pages(backend, TaskState.PENDING, 10)] == [10, 10, 5]
    walked = [i for page in await pages(backend, TaskState.PENDING, 10) for i in page]
    assert walked == [f"t{i:02}" for i in range(25)]
    first = await backend.list_tasks("q", TaskState.PENDING, limit=25)
    assert first.next_cursor is None and len(first.tasks) == 25


async def test_big_pages_past_active_entries(backend: Backend) -> None:
    """Pages bigger than a backend's batch per call, past active tasks' entries: full pages."""
    await backend.enqueue_many([message(f"t{i:04}") for i in range(700)])
    assert len(await backend.fetch(["q"], 300, "c1", lease_ms=LEASE_MS)) == 300
    assert [len(p) for p in await pages(backend, TaskState.PENDING, MAX_PAGE)] == [400]
    walked = await pages(backend, TaskState.PENDING, 350)
    assert [len(p) for p in walked] == [350, 50]
    assert [i for p in walked for i in p] == [f"t{i:04}" for i in range(300, 700)]
    assert [len(p) for p in await pages(backend, TaskState.ACTIVE, 260)] == [260, 40]


async def fill(backend: Backend, clock: FakeClock, state: TaskState, n: int, tag: str) -> None:
    """n tasks named <tag><i> in `state`, several of them sharing a priority, due time or end
    time (ties are ordered by id), the others spread out."""
    t0 = clock()
    ids = [f"{tag}{i:03}" for i in range(n)]
    if state is TaskState.SCHEDULED:
        await backend.enqueue_many(
            [message(i, process_at_ms=t0 + 60_000 + (k % 4) * 10) for k, i in enumerate(ids)]
        )
        return
    await backend.enqueue_many([message(i, priority=(k % 3) * 5) for k, i in enumerate(ids)])
    if state is TaskState.PENDING:
        return
    got = await backend.fetch(["q"], n, "c1", lease_ms=LEASE_MS)
    assert sorted(t.id for t in got) == sorted(ids)
    for k, task_id in enumerate(ids):
        if state is TaskState.RETRY:
            await backend.fail("q", task_id, "c1", "x", retry_in_ms=t0 + 60_000 + k % 4 - clock())
        elif state is TaskState.DEAD:
            await backend.fail("q", task_id, "c1", "x", retry_in_ms=None)
        elif state is TaskState.COMPLETED:
            await backend.ack("q", task_id, "c1")
        if k % 4 == 3:
            clock.advance(1)  # four tasks end at each instant


async def leave(backend: Backend, state: TaskState, task_id: str) -> bool:
    """Move a task out of `state`; False if this state has no such move."""
    if state in (TaskState.PENDING, TaskState.SCHEDULED):
        return await backend.cancel(task_id, "q")
    if state is TaskState.ACTIVE:
        return await backend.ack("q", task_id, "c1")
    if state is TaskState.DEAD:  # back to pending, then cancelled: out of the next fill's way
        return await backend.requeue_dead("q", task_id) and await backend.cancel(task_id, "q")
    return False


@pytest.mark.parametrize(
    "state",
    [TaskState.PENDING, TaskState.ACTIVE, TaskState.SCHEDULED, TaskState.RETRY,
     TaskState.DEAD, TaskState.COMPLETED],
)  # fmt: skip
async def test_paging_while_tasks_move(
    backend: Backend, clock: FakeClock, state: TaskState
) -> None:
    """Between pages, tasks leave the state (some already listed, some not), new ones arrive
    before and after the cursor, and active ones are claimed by another consumer (they stay
    active): every task that stayed in its state is listed exactly once."""
    await fill(backend, clock, state, 40, "a")
    before = set(await ids_in(backend, state))
    assert len(before) == 40
    gone: set[str] = set()
    listed: list[str] = []
    cursor = None
    for round_ in range(100):
        page = await backend.list_tasks("q", state, cursor=cursor, limit=3)
        listed += [t.id for t in page.tasks]
        assert all(t.state is state for t in page.tasks)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # one listed task and one not yet listed leave
        unlisted = sorted(before - gone - set(listed))
        for task_id in [listed[-1], *unlisted[len(unlisted) // 2 :][:1]]:
            if task_id not in gone and await leave(backend, state, task_id):
                gone.add(task_id)
        # new tasks arrive, with ties and positions before and after the cursor
        if state is TaskState.ACTIVE:
            clock.advance(LEASE_MS + 1)  # every lease ends: c2 claims three, which stay active
            claimed = await backend.claim_stale(
                ["q"], "c2", 3, lease_ms=LEASE_MS, max_deliveries=99
            )
            assert len(claimed) == 3
            await backend.renew("q", [t.id for t in claimed], "c2", lease_ms=LEASE_MS)
        await fill(backend, clock, state, 2, f"n{round_:02}-")
    assert len(listed) == len(set(listed)), "a task was listed twice"
    stayed = (before - gone) & set(await ids_in(backend, state))
    assert stayed - set(listed) == set(), "a task that stayed was skipped"
    assert stayed, "the test moved every task away"


async def test_claimed_task_keeps_its_place(backend: Backend, clock: FakeClock) -> None:
    for task_id in ["x", "y", "z"]:
        await start(backend, task_id)
    clock.advance(LEASE_MS + 1)
    await backend.renew("q", ["x", "z"], "c1", lease_ms=LEASE_MS)
    [claimed] = await backend.claim_stale(["q"], "c2", 5, lease_ms=LEASE_MS, max_deliveries=5)
    assert claimed.id == "y"
    listed = (await backend.list_tasks("q", TaskState.ACTIVE)).tasks
    assert [(t.id, t.consumer) for t in listed] == [("x", "c1"), ("y", "c2"), ("z", "c1")]


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor", "!!!!", "W10", "WyJwZW5kaW5nIl0", "eyJhIjoxfQ", "x" * 5000, "WzEsMiwzXQ"],
)
async def test_malformed_cursor_refused(backend: Backend, cursor: str) -> None:
    await backend.enqueue(message("a"))
    for state in TaskState:
        with pytest.raises(InvalidCursorError):
            await backend.list_tasks("q", state, cursor=cursor)


async def test_cursor_of_another_state_or_forged_refused(
    backend: Backend, clock: FakeClock
) -> None:
    await fill(backend, clock, TaskState.PENDING, 3, "p")
    await fill(backend, clock, TaskState.SCHEDULED, 3, "s")
    for state in (TaskState.PENDING, TaskState.SCHEDULED):
        cursor = (await backend.list_tasks("q", state, limit=1)).next_cursor
        assert cursor is not None
        for other in TaskState:
            if other is not state:
                with pytest.raises(InvalidCursorError):
                    await backend.list_tasks("q", other, cursor=cursor)
    # a cursor's parts of the wrong type or range (a priority, an entry id, a score)
    for state, parts in [
        (TaskState.PENDING, ["pending", 11, "1-1", "x"]),
        (TaskState.PENDING, ["pending", 99, "0-1"]),
        (TaskState.PENDING, ["pending", True, "1-1"]),
        (TaskState.ACTIVE, ["active", 5, "1-1; DROP"]),
        (TaskState.ACTIVE, ["active", "5", "1-1"]),
        (TaskState.SCHEDULED, ["scheduled", 1.5, "a"]),
        (TaskState.SCHEDULED, ["scheduled", 2**60, "a"]),
        (TaskState.DEAD, ["dead", 1, 2]),
    ]:
        forged = base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()
        with pytest.raises(InvalidCursorError):
            await backend.list_tasks("q", state, cursor=forged)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE + 1, 10**9, True, 2.0])
async def test_limit_outside_a_page_refused(backend: Backend, limit: int) -> None:
    with pytest.raises(InvalidTaskError):
        await backend.list_tasks("q", TaskState.PENDING, limit=limit)


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


async def test_remove_idle_consumers_goes_round_every_consumer(
    backend: Backend, clock: FakeClock
) -> None:
    """A backend may look at a batch of consumers per call: calls repeated forget every idle
    consumer that holds nothing, and never one that holds a task."""
    await backend.enqueue_many([message("a"), message("b")])
    await backend.fetch(["q"], 1, "holder-1", lease_ms=LEASE_MS)
    await backend.fetch(["q"], 1, "holder-2", lease_ms=LEASE_MS)
    idle = {f"idle-{i:03}" for i in range(250)}
    for name in sorted(idle):
        assert await backend.fetch(["q"], 1, name, lease_ms=LEASE_MS) == []
    clock.advance(20_000)
    await backend.fetch(["q"], 1, "recent", lease_ms=LEASE_MS)
    removed: list[str] = []
    for _ in range(50):
        removed += await backend.remove_idle_consumers("q", 10_000)
    assert sorted(removed) == sorted(idle)
    names = sorted(c.name for c in await backend.consumers("q"))
    assert names == ["holder-1", "holder-2", "recent"]


async def test_queue_info_counts_tasks_ended_in_the_last_minute(
    backend: Backend, clock: FakeClock
) -> None:
    empty = await backend.queue_info("q")
    assert empty.ended_last_minute == {
        TaskState.COMPLETED: 0,
        TaskState.DEAD: 0,
        TaskState.CANCELLED: 0,
    }
    await backend.enqueue_many([message(f"t{i}") for i in range(4)])
    await backend.enqueue(message("s", process_at_ms=clock() + 10**9))
    tasks = await backend.fetch(["q"], 4, "c1", lease_ms=LEASE_MS)
    await backend.ack("q", tasks[0].id, "c1")  # ends a minute before the reading below
    clock.advance(30_000)
    await backend.ack("q", tasks[1].id, "c1")
    await backend.fail("q", tasks[2].id, "c1", "x", retry_in_ms=None)
    await backend.cancel("s", "q")
    clock.advance(30_000)
    info = await backend.queue_info("q")
    assert info.ended_last_minute == {
        TaskState.COMPLETED: 2,
        TaskState.DEAD: 1,
        TaskState.CANCELLED: 1,
    }
    clock.advance(1)  # the first ack is now more than a minute old
    info = await backend.queue_info("q")
    assert info.ended_last_minute[TaskState.COMPLETED] == 1
    assert info.counts[TaskState.COMPLETED] == 2
