"""MemoryBackend: the backend contract (`strego.backends.base`) in plain Python, in-process.

For unit tests, demos and single-process applications. Every transition is synchronous Python
between awaits, so it is atomic under asyncio and trio alike; only anyio primitives are used for
waiting. Data lives per queue:

- `tasks`: every task record by id, and `by_state`: the same records grouped by state;
- `pending`: one insertion-ordered dict per priority level, so fetch is O(1) per task;
- `due`: a heap of scheduled and retry tasks by due time;
- `expiry`: a heap of completed, cancelled and dead tasks by the end of their retention;
- `index`: per state, the tasks' listing positions in a sorted list, so a `list_tasks` page is a
  bisect from its cursor, not a walk from the first task.

The heaps are cleaned lazily: an entry whose record has since moved (its `seq` changed) or gone is
skipped when it reaches the top.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
from sortedcontainers import SortedList

from strego.backends.base import Clock, ConsumerInfo, QueueInfo, TaskPage, check_limit
from strego.backends.cursor import Part, decode_cursor, encode_cursor
from strego.clock import wall_clock_ms
from strego.errors import (
    BackendClosedError,
    DuplicateTaskError,
    InvalidCursorError,
    InvalidTaskError,
    StregoError,
    TaskIdConflictError,
    TaskNotFoundError,
)
from strego.history.events import DEFAULT_HISTORY_CAP, HistoryEvent, MemoryHistoryLog
from strego.message import TaskMessage, check_unique_ttl
from strego.task import MAX_PRIORITY, MIN_PRIORITY, TaskInfo, TaskState

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
    #: its position in its state's listing index, None while in no index
    listing_key: _Key | None = None

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
        )


@attrs.define(eq=False)
class _UniqueLock:
    holder: str
    expires_ms: int | None


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


class MemoryBackend:
    """An in-process backend. `clock` returns epoch ms (wall time by default); completed and
    cancelled tasks are kept `completed_ttl_ms`, dead tasks `dead_ttl_ms`."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        completed_ttl_ms: int = 3_600_000,
        dead_ttl_ms: int = 7 * 86_400_000,
        history: bool = False,
        history_cap: int = DEFAULT_HISTORY_CAP,
    ) -> None:
        if history and (not isinstance(history_cap, int) or history_cap < 1):
            raise InvalidTaskError(f"history_cap must be a positive int, got {history_cap!r}")
        #: with history on, one event per transition, for a drainer (strego.history)
        self.history = MemoryHistoryLog(history_cap) if history else None
        self.clock: Clock = clock if clock is not None else wall_clock_ms
        self.completed_ttl_ms = completed_ttl_ms
        self.dead_ttl_ms = dead_ttl_ms
        self.capabilities: frozenset[str] = frozenset()
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        # Created lazily inside the event loop; set and dropped to wake every waiter at once.
        self._arrival: anyio.Event | None = None
        self._schedule_change: anyio.Event | None = None
        self._closed = False

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
        if self.history is not None and state != TaskState.ACTIVE:  # active: in _activate
            self._history_event(q, rec, state, now)
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
            ttl = self.dead_ttl_ms if state == TaskState.DEAD else self.completed_ttl_ms
            heapq.heappush(q.expiry, (now + ttl, rec.seq, rec.id))
            if state != TaskState.DEAD:  # a dead task keeps its unique key until the TTL
                self._release_unique(q, rec)
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
        if self.history is not None:
            self._history_event(q, rec, TaskState.ACTIVE, now)

    def _history_event(self, q: _Queue, rec: _Record, state: TaskState | None, now: int) -> None:
        """Log the transition of `rec` to `state` (None: deleted); before its first placing
        (seq 0) it is the enqueue, which carries the task's envelope."""
        assert self.history is not None
        m = rec.message
        common: dict[str, Any] = {
            "queue": q.name, "seq": (0, 0), "task_id": rec.id, "at_ms": now,
            "state": "deleted" if state is None else state.value, "retried": rec.retried,
            "error": rec.last_error if state in (TaskState.RETRY, TaskState.DEAD) else None,
            "consumer": rec.consumer if state == TaskState.ACTIVE else None,
        }  # fmt: skip
        if rec.seq == 0:
            common.update(type=m.type, labels=dict(m.labels), payload=m.payload,
                          encoding=m.encoding, created_ms=m.created_ms)  # fmt: skip
        self.history.add(HistoryEvent(**common))

    def _ack(self, queue: str, task_id: str, consumer: str, now: int) -> bool:
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        rec = q.tasks.get(task_id)
        if rec is None or rec.state != TaskState.ACTIVE:
            return False
        rec.completed_ms = now
        self._place(q, rec, TaskState.COMPLETED, now)
        return True

    def _to_dead(self, q: _Queue, rec: _Record, error: str, now: int) -> None:
        rec.last_error = error
        self._place(q, rec, TaskState.DEAD, now)

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

    async def ack(self, queue: str, task_id: str, consumer: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._ack(queue, task_id, consumer, self._now())

    async def ack_many(self, items: Sequence[tuple[str, str]], consumer: str) -> list[bool]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        return [self._ack(queue, task_id, consumer, now) for queue, task_id in items]

    async def fail(
        self, queue: str, task_id: str, consumer: str, error: str, *, retry_in_ms: int | None
    ) -> TaskState | None:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        rec = q.tasks.get(task_id)
        if rec is None or rec.state != TaskState.ACTIVE:
            return None
        if retry_in_ms is not None and rec.retried < rec.message.max_retry:
            rec.last_error = error
            rec.retried += 1
            rec.next_run_ms = now + max(0, retry_in_ms)
            self._place(q, rec, TaskState.RETRY, now)
        else:
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
    ) -> list[str]:
        await anyio.lowlevel.checkpoint()
        now = self._now()
        q = self._queue(queue, now)
        self._touch(q, consumer, now)
        lost: list[str] = []
        for task_id in task_ids:
            rec = q.tasks.get(task_id)
            if rec is not None and rec.state == TaskState.ACTIVE and rec.consumer == consumer:
                rec.lease_until_ms = now + lease_ms
            else:
                lost.append(task_id)
        return lost

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
        if rec.state not in _CANCELLABLE:
            return False
        self._place(q, rec, TaskState.CANCELLED, now)
        return True

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        await anyio.lowlevel.checkpoint()
        q, rec = self._found(task_id, queue, self._now())
        if rec.state == TaskState.ACTIVE:
            return False
        if self.history is not None:
            self._history_event(q, rec, None, self._now())
        self._delete(q, rec)  # its heap entries go stale (skipped when they reach the top)
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
                if self.history is not None:
                    self._history_event(q, rec, None, self._now())
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
        q = self._queue(queue, self._now())
        counts = {state: len(q.by_state[state]) for state in TaskState}
        return QueueInfo(name=queue, paused=q.paused, counts=counts)

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
