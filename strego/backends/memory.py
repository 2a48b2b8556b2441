"""MemoryBackend: the backend contract (`strego.backends.base`) in plain Python, in-process.

For unit tests, demos and single-process applications. Every transition is synchronous Python
between awaits, so it is atomic under asyncio and trio alike; only anyio primitives are used for
waiting. Data lives per queue:

- `tasks`: every task record by id, and `by_state`: the same records grouped by state;
- `pending`: one insertion-ordered dict per priority level, so fetch is O(1) per task;
- `due`: a heap of scheduled and retry tasks by due time;
- `expiry`: a heap of completed, cancelled and dead tasks by the end of their retention;
- `index`: per state, the tasks' listing positions in a sorted list, so a `list_tasks` page is a
  bisect from its cursor, not a walk from the first task;
- `stats`: per minute (in the order the minutes came), the counts `throughput` reads, in total
  and per task type; minutes past `stats_retention_ms` are dropped from the front as new ones
  come.

The heaps are cleaned lazily: an entry whose record has since moved (its `seq` changed) or gone is
skipped when it reaches the top.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import attrs
from sortedcontainers import SortedList

from strego.backends.base import (
    MINUTE_MS,
    STATS_RETENTION_MS,
    AckItem,
    Clock,
    ConsumerInfo,
    FireResult,
    MinuteCount,
    QueueInfo,
    Renewal,
    ScheduleDefinition,
    ScheduleInfo,
    ScheduleList,
    TaskPage,
    check_limit,
    check_minutes,
    check_stats_retention,
    first_kept_minute,
    minute_of,
)
from strego.backends.cursor import Part, decode_cursor, encode_cursor
from strego.backends.watch import Watch
from strego.clock import wall_clock_ms
from strego.cron import check_schedule_id, tick_task_id
from strego.errors import (
    BackendClosedError,
    DuplicateTaskError,
    InvalidCursorError,
    InvalidTaskError,
    StregoError,
    TaskIdConflictError,
    TaskNotFoundError,
)
from strego.message import TaskMessage, check_unique_ttl
from strego.task import MAX_PRIORITY, MIN_PRIORITY, TaskError, TaskInfo, TaskState

if TYPE_CHECKING:
    from strego.backends.base import Backend

_WAITING = (TaskState.SCHEDULED, TaskState.RETRY)
_ENDED = (TaskState.COMPLETED, TaskState.CANCELLED, TaskState.DEAD)
_CANCELLABLE = (TaskState.SCHEDULED, TaskState.PENDING, TaskState.RETRY)
#: Listed in fetch order: (-priority, entry, id); the other states by (time, id).
_FETCH_ORDER = (TaskState.PENDING, TaskState.ACTIVE)

#: A task's position in its state's listing (see `_Record.listing_key`).
_Key = tuple[int, int, str] | tuple[int, str]

#: How many tasks purge deletes between two checkpoints (so a big purge does not hold the loop).
PURGE_BATCH = 1000


@attrs.define(eq=False)
class _Record:
    message: TaskMessage
    state: TaskState
    #: changes each time the record is placed in a state; heap entries with an older seq are stale
    seq: int = 0
    retried: int = 0
    deliveries: int = 0
    started_ms: int | None = None
    completed_ms: int | None = None
    #: due time while scheduled or retry, end time once dead, completed or cancelled (the key
    #: of both listings); shown as TaskInfo.next_run_ms or TaskInfo.ended_ms
    next_run_ms: int | None = None
    last_error: str | None = None
    consumer: str | None = None
    lease_until_ms: int = 0
    #: set each time the task becomes pending (like a stream entry id): it orders pending tasks
    #: and, kept while the task is active (a claim too), active ones
    entry: int = 0
    #: when it last became pending (clock ms): QueueInfo.oldest_pending_age_ms
    pending_since_ms: int = 0
    #: its position in its state's listing index, None while in no index
    listing_key: _Key | None = None
    #: a completed task's result as stored; a dead task's error; cancel requested while active
    result: bytes | None = None
    error: TaskError | None = None
    cancel_requested: bool = False

    def position(self) -> _Key:
        if self.state in _FETCH_ORDER:
            return (-self.message.priority, self.entry, self.id)
        assert self.next_run_ms is not None  # due time when waiting, end time when ended
        return (self.next_run_ms, self.id)

    @property
    def id(self) -> str:
        return self.message.id

    def info(self) -> TaskInfo:
        ended = self.state in _ENDED
        return self.message.info(
            self.state,
            retried=self.retried,
            deliveries=self.deliveries,
            started_ms=self.started_ms,
            completed_ms=self.completed_ms,
            next_run_ms=None if ended else self.next_run_ms,
            ended_ms=self.next_run_ms if ended else None,
            last_error=self.last_error,
            consumer=self.consumer,
            result=self.result,
            error=self.error,
            cancel_requested=self.cancel_requested,
        )


@attrs.define(eq=False)
class _UniqueLock:
    holder: str
    expires_ms: int | None


#: The counts of one minute, by task type (None: every type): [completed, failed, dead].
_Minute = dict[str | None, list[int]]
_COMPLETED, _FAILED, _DEAD = 0, 1, 2


@attrs.define(eq=False)
class _Queue:
    name: str
    #: a task was enqueued here since the last purge that emptied the queue (listed by `queues`)
    listed: bool = False
    paused: bool = False
    tasks: dict[str, _Record] = attrs.Factory(dict)
    by_state: dict[TaskState, dict[str, _Record]] = attrs.Factory(
        lambda: {state: {} for state in TaskState}
    )
    pending: dict[int, OrderedDict[str, _Record]] = attrs.Factory(dict)
    index: dict[TaskState, SortedList[_Key]] = attrs.Factory(
        lambda: {state: SortedList() for state in TaskState}
    )
    due: list[tuple[int, int, str]] = attrs.Factory(list)
    expiry: list[tuple[int, int, str]] = attrs.Factory(list)
    unique: dict[str, _UniqueLock] = attrs.Factory(dict)
    #: consumer name -> when it last fetched, acked, renewed or claimed (clock ms)
    consumers: dict[str, int] = attrs.Factory(dict)
    #: minute start (clock ms) -> its counts, oldest minute first
    stats: dict[int, _Minute] = attrs.Factory(dict)


class MemoryBackend:
    """An in-process backend. `clock` returns epoch ms (wall time by default); completed and
    cancelled tasks are kept `completed_ttl_ms`, dead tasks `dead_ttl_ms`, per-minute counts
    `stats_retention_ms`."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        completed_ttl_ms: int = 3_600_000,
        dead_ttl_ms: int = 7 * 86_400_000,
        stats_retention_ms: int = STATS_RETENTION_MS,
    ) -> None:
        check_stats_retention(stats_retention_ms)
        self.clock: Clock = clock if clock is not None else wall_clock_ms
        self.completed_ttl_ms = completed_ttl_ms
        self.dead_ttl_ms = dead_ttl_ms
        self.stats_retention_ms = stats_retention_ms
        self.capabilities: frozenset[str] = frozenset()
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        # Created lazily inside the event loop; set and dropped to wake every waiter at once.
        self._arrival: anyio.Event | None = None
        self._schedule_change: anyio.Event | None = None
        #: watch_ended's watches by (queue, task id); watch_cancel_requests' by queue
        self._ended_watches: dict[tuple[str, str], set[Watch]] = {}
        self._cancel_watches: dict[str, set[Watch]] = {}
        self._closed = False
        #: schedule id -> the schedule as stored (ScheduleInfo is immutable: replaced whole)
        self._schedules: dict[str, ScheduleInfo] = {}

    # -- internals --------------------------------------------------------------------------------

    def _now(self) -> int:
        if self._closed:
            raise BackendClosedError("the backend is closed")
        return int(self.clock())

    def _queue(self, name: str, now: int) -> _Queue:
        """The queue's state, created on first use, with ended retention swept away."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue(name)
        while q.expiry and q.expiry[0][0] <= now:
            _, seq, task_id = heapq.heappop(q.expiry)
            rec = q.tasks.get(task_id)
            if rec is not None and rec.seq == seq:
                self._delete(q, rec)
        return q

    def _find(self, task_id: str, queue: str | None, now: int) -> tuple[_Queue, _Record] | None:
        names = [queue] if queue is not None else list(self._queues)
        for name in names:
            q = self._queue(name, now)
            rec = q.tasks.get(task_id)
            if rec is not None:
                return q, rec
        return None

    def _place(self, q: _Queue, rec: _Record, state: TaskState, now: int) -> None:
        """Move `rec` into `state` (its state-specific fields already set) and its structures."""
        if rec.state == TaskState.PENDING:
            q.pending[rec.message.priority].pop(rec.id, None)
        del q.by_state[rec.state][rec.id]
        self._unindex(q, rec)
        rec.state = state
        rec.seq = next(self._seq)
        q.by_state[state][rec.id] = rec
        if state != TaskState.ACTIVE:
            rec.consumer = None
        if state == TaskState.PENDING:
            rec.next_run_ms = None
            rec.entry = rec.seq
            rec.pending_since_ms = now
            q.pending.setdefault(rec.message.priority, OrderedDict())[rec.id] = rec
            self._notify_arrival()
        elif state in _WAITING:
            assert rec.next_run_ms is not None
            earliest = self._earliest_due(q)
            heapq.heappush(q.due, (rec.next_run_ms, rec.seq, rec.id))
            if earliest is None or rec.next_run_ms < earliest:
                self._notify_schedule_change()
        elif state in _ENDED:
            rec.next_run_ms = now
            rec.cancel_requested = False
            ttl = self.dead_ttl_ms if state == TaskState.DEAD else self.completed_ttl_ms
            heapq.heappush(q.expiry, (now + ttl, rec.seq, rec.id))
            if state != TaskState.DEAD:  # a dead task keeps its unique key until the TTL
                self._release_unique(q, rec)
            for watch in self._ended_watches.get((q.name, rec.id), ()):
                watch.put(q.name, rec.id)
        rec.listing_key = rec.position()
        q.index[state].add(rec.listing_key)

    @staticmethod
    def _unindex(q: _Queue, rec: _Record) -> None:
        if rec.listing_key is not None:
            q.index[rec.state].remove(rec.listing_key)
            rec.listing_key = None

    def _delete(self, q: _Queue, rec: _Record) -> None:
        if rec.state == TaskState.PENDING:
            q.pending[rec.message.priority].pop(rec.id, None)
        del q.by_state[rec.state][rec.id]
        self._unindex(q, rec)
        del q.tasks[rec.id]
        self._release_unique(q, rec)

    def _release_unique(self, q: _Queue, rec: _Record) -> None:
        key = rec.message.unique_key
        if key is not None:
            lock = q.unique.get(key)
            if lock is not None and lock.holder == rec.id:
                del q.unique[key]

    def _unique_holder(self, q: _Queue, key: str, now: int) -> str | None:
        lock = q.unique.get(key)
        if lock is None:
            return None
        if (lock.expires_ms is not None and lock.expires_ms <= now) or lock.holder not in q.tasks:
            del q.unique[key]
            return None
        return lock.holder

    def _earliest_due(self, q: _Queue) -> int | None:
        while q.due:
            due_ms, seq, task_id = q.due[0]
            rec = q.tasks.get(task_id)
            if rec is not None and rec.seq == seq and rec.state in _WAITING:
                return due_ms
            heapq.heappop(q.due)
        return None

    def _notify_arrival(self) -> None:
        if self._arrival is not None:
            self._arrival.set()
            self._arrival = None

    def _notify_schedule_change(self) -> None:
        if self._schedule_change is not None:
            self._schedule_change.set()
            self._schedule_change = None

    def _touch(self, q: _Queue, consumer: str, now: int) -> None:
        q.consumers[consumer] = now

    def _count(self, q: _Queue, rec: _Record, kind: int, now: int) -> None:
        """Count an outcome in this minute's history (in the transition's step, as Redis does),
        dropping the minutes that left the retention window (each minute once: bounded)."""
        first = first_kept_minute(now, self.stats_retention_ms)
        while q.stats:
            oldest = next(iter(q.stats))
            if oldest >= first:
                break
            del q.stats[oldest]
        minute = q.stats.setdefault(minute_of(now), {})
        for key in (None, rec.message.type):
            minute.setdefault(key, [0, 0, 0])[kind] += 1

    def _enqueue(self, message: TaskMessage, now: int) -> TaskInfo:
        q = self._queue(message.queue, now)
        q.listed = True  # even when refused, as Redis's registry SADD is not conditional
        if message.id in q.tasks:
            raise TaskIdConflictError(message.id)
        key = message.unique_key
        if key is not None:
            holder = self._unique_holder(q, key, now)
            if holder is not None:
                raise DuplicateTaskError(key, holder)
            ttl = message.unique_ttl_ms
            q.unique[key] = _UniqueLock(message.id, None if ttl is None else now + ttl)
        # Start in a placeholder state so _place has a uniform "leave the old state" step.
        rec = _Record(message=message, state=TaskState.CANCELLED)
        q.tasks[rec.id] = rec
        q.by_state[rec.state][rec.id] = rec
        due = message.due_ms(now)
        if due is None or due <= now:
            self._place(q, rec, TaskState.PENDING, now)
        else:
            rec.next_run_ms = due
            self._place(q, rec, TaskState.SCHEDULED, now)
        return rec.info()

    def _start(
        self, queues: Sequence[str], count: int, consumer: str, lease_ms: int
    ) -> list[TaskInfo]:
        now = self._now()
        started: list[TaskInfo] = []
        for name in queues:
            q = self._queue(name, now)
            self._touch(q, consumer, now)
            if q.paused:
                continue
            for priority in sorted(q.pending, reverse=True):
                level = q.pending[priority]
                while level and len(started) < count:
                    rec = next(iter(level.values()))
                    self._activate(q, rec, consumer, lease_ms, now)
                    started.append(rec.info())
        return started

    def _activate(self, q: _Queue, rec: _Record, consumer: str, lease_ms: int, now: int) -> None:
        self._place(q, rec, TaskState.ACTIVE, now)
        rec.consumer = consumer
        rec.started_ms = now
        rec.deliveries += 1
        rec.lease_until_ms = now + lease_ms

    def _ack(
        self, queue: str, task_id: str, consumer: str, now: int, result: bytes | None = None
    ) -> bool:
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        rec = q.tasks.get(task_id)
        if rec is None or rec.state != TaskState.ACTIVE:
            return False
        if rec.cancel_requested:  # the cancel came first: it wins
            self._end_cancelled(q, rec, now)
            return False
        rec.completed_ms = now
        rec.result, rec.error = result, None
        self._place(q, rec, TaskState.COMPLETED, now)
        self._count(q, rec, _COMPLETED, now)
        return True

    def _end_cancelled(self, q: _Queue, rec: _Record, now: int) -> None:
        rec.cancel_requested = False
        self._place(q, rec, TaskState.CANCELLED, now)

    def _to_dead(self, q: _Queue, rec: _Record, error: str, now: int) -> None:
        rec.last_error = error
        self._place(q, rec, TaskState.DEAD, now)
        self._count(q, rec, _DEAD, now)

    # -- producing ------------------------------------------------------------------------------

    async def enqueue(self, message: TaskMessage) -> TaskInfo:
        await anyio.lowlevel.checkpoint()
        check_unique_ttl([message])
        return self._enqueue(message, self._now())

    async def enqueue_many(self, messages: Sequence[TaskMessage]) -> list[TaskInfo | StregoError]:
        await anyio.lowlevel.checkpoint()
        check_unique_ttl(messages)
        now = self._now()
        results: list[TaskInfo | StregoError] = []
        for message in messages:
            try:
                results.append(self._enqueue(message, now))
            except (DuplicateTaskError, TaskIdConflictError) as exc:
                results.append(exc)
        return results

    # -- consuming --------------------------------------------------------------------------------

    async def fetch(
        self,
        queues: Sequence[str],
        count: int,
        consumer: str,
        *,
        lease_ms: int,
        block_ms: int = 0,
        ordered: bool = True,
    ) -> list[TaskInfo]:
        # every fetch here sees all queues at one instant, so the order always holds exactly
        await anyio.lowlevel.checkpoint()
        started = self._start(queues, count, consumer, lease_ms)
        if started or block_ms <= 0 or count <= 0:
            return started
        with anyio.move_on_after(block_ms / 1000):
            while True:
                if self._arrival is None:
                    self._arrival = anyio.Event()
                await self._arrival.wait()
                # The arrival may have been in another queue or taken by another fetcher.
                started = self._start(queues, count, consumer, lease_ms)
                if started:
                    return started
        return []

    async def ack(
        self, queue: str, task_id: str, consumer: str, *, result: bytes | None = None
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._ack(queue, task_id, consumer, self._now(), result)

    async def ack_many(self, items: Sequence[AckItem], consumer: str) -> list[bool]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        return [
            self._ack(item[0], item[1], consumer, now, item[2] if len(item) > 2 else None)
            for item in items
        ]

    async def fail(
        self,
        queue: str,
        task_id: str,
        consumer: str,
        error: str,
        *,
        retry_in_ms: int | None,
        detail: TaskError | None = None,
    ) -> TaskState | None:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        rec = q.tasks.get(task_id)
        if rec is None or rec.state != TaskState.ACTIVE:
            return None
        if rec.cancel_requested:
            self._end_cancelled(q, rec, now)
            return TaskState.CANCELLED
        if retry_in_ms is not None and rec.retried < rec.message.max_retry:
            rec.last_error = error
            rec.retried += 1
            rec.next_run_ms = now + max(0, retry_in_ms)
            self._place(q, rec, TaskState.RETRY, now)
            self._count(q, rec, _FAILED, now)
        else:
            rec.error = detail
            self._to_dead(q, rec, error, now)
        return rec.state

    async def release(self, queue: str, task_ids: Sequence[str], consumer: str) -> int:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        released = 0
        for task_id in task_ids:
            rec = q.tasks.get(task_id)
            if rec is not None and rec.state == TaskState.ACTIVE and rec.consumer == consumer:
                self._place(q, rec, TaskState.PENDING, now)
                released += 1
        return released

    async def renew(
        self, queue: str, task_ids: Sequence[str], consumer: str, *, lease_ms: int
    ) -> Renewal:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        renewal = Renewal()
        for task_id in task_ids:
            rec = q.tasks.get(task_id)
            if rec is not None and rec.state == TaskState.ACTIVE and rec.consumer == consumer:
                rec.lease_until_ms = now + lease_ms
                if rec.cancel_requested:
                    renewal.cancel_requested.append(task_id)
            else:
                renewal.lost.append(task_id)
        return renewal

    async def claim_stale(
        self,
        queues: Sequence[str],
        consumer: str,
        count: int,
        *,
        lease_ms: int,
        max_deliveries: int,
    ) -> list[TaskInfo]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        claimed: list[TaskInfo] = []
        for name in queues:
            q = self._queue(name, now)
            self._touch(q, consumer, now)
            active = q.by_state[TaskState.ACTIVE].values()
            stale = sorted(
                (rec for rec in active if rec.lease_until_ms <= now),
                key=lambda rec: (rec.lease_until_ms, rec.seq),
            )
            for rec in stale:
                if len(claimed) >= count:
                    return claimed
                if rec.cancel_requested:  # its holder died before it could stop it
                    self._end_cancelled(q, rec, now)
                    continue
                if rec.deliveries >= max_deliveries:
                    error = (
                        f"exceeded max deliveries ({max_deliveries}):"
                        f" its consumer died {max_deliveries} times while running it"
                    )
                    self._to_dead(q, rec, error, now)
                    continue
                self._activate(q, rec, consumer, lease_ms, now)
                claimed.append(rec.info())
        return claimed

    async def promote(self, queues: Sequence[str]) -> int | None:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        earliest: int | None = None
        for name in queues:
            q = self._queue(name, now)
            while (due_ms := self._earliest_due(q)) is not None and due_ms <= now:
                _, _, task_id = heapq.heappop(q.due)
                self._place(q, q.tasks[task_id], TaskState.PENDING, now)
            if due_ms is not None and (earliest is None or due_ms < earliest):
                earliest = due_ms
        return None if earliest is None else max(0, earliest - now)

    async def wait_schedule_change(self, queues: Sequence[str], timeout_ms: int) -> None:
        self._now()
        if self._schedule_change is None:
            self._schedule_change = anyio.Event()
        # Any earlier schedule in any queue wakes every waiter: spurious wake-ups are allowed.
        with anyio.move_on_after(max(timeout_ms, 0) / 1000):
            await self._schedule_change.wait()

    # -- managing ---------------------------------------------------------------------------------

    def _found(self, task_id: str, queue: str | None, now: int) -> tuple[_Queue, _Record]:
        found = self._find(task_id, queue, now)
        if found is None:
            raise TaskNotFoundError(task_id)
        return found

    async def cancel(self, task_id: str, queue: str | None = None) -> bool:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q, rec = self._found(task_id, queue, now)
        if rec.state == TaskState.ACTIVE:
            rec.cancel_requested = True
            for watch in self._cancel_watches.get(q.name, ()):
                watch.put(q.name, rec.id)
            return True
        if rec.state not in _CANCELLABLE:
            return False
        self._place(q, rec, TaskState.CANCELLED, now)
        return True

    @asynccontextmanager
    async def watch_ended(self, queue: str, task_id: str) -> AsyncIterator[Watch]:
        self._now()
        watch, key = Watch(), (queue, task_id)
        self._ended_watches.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._ended_watches[key]
            watches.discard(watch)
            if not watches:
                del self._ended_watches[key]

    @asynccontextmanager
    async def watch_cancel_requests(self, queues: Sequence[str]) -> AsyncIterator[Watch]:
        self._now()
        watch, names = Watch(), list(queues)
        for name in names:
            self._cancel_watches.setdefault(name, set()).add(watch)
        try:
            yield watch
        finally:
            for name in names:
                watches = self._cancel_watches[name]
                watches.discard(watch)
                if not watches:
                    del self._cancel_watches[name]

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        await anyio.lowlevel.checkpoint()
        q, rec = self._found(task_id, queue, self._now())
        if rec.state == TaskState.ACTIVE:
            return False
        self._delete(q, rec)  # its heap entries go stale (skipped when they reach the top)
        return True

    async def run_now(self, task_id: str, queue: str | None = None) -> bool:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q, rec = self._found(task_id, queue, now)
        if rec.state not in _WAITING:
            return False
        self._place(q, rec, TaskState.PENDING, now)  # its due-heap entry goes stale
        return True

    async def requeue_dead(self, queue: str, task_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q, rec = self._found(task_id, queue, now)
        if rec.state != TaskState.DEAD:
            return False
        rec.retried = 0
        self._place(q, rec, TaskState.PENDING, now)
        return True

    async def requeue_all_dead(self, queue: str) -> int:
        await anyio.lowlevel.checkpoint()
        # the tasks dead now, oldest death first (so pending keeps that order), moved
        # PURGE_BATCH at a time with a checkpoint between (as purge: a big DLQ does not hold
        # the loop); one that left dead meanwhile (requeued, deleted) is passed over
        dead = list(self._queue(queue, self._now()).by_state[TaskState.DEAD].values())
        moved = 0
        for start in range(0, len(dead), PURGE_BATCH):
            if start:
                await anyio.lowlevel.checkpoint()
            now = self._now()
            q = self._queue(queue, now)
            for rec in dead[start : start + PURGE_BATCH]:
                if q.tasks.get(rec.id) is rec and rec.state is TaskState.DEAD:
                    rec.retried = 0
                    self._place(q, rec, TaskState.PENDING, now)
                    moved += 1
        return moved

    @staticmethod
    def _purge_batch(q: _Queue, states: Iterable[TaskState]) -> list[_Record]:
        batch: list[_Record] = []
        for state in states:
            batch += itertools.islice(q.by_state[state].values(), PURGE_BATCH - len(batch))
        return batch

    async def purge(self, queue: str, states: Sequence[TaskState] | None = None) -> int:
        await anyio.lowlevel.checkpoint()
        chosen = set(TaskState) - {TaskState.ACTIVE} if states is None else set(states)
        if TaskState.ACTIVE in chosen:
            raise InvalidTaskError("active tasks cannot be purged: they are running")
        q = self._queue(queue, self._now())
        deleted = 0
        # PURGE_BATCH tasks per step, then a checkpoint: other tasks run in between, and a task
        # that arrives meanwhile in a purged state is purged too (the loop ends when none is left)
        while doomed := self._purge_batch(q, chosen):
            for rec in doomed:
                self._delete(q, rec)
            deleted += len(doomed)
            await anyio.lowlevel.checkpoint()
            q = self._queue(queue, self._now())
        if not q.tasks:
            q.listed = False
        return deleted

    async def pause(self, queue: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._queue(queue, self._now()).paused = True

    async def resume(self, queue: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._queue(queue, self._now()).paused = False
        self._notify_arrival()  # blocked fetchers may now take this queue's pending tasks

    # -- reading ----------------------------------------------------------------------------------

    async def queues(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        self._now()
        return sorted(name for name, q in self._queues.items() if q.listed)

    async def queue_info(self, queue: str) -> QueueInfo:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        counts = {state: len(q.by_state[state]) for state in TaskState}
        # each priority's first pending task became pending first: at most 11 to look at
        firsts = [next(iter(level.values())) for level in q.pending.values() if level]
        since = [rec.pending_since_ms for rec in firsts]
        # ended tasks are indexed by (end time, id): one bisection per state
        recent = {
            s: min(counts[s], len(q.index[s]) - q.index[s].bisect_left((now - MINUTE_MS, "")))
            for s in _ENDED
        }
        return QueueInfo(
            name=queue,
            paused=q.paused,
            counts=counts,
            oldest_pending_age_ms=max(0, now - min(since)) if since else None,
            ended_last_minute=recent,
        )

    async def throughput(
        self, queue: str, *, minutes: int = 60, task_type: str | None = None
    ) -> list[MinuteCount]:
        await anyio.lowlevel.checkpoint()
        check_minutes(minutes)
        now = self._now()
        q = self._queue(queue, now)
        first = first_kept_minute(now, self.stats_retention_ms)
        last = minute_of(now)
        out = []
        for minute_ms in range(last - (minutes - 1) * MINUTE_MS, last + MINUTE_MS, MINUTE_MS):
            counts = q.stats.get(minute_ms, {}).get(task_type) if minute_ms >= first else None
            c, f, d = counts if counts is not None else (0, 0, 0)
            out.append(MinuteCount(minute_ms=minute_ms, completed=c, failed=f, dead=d))
        return out

    async def list_tasks(
        self, queue: str, state: TaskState, *, cursor: str | None = None, limit: int = 100
    ) -> TaskPage:
        await anyio.lowlevel.checkpoint()
        check_limit(limit)
        fetch_order = state in _FETCH_ORDER
        after: _Key | None = None
        if cursor is not None:
            parts = decode_cursor(cursor, state, (int, int, str) if fetch_order else (int, str))
            after = _key_of(parts, fetch_order)
        q = self._queue(queue, self._now())
        index = q.index[state]
        # one more than a page, to know whether another page follows
        if state in _ENDED:  # most recent first: walk the index backwards from the cursor
            stop = len(index) if after is None else index.bisect_left(after)
            keys = list(index.islice(max(0, stop - limit - 1), stop, reverse=True))
        else:
            start = 0 if after is None else index.bisect_right(after)
            keys = list(index.islice(start, start + limit + 1))
        page, more = keys[:limit], len(keys) > limit
        return TaskPage(
            tasks=[q.tasks[key[-1]].info() for key in page],
            next_cursor=encode_cursor(state, _parts_of(page[-1])) if more else None,
        )

    async def get_task(self, task_id: str, queue: str | None = None) -> TaskInfo | None:
        await anyio.lowlevel.checkpoint()
        found = self._find(task_id, queue, self._now())
        return None if found is None else found[1].info()

    async def consumers(self, queue: str) -> list[ConsumerInfo]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        held: dict[str, list[str]] = {name: [] for name in q.consumers}
        for rec in q.by_state[TaskState.ACTIVE].values():
            if rec.consumer is not None:
                held.setdefault(rec.consumer, []).append(rec.id)
        return [
            ConsumerInfo(
                name=name,
                queue=queue,
                held=tuple(sorted(held[name])),
                idle_ms=now - q.consumers.get(name, now),
            )
            for name in sorted(held)
        ]

    async def held_by(self, queues: Sequence[str], consumer: str) -> dict[str, list[str]]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        out: dict[str, list[str]] = {}
        for queue in queues:
            active = self._queue(queue, now).by_state[TaskState.ACTIVE].values()
            held = sorted(rec.id for rec in active if rec.consumer == consumer)
            if held:
                out[queue] = held
        return out

    async def remove_idle_consumers(self, queue: str, idle_ms: int) -> list[str]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        holders = {rec.consumer for rec in q.by_state[TaskState.ACTIVE].values()}
        removed = sorted(
            name
            for name, seen in q.consumers.items()
            if now - seen > idle_ms and name not in holders
        )
        for name in removed:
            del q.consumers[name]
        return removed

    # -- periodic schedules -----------------------------------------------------------------------

    async def put_schedule(self, definition: ScheduleDefinition, next_ms: int) -> ScheduleInfo:
        await anyio.lowlevel.checkpoint()
        self._now()
        old = self._schedules.get(definition.id)
        if old is not None and old.definition == definition:
            return old
        if old is None:
            new = ScheduleInfo(definition, 1, next_ms)
        else:
            new = attrs.evolve(
                old, definition=definition, revision=old.revision + 1, next_ms=next_ms
            )
        self._schedules[definition.id] = new
        return new

    async def remove_schedule(self, schedule_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        self._now()
        return self._schedules.pop(check_schedule_id(schedule_id), None) is not None

    async def list_schedules(self) -> ScheduleList:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        return ScheduleList(now, [self._schedules[k] for k in sorted(self._schedules)])

    async def fire_schedule(
        self, schedule: ScheduleInfo, tick_ms: int, next_ms: int, *, enqueue: bool = True
    ) -> FireResult:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        stored = self._schedules.get(schedule.id)
        if (
            stored is None
            or stored.revision != schedule.revision
            or stored.next_ms != schedule.next_ms
        ):
            return FireResult.STALE
        if tick_ms > now:
            return FireResult.EARLY
        if not enqueue:
            self._schedules[schedule.id] = attrs.evolve(stored, next_ms=next_ms)
            return FireResult.FIRED
        task_id = tick_task_id(schedule.id, tick_ms)
        message = attrs.evolve(stored.definition.template, id=task_id, created_ms=tick_ms)
        # an id taken: fired before this schedule was put again; once is enough
        with contextlib.suppress(TaskIdConflictError):
            self._enqueue(message, now)
        self._schedules[schedule.id] = attrs.evolve(
            stored, next_ms=next_ms, last_fire_ms=tick_ms, last_task_id=task_id
        )
        return FireResult.FIRED

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._closed = True
        self._notify_arrival()
        self._notify_schedule_change()


def _key_of(parts: tuple[Part, ...], fetch_order: bool) -> _Key:
    """The listing position a cursor's parts name: (priority, entry, id) or (time, id)."""
    if fetch_order:
        priority, entry, task_id = (int(parts[0]), int(parts[1]), str(parts[2]))
        if not (MIN_PRIORITY <= priority <= MAX_PRIORITY and entry >= 0):
            raise InvalidCursorError(f"malformed cursor position {parts!r}")
        return (-priority, entry, task_id)
    time_ms, task_id = int(parts[0]), str(parts[1])
    if abs(time_ms) >= 2**53:  # the same range as the Redis backend's scores
        raise InvalidCursorError(f"malformed cursor position {parts!r}")
    return (time_ms, task_id)


def _parts_of(key: _Key) -> tuple[Part, ...]:
    if len(key) == 3:
        return (-key[0], key[1], key[2])
    return key


if TYPE_CHECKING:

    def _is_a_backend(backend: MemoryBackend) -> Backend:
        return backend  # mypy checks that MemoryBackend satisfies the protocol
