"""The hand-offs between a server's tasks (strego/handoff.py), under asyncio and trio: the buffer
of fetched tasks and its wake-ups (passed on when a woken runner is cancelled, so no task is
stranded), the slots the fetcher waits for (and a fetcher cancelled while it waits, as at a stop),
and the ack queue (its last batch flushed when it is closed at shutdown)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from strego.handoff import AckQueue, Buffer, Slots, wait_any
from strego.task import TaskInfo, TaskState

pytestmark = pytest.mark.anyio


def info(task_id: str) -> TaskInfo:
    return TaskInfo(
        id=task_id, type="t", queue="q", state=TaskState.ACTIVE, payload=b"", encoding="json",
        max_retry=3,
    )  # fmt: skip


A, B, C = info("a"), info("b"), info("c")


async def runner(buffer: Buffer, got: list[TaskInfo | None]) -> None:
    """A runner that takes one task (None: the buffer was closed)."""
    got.append(await buffer.get())


@contextlib.asynccontextmanager
async def parked(
    buffer: Buffer, got: list[TaskInfo | None], runners: int = 1
) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group of `runners` runners parked on the empty `buffer` (they add what they take
    to `got`); the block must let them all end, and may take 5 s at most."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for _ in range(runners):
                group.start_soon(runner, buffer, got)
            await anyio.wait_all_tasks_blocked()
            yield group


def start_cancellable(
    group: anyio.abc.TaskGroup, func: Callable[..., Awaitable[Any]], *args: Any
) -> anyio.CancelScope:
    """Start `func(*args)` in a cancel scope of its own, returned (to cancel that task only)."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await func(*args)

    group.start_soon(run)
    return scope


class Fetcher:
    """A fetcher that waits once for slots worth a fetch."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.fetched = False

    async def __call__(self) -> None:
        await self.slots.wait_free()
        self.fetched = True


async def ack_loop(acks: AckQueue, batches: list[list[TaskInfo]]) -> None:
    """The server's ack loop, noting each batch instead of acking it."""
    while batch := await acks.take():
        batches.append(batch)


# -- Buffer -----------------------------------------------------------------------------------


async def test_the_buffer_is_first_in_first_out() -> None:
    buffer = Buffer()
    buffer.put(A)
    buffer.put(B)
    buffer.put(C)
    assert len(buffer) == 3
    assert buffer.get_nowait() is A
    assert await buffer.get() is B
    assert buffer.drain() == [C]
    assert len(buffer) == 0 and not buffer
    assert buffer.get_nowait() is None


async def test_a_parked_runner_is_woken_by_a_put() -> None:
    buffer = Buffer()
    got: list[TaskInfo | None] = []
    async with parked(buffer, got):
        assert got == []
        buffer.put(A)
    assert got == [A]


async def test_one_runner_is_woken_at_a_time_and_it_wakes_the_next_while_tasks_are_left() -> None:
    buffer = Buffer()
    got: list[TaskInfo | None] = []
    async with parked(buffer, got, runners=3):
        buffer.put(A)
        buffer.put(B)  # the first runner is woken already: it wakes the next for B
        await anyio.wait_all_tasks_blocked()
        assert got == [A, B]  # the third runner still waits: nothing left for it
        buffer.close()
    assert got == [A, B, None]


