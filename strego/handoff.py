"""The hand-offs between a server's tasks: `Buffer` holds the fetched tasks until a runner takes
them, `Slots` bounds how many tasks the server holds (buffered or running) and tells the fetcher
when a fetch is worth it, `AckQueue` collects the successes for the ack batcher. See "Inside a
Server" in docs/architecture.md for where each sits.
"""

from __future__ import annotations

from collections import deque

import anyio
import anyio.lowlevel

from strego.task import TaskInfo


class Slots:
    """How many tasks the server holds (buffered or running) against concurrency + prefetch.

    The fetcher waits until a whole batch (`batch` = concurrency) of slots is free, or any slot
    is free and nothing is buffered. With prefetch, the next batch is fetched while the last
    one runs, so the fetch's round trip overlaps with the handlers instead of following them;
    fetches stay large (fewer round trips); and a server whose other slots hold long-running
    handlers still fetches for the free ones."""

    def __init__(self, size: int, batch: int, buffer: Buffer) -> None:
        self.size = size
        self.batch = min(batch, size)
        self.used = 0
        self._buffer = buffer
        self._freed: anyio.Event | None = None  # only while the fetcher waits
        #: the fetcher was woken and has not run yet: runners should let it
        self.due = False

    def free(self) -> int:
        return max(0, self.size - self.used)

    def _worth_fetching(self) -> bool:
        free = self.size - self.used
        return free >= self.batch or (free > 0 and not self._buffer)

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int = 1) -> None:
        self.used -= n
        self.poke()

    def poke(self) -> None:
        """Wake the fetcher if it waits and a fetch is now worth it."""
        if self._freed is not None and self._worth_fetching():
            self._freed.set()
            self._freed = None
            self.due = True

    async def wait_free(self) -> None:
        while not self._worth_fetching():
            if self._freed is None:
                self._freed = anyio.Event()
            try:
                await self._freed.wait()
            finally:
                self.due = False


class Buffer:
    """The fetched tasks waiting for a runner, first in first out. Lighter than a memory object
    stream on the hot path: taking a task that is already there costs no checkpoint and no
    Event; only a runner that finds the buffer empty parks on an Event of its own.

    One parked runner is woken at a time: it takes a task and, when more are left, wakes the
    next before running its own. So a batch of quick tasks wakes one or two runners, not one
    per task, while tasks that wait still spread over as many runners as they need."""

    def __init__(self) -> None:
        self._items: deque[TaskInfo] = deque()
        self._waiters: deque[anyio.Event] = deque()
        self._waking = False  # a parked runner was woken and has not run yet
        self.closed = False

    def put(self, info: TaskInfo) -> None:
        self._items.append(info)
        if self._waiters and not self._waking:
            self._wake_one()

    def _wake_one(self) -> None:
        self._waking = True
        self._waiters.popleft().set()

    def __len__(self) -> int:
        return len(self._items)

    def get_nowait(self) -> TaskInfo | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> TaskInfo | None:
        """The next task, waiting for one; None once the buffer is closed and empty."""
        while not self._items:
            if self.closed:
                return None
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if not event.is_set():
                    self._waiters.remove(event)
                else:  # woken, but cancelled: pass the wake-up on
                    self._waking = False
                    if self._items and self._waiters:
                        self._wake_one()
                raise
            self._waking = False
        info = self._items.popleft()
        if self._items and self._waiters and not self._waking:
            self._wake_one()
        return info

    def drain(self) -> list[TaskInfo]:
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        self.closed = True
        self._waking = True
        while self._waiters:
            self._waiters.popleft().set()


class AckQueue:
    """Tasks whose handler succeeded, collected while the previous ack call is out, so the ack
    loop sends them in one call."""

    def __init__(self) -> None:
        self._items: list[TaskInfo] = []
        self._wake: anyio.Event | None = None
        self.closed = False

    def put(self, info: TaskInfo) -> None:
        self._items.append(info)
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    async def take(self) -> list[TaskInfo]:
        """All collected tasks, waiting for one; [] once closed and empty."""
        while not self._items and not self.closed:
            self._wake = anyio.Event()
            await self._wake.wait()
            # woken by the first success: let the runners that are ready add theirs first
            await anyio.lowlevel.checkpoint()
        items, self._items = self._items, []
        return items

    def close(self) -> None:
        self.closed = True
        if self._wake is not None:
            self._wake.set()
            self._wake = None


async def wait_any(*events: anyio.Event) -> None:
    async with anyio.create_task_group() as group:

        async def waiter(event: anyio.Event) -> None:
            await event.wait()
            group.cancel_scope.cancel()

        for event in events:
            group.start_soon(waiter, event)
