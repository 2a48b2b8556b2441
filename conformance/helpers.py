"""Small builders shared by the conformance tests."""

from __future__ import annotations

from strego.backends.base import MAX_PAGE, Backend
from strego.message import TaskMessage
from strego.task import TaskInfo, TaskState

#: A lease long enough that no test expires it by accident.
LEASE_MS = 60_000


def message(
    task_id: str,
    *,
    queue: str = "q",
    payload: bytes = b"{}",
    priority: int = 0,
    max_retry: int = 3,
    process_at_ms: int | None = None,
    process_in_ms: int | None = None,
    unique_key: str | None = None,
    unique_ttl_ms: int | None = None,
    created_ms: int = 0,
    task_type: str = "test.task",
) -> TaskMessage:
    return TaskMessage(
        id=task_id,
        type=task_type,
        queue=queue,
        payload=payload,
        encoding="json",
        priority=priority,
        max_retry=max_retry,
        process_at_ms=process_at_ms,
        process_in_ms=process_in_ms,
        unique_key=unique_key,
        unique_ttl_ms=unique_ttl_ms,
        created_ms=created_ms,
    )


async def state_of(backend: Backend, task_id: str, queue: str = "q") -> TaskState | None:
    info = await backend.get_task(task_id, queue)
    return None if info is None else info.state


async def list_all(backend: Backend, queue: str, state: TaskState) -> list[TaskInfo]:
    """Every task of one state, page after page."""
    tasks: list[TaskInfo] = []
    cursor = None
    while True:
        page = await backend.list_tasks(queue, state, cursor=cursor, limit=MAX_PAGE)
        tasks += page.tasks
        if page.next_cursor is None:
            return tasks
        cursor = page.next_cursor


async def ids_in(backend: Backend, state: TaskState, queue: str = "q") -> list[str]:
    return [t.id for t in await list_all(backend, queue, state)]


async def start(
    backend: Backend,
    task_id: str,
    queue: str = "q",
    consumer: str = "c1",
    *,
    task_type: str = "test.task",
    max_retry: int = 3,
) -> None:
    """Enqueue a task and make it active, held by `consumer` (the queue must hold nothing else
    pending)."""
    await backend.enqueue(message(task_id, queue=queue, task_type=task_type, max_retry=max_retry))
    got = await backend.fetch([queue], 1, consumer, lease_ms=LEASE_MS)
    assert [t.id for t in got] == [task_id]


async def make_dead(backend: Backend, task_id: str, queue: str = "q") -> None:
    await start(backend, task_id, queue)
    assert await backend.fail(queue, task_id, "c1", "boom", retry_in_ms=None) == TaskState.DEAD