async def test_a_woken_runner_that_is_cancelled_passes_the_task_on() -> None:
    """A parked runner is cancelled (the server stops) and, before it runs, a task is put: the
    wake-up reaches it all the same, and it passes it on to the next parked runner."""
    buffer = Buffer()
    first: list[TaskInfo | None] = []
    second: list[TaskInfo | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            first_scope = start_cancellable(group, runner, buffer, first)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(runner, buffer, second)
            await anyio.wait_all_tasks_blocked()
            first_scope.cancel()  # the first runner is cancelled...
            buffer.put(A)  # ...and woken for A before it runs
    assert first == []
    assert second == [A]
    assert len(buffer) == 0


async def test_a_task_whose_woken_runner_is_cancelled_is_not_lost() -> None:
    """The same with no other runner parked: the task stays in the buffer, where the shutdown's
    drain finds it (to release it), and the next put wakes a runner again."""
    buffer = Buffer()
    got: list[TaskInfo | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            scope = start_cancellable(group, runner, buffer, got)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            buffer.put(A)
    assert got == []
    assert buffer.drain() == [A]
    # a runner parked later is woken by the next put: the wake-up was not left pending
    async with parked(buffer, got):
        buffer.put(B)
    assert got == [B]


async def test_a_runner_cancelled_while_parked_is_not_woken_for_a_task() -> None:
    """A parked runner cancelled (not woken) leaves the queue of waiters: a put wakes a runner
    that is still there."""
    buffer = Buffer()
    got: list[TaskInfo | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            scope = start_cancellable(group, runner, buffer, [])
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    async with parked(buffer, got):
        buffer.put(A)
    assert got == [A]


async def test_closing_the_buffer_ends_parked_runners_after_the_tasks_left() -> None:
    buffer = Buffer()
    got: list[TaskInfo | None] = []
    async with parked(buffer, got, runners=2):
        buffer.close()
    assert got == [None, None]
    buffer = Buffer()
    buffer.put(A)
    buffer.close()
    assert await buffer.get() is A  # a closed buffer still hands out what it holds
    assert await buffer.get() is None


# -- Slots ------------------------------------------------------------------------------------


async def test_a_fetch_is_worth_it_for_a_whole_batch_or_any_slot_with_nothing_buffered() -> None:
    buffer = Buffer()
    slots = Slots(4, 2, buffer)
    assert slots.free() == 4
    slots.take(3)
    with anyio.fail_after(5):
        await slots.wait_free()  # one slot free, nothing buffered: fetch for it
    buffer.put(A)
    fetcher = Fetcher(slots)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(fetcher)
            await anyio.wait_all_tasks_blocked()
            assert not fetcher.fetched  # one slot, and a task waits in the buffer: not worth it
            slots.give(1)  # a runner finished: two free, a whole batch
            assert slots.due  # runners let the woken fetcher run first
            await anyio.wait_all_tasks_blocked()
    assert fetcher.fetched and not slots.due
    assert slots.free() == 2


async def test_poke_wakes_the_fetcher_when_the_buffer_runs_dry() -> None:
    buffer = Buffer()
    slots = Slots(4, 4, buffer)
    slots.take(3)
    buffer.put(A)
    fetcher = Fetcher(slots)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(fetcher)
            await anyio.wait_all_tasks_blocked()
            slots.poke()
            await anyio.wait_all_tasks_blocked()
            assert not fetcher.fetched  # the buffer still holds a task
            assert buffer.get_nowait() is A
            slots.poke()  # what a runner does when it took the last buffered task
    assert fetcher.fetched


async def test_a_fetcher_cancelled_while_waiting_for_slots_leaves_them_usable() -> None:
    """The server stops while the fetcher waits for slots, and a runner wakes it before it runs:
    `due` does not stay set (runners would keep yielding to a fetcher that is gone), and a
    fetcher waiting later is woken again."""
    buffer = Buffer()
    slots = Slots(2, 2, buffer)
    slots.take(2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            scope = start_cancellable(group, slots.wait_free)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # the server stops...
            slots.give(2)  # ...as a runner frees its slots and wakes the fetcher
            assert slots.due
    assert not slots.due
    assert slots.free() == 2
    slots.take(2)
    fetcher = Fetcher(slots)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(fetcher)
            await anyio.wait_all_tasks_blocked()
            assert not fetcher.fetched
            slots.give(2)
    assert fetcher.fetched and not slots.due


# -- AckQueue ---------------------------------------------------------------------------------


async def test_the_ack_queue_hands_over_everything_collected_in_one_batch() -> None:
    acks = AckQueue()
    acks.put(A)
    acks.put(B)
    assert await acks.take() == [A, B]
    batches: list[list[TaskInfo]] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(ack_loop, acks, batches)
            await anyio.wait_all_tasks_blocked()
            acks.put(C)
            await anyio.wait_all_tasks_blocked()
            assert batches == [[C]]
            acks.close()
    assert batches == [[C]]


async def test_closing_the_ack_queue_flushes_the_last_batch_then_ends_the_loop() -> None:
    """At shutdown the runners' last successes are put and the queue closed in the same step:
    the ack loop still sends them, then ends."""
    acks = AckQueue()
    batches: list[list[TaskInfo]] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(ack_loop, acks, batches)
            await anyio.wait_all_tasks_blocked()
            acks.put(A)
            acks.put(B)
            acks.close()
    assert batches == [[A, B]]
    assert await acks.take() == []  # closed and empty: no wait
    # the same when the loop comes to take only after the close
    acks = AckQueue()
    acks.put(C)
    acks.close()
    batches.clear()
    with anyio.fail_after(5):
        await ack_loop(acks, batches)
    assert batches == [[C]]


# -- wait_any ---------------------------------------------------------------------------------


async def test_wait_any_returns_when_one_of_the_events_is_set() -> None:
    first, second = anyio.Event(), anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(wait_any, first, second)
            await anyio.wait_all_tasks_blocked()
            second.set()
    assert not first.is_set()
