"""Random sequences of operations against the backend and a small executable model of the contract;
after every step both must agree on every task's state and on the counts.

The backend runs in an event loop of its own (an anyio blocking portal in a thread), because
hypothesis drives the state machine synchronously.

Times are chosen so no expiry ever falls exactly on the clock's current time (the clock moves in
whole seconds, every duration ends in 500 ms): boundary behaviour is pinned by the unit tests."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conformance.clock import FakeClock
from conformance.helpers import list_all, message
from strego.backends.base import MINUTE_MS, Backend
from strego.errors import DuplicateTaskError, TaskIdConflictError, TaskNotFoundError
from strego.task import TaskState

QUEUES = ("qa", "qb")
CONSUMERS = ("c1", "c2")
LEASE_MS = 10_500
COMPLETED_TTL_MS = 60_500
DEAD_TTL_MS = 90_500
ENDED = (TaskState.COMPLETED, TaskState.CANCELLED, TaskState.DEAD)

#: queue, priority, max_retry, delay (None: now), unique (key, ttl) or None
EnqueueSpec = tuple[str, int, int, int | None, tuple[str, int] | None]
ENQUEUE_SPECS = st.tuples(
    st.sampled_from(QUEUES),
    st.sampled_from([0, 0, 5, 10]),
    st.integers(0, 2),
    st.sampled_from([None, None, 1_500, 7_500]),
    st.sampled_from([None, None, ("k1", 15_500), ("k2", 45_500)]),
)


@attrs.define
class ModelTask:
    id: str
    queue: str
    priority: int
    max_retry: int
    unique_key: str | None
    state: TaskState
    retried: int = 0
    deliveries: int = 0
    consumer: str | None = None
    lease_until: int = 0
    due: int | None = None
    expires: int | None = None
    #: cancel asked for while active: ack and fail end it cancelled (kept by release)
    cancel_requested: bool = False


class Model:
    """The contract as plain dicts."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tasks: dict[str, ModelTask] = {}
        #: (queue, unique key) -> (holder id, expiry ms)
        self.unique: dict[tuple[str, str], tuple[str, int]] = {}
        #: the queues `queues()` lists: enqueued to since the last purge that emptied them
        self.listed: set[str] = set()
        self.paused: set[str] = set()
        #: (queue, minute start) -> [completed, failed to retry, dead] (`throughput`)
        self.history: dict[tuple[str, int], list[int]] = {}

    def count(self, task: ModelTask, kind: int) -> None:
        now = self.clock()
        self.history.setdefault((task.queue, now - now % MINUTE_MS), [0, 0, 0])[kind] += 1

    def holder(self, queue: str, key: str) -> str | None:
        lock = self.unique.get((queue, key))
        if lock is None or lock[1] <= self.clock():
            return None
        task = self.tasks.get(lock[0])
        if task is None or task.state in (TaskState.COMPLETED, TaskState.CANCELLED):
            return None
        return lock[0]

    def in_state(self, queue: str, state: TaskState) -> list[ModelTask]:
        return [t for t in self.tasks.values() if t.queue == queue and t.state == state]

    def end(self, task: ModelTask, state: TaskState) -> None:
        task.state = state
        task.cancel_requested = False
        task.consumer = None
        task.due = None
        ttl = DEAD_TTL_MS if state == TaskState.DEAD else COMPLETED_TTL_MS
        task.expires = self.clock() + ttl

    def to_pending(self, task: ModelTask) -> None:
        task.state = TaskState.PENDING
        task.consumer = None
        task.due = None
        task.expires = None

    def activate(self, task: ModelTask, consumer: str) -> None:
        task.state = TaskState.ACTIVE
        task.consumer = consumer
        task.deliveries += 1
        task.lease_until = self.clock() + LEASE_MS


