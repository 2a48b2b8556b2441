"""Results (ack stores the return value, fail a dead task's error), cancel requests on active
tasks (renew reports them; ack and fail then end the task cancelled: one winner), and the
watches (`watch_ended`, `watch_cancel_requests`)."""

from __future__ import annotations

import anyio
import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message, state_of
from strego.backends.base import Backend
from strego.errors import DuplicateTaskError
from strego.task import TaskError, TaskState

pytestmark = pytest.mark.anyio


async def _active(backend: Backend, task_id: str, **kw: object) -> None:
    await backend.enqueue(message(task_id, **kw))  # type: ignore[arg-type]
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert got.id == task_id


async def test_ack_stores_the_result_with_the_completion(backend: Backend) -> None:
    await _active(backend, "a")
    assert await backend.ack("q", "a", "c1", result=b"json\n42") is True
    info = await backend.get_task("a", "q")
    assert info is not None and info.state is TaskState.COMPLETED
    assert info.result == b"json\n42"
    # a second ack (another delivery) changes nothing, the result stays
    assert await backend.ack("q", "a", "c1", result=b"json\n43") is False
    assert (await backend.get_task("a", "q")).result == b"json\n42"  # type: ignore[union-attr]


async def test_ack_many_with_and_without_results(backend: Backend) -> None:
    await backend.enqueue_many([message("a"), message("b"), message("c", queue="r")])
    await backend.fetch(["q", "r"], 3, "c1", lease_ms=LEASE_MS)
    done = await backend.ack_many([("q", "a", b"raw\n\x00;,"), ("q", "b"), ("r", "c", None)], "c1")
    assert done == [True, True, True]
    a, b, c = [await backend.get_task(i) for i in "abc"]
    assert a is not None and a.result == b"raw\n\x00;,"
    assert b is not None and b.result is None
    assert c is not None and c.result is None and c.state is TaskState.COMPLETED


async def test_no_result_is_written_for_a_task_that_is_gone(backend: Backend) -> None:
    await backend.enqueue(message("p"))
    assert await backend.delete("p", "q") is True
    assert await backend.ack("q", "p", "c1", result=b"json\n1") is False
    assert await backend.get_task("p", "q") is None


async def test_a_dead_task_keeps_its_error_detail(backend: Backend) -> None:
    await _active(backend, "a", max_retry=0)
    detail = TaskError("ValueError", "bad input", "Traceback...\nValueError: bad input\n")
    state = await backend.fail("q", "a", "c1", "ValueError: bad", retry_in_ms=0, detail=detail)
    assert state is TaskState.DEAD
    info = await backend.get_task("a", "q")
    assert info is not None and info.error == detail and info.last_error == "ValueError: bad"


async def test_a_retry_keeps_no_error_detail(backend: Backend) -> None:
    await _active(backend, "a")
    detail = TaskError("ValueError", "x")
    assert await backend.fail("q", "a", "c1", "e", retry_in_ms=0, detail=detail) is (
        TaskState.RETRY
    )
    assert (await backend.get_task("a", "q")).error is None  # type: ignore[union-attr]


async def test_result_ttl_is_kept_with_the_task(backend: Backend) -> None:
    await backend.enqueue(message("a"))
    info = await backend.get_task("a", "q")
    assert info is not None and info.result_ttl_ms is None
    await backend.enqueue(attrs.evolve(message("b"), result_ttl_ms=5_000))
    info = await backend.get_task("b", "q")
    assert info is not None and info.result_ttl_ms == 5_000


# -- cancel requests -----------------------------------------------------------------------------


async def test_cancel_of_an_active_task_requests_it(backend: Backend) -> None:
    await _active(backend, "a", unique_key="k", unique_ttl_ms=LEASE_MS)
    assert await backend.cancel("a", "q") is True
    info = await backend.get_task("a", "q")
    assert info is not None and info.state is TaskState.ACTIVE and info.cancel_requested
    assert await backend.cancel("a", "q") is True  # asked again: still requested
    renewal = await backend.renew("q", ["a"], "c1", lease_ms=LEASE_MS)
    assert renewal.cancel_requested == ["a"] and renewal.lost == []
    # the holder stops it: fail ends it cancelled, never retried or dead, its unique key free
    assert await backend.fail("q", "a", "c1", "cancelled", retry_in_ms=0) is TaskState.CANCELLED
    info = await backend.get_task("a", "q")
    assert info is not None and info.state is TaskState.CANCELLED
    assert not info.cancel_requested
    await backend.enqueue(message("again", unique_key="k", unique_ttl_ms=LEASE_MS))
    assert await backend.cancel("a", "q") is False  # ended


async def test_cancel_then_ack_ends_cancelled(backend: Backend) -> None:
    await _active(backend, "a", unique_key="k", unique_ttl_ms=LEASE_MS)
    assert await backend.cancel("a", "q") is True
    assert await backend.ack("q", "a", "c1", result=b"json\n1") is False
    info = await backend.get_task("a", "q")
    assert info is not None and info.state is TaskState.CANCELLED and info.result is None
    await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=LEASE_MS))


async def test_ack_then_cancel_ends_completed(backend: Backend) -> None:
    await _active(backend, "a")
    assert await backend.ack("q", "a", "c1", result=b"json\n1") is True
    assert await backend.cancel("a", "q") is False
    assert await state_of(backend, "a") is TaskState.COMPLETED


