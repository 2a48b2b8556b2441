"""What an operator does, on the backend contract alone: the overview of every queue, the
consumers of every queue, and the actions on a task or a queue with their refusals as typed
errors. The HTTP API (`strego.web`) and the CLI (`strego.commands`) both call these, so they
refuse the same things for the same reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from strego.backends.base import Backend, ConsumerInfo, MinuteCount, QueueInfo
from strego.errors import InvalidTaskError, StregoError, TaskNotFoundError
from strego.task import TaskInfo, TaskState, validate_queue_name

T = TypeVar("T")
R = TypeVar("R")

#: How many queues are read at once for an overview (a transport pipelines concurrent calls).
READ_CONCURRENCY = 16


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


async def overview(backend: Backend) -> list[QueueInfo]:
    """Every queue's counts, paused flag and oldest pending age, by name."""
    return await each(await backend.queues(), backend.queue_info)


async def history(
    backend: Backend, queues: Sequence[str], minutes: int = 60
) -> list[list[MinuteCount]]:
    """Each queue's per-minute counts over the last `minutes`."""

    async def of(queue: str) -> list[MinuteCount]:
        return await backend.throughput(queue, minutes=minutes)

    return await each(queues, of)


async def consumers(backend: Backend) -> list[ConsumerInfo]:
    """Every consumer of every queue, by name then queue."""
    found = await each(await backend.queues(), backend.consumers)
    return sorted((c for per_queue in found for c in per_queue), key=lambda c: (c.name, c.queue))


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
