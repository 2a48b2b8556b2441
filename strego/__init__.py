"""strego: a distributed task queue for asyncio and trio, with atomic state transitions."""

from importlib.metadata import PackageNotFoundError, version

from strego.backends.base import TaskPage
from strego.client import Client
from strego.errors import (
    BackendClosedError,
    DuplicateTaskError,
    HandlerSignatureError,
    InvalidCursorError,
    InvalidQueueNameError,
    InvalidScheduleError,
    InvalidTaskError,
    NaiveDatetimeError,
    PayloadTooLargeError,
    SchemaVersionError,
    SerializationError,
    SkipRetry,
    StregoError,
    TaskCancelledError,
    TaskFailedError,
    TaskIdConflictError,
    TaskNotFoundError,
    UnreadableRecordError,
)
from strego.handlers import current_task
from strego.retry import ExponentialBackoff
from strego.server import Server, ServerStats
from strego.task import Task, TaskError, TaskInfo, TaskState

try:  # pyproject.toml is the one source of the version
    __version__ = version("strego")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackendClosedError",
    "Client",
    "DuplicateTaskError",
    "ExponentialBackoff",
    "HandlerSignatureError",
    "InvalidCursorError",
    "InvalidQueueNameError",
    "InvalidScheduleError",
    "InvalidTaskError",
    "NaiveDatetimeError",
    "PayloadTooLargeError",
    "SchemaVersionError",
    "SerializationError",
    "Server",
    "ServerStats",
    "SkipRetry",
    "StregoError",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskIdConflictError",
    "TaskInfo",
    "TaskNotFoundError",
    "TaskPage",
    "TaskState",
    "UnreadableRecordError",
    "current_task",
]
