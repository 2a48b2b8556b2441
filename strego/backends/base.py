"""The backend contract: one async method per atomic state transition, plus the reads an inspector
needs. The runtime (Client, Server) talks to nothing else, and `conformance/` checks every backend
against this contract.

States and places. A task accepted by `enqueue` is at every instant in exactly one state:

    scheduled --promote--> pending --fetch/claim--> active --ack--> completed
        |                     ^  ^                     |  \\--fail--> retry --promote--> pending
        |                     |  '-----release---------'   \\--fail--> dead --requeue--> pending
        '--cancel--> cancelled <--cancel-- pending, retry
    scheduled, retry --run_now--> pending
                             ^
        active --cancel: request-->(ack / fail / claim_stale of a task with a request)

`delete` removes a task in any state but active; `purge` removes many (never active ones). A call
by id on an id that no task has (or whose retention ended) raises `TaskNotFoundError`; one on a
task whose state does not allow it returns False and changes nothing.

Time. One clock decides (docs/architecture.md, invariant 7): every lease, expiry (unique keys,
processed markers, retention), due time and stale claim is judged by the backend's own clock at
the moment of the transition (Redis: TIME inside the script), never by the host clock of
whichever client or server calls, which may be minutes off. So callers pass durations, not
instants, wherever "from now" is meant (`lease_ms`, `retry_in_ms`, `TaskMessage.process_in_ms`),
and `promote` answers with a duration. `process_at_ms` is an absolute instant by design. The
`clock` attribute is the backend's clock for a memory backend, and for other backends the host
clock that stamps ids and creation times; injecting one is a test facility.

Retention. Completed and cancelled tasks are kept for `completed_ttl_ms`; the completed entry is
the processed marker. Dead tasks are kept for `dead_ttl_ms`. When retention ends the task is gone.
Expired entries are removed by `promote` (which the server's scheduler calls often) and need not be
removed the instant they expire, but reads never report an expired unique key as held, and an
expired marker is treated as absent.

History. `ack`, `fail` and `claim_stale` (when it sends a task to dead) count, in the same step,
the tasks of each queue that completed, failed and went to retry, or went to dead, per minute of
the backend's clock, in total and per task type; `throughput` reads them. A minute is kept while
its start is less than `stats_retention_ms` ago (a backend constructor setting, default 24 h):
older minutes read as zero at once and are removed, a bounded number at a time, by later counts.
Schedules. A periodic schedule (`ScheduleDefinition`: a cron expression or an interval, and the
task each tick enqueues) is stored with its state: a revision that moves whenever the definition
changes, the next tick due, and the last tick fired with its task's id. `fire_schedule` is the one
transition of that state, conditional on the caller's view, so any number of servers may run the
loop with no leader and no lock: each tick fires exactly once.

Leases. Fetching or claiming a task gives the consumer a lease until now + `lease_ms` (an argument
of each call: the server decides how long its leases last). `renew` extends leases; `claim_stale`
takes over tasks whose lease has expired. Consumer idle times are judged by the clock as well.

Results and cancel requests. `ack` stores a handler's result with the completion, `fail` a dead
task's error detail; both are part of the task's record (read by `get_task`: `TaskInfo.result`,
`TaskInfo.error`) and go with it. `cancel` of an active task records a request
(`TaskInfo.cancel_requested`) that its holder sees from `renew` or `watch_cancel_requests`; the
task then ends cancelled by the holder's `ack` or `fail`, never completed, retried or dead.
`watch_ended` lets a caller wait for a task's end without polling.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

from strego.cron import Catchup, Ticks, check_catchup, check_schedule_id
from strego.errors import InvalidScheduleError, InvalidTaskError, StregoError
from strego.message import TaskMessage
from strego.task import TaskError, TaskInfo, TaskState

#: A clock: returns the current time in epoch milliseconds.
Clock = Callable[[], int]


@attrs.frozen
class ConsumerInfo:
    """A consumer (one server's fetcher) of a queue: the tasks it holds and how long since it last
    fetched, acked or renewed."""

    name: str
    queue: str
    held: tuple[str, ...]
    idle_ms: int


@attrs.frozen
class Renewal:
    """What `renew` found: the ids the consumer no longer holds, and the held ids whose cancel was
    requested (see `cancel`)."""

    lost: list[str] = attrs.field(factory=list)
    cancel_requested: list[str] = attrs.field(factory=list)


#: One ack: (queue, task id) or (queue, task id, result): the result as stored (see `ack`).
AckItem = tuple[str, str] | tuple[str, str, bytes | None]


class Watch(Protocol):
    """A subscription (`watch_ended`, `watch_cancel_requests`) as its owner sees it."""

    async def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        """The (queue, task id) notifications that arrived since the last call, waiting up to
        `timeout_s` for one when there are none yet. May return early and empty (a spurious
        wake-up: when the backend's connection was lost and restored, say), and may name tasks
        the owner did not ask about: a notification is a hint to read the task again, never a
        state by itself."""
        ...


@attrs.frozen
class QueueInfo:
    """A queue's paused flag, its count of tasks in each state, and the age of its oldest
    pending task: how long ago (ms, by the backend's clock) that task last became pending
    (enqueued due now, promoted when due, released, requeued from dead, or made to run now), so
    a task that waited scheduled counts from its promotion, not from its creation; None when no
    task is pending. A queue's latency: how long the next task to start has waited for a
    worker."""

    name: str
    paused: bool
    counts: dict[TaskState, int]
    oldest_pending_age_ms: int | None = None
    #: tasks that entered each ended state (completed, dead, cancelled) during the last minute by
    #: the backend's clock, among those still retained (the rate metrics' source)
    ended_last_minute: dict[TaskState, int] = attrs.field(factory=dict)


@attrs.frozen
class MinuteCount:
    """What happened in a queue in one minute (`throughput`): tasks that completed, runs that
    failed and went to retry, and tasks that went to dead (by `fail` or `claim_stale`)."""

    #: the start of the minute, epoch ms by the backend's clock (a multiple of 60 000)
    minute_ms: int
    completed: int
    #: attempts that failed and went to retry
    failed: int
    dead: int


#: How long per-minute counts are kept by default (24 h), and the most minutes one
#: `throughput` call returns.
STATS_RETENTION_MS = 86_400_000
MINUTE_MS = 60_000
MAX_MINUTES = 1440


def check_minutes(minutes: int) -> None:
    """Refuse a `throughput` length outside 1..MAX_MINUTES (InvalidTaskError)."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_MINUTES:
        raise InvalidTaskError(f"minutes must be an int from 1 to {MAX_MINUTES}, not {minutes!r}")


def check_stats_retention(retention_ms: int) -> None:
    """Refuse a `stats_retention_ms` that is not an int of at least one minute."""
    if (
        isinstance(retention_ms, bool)
        or not isinstance(retention_ms, int)
        or retention_ms < MINUTE_MS
    ):
        raise InvalidTaskError(
            f"stats_retention_ms must be an int of at least {MINUTE_MS}, not {retention_ms!r}"
        )


def minute_of(now_ms: int) -> int:
    """The start of the minute `now_ms` falls in."""
    return now_ms - now_ms % MINUTE_MS


def first_kept_minute(now_ms: int, retention_ms: int) -> int:
    """The oldest minute still within the retention window: the first whose start is after
    now - retention_ms."""
    cutoff = now_ms - retention_ms
    return minute_of(cutoff) + MINUTE_MS


#: The most tasks one `list_tasks` page holds.
MAX_PAGE = 1000
#: The most entries one `list_tasks` call looks at, listed or passed over (an entry of another
#: state, or one whose task is gone): bounded work per call, whatever is in the way.
MAX_SCAN = 1000


@attrs.frozen
class TaskPage:
    """A page of `list_tasks`: its tasks, and the cursor of the next page (None at the end)."""

    tasks: list[TaskInfo]
    next_cursor: str | None


def _check_template(_: object, __: object, m: TaskMessage) -> None:
    if m.unique_key is not None:
        # a unique key held by an earlier tick's task would refuse the next tick's
        raise InvalidScheduleError("a periodic task takes no unique_key")
    if m.process_at_ms is not None or m.process_in_ms is not None:
        raise InvalidScheduleError("a periodic task is due at its tick: no process_at/process_in")


@attrs.frozen
class ScheduleDefinition:
    """A periodic schedule: `spec` a cron expression (in time zone `tz`) or ``every <n>ms`` (see
    `strego.cron.Ticks`), `catchup` what to do with ticks missed while no server ran
    (`strego.cron.plan`), and `template` the task each tick enqueues (its `id` and `created_ms`
    are replaced by the tick's: id ``<schedule id>:<tick ms>``, created at the tick). Checked when
    built: an invalid one raises InvalidScheduleError."""

    id: str = attrs.field(validator=lambda _, __, v: check_schedule_id(v))
    spec: str
    tz: str
    catchup: Catchup = attrs.field(validator=lambda _, __, v: check_catchup(v))
    template: TaskMessage = attrs.field(validator=_check_template)
    ticks: Ticks = attrs.field(init=False, eq=False, repr=False)

    @ticks.default
    def _ticks(self) -> Ticks:
        return Ticks(self.spec, self.tz)


@attrs.frozen
class ScheduleInfo:
    """A stored schedule and its state. `revision` moves whenever the definition changes;
    `next_ms` is the next tick to fire; `last_fire_ms` the last tick fired (None before the
    first), whose task is `last_task_id`."""

    definition: ScheduleDefinition
    revision: int
    next_ms: int
    last_fire_ms: int | None = None
    last_task_id: str | None = None

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def queue(self) -> str:
        return self.definition.template.queue


@attrs.frozen
class ScheduleList:
    """Every stored schedule, by id, and the backend's time when they were read."""

    now_ms: int
    schedules: list[ScheduleInfo]


class FireResult(enum.StrEnum):
    #: the tick's task was enqueued (or, asked to skip, not) and the schedule advanced
    FIRED = "fired"
    #: the schedule no longer holds that tick at that revision (another server fired it, it was
    #: changed or removed): nothing changed
    STALE = "stale"
    #: the tick is still ahead by the backend's clock: nothing changed
    EARLY = "early"


def check_limit(limit: int) -> None:
    """Refuse a page size outside 1..MAX_PAGE (InvalidTaskError, before anything is read)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidTaskError(f"limit must be an int from 1 to {MAX_PAGE}, not {limit!r}")


@runtime_checkable
class Backend(Protocol):
    """A storage backend. Every method that changes state is one atomic transition: concurrent calls
    from any number of processes never lose, duplicate or half-apply a task."""

    #: The clock the backend judges time by (epoch ms).
    clock: Clock
    #: How long completed (the processed marker) and cancelled tasks are kept.
    completed_ttl_ms: int
    #: How long dead tasks are kept.
    dead_ttl_ms: int
    #: How long per-minute counts (`throughput`) are kept (default STATS_RETENTION_MS, 24 h).
    stats_retention_ms: int
    #: Names of optional features this backend has (none are defined yet).
    capabilities: frozenset[str]

    # -- producing ------------------------------------------------------------------------------

    async def enqueue(self, message: TaskMessage) -> TaskInfo:
        """Store a new task: pending if it is due now (`process_at_ms` None or not after now, or
        `process_in_ms` None or 0), else scheduled (until process_at_ms, or process_in_ms after
        now by the backend's clock). With a unique key, the key is taken in the same step; a
        key held by a live task (not completed, not cancelled, TTL not expired) raises
        `DuplicateTaskError` naming the holder. An id that exists in any state raises
        `TaskIdConflictError`. Registers the queue (see `queues`).

        A unique key is held until its task completes, is cancelled, deleted or purged, or its
        TTL (`unique_ttl_ms`) ends, whichever comes first. A message with a `unique_key` but no
        `unique_ttl_ms` is refused with `InvalidTaskError` before anything is written (as
        `strego.Task` refuses it): a key with no end could only be freed by hand."""
        ...

    async def enqueue_many(self, messages: Sequence[TaskMessage]) -> list[TaskInfo | StregoError]:
        """Enqueue each message as `enqueue` would, in as few round trips as the backend can.
        Returns, in order, a TaskInfo for each accepted message and, in place of a refused one,
        the error `enqueue` would have raised (DuplicateTaskError or TaskIdConflictError); the
        other messages are accepted regardless. Invalid input (InvalidTaskError) is raised before
        any message is written. A backend that writes in groups (Redis: a script call per chunk
        of one queue) writes each group whole or not at all. When it failed every group (a
        `BackendError` such as `OutOfMemoryError`), it raises, nothing written, as `enqueue`
        does; when it failed only some, each message of a failed group has that error in its
        place, none of them written. Nothing is ever half written."""
        ...

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
        """Start up to `count` pending tasks: each becomes active, held by `consumer`, with
        `started_ms` = now, `deliveries` + 1, and a lease until now + lease_ms.

        Queues are taken in the order given (a later queue only when the earlier ones have no
        pending task); within a queue, higher priority first, then oldest first. Paused queues are
        skipped. With `ordered=False` the order is a preference (a server's round-robin or
        weighted order): a queue that had no pending task at this consumer's previous fetch and
        got one since may be passed over for a later one this time, so a backend can look at
        several queues and fetch in one round trip. Tasks are never taken out of order within a
        queue. A task whose processed marker exists is completed (acked) without being returned.

        If nothing is pending and `block_ms` > 0, waits up to that long for a task to arrive and
        returns as soon as one does (possibly an empty list on a spurious wake-up)."""
        ...

    async def ack(
        self, queue: str, task_id: str, consumer: str, *, result: bytes | None = None
    ) -> bool:
        """Complete an active task: it leaves active and becomes completed, its processed marker
        and its `result` (when not None: the handler's return value as `TaskInfo.result` shows
        it, `<encoding>` NL `<bytes>`) written in the same step, its unique key released.
        Returns True if this call completed it; False (and changes nothing) if the task is not
        active (already completed by another delivery's ack, cancelled, released, dead,
        unknown, deleted: no result is ever written for a task that is gone). An active task
        held by another consumer (this one's lease was lost and the task reclaimed) is completed
        all the same: the work was done, and the other holder's ack then returns False.

        An active task whose cancel was requested (`cancel`) ends cancelled instead, its unique
        key released, no result stored, and the call returns False: of a cancel and an ack,
        whichever comes first decides, and only one of them wins. Notifies `watch_ended`."""
        ...

    async def ack_many(self, items: Sequence[AckItem], consumer: str) -> list[bool]:
        """`ack` for each (queue, task_id) or (queue, task_id, result), in as few round trips
        as possible."""
        ...

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
        """Record a failed run of an active task. If `retry_in_ms` is given and retried < max_retry:
        the task goes to retry, due retry_in_ms after now (by the backend's clock), with
        retried + 1. Otherwise (SkipRetry, no
        retries left, undecodable) it goes to dead, keeping `detail` (`TaskInfo.error`). `error`
        becomes last_error either way. An active task whose cancel was requested ends cancelled
        instead (its unique key released). Returns the new state, or None (changing nothing) if
        the task is not active. A task that ends (dead, cancelled) notifies `watch_ended`."""
        ...

    async def release(self, queue: str, task_ids: Sequence[str], consumer: str) -> int:
        """Give active tasks held by `consumer` back to pending at once (graceful shutdown),
        without counting a failure. Returns how many were released; tasks not held by `consumer`
        are left as they are."""
        ...

    async def renew(
        self, queue: str, task_ids: Sequence[str], consumer: str, *, lease_ms: int
    ) -> Renewal:
        """Extend to now + lease_ms the leases of these tasks held by `consumer`. Returns the ids it
        no longer holds (completed, reclaimed by another consumer, or gone) and those of the held
        tasks whose cancel was requested: a cancel request whose notification was lost reaches
        the holder at its next renewal."""
        ...

    async def claim_stale(
        self,
        queues: Sequence[str],
        consumer: str,
        count: int,
        *,
        lease_ms: int,
        max_deliveries: int,
    ) -> list[TaskInfo]:
        """Take over up to `count` active tasks whose lease expired (their consumer died): each is
        now held by `consumer`, deliveries + 1, lease renewed, and returned to be run. A task whose
        deliveries already reached `max_deliveries` is not returned but goes to dead with the error
        "exceeded max deliveries (N): its consumer died N times while running it". A stale task
        whose processed marker exists is completed instead. Every stale task is found, however many
        fresh ones stand between them."""
        ...

    async def promote(self, queues: Sequence[str]) -> int | None:
        """Move scheduled and retry tasks that are due (due time <= now) to pending, and remove
        entries whose retention ended. Returns how long (ms, from now by the backend's clock;
        0 when more are due already) until the earliest due time of the scheduled and retry
        tasks still waiting in these queues, or None when there are none. Relative, so the
        caller needs no clock of its own."""
        ...

    async def wait_schedule_change(self, queues: Sequence[str], timeout_ms: int) -> None:
        """Wait until a scheduled or retry task is added to one of these queues with a due time
        earlier than any waiting before, or until timeout_ms passes. May return spuriously. Lets a
        scheduler sleep until the next due time without polling."""
        ...

    # -- managing ---------------------------------------------------------------------------------

    async def cancel(self, task_id: str, queue: str | None = None) -> bool:
        """Cancel a scheduled, pending or retry task: it becomes cancelled (never retried or
        dead-lettered) and its unique key is released. For an active task, record that its
        cancel is requested (`TaskInfo.cancel_requested`) and notify `watch_cancel_requests`:
        the task stays active until its holder's `ack` or `fail` ends it cancelled. Returns True
        in both cases (again for an active task already requested); False, changing nothing,
        for a task that ended (completed, dead, cancelled). Raises `TaskNotFoundError` when no
        task has this id (in `queue`, or in any queue when None; a task whose retention ended is
        gone). The request belongs to the task's record: a later task with the same id (after a
        delete) never inherits it."""
        ...

    def watch_ended(self, queue: str, task_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to the end (completed, dead, cancelled) of task `task_id` of `queue`. When
        the context is entered the subscription is in place: an end after that point wakes the
        watch's `wait`. So read the task after entering, then wait: no end is missed between
        the read and the wait. Waiters may share one connection; a backend that loses its
        notifications (a Redis restart) wakes its waiters so they read again, and callers bound
        each wait (a poll as the fallback)."""
        ...

    def watch_cancel_requests(self, queues: Sequence[str]) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to the cancel requests (`cancel` of an active task) of these queues: the
        watch's `wait` returns their (queue, task id). A hint: the holder checks the task with
        `renew` before it stops it, and `renew` reports every request a lost notification
        missed."""
        ...

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        """Remove a task that is not active (scheduled, pending, retry, dead, completed or
        cancelled) at once: its record, its place in its state (a completed task's processed
        marker too) and its unique key. Returns False, changing nothing, for an active task (it
        is running: cancel cannot stop it either). Raises `TaskNotFoundError` for an unknown id,
        as `cancel` does. The queue stays listed by `queues`."""
        ...

    async def run_now(self, task_id: str, queue: str | None = None) -> bool:
        """Make a scheduled or retry task pending at once, as if its due time had come: it keeps
        its retried count and everything else, and is fetched like any pending task. Returns
        False, changing nothing, for a task in any other state (already pending, active or
        ended). Raises `TaskNotFoundError` for an unknown id, as `cancel` does."""
        ...

    async def requeue_dead(self, queue: str, task_id: str) -> bool:
        """Move one dead task back to pending with retried = 0, in one step by id. False if that
        task is not dead (so two concurrent requeues of one task move it once); raises
        `TaskNotFoundError` when `queue` has no task with this id."""
        ...

    async def requeue_all_dead(self, queue: str) -> int:
        """Move every dead task of the queue back to pending (oldest death first); returns how
        many. Dead tasks whose retention ended are not requeued, however many there are."""
        ...

    async def purge(self, queue: str, states: Sequence[TaskState] | None = None) -> int:
        """Delete the tasks of `queue` in the given states (default: every state but active) and
        return how many (tasks whose retention had ended are not counted). Consumer groups,
        pause state and active tasks survive. Purging active tasks is refused with
        InvalidTaskError (they are running).

        Work is bounded: a backend may purge in batches (Redis: `PURGE_BATCH` entries per script
        call), each batch atomic, so a purge is not one atomic step: a task that arrives or
        changes state while a purge runs may be purged or kept. When the purge is over and the
        queue holds no task in any state, the queue leaves `queues` (a later enqueue lists it
        again); a task enqueued meanwhile keeps it listed."""
        ...

    async def pause(self, queue: str) -> None:
        """Stop `fetch` from starting tasks of this queue; everything else goes on."""
        ...

    async def resume(self, queue: str) -> None: ...

    # -- reading ----------------------------------------------------------------------------------

    async def queues(self) -> list[str]:
        """Names of the queues tasks were enqueued to, sorted. A queue is listed from its first
        enqueue (a refused one too: a duplicate, an id conflict) until a purge leaves it with no
        task at all (see `purge`): nothing else removes it, not the end of its tasks' retention,
        not `delete`, not pause."""
        ...

    async def queue_info(self, queue: str) -> QueueInfo:
        """Paused flag, the count of tasks in each state (every TaskState present as a key), the
        age of the oldest pending task (see `QueueInfo`), and the count of those that ended in
        the last minute (`ended_last_minute`: completed, dead and cancelled present as keys), at
        bounded cost however many tasks the queue holds."""
        ...

    async def throughput(
        self, queue: str, *, minutes: int = 60, task_type: str | None = None
    ) -> list[MinuteCount]:
        """The queue's history per minute: exactly `minutes` entries (1..MAX_MINUTES, else
        InvalidTaskError before anything is read), oldest first, the last one the current minute
        by the backend's clock (still counting), zeros for minutes where nothing happened or
        that are past `stats_retention_ms`. With `task_type`, only the tasks of that type. Counted
        by the transitions themselves (`ack`, `fail`, `claim_stale` sending a task to dead) in the
        same atomic step, so the counts are the real outcomes: an ack that returns False counts
        nothing. Bounded work (Redis: one round trip)."""
        ...

    async def list_tasks(
        self, queue: str, state: TaskState, *, cursor: str | None = None, limit: int = 100
    ) -> TaskPage:
        """A page of the tasks of one state, in a stable order: pending in the order fetch would
        take them (priority 10 to 0, then oldest first); active in that same order, the order
        they were fetched in (a claim keeps a task's place); scheduled and retry by due time;
        dead, completed and cancelled most recent first; ties by task id.

        `cursor` is None for the first page, then the page's `next_cursor` for the next one; it
        names the position of the last entry the previous page looked at, so a page is found by
        a seek (bounded work, however deep), and a task that stays in its state is listed once
        while others move in and out between pages. A task that arrives after the cursor's
        position is listed; one that left the state is not. `next_cursor` is None at the end; a
        page may hold fewer than `limit` tasks (even none) before the end, when the entries the
        call looked at (at most `MAX_SCAN`) were not of this state. A malformed cursor, or one
        of another state's listing, raises InvalidCursorError, and a limit outside 1..MAX_PAGE
        InvalidTaskError, before anything is read."""
        ...

    async def get_task(self, task_id: str, queue: str | None = None) -> TaskInfo | None:
        """One task by id (searching every queue when `queue` is None), or None."""
        ...

    async def consumers(self, queue: str) -> list[ConsumerInfo]:
        """The consumers of a queue with the tasks they hold and their idle times."""
        ...

    async def held_by(self, queues: Sequence[str], consumer: str) -> dict[str, list[str]]:
        """The ids of the active tasks `consumer` holds, sorted, by queue; a queue where it holds
        none is left out. One call looks at every queue (a server asks it when it stops, for
        tasks a cut-short fetch started under its name), so it should cost a few round trips,
        not one per queue. A snapshot: a task may be acked, released or claimed right after."""
        ...

    async def remove_idle_consumers(self, queue: str, idle_ms: int) -> list[str]:
        """Forget consumers idle for longer than idle_ms that hold no task, and return their names.
        A consumer that still holds tasks is kept (claim its tasks first). A backend may look at
        a bounded batch of the queue's consumers per call (Redis: about 100), each call going on
        where the last one stopped, so an idle consumer may be forgotten only by a later call;
        calls repeated as often as the batches go round forget every one."""
        ...

    # -- periodic schedules -----------------------------------------------------------------------

    async def put_schedule(self, definition: ScheduleDefinition, next_ms: int) -> ScheduleInfo:
        """Store a schedule, returning it as stored. When the same definition is stored already,
        nothing changes (`next_ms` is ignored: the schedule keeps its place, so every server may
        put its schedules as it starts). Otherwise (new or changed) the definition is stored
        with the revision moved on (1 for a new one) and `next_ms` as its next tick; the last
        fire and last task id of a changed one are kept. A schedule id is unique across queues:
        a definition moved to another queue leaves its old one."""
        ...

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove a schedule: no tick of it fires after this returns (a fire that saw it gets
        STALE). Tasks it already enqueued stay. False when there was none."""
        ...

    async def list_schedules(self) -> ScheduleList:
        """Every schedule, sorted by id, with the backend's time. A bounded read only as long as
        schedules are few (each is defined in code): it reads them all."""
        ...

    async def fire_schedule(
        self, schedule: ScheduleInfo, tick_ms: int, next_ms: int, *, enqueue: bool = True
    ) -> FireResult:
        """Fire one tick of a schedule, in one step: if the stored schedule still has the
        revision and the next tick (`next_ms` of `schedule`) the caller saw, and `tick_ms` is
        not after now by the backend's clock, enqueue the tick's task (pending, id
        ``<schedule id>:<tick_ms>``; when `enqueue` is False nothing is enqueued: the tick is
        skipped), and set the schedule's next tick to `next_ms` (and, when it enqueued, its last
        fire and last task to this tick's). An id that exists already (the tick fired before the
        schedule was put again) is not enqueued twice; the schedule still advances. Otherwise
        nothing changes: STALE (the schedule moved on, changed or is gone) or EARLY (the tick is
        ahead)."""
        ...

    async def aclose(self) -> None:
        """Release connections. Every call afterwards raises `BackendClosedError`; closing again
        does nothing."""
        ...
