"""What an operator does, on the backend contract alone: the overview of every queue, the
consumers of every queue, and the actions on a task or a queue with their refusals as typed
errors. The HTTP API (`strego.web`) and the CLI (`strego.commands`) both call these, so they
refuse the same things for the same reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import attrs

from strego.backends.base import Backend, ConsumerInfo, MinuteCount, QueueInfo
from strego.errors import (
    BackendClosedError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    InvalidTaskError,
    StregoError,
    TaskNotFoundError,
)
from strego.task import TaskInfo, TaskState, validate_queue_name

T = TypeVar("T")
R = TypeVar("R")

#: How many queues are read at once for an overview (a transport pipelines concurrent calls).
READ_CONCURRENCY = 16
#: A read failing with one of these means the backend is out of reach, not that one queue is
#: unreadable: the whole overview fails (503), as it would on its first read.
OUTAGE = (BackendConnectionError, BackendTimeoutError, BackendClosedError)


class QueueNotFoundError(StregoError, LookupError):
    """No queue of this name is registered (none was enqueued to, or a purge emptied it)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"no queue {queue!r}")
        self.queue = queue


class TaskStateError(StregoError):
    """The task exists, but its state does not allow the action. Nothing was changed."""

    def __init__(self, task_id: str, state: TaskState | None, action: str, allowed: str) -> None:
        now = "gone" if state is None else state.value
        super().__init__(f"task {task_id!r} is {now}: only {allowed} tasks can be {action}")
        self.task_id = task_id
        self.state = state


async def each(
    items: Sequence[T], call: Callable[[T], Awaitable[R]], limit: int = READ_CONCURRENCY
) -> list[R]:
    """`call` on every item, `limit` at a time, results in order; the first error is raised as
    itself (not in an exception group), after the others finished."""
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []
    limiter = anyio.CapacityLimiter(limit)

    async def one(i: int, item: T) -> None:
        async with limiter:
            try:
                results[i] = await call(item)
            except Exception as exc:  # raised below, in the caller's frame
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i, item in enumerate(items):
            tg.start_soon(one, i, item)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled


@attrs.frozen
class Unreadable:
    """A queue whose keys could not be read (another program's key of another type under the
    prefix, a record of a newer schema, ...): its name and why, as text. An overview shows it
    beside the queues that could be read rather than failing as a whole."""

    queue: str
    error: str


@attrs.frozen
class QueueSummary:
    """A readable queue of an overview: its counts and its per-minute history."""

    info: QueueInfo
    history: list[MinuteCount]


@attrs.frozen
class Consumers:
    """Every consumer of every readable queue, by name then queue, and the queues that were
    not."""

    found: list[ConsumerInfo]
    unreadable: list[Unreadable]


async def per_queue(
    queues: Sequence[str], call: Callable[[str], Awaitable[R]]
) -> list[R | Unreadable]:
    """`call` on every queue (as `each`), a queue whose read failed as Unreadable; a backend
    out of reach (OUTAGE) or an error that is not the backend's is raised."""

    async def guarded(queue: str) -> R | Unreadable:
        try:
            return await call(queue)
        except OUTAGE:
            raise
        except BackendError as exc:
            return Unreadable(queue, f"{type(exc).__name__}: {exc}")

    return await each(queues, guarded)


async def require_queue(backend: Backend, queue: str) -> str:
    """`queue` if it is registered, else QueueNotFoundError (an invalid name included: no queue
    can have it)."""
    try:
        validate_queue_name(queue)
    except InvalidTaskError:
        raise QueueNotFoundError(queue) from None
    if queue not in await backend.queues():
        raise QueueNotFoundError(queue)
    return queue


async def overview(backend: Backend, minutes: int = 60) -> list[QueueSummary | Unreadable]:
    """Every queue, by name: its counts, paused flag, oldest pending age and per-minute counts
    over the last `minutes`, or why it could not be read."""

    async def summary(queue: str) -> QueueSummary:
        info = await backend.queue_info(queue)
        return QueueSummary(info, await backend.throughput(queue, minutes=minutes))

    return await per_queue(await backend.queues(), summary)


async def consumers(backend: Backend) -> Consumers:
    """Every consumer of every queue, by name then queue, and the queues that could not be
    read."""
    found = await per_queue(await backend.queues(), backend.consumers)
    read = [c for of_queue in found if not isinstance(of_queue, Unreadable) for c in of_queue]
    return Consumers(
        sorted(read, key=lambda c: (c.name, c.queue)),
        [u for u in found if isinstance(u, Unreadable)],
    )


async def find_task(backend: Backend, task_id: str) -> TaskInfo:
    task = await backend.get_task(task_id)
    if task is None:
        raise TaskNotFoundError(task_id)
    return task


async def _refused(backend: Backend, task_id: str, action: str, allowed: str) -> TaskStateError:
    """The error for an action that changed nothing: the task's state now, or not found."""
    task = await backend.get_task(task_id)
    return TaskStateError(task_id, None if task is None else task.state, action, allowed)


async def requeue_task(backend: Backend, task_id: str, queue: str | None = None) -> None:
    """A dead task (of `queue`, when given) back to pending."""
    if queue is None:
        queue = (await find_task(backend, task_id)).queue
    if not await backend.requeue_dead(queue, task_id):
        raise await _refused(backend, task_id, "requeued", "dead")


async def cancel_task(backend: Backend, task_id: str) -> None:
    if not await backend.cancel(task_id):
        raise await _refused(backend, task_id, "cancelled", "scheduled, pending, retry or active")


async def delete_task(backend: Backend, task_id: str) -> None:
    if not await backend.delete(task_id):
        raise await _refused(backend, task_id, "deleted", "inactive")


async def run_task(backend: Backend, task_id: str) -> None:
    """A scheduled or retry task runs now (becomes pending)."""
    if not await backend.run_now(task_id):
        raise await _refused(backend, task_id, "run now", "scheduled or retry")


def purge_states(names: Sequence[str]) -> list[TaskState]:
    """The states a purge names, InvalidTaskError for an unknown one, for none, or for active
    (running tasks are never purged)."""
    if not names:
        raise InvalidTaskError("name the states to purge")
    states: list[TaskState] = []
    for name in names:
        try:
            state = TaskState(name)
        except ValueError:
            raise InvalidTaskError(f"no state {name!r}") from None
        if state is TaskState.ACTIVE:
            raise InvalidTaskError("active tasks are running: they cannot be purged")
        if state not in states:
            states.append(state)
    return states