class BackendMachine(RuleBasedStateMachine):
    portal: ClassVar[BlockingPortal]
    make_backend: ClassVar[Callable[..., Any]]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model = Model(self.clock)
        self.next_id = 0
        self._backend_cm = self.portal.wrap_async_context_manager(
            type(self).make_backend(
                clock=self.clock, completed_ttl_ms=COMPLETED_TTL_MS, dead_ttl_ms=DEAD_TTL_MS
            )
        )
        self.backend: Backend = self._backend_cm.__enter__()

    def teardown(self) -> None:
        try:
            self.listings_agree()
        finally:
            self._backend_cm.__exit__(None, None, None)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(functools.partial(func, *args, **kwargs))

    def has(self, state: TaskState) -> bool:
        return any(t.state == state for t in self.model.tasks.values())

    def pick(self, index: int, state: TaskState | None = None) -> ModelTask | None:
        """A known task (in `state`, if given) chosen by `index`, or None when there is none."""
        ids = sorted(i for i, t in self.model.tasks.items() if state in (None, t.state))
        return self.model.tasks[ids[index % len(ids)]] if ids else None

    # -- rules ------------------------------------------------------------------------------------

    def add_task(self, spec: EnqueueSpec) -> None:
        queue, priority, max_retry, delay, unique = spec
        self.next_id += 1
        task_id = f"t{self.next_id}"
        now = self.clock()
        key, ttl = unique if unique is not None else (None, None)
        msg = message(
            task_id,
            queue=queue,
            priority=priority,
            max_retry=max_retry,
            process_at_ms=None if delay is None else now + delay,
            unique_key=key,
            unique_ttl_ms=ttl,
        )
        holder = None if key is None else self.model.holder(queue, key)
        self.model.listed.add(queue)
        if holder is not None:
            with pytest.raises(DuplicateTaskError) as exc_info:
                self.call(self.backend.enqueue, msg)
            assert exc_info.value.holder_id == holder
            return
        info = self.call(self.backend.enqueue, msg)
        state = TaskState.PENDING if delay is None else TaskState.SCHEDULED
        assert info.state == state
        task = ModelTask(task_id, queue, priority, max_retry, key, state)
        if delay is not None:
            task.due = now + delay
        self.model.tasks[task_id] = task
        if key is not None and ttl is not None:
            self.model.unique[(queue, key)] = (task_id, now + ttl)

    @initialize(specs=st.lists(ENQUEUE_SPECS, min_size=1, max_size=6))
    def enqueue_some(self, specs: list[EnqueueSpec]) -> None:
        for spec in specs:
            self.add_task(spec)

    @rule(spec=ENQUEUE_SPECS)
    def enqueue(self, spec: EnqueueSpec) -> None:
        self.add_task(spec)

    @rule(spec=ENQUEUE_SPECS)
    def enqueue_another(self, spec: EnqueueSpec) -> None:
        """Enqueueing twice as likely as any other rule keeps tasks flowing."""
        self.add_task(spec)

    @rule(index=st.integers(0, 1_000))
    def enqueue_existing_id(self, index: int) -> None:
        task = self.pick(index)
        if task is None:
            return
        with pytest.raises(TaskIdConflictError):
            self.call(self.backend.enqueue, message(task.id, queue=task.queue))

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        count=st.integers(1, 4),
        queues=st.sampled_from([QUEUES, QUEUES[::-1]]),
    )
    def fetch(self, consumer: str, count: int, queues: tuple[str, ...]) -> None:
        got = self.call(self.backend.fetch, list(queues), count, consumer, lease_ms=LEASE_MS)
        # Which tasks may come first: earlier queues, then higher priority. Within one priority
        # the choice is the backend's ("oldest first" is pinned by the unit tests).
        available = [
            (queues.index(t.queue), -t.priority)
            for q in queues
            if q not in self.model.paused
            for t in self.model.in_state(q, TaskState.PENDING)
        ]
        expected = sorted(available)[:count]
        assert sorted((queues.index(t.queue), -t.priority) for t in got) == expected
        for info in got:
            task = self.model.tasks[info.id]
            assert task.state == TaskState.PENDING
            self.model.activate(task, consumer)
            assert (info.state, info.consumer, info.deliveries) == (
                TaskState.ACTIVE,
                consumer,
                task.deliveries,
            )

    @rule(
        index=st.integers(0, 1_000),
        consumer=st.sampled_from(CONSUMERS),
        any_state=st.booleans(),
    )
    def ack(self, index: int, consumer: str, any_state: bool) -> None:
        task = self.pick(index, None if any_state else TaskState.ACTIVE)
        queue, task_id = (task.queue, task.id) if task else ("qa", "ghost")
        done = self.call(self.backend.ack, queue, task_id, consumer)
        active = task is not None and task.state == TaskState.ACTIVE
        assert done == (active and task is not None and not task.cancel_requested)
        if task is not None and active:
            # a requested cancel came first: the ack ends the task cancelled
            self.model.end(task, TaskState.COMPLETED if done else TaskState.CANCELLED)
            if done:
                self.model.count(task, 0)

    @precondition(lambda self: self.has(TaskState.ACTIVE))
    @rule(index=st.integers(0, 1_000), retry=st.booleans())
    def fail(self, index: int, retry: bool) -> None:
        task = self.pick(index, TaskState.ACTIVE)
        if task is None:
            return
        retry_at = self.clock() + 2_500 if retry else None
        consumer = task.consumer or "c1"
        result = self.call(
            self.backend.fail,
            task.queue,
            task.id,
            consumer,
            "boom",
            retry_in_ms=None if retry_at is None else 2_500,
        )
        if task.state != TaskState.ACTIVE:
            assert result is None
            return
        if task.cancel_requested:
            assert result == TaskState.CANCELLED
            self.model.end(task, TaskState.CANCELLED)
            return
        if retry_at is not None and task.retried < task.max_retry:
            task.state, task.retried, task.due, task.consumer = (
                TaskState.RETRY,
                task.retried + 1,
                retry_at,
                None,
            )
            self.model.count(task, 1)
        else:
            self.model.end(task, TaskState.DEAD)
            self.model.count(task, 2)
        assert result == task.state

    @rule(consumer=st.sampled_from(CONSUMERS), queue=st.sampled_from(QUEUES))
    def release(self, consumer: str, queue: str) -> None:
        mine = [t for t in self.model.in_state(queue, TaskState.ACTIVE) if t.consumer == consumer]
        others = [t for t in self.model.in_state(queue, TaskState.ACTIVE) if t.consumer != consumer]
        ids = [t.id for t in mine + others[:1]] + ["ghost"]
        assert self.call(self.backend.release, queue, ids, consumer) == len(mine)
        for task in mine:
            self.model.to_pending(task)

    @rule(consumer=st.sampled_from(CONSUMERS), queue=st.sampled_from(QUEUES))
    def renew(self, consumer: str, queue: str) -> None:
        active = self.model.in_state(queue, TaskState.ACTIVE)
        ids = [t.id for t in active] + ["ghost"]
        renewal = self.call(self.backend.renew, queue, ids, consumer, lease_ms=LEASE_MS)
        lost = [*(t.id for t in active if t.consumer != consumer), "ghost"]
        assert sorted(renewal.lost) == sorted(lost)
        requested = [t.id for t in active if t.consumer == consumer and t.cancel_requested]
        assert sorted(renewal.cancel_requested) == sorted(requested)
        for task in active:
            if task.consumer == consumer:
                task.lease_until = self.clock() + LEASE_MS

    @rule(index=st.integers(0, 1_000), by_id_only=st.booleans())
    def cancel(self, index: int, by_id_only: bool) -> None:
        task = self.pick(index)
        if task is None:
            with pytest.raises(TaskNotFoundError):
                self.call(self.backend.cancel, "ghost")
            return
        done = self.call(self.backend.cancel, task.id, None if by_id_only else task.queue)
        waiting = task.state in (TaskState.SCHEDULED, TaskState.PENDING, TaskState.RETRY)
        assert done == (waiting or task.state == TaskState.ACTIVE)
        if waiting:
            self.model.end(task, TaskState.CANCELLED)
        elif task.state == TaskState.ACTIVE:
            task.cancel_requested = True

    @rule(index=st.integers(0, 1_000), by_id_only=st.booleans())
    def delete(self, index: int, by_id_only: bool) -> None:
        task = self.pick(index)
        if task is None:
            with pytest.raises(TaskNotFoundError):
                self.call(self.backend.delete, "ghost", None if by_id_only else "qa")
            return
        done = self.call(self.backend.delete, task.id, None if by_id_only else task.queue)
        assert done == (task.state != TaskState.ACTIVE)
        if done:
            del self.model.tasks[task.id]  # its unique key has no holder any more
        with pytest.raises(TaskNotFoundError):
            other = next(q for q in QUEUES if q != task.queue)
            self.call(self.backend.delete, task.id, other)

    @rule(
        queue=st.sampled_from(QUEUES),
        states=st.none() | st.sets(st.sampled_from(sorted(set(TaskState) - {TaskState.ACTIVE}))),
    )
    def purge(self, queue: str, states: set[TaskState] | None) -> None:
        chosen = set(TaskState) - {TaskState.ACTIVE} if states is None else states
        doomed = [t for t in self.model.tasks.values() if t.queue == queue and t.state in chosen]
        purged = self.call(self.backend.purge, queue, None if states is None else sorted(states))
        assert purged == len(doomed)
        for task in doomed:
            del self.model.tasks[task.id]
        if not any(t.queue == queue for t in self.model.tasks.values()):
            self.model.listed.discard(queue)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause_or_resume(self, queue: str, paused: bool) -> None:
        if paused:
            self.call(self.backend.pause, queue)
            self.model.paused.add(queue)
        else:
            self.call(self.backend.resume, queue)
            self.model.paused.discard(queue)

    @rule(index=st.integers(0, 1_000), by_id_only=st.booleans())
    def run_now(self, index: int, by_id_only: bool) -> None:
        task = self.pick(index)
        if task is None:
            with pytest.raises(TaskNotFoundError):
                self.call(self.backend.run_now, "ghost")
            return
        done = self.call(self.backend.run_now, task.id, None if by_id_only else task.queue)
        assert done == (task.state in (TaskState.SCHEDULED, TaskState.RETRY))
        if done:
            self.model.to_pending(task)

    @precondition(lambda self: self.has(TaskState.DEAD))
    @rule(index=st.integers(0, 1_000))
    def requeue_dead(self, index: int) -> None:
        task = self.pick(index, TaskState.DEAD)
        if task is None:
            return
        done = self.call(self.backend.requeue_dead, task.queue, task.id)
        assert done == (task.state == TaskState.DEAD)
        if done:
            self.model.to_pending(task)
            task.retried = 0

    @rule(queue=st.sampled_from(QUEUES))
    def requeue_all_dead(self, queue: str) -> None:
        dead = self.model.in_state(queue, TaskState.DEAD)
        assert self.call(self.backend.requeue_all_dead, queue) == len(dead)
        for task in dead:
            self.model.to_pending(task)
            task.retried = 0

    @rule(ms=st.sampled_from([1_000, 3_000, 8_000, 30_000]))
    def advance_and_promote(self, ms: int) -> None:
        self.clock.advance(ms)
        now = self.clock()
        due_in = self.call(self.backend.promote, list(QUEUES))
        for task in list(self.model.tasks.values()):
            if task.state in (TaskState.SCHEDULED, TaskState.RETRY):
                assert task.due is not None
                if task.due <= now:
                    self.model.to_pending(task)
            elif task.state in ENDED:
                assert task.expires is not None
                if task.expires <= now:
                    del self.model.tasks[task.id]
        dues = [t.due for t in self.model.tasks.values() if t.due is not None]
        assert due_in == (min(dues) - now if dues else None)

    @precondition(lambda self: self.has(TaskState.ACTIVE))
    @rule(consumer=st.sampled_from(CONSUMERS), max_deliveries=st.integers(1, 3))
    def claim_stale(self, consumer: str, max_deliveries: int) -> None:
        now = self.clock()
        claimed = self.call(
            self.backend.claim_stale,
            list(QUEUES),
            consumer,
            1_000,
            lease_ms=LEASE_MS,
            max_deliveries=max_deliveries,
        )
        stale = [
            t
            for t in self.model.tasks.values()
            if t.state == TaskState.ACTIVE and t.lease_until <= now
        ]
        expected = sorted(
            t.id for t in stale if t.deliveries < max_deliveries and not t.cancel_requested
        )
        assert sorted(info.id for info in claimed) == expected
        for task in stale:
            if task.cancel_requested:  # never run again: it ends as asked
                self.model.end(task, TaskState.CANCELLED)
            elif task.deliveries >= max_deliveries:
                self.model.end(task, TaskState.DEAD)
                self.model.count(task, 2)
            else:
                self.model.activate(task, consumer)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        for queue in QUEUES:
            info = self.call(self.backend.queue_info, queue)
            assert info.paused == (queue in self.model.paused), queue
            for state in TaskState:
                assert info.counts[state] == len(self.model.in_state(queue, state)), (queue, state)

    @invariant()
    def history_agrees(self) -> None:
        # a run lasts less than an hour of the clock: the default 60 minutes hold all of it
        for queue in QUEUES:
            history = self.call(self.backend.throughput, queue)
            expected = [self.model.history.get((queue, m.minute_ms), [0, 0, 0]) for m in history]
            assert [[m.completed, m.failed, m.dead] for m in history] == expected, queue

    @invariant()
    def queues_agree(self) -> None:
        assert self.call(self.backend.queues) == sorted(self.model.listed)

    def listings_agree(self) -> None:
        # Checked once per example (at teardown): a listing per state per step is slow on Redis.
        for queue in QUEUES:
            for state in TaskState:
                listed = self.call(list_all, self.backend, queue, state)
                expected = sorted(t.id for t in self.model.in_state(queue, state))
                assert sorted(t.id for t in listed) == expected, (queue, state)

    @invariant()
    def every_task_agrees(self) -> None:
        for task in self.model.tasks.values():
            info = self.call(self.backend.get_task, task.id, task.queue)
            assert info is not None, task.id
            assert info.cancel_requested == task.cancel_requested, task.id
            assert (info.state, info.retried, info.deliveries) == (
                task.state,
                task.retried,
                task.deliveries,
            ), task.id
            if task.state == TaskState.ACTIVE:
                assert info.consumer == task.consumer, task.id
            # the due time of a waiting task only; the end time of an ended one only
            assert info.next_run_ms == task.due, task.id
            ended = task.state in (TaskState.DEAD, TaskState.COMPLETED, TaskState.CANCELLED)
            assert (info.ended_ms is not None) == ended, task.id


def _event_loop(anyio_backend: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(anyio_backend, tuple):
        return anyio_backend[0], dict(anyio_backend[1])
    return str(anyio_backend), {}


def test_backend_agrees_with_model(make_backend: Any, anyio_backend: Any) -> None:
    name, options = _event_loop(anyio_backend)
    with start_blocking_portal(name, options) as portal:
        machine = type(
            "Machine", (BackendMachine,), {"portal": portal, "make_backend": make_backend}
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=50,
                stateful_step_count=35,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
