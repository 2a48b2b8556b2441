"""strego: a distributed task queue for asyncio and trio, with atomic state transitions."""

from strego.errors import (
    DuplicateTaskError,
    InvalidQueueNameError,
    InvalidTaskError,
    PayloadTooLargeError,
    SerializationError,
    SkipRetry,
    StregoError,
    TaskIdConflictError,
)
from strego.task import Task, TaskInfo, TaskState

__all__ = [
    "DuplicateTaskError",
    "InvalidQueueNameError",
    "InvalidTaskError",
    "PayloadTooLargeError",
    "SerializationError",
    "SkipRetry",
    "StregoError",
    "Task",
    "TaskIdConflictError",
    "TaskInfo",
    "TaskState",
]
