"""Typed errors. Every error strego raises on purpose derives from `StregoError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strego.task import TaskError


class StregoError(Exception):
    """Base class of strego's errors."""


# -- invalid input: raised before anything is written ------------------------------------------


class InvalidTaskError(StregoError, ValueError):
    """A task, option or name is invalid. Nothing was written."""


class InvalidCursorError(InvalidTaskError):
    """A `list_tasks` cursor is malformed or belongs to a listing of another state."""


class InvalidScheduleError(InvalidTaskError):
    """A periodic schedule is invalid (its id, cron expression, interval, time zone, catch-up
    policy or task template). Nothing was written."""


class InvalidQueueNameError(InvalidTaskError):
    """A queue name is empty, too long, or uses characters outside the documented charset."""


class SerializationError(InvalidTaskError):
    """A payload could not be serialized at enqueue. Nothing was written."""


class PayloadTooLargeError(InvalidTaskError):
    """A serialized payload is larger than the configured limit. Nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


# -- refusals by the backend --------------------------------------------------------------------


class DuplicateTaskError(StregoError):
    """The task's unique key is held by another task that has not finished and whose TTL has not
    expired. `holder_id` names that task."""

    def __init__(self, unique_key: str, holder_id: str) -> None:
        super().__init__(f"unique key {unique_key!r} is held by task {holder_id}")
        self.unique_key = unique_key
        self.holder_id = holder_id


class TaskIdConflictError(StregoError):
    """A task with this id already exists (in any state, including completed within retention)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"a task with id {task_id!r} already exists")
        self.task_id = task_id


class TaskNotFoundError(StregoError, LookupError):
    """No task with this id exists (or its retention has ended)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class TaskFailedError(StregoError):
    """`Client.result`: the task died. `error` is its error (type, message, traceback) when its
    failure recorded one, `last_error` the text every failure records."""

    def __init__(self, task_id: str, error: TaskError | None, last_error: str | None) -> None:
        what = f"{error.type}: {error.message}" if error is not None else (last_error or "failed")
        super().__init__(f"task {task_id!r} died: {what}")
        self.task_id = task_id
        self.error = error
        self.last_error = last_error


class TaskCancelledError(StregoError):
    """`Client.result`: the task was cancelled (before it ran, or while it ran)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} was cancelled")
        self.task_id = task_id


# -- run time -----------------------------------------------------------------------------------


class DecodeError(StregoError):
    """A stored task or payload could not be decoded at run time."""


class SkipRetry(StregoError):
    """Raised by a handler: the task goes to dead at once, without further retries."""


# -- backend and transport ----------------------------------------------------------------------


class BackendError(StregoError):
    """The backend failed; the message keeps the backend's own error text."""


class BackendConnectionError(BackendError, ConnectionError):
    """The backend could not be reached, or the connection dropped."""


class BackendCertificateError(BackendConnectionError):
    """The server's TLS certificate was refused (an unknown CA, another host name, expired). It
    is not retried: trying again cannot help."""


class ReplyLostError(BackendConnectionError):
    """A non-idempotent command was sent, but the connection dropped before its reply arrived: it
    may or may not have taken effect. It is not retried automatically."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time."""


class NotReplicatedError(BackendError):
    """With durable enqueues: the master stored the tasks, but fewer replicas than asked for
    confirmed them within the timeout, so a failover now could lose them. They were not undone:
    they will run unless the master is lost before it replicates them."""


class OutOfMemoryError(BackendError):
    """The backend refused a write because it is out of memory. Nothing was written."""


class ForeignKeyError(BackendError):
    """A key under strego's prefix holds a value of the wrong type (written by something else)."""


class SchemaVersionError(BackendError):
    """The stored data is of a newer record version than this strego knows: upgrade strego
    (docs/redis.md, "Schema version"). `found` and `known` are the two versions."""

    def __init__(self, message: str, *, found: int | None = None, known: int | None = None):
        super().__init__(message)
        self.found = found
        self.known = known


class UnreadableRecordError(BackendError):
    """A stored task record does not decode (damaged, or written by something else)."""


class NaiveDatetimeError(InvalidTaskError):
    """A datetime without a time zone was given where a point in time is needed: it would be read
    in the machine's local time zone, which is rarely what was meant. Nothing was written."""


class BackendClosedError(BackendError):
    """The backend was closed (`aclose()`); it refuses every call afterwards."""


# -- registration -------------------------------------------------------------------------------


class HandlerSignatureError(StregoError, TypeError):
    """A handler cannot be called with one argument (the task or its payload): refused when it
    is registered, before any task runs."""