async def test_a_cancelled_id_reenqueued_with_its_unique_key_runs(backend: Backend) -> None:
    await _active(backend, "a", unique_key="k", unique_ttl_ms=LEASE_MS)
    await backend.cancel("a", "q")
    try:
        await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=LEASE_MS))
        raise AssertionError("an active task holds its key until it ends")
    except DuplicateTaskError:
        pass
    await backend.fail("q", "a", "c1", "cancelled", retry_in_ms=None)
    assert await backend.delete("a", "q") is True
    await backend.enqueue(message("a", unique_key="k", unique_ttl_ms=LEASE_MS))
    [got] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert got.id == "a" and not got.cancel_requested  # the old request died with its record
    assert (await backend.renew("q", ["a"], "c1", lease_ms=LEASE_MS)).cancel_requested == []
    assert await backend.ack("q", "a", "c1") is True


async def test_a_released_requested_task_keeps_its_request(
    backend: Backend, clock: FakeClock
) -> None:
    await _active(backend, "a")
    await backend.cancel("a", "q")
    assert await backend.release("q", ["a"], "c1") == 1
    [got] = await backend.fetch(["q"], 1, "c2", lease_ms=LEASE_MS)
    assert got.cancel_requested  # so its next holder ends it without running it
    assert await backend.fail("q", "a", "c2", "cancelled", retry_in_ms=None) is (
        TaskState.CANCELLED
    )


# -- watches ---------------------------------------------------------------------------------------


async def test_watch_ended_wakes_on_each_way_to_end(backend: Backend) -> None:
    await backend.enqueue_many([message("c"), message("d", max_retry=0), message("x")])
    for task_id in "cdx":
        async with backend.watch_ended("q", task_id) as watch:
            if task_id == "x":
                await backend.cancel("x", "q")
            else:
                got = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
                assert got[0].id == task_id
                if task_id == "c":
                    await backend.ack("q", "c", "c1")
                else:
                    await backend.fail("q", "d", "c1", "e", retry_in_ms=None)
            with anyio.fail_after(10):
                while ("q", task_id) not in await watch.wait(10):
                    pass


async def test_watch_ended_is_not_woken_by_other_tasks(backend: Backend) -> None:
    await backend.enqueue_many([message("a"), message("b")])
    async with backend.watch_ended("q", "a") as watch:
        got = await backend.fetch(["q"], 2, "c1", lease_ms=LEASE_MS)
        assert {t.id for t in got} == {"a", "b"}
        await backend.ack("q", "b", "c1")
        assert ("q", "b") not in await watch.wait(0.2)
        await backend.ack("q", "a", "c1")
        with anyio.fail_after(10):
            while ("q", "a") not in await watch.wait(10):
                pass


async def test_watch_cancel_requests(backend: Backend) -> None:
    await _active(backend, "a")
    await backend.enqueue(message("b", queue="other"))
    await backend.fetch(["other"], 1, "c1", lease_ms=LEASE_MS)
    async with backend.watch_cancel_requests(["q"]) as watch:
        await backend.cancel("b", "other")  # a queue it does not watch
        await backend.cancel("a", "q")
        with anyio.fail_after(10):
            seen: list[tuple[str, str]] = []
            while ("q", "a") not in seen:
                seen += await watch.wait(10)
        assert ("other", "b") not in seen


async def test_cancel_racing_ack_has_exactly_one_winner(backend: Backend) -> None:
    ids = [f"t{i}" for i in range(40)]
    await backend.enqueue_many(
        [message(i, unique_key=f"k{i}", unique_ttl_ms=LEASE_MS) for i in ids]
    )
    assert len(await backend.fetch(["q"], 40, "c1", lease_ms=LEASE_MS)) == 40
    acked: dict[str, bool] = {}
    cancelled: dict[str, bool] = {}

    async def ack(task_id: str) -> None:
        acked[task_id] = await backend.ack("q", task_id, "c1", result=b"json\n1")

    async def cancel(task_id: str) -> None:
        cancelled[task_id] = await backend.cancel(task_id, "q")

    async with anyio.create_task_group() as tg:
        for n, task_id in enumerate(ids):
            first, second = (ack, cancel) if n % 2 else (cancel, ack)
            tg.start_soon(first, task_id)
            tg.start_soon(second, task_id)
    for n, task_id in enumerate(ids):
        info = await backend.get_task(task_id, "q")
        assert info is not None
        if acked[task_id]:  # the ack won: completed with its result, the cancel refused
            assert not cancelled[task_id]
            assert info.state is TaskState.COMPLETED and info.result == b"json\n1"
        else:  # the cancel won: the ack ended it cancelled, with no result
            assert cancelled[task_id]
            assert info.state is TaskState.CANCELLED and info.result is None
        # either way its unique key is free
        await backend.enqueue(message(f"next{n}", unique_key=f"k{n}", unique_ttl_ms=LEASE_MS))
    assert any(acked.values()) or any(cancelled.values())


async def test_a_stale_task_whose_cancel_was_requested_ends_cancelled(
    backend: Backend, clock: FakeClock
) -> None:
    await _active(backend, "a", unique_key="k", unique_ttl_ms=10 * LEASE_MS)
    await backend.cancel("a", "q")
    clock.advance(LEASE_MS + 1)  # its holder died before it stopped the task
    assert await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=1) == []
    info = await backend.get_task("a", "q")
    assert info is not None and info.state is TaskState.CANCELLED  # not dead, not run again
    await backend.enqueue(message("b", unique_key="k", unique_ttl_ms=LEASE_MS))
