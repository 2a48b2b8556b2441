"""strego: a distributed task queue for asyncio and trio, with atomic state transitions."""

from strego.client import Client
from strego.errors import (
    DuplicateTaskError,
    HandlerSignatureError,
    InvalidQueueNameError,
    InvalidTaskError,
    PayloadTooLargeError,
    SerializationError,
    SkipRetry,
    StregoError,
    TaskIdConflictError,
)
from strego.handlers import current_task
from strego.retry import ExponentialBackoff
from strego.server import Server, ServerStats
from strego.task import Task, TaskInfo, TaskState

__all__ = [
    "Client",
    "DuplicateTaskError",
    "ExponentialBackoff",
    "HandlerSignatureError",
    "InvalidQueueNameError",
    "InvalidTaskError",
    "PayloadTooLargeError",
    "SerializationError",
    "Server",
    "ServerStats",
    "SkipRetry",
    "StregoError",
    "Task",
    "TaskIdConflictError",
    "TaskInfo",
    "TaskState",
    "current_task",
]
