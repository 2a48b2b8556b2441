"""The consumer side: `Server` runs handlers for the tasks of its queues. This module holds its
options, its lifecycle (run, stop, the shutdown in order) and its loops; the hand-offs between
them (buffer, slots, ack queue) are in strego/handoff.py, the execution of one task (decode, call,
classify the outcome) in strego/execution.py.

Inside one server (one anyio task group):

    fetcher ─┐                                   ┌─ runner 1 ─┐
             ├─> bounded buffer (TaskInfo) ──────┼─ ...       ├─> ack batcher ─> backend.ack_many
    recovery ┘   (claim_stale of dead servers)   └─ runner N ─┘   (fail goes straight to backend)
    lease keeper: renews every held task's lease      scheduler: promote scheduled/retry tasks
    cancel watcher: cancel requests (pub/sub; the lease keeper's renewals report them too)
    periodic: fires the due ticks of stored schedules (strego/periodic.py), when it runs
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import signal
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from strego.backends.base import AckItem, Backend, ScheduleDefinition
from strego.client import Client
from strego.cron import Catchup, Ticks, check_catchup, check_schedule_id
from strego.errors import InvalidScheduleError
from strego.execution import Failure, TaskExecution, describe_exception, error_detail
from strego.failure_log import FailureLog
from strego.handlers import Registry, reset_current_task, set_current_task
from strego.handoff import AckQueue, Buffer, Slots, wait_any
from strego.lease import LeaseKeeper
from strego.logs import task_extra
from strego.middleware import Attempt, MiddlewareChain, Outcome
from strego.periodic import Periodic
from strego.queue_order import QueueOrder, QueuesSpec
from strego.retry import ExponentialBackoff, RetryDelay
from strego.scheduler import Scheduler
from strego.serializers import Serializer, default_serializers
from strego.task import Task, TaskInfo, TaskState

# describe_exception is part of this module's API (defined in strego/execution.py)
__all__ = ["Server", "ServerStats", "consumer_name", "default_serializers", "describe_exception"]

log = logging.getLogger("strego.server")

F = TypeVar("F", bound=Callable[..., Any])

#: How long one fetch waits for a task to arrive before asking again.
FETCH_BLOCK_MS = 2000
#: How long the fetch loop waits after a failed fetch before it tries again.
FETCH_RETRY_S = 1.0
#: The longest a backend call made during shutdown (releasing tasks) may take.
SHUTDOWN_CALL_TIMEOUT = 5.0


def consumer_name() -> str:
    """hostname:pid:random, unique per server instance (`parse_consumer_name` reads it back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


_DEFAULT_NAME = re.compile(r"(?P<host>[^:]+):(?P<pid>[0-9]{1,10}):[0-9a-f]{8}")


def parse_consumer_name(name: str) -> tuple[str, int] | None:
    """The (host, pid) of a consumer named by default (`consumer_name`: ``hostname:pid:random``),
    or None for a name of another shape (a name chosen by hand is not guessed at)."""
    found = _DEFAULT_NAME.fullmatch(name)
    if found is None:
        return None
    return found["host"], int(found["pid"])


@attrs.define
class ServerStats:
    """Counts of what this server did since it started."""

    processed: int = 0  #: handlers that returned (acked)
    failed: int = 0  #: handler runs that failed (any reason)
    retried: int = 0  #: failures sent to retry
    dead: int = 0  #: failures sent to dead
    released: int = 0  #: tasks given back to pending at shutdown
    claimed: int = 0  #: stale tasks taken over from dead servers


#: The outcome of a failed attempt, by the state `fail` left the task in (else LOST).
_OUTCOMES = {
    TaskState.RETRY: Outcome.RETRIED,
    TaskState.DEAD: Outcome.DEAD,
    TaskState.CANCELLED: Outcome.CANCELLED,
}


class Server(TaskExecution):
    """Runs handlers for the tasks of its queues.

    Options (all keyword-only):

    - `queues` (default ``["default"]``): a name, a list (round-robin), or a mapping of name to
      weight (a weighted random order for each fetch, so queues are served in proportion).
    - `strict` (False): priority order instead: the list's order or highest weight first; a queue
      is served only when all before it are empty.
    - `concurrency` (10): how many handlers run at once. Sync (`def`) handlers run in worker
      threads, at most `concurrency` at once.
    - `prefetch` (twice concurrency): how many fetched tasks may wait for a runner beyond those
      running. Fetches come in batches of `concurrency`; twice that ahead keeps one batch waiting
      while the next is fetched, so runners of short handlers do not run dry during the round
      trip (with only one batch ahead they do, and wait out every fetch). They are leased to this
      server (their leases renewed) and released to pending at shutdown. 0 fetches only for free
      runners: best when handlers are long and several servers share a queue.
    - `shutdown_timeout` (10 s): how long running handlers may finish after a stop; then they are
      cancelled and their tasks released to pending.
    - `claim_stale_after` (30 s): the lease of every task this server holds; leases are renewed
      every third of it, and another server may claim a task whose lease expired (its server
      died).
    - `max_deliveries` (5): a task whose server died this many times while running it goes to dead.
    - `recovery_interval` (min(5 s, claim_stale_after)): how often to look for stale tasks.
    - `retry_delay` (`ExponentialBackoff()`: full jitter, base 1 s, cap 1 h): a callable
      ``(retried, exception, task) -> seconds`` giving the delay before a failed task's retry.
    - `default_timeout` (None): seconds a handler may run when its task has no timeout.
    - `serializers` (JSON, and msgpack when installed): how payloads are decoded, by the encoding
      name stored with each task.
    - `name`: the consumer name (default ``hostname:pid:random``); must be unique per server.
    - `fire_schedules` (None): whether this server runs the periodic loop, which fires the due
      ticks of every schedule stored in the backend (see `cron`). None: when it defines one.
    - `middleware` (none): hooks called around each attempt, in order (strego/middleware.py).

    Run it with ``await server.run()`` (until `stop()`, SIGINT or SIGTERM) or ``async with
    server:`` (in the background for the block). The server does not close its backend.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        queues: QueuesSpec = ("default",),
        strict: bool = False,
        concurrency: int = 10,
        prefetch: int | None = None,
        shutdown_timeout: float = 10.0,
        claim_stale_after: float = 30.0,
        max_deliveries: int = 5,
        recovery_interval: float | None = None,
        retry_delay: RetryDelay | None = None,
        default_timeout: float | None = None,
        serializers: Iterable[Serializer] | None = None,
        name: str | None = None,
        fire_schedules: bool | None = None,
        middleware: Sequence[object] = (),
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if prefetch is None:
            prefetch = 2 * concurrency
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, not {prefetch!r}")
        for what, value in (
            ("shutdown_timeout", shutdown_timeout),
            ("claim_stale_after", claim_stale_after),
        ):
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"{what} must be a non-negative number of seconds")
        if claim_stale_after <= 0:
            raise ValueError("claim_stale_after must be positive")
        if default_timeout is not None and not default_timeout > 0:
            raise ValueError("default_timeout must be positive")
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int):
            raise ValueError("max_deliveries must be an integer >= 1")
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be an integer >= 1")
        self.backend = backend
        self.order = QueueOrder(queues, strict=strict)
        self.queues = list(self.order.names)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.shutdown_timeout = float(shutdown_timeout)
        self.claim_stale_after = float(claim_stale_after)
        self.lease_ms = max(1, round(claim_stale_after * 1000))
        self.max_deliveries = max_deliveries
        self.recovery_interval = (
            min(5.0, self.claim_stale_after) if recovery_interval is None else recovery_interval
        )
        self.retry_delay: RetryDelay = retry_delay or ExponentialBackoff()
        self.default_timeout = default_timeout
        self.serializers = {
            s.name: s for s in (default_serializers() if serializers is None else serializers)
        }
        self.name = name or consumer_name()
        self.registry = Registry()
        self.fire_schedules = fire_schedules
        #: the schedules this server defines (`cron`), by id
        self.schedules: dict[str, ScheduleDefinition] = {}
        self.periodic: Periodic | None = None
        self.middleware = MiddlewareChain(middleware)
        self.stats = ServerStats()
        self._stop_requested = False
        self._running = False
        self._stop_event: anyio.Event | None = None
        self._force_event: anyio.Event | None = None
        self._handler_scopes: dict[tuple[str, str], anyio.CancelScope] = {}
        #: tasks whose cancel was requested (strego/cancel.py): stopped, then ended cancelled
        self._cancel_requested: set[tuple[str, str]] = set()
        #: the shutdown is cancelling every handler (not a cancel request)
        self._cancelling_all = False
        #: tasks whose sync handler runs in a thread (a cancel request cannot interrupt it)
        self._in_threads: set[tuple[str, str]] = set()
        #: results of succeeded tasks waiting for their ack, by (queue, id)
        self._results: dict[tuple[str, str], bytes] = {}
        self._stopping = False
        self._group: anyio.abc.TaskGroup | None = None

    # -- handlers -------------------------------------------------------------------------------

    def handler(self, task_type: str) -> Callable[[F], F]:
        """Decorator registering the handler of `task_type`. Its first parameter's annotation
        decides what it receives: `strego.Task` (or none) for the task, any other type for the
        payload structured into it."""

        def register(func: F) -> F:
            self.registry.add(task_type, func)
            return func

        return register

    def cron(
        self,
        schedule: str | timedelta,
        task: Task,
        *,
        id: str,
        tz: str = "UTC",
        catchup: Catchup = "latest",
    ) -> ScheduleDefinition:
        """Enqueue `task` at every tick of `schedule`: a cron expression (five fields, in time
        zone `tz`; daylight saving time is handled as Debian's cron does) or a `timedelta`
        interval (ticks at whole multiples of it since the epoch). Each tick's task has the id
        ``<id>:<tick ms>`` and is enqueued exactly once, whichever servers run; `task` is the
        template (its type, queue, payload and options; no id, no unique key, no
        process_at/process_in).

        The schedule is stored in the backend when the server starts (replacing a different one
        of the same id, whose next tick is then computed from now), so every server running
        the periodic loop fires it and `Client.schedules()` lists it. Ticks missed while no
        server ran: `catchup` "latest" (fire the latest once), "all" (fire each, at most
        `strego.cron.MAX_CATCHUP`), "none" (skip them; fire a tick only when on time). Call
        before the server runs. Invalid input raises InvalidScheduleError."""
        if self._running:
            raise RuntimeError("define schedules before the server runs")
        check_schedule_id(id)
        if id in self.schedules:
            raise InvalidScheduleError(f"schedule {id!r} is defined twice")
        ticks = Ticks.parse(schedule, tz)
        if not isinstance(task, Task):
            raise InvalidScheduleError(f"expected a strego.Task, not {type(task).__name__}")
        if task.id is not None:
            raise InvalidScheduleError("a periodic task takes no id: each tick's is <id>:<tick ms>")
        message = Client(self.backend).message(task)
        definition = ScheduleDefinition(
            id, ticks.spec, tz, check_catchup(catchup), attrs.evolve(message, id=id, created_ms=0)
        )
        self.schedules[id] = definition
        return definition

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the server to shut down gracefully (returns at once; `run()` returns when done).
        Call it from the server's event loop; from a sync handler's thread, through
        `anyio.from_thread.run_sync(server.stop)`."""
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    def cancel_running(self) -> None:
        """Stop at once: like `stop()`, without waiting for `shutdown_timeout`."""
        self.stop()
        if self._force_event is not None:
            self._force_event.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until `stop()` (or SIGINT/SIGTERM when `handle_signals` and on the main thread; a
        second signal cancels running handlers at once), then shut down gracefully."""
        async with anyio.create_task_group() as group:
            if handle_signals and threading.current_thread() is threading.main_thread():
                await group.start(self._watch_signals)
            await self._serve()
            group.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self._serve)
        except BaseException as exc:
            await group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        group, self._group = self._group, None
        assert group is not None
        return await group.__aexit__(exc_type, exc, tb)

    async def _watch_signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if not self._stop_requested:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    self.stop()
                else:
                    log.warning(
                        "received %s again: cancelling running handlers",
                        signal.Signals(signum).name,
                    )
                    self.cancel_running()

    async def _serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._running:
            raise RuntimeError("this server is already running")
        self._running = True
        self._stopping = False
        self._stop_event = anyio.Event()
        self._force_event = anyio.Event()
        if self._stop_requested:
            self._stop_event.set()
        self._stop_requested = False
        if not len(self.registry):
            log.warning("server %s has no handlers: every task will fail", self.name)
        self._limiter = anyio.CapacityLimiter(self.concurrency)
        self._lease = LeaseKeeper(
            self.backend,
            self.name,
            self.lease_ms,
            self.claim_stale_after / 3,
            on_cancel_requested=self._request_cancel,
        )
        self._cancelling_all = False
        scheduler = Scheduler(
            self.backend, self.queues, consumer_idle=max(300.0, 10 * self.claim_stale_after)
        )
        upkeep_loops = [self._lease.run, scheduler.run, self._watch_cancel_requests]
        fire = self.fire_schedules
        if fire or (fire is None and self.schedules):
            self.periodic = Periodic(self.backend, list(self.schedules.values()))
            upkeep_loops.append(self.periodic.run)
        # buffer: fetched tasks (up to `prefetch` beyond the running ones), and stale ones claimed
        # while a fetch is out (at most concurrency more, by the slot accounting)
        buffer = self._buffer = Buffer()
        self._slots = Slots(self.concurrency + self.prefetch, self.concurrency, buffer)
        acks = self._acks = AckQueue()
        self._debug = log.isEnabledFor(logging.DEBUG)
        intake_done, runners_done, acker_done, upkeep_done = (anyio.Event() for _ in range(4))
        log.info(
            "server %s starting: queues %s%s, concurrency %d",
            self.name,
            ", ".join(self.queues),
            " (strict)" if self.order.strict else "",
            self.concurrency,
        )
        try:
            async with anyio.create_task_group() as tg:
                upkeep = await tg.start(self._group_of, upkeep_loops, upkeep_done)
                await tg.start(self._group_of, [self._ack_loop], acker_done)
                await tg.start(self._group_of, [self._runner] * self.concurrency, runners_done)
                intake = await tg.start(
                    self._group_of, [self._fetch_loop, self._recovery_loop], intake_done
                )
                task_status.started()

                await self._stop_event.wait()
                log.info("server %s stopping", self.name)
                self._stopping = True
                intake.cancel()
                await intake_done.wait()
                buffer.close()  # idle runners end; busy ones end after their task
                await self._release(buffer.drain(), "not started")
                with anyio.move_on_after(self.shutdown_timeout):
                    await wait_any(runners_done, self._force_event)
                if not runners_done.is_set():
                    log.warning(
                        "server %s: cancelling %d handlers still running",
                        self.name,
                        len(self._handler_scopes),
                    )
                    self._cancelling_all = True
                    for scope in list(self._handler_scopes.values()):
                        scope.cancel()
                    await runners_done.wait()
                acks.close()
                await acker_done.wait()
                upkeep.cancel()
                await upkeep_done.wait()
                await self._release_strays()
        finally:
            self._running = False
            self._stop_event = None
            self._force_event = None
            buffer.close()
            log.info("server %s stopped", self.name)

    async def _group_of(
        self,
        funcs: Sequence[Callable[[], Coroutine[Any, Any, Any]]],
        done: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope],
    ) -> None:
        """Run `funcs` in a task group of their own; hand back its cancel scope; set `done` when
        they all ended."""
        try:
            async with anyio.create_task_group() as group:
                for func in funcs:
                    group.start_soon(func)
                task_status.started(group.cancel_scope)
        finally:
            done.set()

    # -- intake ---------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        slots, hold, put = self._slots, self._lease.hold, self._buffer.put
        failures = FailureLog(log, "fetch")
        while True:
            await slots.wait_free()
            count = slots.free()
            slots.take(count)
            got: list[TaskInfo] = []
            try:
                got = await self.backend.fetch(
                    self.order.next(),
                    count,
                    self.name,
                    lease_ms=self.lease_ms,
                    block_ms=FETCH_BLOCK_MS,
                    ordered=self.order.strict,
                )
            except Exception as exc:
                failures.failed(exc, retry_in=FETCH_RETRY_S)
                slots.give(count)
                await anyio.sleep(FETCH_RETRY_S)
                continue
            except BaseException:
                slots.give(count)
                raise
            slots.give(count - len(got))
            failures.succeeded()
            # once a batch, not once a task: DEBUG switched on while running shows from here
            self._debug = log.isEnabledFor(logging.DEBUG)
            for info in got:
                hold(info.queue, info.id)
                put(info)

    async def _recovery_loop(self) -> None:
        failures = FailureLog(log, "claiming stale tasks")
        while True:
            try:
                await self._claim_stale()
            except Exception as exc:
                failures.failed(exc, retry_in=self.recovery_interval)
            else:
                failures.succeeded()
            await anyio.sleep(self.recovery_interval)

    async def _claim_stale(self) -> None:
        while True:
            # may go past the slots by up to `concurrency`: they wait in the buffer
            count = self._slots.size + self.concurrency - self._slots.used
            if count <= 0:
                return
            self._slots.take(count)
            try:
                got = await self.backend.claim_stale(
                    self.queues,
                    self.name,
                    count,
                    lease_ms=self.lease_ms,
                    max_deliveries=self.max_deliveries,
                )
            finally:
                self._slots.give(count)
            self._slots.take(len(got))
            for info in got:
                self._lease.hold(info.queue, info.id)
                self._buffer.put(info)
            if got:
                self.stats.claimed += len(got)
                log.info("claimed %d stale tasks", len(got))
            if len(got) < count:
                return

    # -- running --------------------------------------------------------------------------------

    async def _runner(self) -> None:
        # One cancel scope for a run of tasks, not one per task (they cost on the hot path): a
        # shutdown that cancels running handlers cancels the scopes of the runners in a
        # handler; those give their task back and end (the buffer is closed by then). A cancel
        # request cancels the scope of its task's runner: the task ends cancelled and the
        # runner goes on in a new scope.
        while await self._run_tasks() and not self._cancelling_all:
            pass

    async def _run_tasks(self) -> bool:
        """Run tasks in one cancel scope until the buffer is closed (False) or the scope was
        cancelled (True)."""
        buffer, slots = self._buffer, self._slots
        with anyio.CancelScope() as scope:
            while True:
                # a task already buffered is taken without a checkpoint: a runner whose handler
                # does not wait runs the buffered tasks back to back, without a switch each
                info = buffer.get_nowait()
                if info is None:
                    info = await buffer.get()
                    if info is None:
                        return False
                if not buffer:
                    slots.poke()
                try:
                    if self._stopping:
                        await self._release([info], "not started")
                    else:
                        await self._process(info, scope)
                finally:
                    slots.give(1)
                if scope.cancel_called:  # a cancel request the handler returned from anyway
                    return True
                if slots.due:
                    # let the fetcher send its request now, so that its round trip overlaps with
                    # the tasks still running (acks wait: the later, the larger their batch)
                    await anyio.lowlevel.cancel_shielded_checkpoint()
        return True  # the scope caught a cancel request's cancellation

    async def _process(self, info: TaskInfo, scope: anyio.CancelScope) -> None:
        handler = self.registry.get(info.type)
        key = (info.queue, info.id)
        debug = self._debug
        if debug:
            attempt = info.retried + 1
            log.debug(
                "start %s %s (queue %s, attempt %d)",
                *(info.type, info.id, info.queue, attempt),
                extra=task_extra(info),
            )
            started = anyio.current_time()
        if info.cancel_requested or (self._cancel_requested and key in self._cancel_requested):
            # asked to stop before it started (released or claimed with the request): never run
            await self._end_cancelled(info)
            return
        hooks = self.middleware if self.middleware.attempts else None
        hooked: Attempt | None = None
        token = set_current_task(info)
        self._handler_scopes[key] = scope
        in_thread = handler is not None and not handler.is_async
        if in_thread:
            self._in_threads.add(key)
        try:
            if hooks is not None:
                hooked = await hooks.start_attempt(info, self.name)
            failure, value = await self._execute(info, handler)
        except BaseException:
            del self._handler_scopes[key]
            self._in_threads.discard(key)
            if key in self._cancel_requested:
                # a cancel request stopped the handler (or came before the shutdown did): the
                # task ends cancelled
                with anyio.move_on_after(SHUTDOWN_CALL_TIMEOUT, shield=True):
                    await self._end_cancelled(info)
            else:
                # shutdown cancelled the handler, or the whole server is being cancelled: give
                # the task back rather than wait for its lease
                await self._release(
                    [info], "cancelled at shutdown" if scope.cancel_called else "cancelled"
                )
            if hooked is not None:  # the hooks' end, even while cancelled
                with anyio.move_on_after(SHUTDOWN_CALL_TIMEOUT, shield=True):
                    await self.middleware.end_attempt(hooked, Outcome.CANCELLED, None)
            raise
        finally:
            reset_current_task(token)
        del self._handler_scopes[key]
        if in_thread:
            self._in_threads.discard(key)
        if self._cancel_requested and key in self._cancel_requested:
            # the handler ended before the request stopped it (a sync one in its thread): the
            # backend ends it cancelled all the same, as the request came first
            await self._end_cancelled(info)
            if hooked is not None:
                await self.middleware.end_attempt(hooked, Outcome.CANCELLED, None)
            return
        if failure is None:
            if debug:
                elapsed = anyio.current_time() - started
                log.debug(
                    "done %s %s in %.3fs", info.type, info.id, elapsed, extra=task_extra(info)
                )
            if value is not None and info.result_ttl_ms != 0:
                try:
                    self._results[key] = self._encode_result(info, value)
                except Exception as exc:
                    text = describe_exception(exc)
                    failure = Failure(
                        f"the handler's return value cannot be stored: {text}",
                        retry=False,
                        exception=exc,
                    )
            if failure is None:
                self._acks.put(info)
                if hooked is not None:
                    await self.middleware.end_attempt(hooked, Outcome.COMPLETED, None)
                return
        state = await self._fail(info, failure)
        if hooked is not None:
            outcome = Outcome.LOST if state is None else _OUTCOMES.get(state, Outcome.LOST)
            await self.middleware.end_attempt(hooked, outcome, failure.exception)

    # -- cancel requests ------------------------------------------------------------------------

    def _request_cancel(self, queue: str, task_ids: Iterable[str]) -> None:
        """The backend says these held tasks' cancel was requested: stop each handler (an async
        one through its runner's cancel scope; a sync one cannot be interrupted, so its task
        ends cancelled when its thread returns). A task not started yet ends when a runner takes
        it."""
        for task_id in task_ids:
            key = (queue, task_id)
            if key in self._cancel_requested:
                continue
            self._cancel_requested.add(key)
            log.info("cancel of task %s (queue %s) requested: stopping it", task_id, queue)
            scope = self._handler_scopes.get(key)
            if scope is not None and key not in self._in_threads:
                scope.cancel()

    async def _end_cancelled(self, info: TaskInfo) -> None:
        """End a task whose cancel was requested: `fail` ends such a task cancelled."""
        key = (info.queue, info.id)
        try:
            state = await self.backend.fail(
                info.queue, info.id, self.name, "cancelled on request", retry_in_ms=None
            )
        except Exception as exc:
            # it stays active under our name: its lease runs out, and whoever claims it sees
            # the request
            log.warning("ending the cancelled task %s failed: %s", info.id, exc)
            return
        finally:
            self._lease.drop(info.queue, info.id)
            self._cancel_requested.discard(key)
            self._results.pop(key, None)
        log.info("task %s %s (queue %s) -> %s", info.type, info.id, info.queue, state)

    async def _watch_cancel_requests(self) -> None:
        """The fast path of cancel requests: a notification names a task; if this server holds
        it, `renew` (which also extends its lease) says whether the request is real, so a stale
        or misdirected notification never stops a task. Missed notifications reach the server
        at the next renewal (LeaseKeeper)."""
        failures = FailureLog(log, "watching cancel requests")
        while True:
            try:
                async with self.backend.watch_cancel_requests(self.queues) as watch:
                    while True:
                        notified = await watch.wait(60.0)
                        held = self._lease.held()
                        mine: dict[str, list[str]] = defaultdict(list)
                        for queue, task_id in notified:
                            if task_id in held.get(queue, ()):
                                mine[queue].append(task_id)
                        for queue, ids in mine.items():
                            renewal = await self.backend.renew(
                                queue, ids, self.name, lease_ms=self.lease_ms
                            )
                            self._request_cancel(queue, renewal.cancel_requested)
                        failures.succeeded()
            except Exception as exc:
                failures.failed(exc, retry_in=FETCH_RETRY_S)
                await anyio.sleep(FETCH_RETRY_S)

    async def _fail(self, info: TaskInfo, failure: Failure) -> TaskState | None:
        retry_in_ms = None
        if failure.retry:
            delay = self._retry_delay_of(info, failure)
            retry_in_ms = max(0, round(delay * 1000))
        self.stats.failed += 1
        detail = None
        if retry_in_ms is None or info.retried >= info.max_retry:  # it dies: keep its error
            detail = error_detail(failure.exception)
        try:
            state = await self.backend.fail(
                info.queue,
                info.id,
                self.name,
                failure.error,
                retry_in_ms=retry_in_ms,
                detail=detail,
            )
        except Exception as exc:
            # it stays active under our name: once its lease expires it is claimed and run again
            log.warning(
                "recording the failure of task %s failed: %s", info.id, exc, extra=task_extra(info)
            )
            return None
        finally:
            self._lease.drop(info.queue, info.id)
            if self._cancel_requested:  # a request that came after the handler ended
                self._cancel_requested.discard((info.queue, info.id))
        if state is TaskState.RETRY:
            self.stats.retried += 1
        elif state is TaskState.DEAD:
            self.stats.dead += 1
        first_line = failure.error.partition("\n")[0]
        log.warning(
            "task %s %s (queue %s, attempt %d) failed: %s -> %s",
            info.type,
            info.id,
            info.queue,
            info.retried + 1,
            first_line,
            state or "not active",
            extra=task_extra(info),
        )
        return state

    # -- acks -----------------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        """Acks whatever completed while the previous ack was out, in one call."""
        while batch := await self._acks.take():
            await self._ack(batch)

    async def _ack(self, batch: list[TaskInfo]) -> None:
        for attempt in range(3):
            try:
                stored = self._results
                if len(batch) == 1:
                    info = batch[0]
                    result = stored.get((info.queue, info.id)) if stored else None
                    results = [
                        await self.backend.ack(info.queue, info.id, self.name, result=result)
                    ]
                elif stored:
                    items: list[AckItem] = [
                        (info.queue, info.id, stored.get((info.queue, info.id))) for info in batch
                    ]
                    results = await self.backend.ack_many(items, self.name)
                else:
                    results = await self.backend.ack_many(
                        [(info.queue, info.id) for info in batch], self.name
                    )
                break
            except Exception as exc:  # acking twice is harmless: retry a lost reply
                log.warning("ack of %d tasks failed (try %d): %s", len(batch), attempt + 1, exc)
                await anyio.sleep(0.1 * 3**attempt)
        else:
            results = [False] * len(batch)  # they will be claimed again when their lease ends
        for info, acked in zip(batch, results, strict=True):
            if self._results:
                self._results.pop((info.queue, info.id), None)
            if self._cancel_requested:  # a request that came after the handler ended
                self._cancel_requested.discard((info.queue, info.id))
            self._lease.drop(info.queue, info.id)
            self.stats.processed += 1
            if not acked:
                log.debug(
                    "ack of task %s found it no longer active", info.id, extra=task_extra(info)
                )

    # -- giving tasks back ----------------------------------------------------------------------

    async def _release(self, infos: Sequence[TaskInfo], why: str) -> None:
        by_queue: dict[str, list[str]] = defaultdict(list)
        for info in infos:
            if info.cancel_requested or (info.queue, info.id) in self._cancel_requested:
                # not given back to run again: it ends cancelled as asked
                with anyio.move_on_after(SHUTDOWN_CALL_TIMEOUT, shield=True):
                    await self._end_cancelled(info)
                continue
            by_queue[info.queue].append(info.id)
        for queue, ids in by_queue.items():
            await self._release_ids(queue, ids, why)

    async def _release_ids(self, queue: str, ids: list[str], why: str) -> None:
        with anyio.move_on_after(SHUTDOWN_CALL_TIMEOUT, shield=True):
            try:
                released = await self.backend.release(queue, ids, self.name)
            except Exception as exc:
                log.warning("releasing %d tasks of queue %s failed: %s", len(ids), queue, exc)
                released = 0
            self.stats.released += released
            if released:
                log.info("released %d tasks of queue %s (%s)", released, queue, why)
        for task_id in ids:
            self._lease.drop(queue, task_id)

    async def _release_strays(self) -> None:
        """Release anything still held under this server's name (a fetch interrupted by the
        shutdown after the backend had started its tasks). One `held_by` call looks at every
        queue: a server of many queues stops in a few round trips, not one per queue."""
        held: dict[str, list[str]] = {}
        with anyio.move_on_after(SHUTDOWN_CALL_TIMEOUT, shield=True):
            try:
                held = await self.backend.held_by(self.queues, self.name)
            except Exception as exc:
                log.warning("looking for tasks still held by %s failed: %s", self.name, exc)
        for queue, ids in held.items():
            await self._release_ids(queue, ids, "stray")
