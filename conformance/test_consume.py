"""ack, ack_many, fail, release, renew, claim_stale."""

from __future__ import annotations

import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, start, state_of
from strego.backends.base import Backend
from strego.errors import TaskIdConflictError
from strego.task import TaskState

pytestmark = pytest.mark.anyio


# -- ack ------------------------------------------------------------------------------------------


async def test_ack_completes(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    clock.advance(1_234)
    assert await backend.ack("q", "a", "c1") is True
    info = await backend.get_task("a", "q")
    assert info is not None
    assert info.state == TaskState.COMPLETED
    assert info.completed_ms == clock() and info.ended_ms == clock()
    assert info.next_run_ms is None and info.ended_at is not None
    assert info.consumer is None
    counts = (await backend.queue_info("q")).counts
    assert (counts[TaskState.ACTIVE], counts[TaskState.COMPLETED]) == (0, 1)


async def test_ack_keeps_everything_but_the_run_state(backend: Backend, clock: FakeClock) -> None:
    """A task with every header field set (priority, retries, last error, unique key) completes
    with each one kept, its unique key released and its stream entry gone."""
    await backend.enqueue(
        message("a", priority=7, max_retry=5, unique_key="u", unique_ttl_ms=3_600_000)
    )
    [first] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", "a", "c1", "boom ✗", retry_in_ms=1_000) == TaskState.RETRY
    clock.advance(1_000)
    await backend.promote(["q"])
    [again] = await backend.fetch(["q"], 1, "worker-with-a-long-name", lease_ms=LEASE_MS)
    clock.advance(250)
    assert await backend.ack("q", "a", "worker-with-a-long-name") is True
    done = await backend.get_task("a", "q")
    assert done is not None
    assert done.state == TaskState.COMPLETED
    assert (done.priority, done.max_retry, done.retried, done.deliveries) == (7, 5, 1, 2)
    assert done.last_error == "boom ✗"
    assert done.started_ms == again.started_ms and done.completed_ms == clock()
    assert done.consumer is None
    assert (done.payload, done.type, done.created_ms) == (first.payload, first.type, 0)
    assert done.unique_key == "u"
    # the unique key was released: a new task may take it at once
    assert (await backend.enqueue(message("b", unique_key="u", unique_ttl_ms=1_000))).id == "b"
    # and nothing of the run is left pending or active
    counts = (await backend.queue_info("q")).counts
    assert (counts[TaskState.ACTIVE], counts[TaskState.PENDING]) == (0, 1)
    [only] = await backend.fetch(["q"], 10, "c1", lease_ms=LEASE_MS)
    assert only.id == "b"


async def test_ack_writes_processed_marker(backend: Backend) -> None:
    await start(backend, "a")
    await backend.ack("q", "a", "c1")
    with pytest.raises(TaskIdConflictError):
        await backend.enqueue(message("a"))


async def test_double_ack_returns_false(backend: Backend) -> None:
    await start(backend, "a")
    assert await backend.ack("q", "a", "c1") is True
    assert await backend.ack("q", "a", "c1") is False
    assert (await backend.queue_info("q")).counts[TaskState.COMPLETED] == 1


async def test_ack_of_non_active_returns_false(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("p"))
    await backend.enqueue(message("s", process_at_ms=clock() + 10_000))
    assert await backend.ack("q", "p", "c1") is False
    assert await backend.ack("q", "s", "c1") is False
    assert await backend.ack("q", "unknown", "c1") is False
    assert await state_of(backend, "p") == TaskState.PENDING
    assert await state_of(backend, "s") == TaskState.SCHEDULED


async def test_ack_after_lost_lease_completes_once(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a"))
    await backend.fetch(["q"], 1, "c1", lease_ms=1_000)
    clock.advance(2_000)
    [claimed] = await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert (claimed.id, claimed.consumer) == ("a", "c2")
    # c1 finished the work after all: its ack completes the task, c2's ack then changes nothing
    assert await backend.ack("q", "a", "c1") is True
    assert await backend.ack("q", "a", "c2") is False
    assert await state_of(backend, "a") == TaskState.COMPLETED
    assert (await backend.queue_info("q")).counts[TaskState.COMPLETED] == 1


async def test_ack_many(backend: Backend) -> None:
    await backend.enqueue_many([message("a"), message("b"), message("x", queue="other")])
    await backend.fetch(["q", "other"], 3, "c1", lease_ms=LEASE_MS)
    results = await backend.ack_many(
        [("q", "a"), ("q", "unknown"), ("other", "x"), ("q", "a"), ("q", "b")], "c1"
    )
    assert results == [True, False, True, False, True]
    for queue, task_id in [("q", "a"), ("q", "b"), ("other", "x")]:
        assert await state_of(backend, task_id, queue) == TaskState.COMPLETED


# -- fail -----------------------------------------------------------------------------------------


async def test_fail_to_retry_then_promote(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    retry_at = clock() + 5_000
    assert await backend.fail("q", "a", "c1", "boom", retry_in_ms=5_000) == TaskState.RETRY
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.retried, info.next_run_ms) == (TaskState.RETRY, 1, retry_at)
    assert info.last_error == "boom" and info.consumer is None
    assert await backend.promote(["q"]) == 5_000  # how long until it is due
    clock.advance(1_000)
    assert await backend.promote(["q"]) == 4_000
    assert await state_of(backend, "a") == TaskState.RETRY
    clock.advance(4_000)
    assert await backend.promote(["q"]) is None
    [again] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert (again.id, again.retried, again.deliveries) == ("a", 1, 2)


async def test_fail_without_retries_left_goes_dead(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", max_retry=1))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", "a", "c1", "one", retry_in_ms=0) == TaskState.RETRY
    await backend.promote(["q"])
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    clock.advance(100)
    assert await backend.fail("q", "a", "c1", "two", retry_in_ms=0) == TaskState.DEAD
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.retried, info.last_error) == (TaskState.DEAD, 1, "two")
    assert (info.ended_ms, info.next_run_ms) == (clock(), None)


async def test_fail_max_retry_zero_goes_dead(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", max_retry=0))
    await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.fail("q", "a", "c1", "x", retry_in_ms=1) == TaskState.DEAD


async def test_fail_skip_retry_goes_dead_at_once(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    assert await backend.fail("q", "a", "c1", "skip", retry_in_ms=None) == TaskState.DEAD
    info = await backend.get_task("a", "q")
    assert info is not None
    assert (info.state, info.retried, info.last_error) == (TaskState.DEAD, 0, "skip")
    assert (info.ended_ms, info.next_run_ms) == (clock(), None)
    counts = (await backend.queue_info("q")).counts
    assert (counts[TaskState.ACTIVE], counts[TaskState.DEAD]) == (0, 1)


async def test_fail_of_non_active_returns_none(backend: Backend) -> None:
    await backend.enqueue(message("a"))
    assert await backend.fail("q", "a", "c1", "x", retry_in_ms=None) is None
    assert await backend.fail("q", "nope", "c1", "x", retry_in_ms=None) is None
    assert await state_of(backend, "a") == TaskState.PENDING


# -- release --------------------------------------------------------------------------------------


async def test_release(backend: Backend) -> None:
    await backend.enqueue_many([message("a"), message("b"), message("c")])
    await backend.fetch(["q"], 2, "c1", lease_ms=LEASE_MS)
    await backend.fetch(["q"], 1, "c2", lease_ms=LEASE_MS)
    assert await backend.release("q", ["a", "b", "c", "unknown"], "c1") == 2
    for task_id in ("a", "b"):
        info = await backend.get_task(task_id, "q")
        assert info is not None
        assert (info.state, info.retried, info.consumer) == (TaskState.PENDING, 0, None)
    assert await state_of(backend, "c") == TaskState.ACTIVE
    got = await backend.fetch(["q"], 5, "c3", lease_ms=LEASE_MS)
    assert sorted(t.id for t in got) == ["a", "b"]


# -- renew ----------------------------------------------------------------------------------------


async def test_renew_keeps_lease(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a"))
    await backend.fetch(["q"], 1, "c1", lease_ms=10_000)
    clock.advance(8_000)
    assert (await backend.renew("q", ["a"], "c1", lease_ms=10_000)).lost == []
    clock.advance(8_000)  # past the first lease, within the renewed one
    assert await backend.claim_stale(["q"], "c2", 10, lease_ms=10_000, max_deliveries=5) == []
    clock.advance(3_000)
    [claimed] = await backend.claim_stale(["q"], "c2", 10, lease_ms=10_000, max_deliveries=5)
    assert claimed.id == "a"


async def test_renew_reports_lost_tasks(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message("kept"), message("reclaimed"), message("done")])
    await backend.fetch(["q"], 3, "c1", lease_ms=1_000)
    clock.advance(2_000)
    assert (await backend.renew("q", ["kept", "done"], "c1", lease_ms=1_000)).lost == []
    await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    await backend.ack("q", "done", "c1")
    renewal = await backend.renew("q", ["kept", "reclaimed", "done", "gone"], "c1", lease_ms=1_000)
    assert sorted(renewal.lost) == ["done", "gone", "reclaimed"]


# -- claim_stale ----------------------------------------------------------------------------------


async def test_claim_only_expired_leases(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("short"))
    await backend.fetch(["q"], 1, "dead-worker", lease_ms=1_000)
    await backend.enqueue(message("long"))
    await backend.fetch(["q"], 1, "live-worker", lease_ms=LEASE_MS)
    clock.advance(1_500)
    claimed = await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert [t.id for t in claimed] == ["short"]
    task = claimed[0]
    assert (task.state, task.consumer, task.deliveries) == (TaskState.ACTIVE, "c2", 2)
    info = await backend.get_task("short", "q")
    assert info is not None and (info.consumer, info.deliveries) == ("c2", 2)
    long = await backend.get_task("long", "q")
    assert long is not None and long.consumer == "live-worker"
    # the claim gave a new lease: nothing is stale right after
    assert await backend.claim_stale(["q"], "c3", 10, lease_ms=LEASE_MS, max_deliveries=5) == []


async def test_claim_finds_stale_behind_many_fresh(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message(f"fresh{i:03}") for i in range(300)])
    assert len(await backend.fetch(["q"], 300, "live", lease_ms=600_000)) == 300
    await backend.enqueue_many([message(f"stale{i}") for i in range(5)])
    assert len(await backend.fetch(["q"], 5, "died", lease_ms=1_000)) == 5
    clock.advance(2_000)
    claimed = await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert sorted(t.id for t in claimed) == [f"stale{i}" for i in range(5)]


async def test_claim_count_limit(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message(f"t{i}") for i in range(5)])
    await backend.fetch(["q"], 5, "died", lease_ms=1_000)
    clock.advance(2_000)
    first = await backend.claim_stale(["q"], "c2", 2, lease_ms=LEASE_MS, max_deliveries=5)
    rest = await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert (len(first), len(rest)) == (2, 3)
    assert sorted(t.id for t in first + rest) == [f"t{i}" for i in range(5)]


async def test_claim_poison_goes_dead(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("poison"))
    await backend.fetch(["q"], 1, "w1", lease_ms=1_000)
    clock.advance(2_000)
    [claimed] = await backend.claim_stale(["q"], "w2", 10, lease_ms=1_000, max_deliveries=2)
    assert claimed.deliveries == 2
    clock.advance(2_000)
    assert await backend.claim_stale(["q"], "w3", 10, lease_ms=1_000, max_deliveries=2) == []
    info = await backend.get_task("poison", "q")
    assert info is not None
    assert info.state == TaskState.DEAD
    assert (
        info.last_error == "exceeded max deliveries (2): its consumer died 2 times while running it"
    )
    assert info.deliveries == 2 and (info.ended_ms, info.next_run_ms) == (clock(), None)


async def test_claim_across_queues(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(message("a", queue="one"))
    await backend.enqueue(message("b", queue="two"))
    await backend.fetch(["one", "two"], 2, "died", lease_ms=1_000)
    clock.advance(2_000)
    claimed = await backend.claim_stale(
        ["one", "two"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5
    )
    assert sorted((t.queue, t.id) for t in claimed) == [("one", "a"), ("two", "b")]
