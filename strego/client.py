"""The producer side: `Client` turns `Task`s into stored messages, and inspects and manages queues.

Everything that can be refused locally (invalid options, a payload that does not serialize or is
too large) is refused before the backend is called, so a refused task writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import anyio

from strego.backends.base import (
    Backend,
    ConsumerInfo,
    MinuteCount,
    QueueInfo,
    ScheduleInfo,
    TaskPage,
)
from strego.errors import (
    DecodeError,
    InvalidTaskError,
    PayloadTooLargeError,
    StregoError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from strego.ids import new_task_id
from strego.message import TaskMessage
from strego.middleware import MiddlewareChain
from strego.serializers import (
    RAW_ENCODING,
    JsonSerializer,
    Serializer,
    converter,
    default_serializers,
)
from strego.task import DEFAULT_RESULT_TTL, Task, TaskInfo, TaskState, validate_queue_name

#: The longest `result` waits between two reads of the task: the fallback when a notification
#: of its end was lost (the backend's connection dropped).
RESULT_POLL_S = 5.0
_ENDED = (TaskState.COMPLETED, TaskState.DEAD, TaskState.CANCELLED)

#: Default limit of a serialized payload: 1 MiB.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20


class Client:
    """Enqueue tasks and inspect queues.

    Options:

    - `serializer` (default `JsonSerializer()`): turns payloads into bytes. `bytes` payloads are
      stored as they are, with encoding ``"raw"``.
    - `max_payload_bytes` (default 1 MiB): a larger serialized payload raises
      PayloadTooLargeError.
    - `middleware` (none): hooks called around each enqueue, in order (strego/middleware.py).

    Who closes the backend: a client closes only a backend it created. ``Client(backend)`` does
    not own `backend` (several clients and servers may share it): leaving ``async with
    Client(backend)`` or `aclose()` leaves it open, and you close it with ``backend.aclose()``.
    ``Client.from_url(url)`` creates its own RedisBackend and closes it on leaving ``async with``
    or on `aclose()`. A closed backend raises BackendClosedError on every call.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        serializer: Serializer | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        middleware: Sequence[object] = (),
    ) -> None:
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
            raise TypeError(f"max_payload_bytes must be an int, not {max_payload_bytes!r}")
        if max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be positive, not {max_payload_bytes}")
        self.backend = backend
        self.serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        if self.serializer.name == RAW_ENCODING:
            raise ValueError(f"the serializer name {RAW_ENCODING!r} is reserved for bytes payloads")
        self.max_payload_bytes = max_payload_bytes
        #: the serializers results may be stored with, by name (this client's first)
        self._serializers = {s.name: s for s in default_serializers()}
        self._serializers[self.serializer.name] = self.serializer
        self.middleware = MiddlewareChain(middleware)
        #: whether `aclose` closes the backend (only one this client created)
        self.owns_backend = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        serializer: Serializer | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        middleware: Sequence[object] = (),
        **backend_options: Any,
    ) -> Client:
        """A client on a RedisBackend of its own for `url` (`backend_options` go to
        `RedisBackend.from_url`), closed with the client."""
        from strego.backends.redis import RedisBackend

        client = cls(
            RedisBackend.from_url(url, **backend_options),
            serializer=serializer,
            max_payload_bytes=max_payload_bytes,
            middleware=middleware,
        )
        client.owns_backend = True
        return client

    async def aclose(self) -> None:
        """Close the backend if this client created it (`from_url`); otherwise do nothing."""
        if self.owns_backend:
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- producing ----------------------------------------------------------------------------

    def message(self, task: Task) -> TaskMessage:
        """The message `enqueue` would store for `task` (serialized, with id and times), or the
        error it would raise locally."""
        if not isinstance(task, Task):
            raise InvalidTaskError(f"expected a strego.Task, not {type(task).__name__}")
        if isinstance(task.payload, bytes | bytearray | memoryview):
            payload, encoding = bytes(task.payload), RAW_ENCODING
        else:
            payload, encoding = self.serializer.dumps(task.payload), self.serializer.name
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLargeError(len(payload), self.max_payload_bytes)
        now_ms = self.backend.clock()
        # process_in is resolved by the backend's clock (the producer's may be off), process_at
        # is an instant
        process_at_ms = None if task.process_at is None else math.ceil(task.process_at * 1000)
        process_in_ms = None if task.process_in is None else math.ceil(task.process_in * 1000)
        return TaskMessage(
            id=task.id if task.id is not None else new_task_id(now_ms),
            type=task.type,
            queue=task.queue,
            payload=payload,
            encoding=encoding,
            max_retry=task.max_retry,
            priority=task.priority,
            timeout_ms=None if task.timeout is None else math.ceil(task.timeout * 1000),
            labels=dict(task.labels),
            unique_key=task.unique_key,
            unique_ttl_ms=None if task.unique_ttl is None else math.ceil(task.unique_ttl * 1000),
            created_ms=now_ms,
            process_at_ms=process_at_ms,
            process_in_ms=process_in_ms,
            result_ttl_ms=_result_ttl_ms(task.result_ttl),
        )

    async def enqueue(self, task: Task) -> TaskInfo:
        """Store one task. Raises InvalidTaskError (and its subclasses SerializationError,
        PayloadTooLargeError) before anything is written, DuplicateTaskError when its unique key
        is held, TaskIdConflictError when its id exists."""
        if self.middleware.enqueues:
            return await self.middleware.enqueue(self.message(task), self.backend.enqueue)
        return await self.backend.enqueue(self.message(task))

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[TaskInfo | StregoError]:
        """Store several tasks in one backend call.

        All tasks are checked and serialized first: if any is invalid, its error is raised and
        none is enqueued. The backend then accepts each task on its own; the result has, in
        order, a TaskInfo for each accepted task and, in place of each refused one, the error
        (DuplicateTaskError or TaskIdConflictError) — refusals are returned, not raised, and the
        other tasks are enqueued regardless. A backend error (e.g. OutOfMemoryError) that
        refused every task is raised; one that refused a group of them only (Redis: a chunk of
        one queue meeting a key of another type) is in place of each of those tasks, none of
        which was written."""
        messages = [self.message(task) for task in tasks]
        if not messages:
            return []
        if self.middleware.enqueues:
            return await self._enqueue_many_hooked(messages)
        return await self.backend.enqueue_many(messages)

    async def _enqueue_many_hooked(
        self, messages: list[TaskMessage]
    ) -> list[TaskInfo | StregoError]:
        """enqueue_many between each task's enqueue hooks (strego/middleware.py)."""
        chain = self.middleware
        calls = [await chain.start_enqueue(m) for m in messages]
        try:
            results = await self.backend.enqueue_many([c.message for c in calls])
        except BaseException as exc:
            with anyio.CancelScope(shield=True):  # a cancelled call ends its hooks too
                for call in calls:
                    await chain.end_enqueue(call, None, exc)
            raise
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, TaskInfo):
                await chain.end_enqueue(call, result, None)
            else:
                await chain.end_enqueue(call, None, result)
        return results

    async def get_task(self, task_id: str, queue: str | None = None) -> TaskInfo | None:
        """One task by id (every queue is searched when `queue` is None), or None."""
        return await self.backend.get_task(task_id, queue)

    async def cancel(self, task_id: str, queue: str | None = None) -> bool:
        """Cancel a task. A scheduled, pending or retry task is cancelled at once; a running one
        is stopped by its server within about a second (an async handler is cancelled; a sync
        handler's thread cannot be interrupted, so its task ends cancelled when the thread
        returns) and ends cancelled, never retried or dead. True if it was cancelled or its
        cancel requested; False if it already ended (completed, dead, cancelled): of a cancel
        and the task's completion, whichever comes first wins. Raises TaskNotFoundError when
        no task has this id (in `queue`, or in any queue when None)."""
        return await self.backend.cancel(task_id, _queue_or_none(queue))

    async def run_now(self, task_id: str, queue: str | None = None) -> bool:
        """Run a scheduled or retry task now: it becomes pending at once (keeping its retry
        count). True if it was moved; False if it is in another state (pending, running or
        finished). Raises TaskNotFoundError when no task has this id (in `queue`, or in any
        queue when None)."""
        return await self.backend.run_now(task_id, _queue_or_none(queue))

    async def result(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # the API: a bound of its own
        queue: str | None = None,
        type: Any = None,
    ) -> Any:
        """The return value of task `task_id`'s handler, waiting for the task to end (up to
        `timeout` seconds; None waits as long as it takes). Decoded by the serializer it was
        stored with (`bytes` as they were returned), and structured into `type` when given
        (as handlers' payloads are: attrs classes, dataclasses...). A handler that returned None,
        or a task whose result_ttl is 0, gives None.

        Raises TaskFailedError for a dead task (with its error), TaskCancelledError for a
        cancelled one, TaskNotFoundError for an unknown id or a result whose result_ttl has
        passed (or whose task's retention ended), TimeoutError when `timeout` passes first.
        Waiting does not poll: it subscribes to the task's end, reads the task, then waits (an
        end between the read and the wait is not missed), and reads again at least every
        RESULT_POLL_S as a fallback (a lost connection)."""
        deadline = None if timeout is None else anyio.current_time() + max(0.0, timeout)
        where = _queue_or_none(queue)
        info = await self.backend.get_task(task_id, where)
        if info is None:
            raise TaskNotFoundError(task_id)
        if info.state in _ENDED:
            return self._outcome(info, type)
        async with self.backend.watch_ended(info.queue, task_id) as watch:
            while True:
                # read after subscribing: an end from here on wakes the watch
                found = await self.backend.get_task(task_id, info.queue)
                if found is None:
                    raise TaskNotFoundError(task_id)
                if found.state in _ENDED:
                    return self._outcome(found, type)
                wait = RESULT_POLL_S
                if deadline is not None:
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        raise TimeoutError(f"task {task_id!r} did not end within {timeout}s")
                    wait = min(wait, remaining)
                await watch.wait(wait)

    def _outcome(self, info: TaskInfo, type: Any) -> Any:
        """What `result` says of an ended task."""
        if info.state is TaskState.DEAD:
            raise TaskFailedError(info.id, info.error, info.last_error)
        if info.state is TaskState.CANCELLED:
            raise TaskCancelledError(info.id)
        ttl = DEFAULT_RESULT_TTL * 1000 if info.result_ttl_ms is None else info.result_ttl_ms
        ended = info.ended_ms if info.ended_ms is not None else 0
        if ended + ttl <= self.backend.clock():
            raise TaskNotFoundError(info.id)
        if info.result is None:
            return None
        encoding, _, data = info.result.partition(b"\n")
        name = encoding.decode()
        if name == RAW_ENCODING:
            value: Any = data
        else:
            serializer = self._serializers.get(name)
            if serializer is None:
                raise DecodeError(f"the result of task {info.id!r} is {name}: no serializer")
            value = serializer.loads(data)
        return value if type is None else converter.structure(value, type)

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        """Remove a task that is not running (scheduled, pending, retry, dead, completed or
        cancelled) with its unique key. True if it was removed; False if it is running. Raises
        TaskNotFoundError when no task has this id (in `queue`, or in any queue when None)."""
        return await self.backend.delete(task_id, _queue_or_none(queue))

    # -- inspecting and managing --------------------------------------------------------------

    async def queues(self) -> list[str]:
        """Every queue tasks were enqueued to (until a purge left it empty), sorted."""
        return await self.backend.queues()

    async def queue_info(self, queue: str) -> QueueInfo:
        """Paused flag, the number of tasks in each state and the age of the oldest pending
        task."""
        return await self.backend.queue_info(validate_queue_name(queue))

    async def throughput(
        self, queue: str, *, minutes: int = 60, task_type: str | None = None
    ) -> list[MinuteCount]:
        """Completed, failed (to retry) and dead tasks per minute, the last `minutes` minutes
        (1..1440) oldest first, ending with the current one; only `task_type`'s when given."""
        return await self.backend.throughput(
            validate_queue_name(queue), minutes=minutes, task_type=task_type
        )

    async def list_tasks(
        self, queue: str, state: TaskState, *, cursor: str | None = None, limit: int = 100
    ) -> TaskPage:
        """A page of the tasks of one state of a queue (at most `limit`, 1 to 1,000). Pass the
        page's `next_cursor` to get the next one; it is None after the last page. A task that
        stays in its state is listed once, however others move meanwhile."""
        state = TaskState(state)
        return await self.backend.list_tasks(
            validate_queue_name(queue), state, cursor=cursor, limit=limit
        )

    async def consumers(self, queue: str) -> list[ConsumerInfo]:
        """The servers consuming a queue, with the tasks each holds."""
        return await self.backend.consumers(validate_queue_name(queue))

    async def requeue_dead(self, queue: str, task_id: str) -> bool:
        """Move a dead task back to pending (retried = 0). False if it is not dead; raises
        TaskNotFoundError when the queue has no task with this id."""
        return await self.backend.requeue_dead(validate_queue_name(queue), task_id)

    async def requeue_all_dead(self, queue: str) -> int:
        """Move every dead task of a queue back to pending; returns how many."""
        return await self.backend.requeue_all_dead(validate_queue_name(queue))

    async def purge(self, queue: str, states: Sequence[TaskState] | None = None) -> int:
        """Delete the tasks of a queue in `states` (default: every state but active) and return
        how many. Running tasks cannot be purged (InvalidTaskError). A queue left with no task
        leaves `queues()`."""
        chosen = None if states is None else [TaskState(s) for s in states]
        return await self.backend.purge(validate_queue_name(queue), chosen)

    async def pause(self, queue: str) -> None:
        """Stop servers from starting tasks of this queue (running ones finish)."""
        await self.backend.pause(validate_queue_name(queue))

    async def resume(self, queue: str) -> None:
        await self.backend.resume(validate_queue_name(queue))

    # -- periodic schedules -------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleInfo]:
        """Every stored periodic schedule (see `Server.cron`), sorted by id: its definition, next
        tick (`next_ms`), last tick fired (`last_fire_ms`) and that tick's task id
        (`last_task_id`)."""
        return (await self.backend.list_schedules()).schedules

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove a stored schedule: no tick of it fires afterwards, on any server (a server that
        defines it stores it again when it next starts). Its tasks stay. False if there was
        none."""
        return await self.backend.remove_schedule(schedule_id)


def _queue_or_none(queue: str | None) -> str | None:
    return None if queue is None else validate_queue_name(queue)


def _result_ttl_ms(ttl: float | None) -> int | None:
    """A Task's result_ttl in ms, None for the default (stored as nothing)."""
    if ttl is None or ttl == DEFAULT_RESULT_TTL:
        return None
    return math.ceil(ttl * 1000)
