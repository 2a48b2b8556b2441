"""The task model: what a producer enqueues (`Task`), the states a task moves through (`TaskState`),
and what the backend reports about a task (`TaskInfo`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from strego.errors import InvalidQueueNameError, InvalidTaskError, NaiveDatetimeError

#: Queue names: 1 to 100 characters from this set. No braces (they would break the Redis hash tag),
#: no colon (the key separator), no whitespace.
QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: Task ids chosen by the caller: 1 to 128 characters from this set.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_TYPE_LENGTH = 256
MIN_PRIORITY, MAX_PRIORITY = 0, 10
#: The longest duration (timeout, process_in, unique_ttl): 100 years. Times stay far inside the
#: integers a double holds exactly (Lua's numbers), and a typo like 1e300 is an error, not a task
#: scheduled for never.
MAX_SECONDS = 100 * 365.25 * 86_400
#: process_at must be before the year 10000 (what a datetime can say), in epoch seconds.
MAX_EPOCH_SECONDS = datetime.max.replace(tzinfo=UTC).timestamp()


class TaskState(enum.StrEnum):
    SCHEDULED = "scheduled"  #: waiting for its process_at time
    PENDING = "pending"  #: ready to run
    ACTIVE = "active"  #: held by a consumer that is running it
    RETRY = "retry"  #: failed, waiting for its next attempt
    DEAD = "dead"  #: failed for good (retries exhausted, SkipRetry, undecodable, poison)
    COMPLETED = "completed"  #: ran successfully; kept (with its processed marker) for the retention
    CANCELLED = "cancelled"  #: cancelled before it ran; never retried or dead-lettered


def validate_queue_name(name: object) -> str:
    if not isinstance(name, str) or QUEUE_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidQueueNameError(
            f"invalid queue name {name!r}: use 1 to 100 characters from A-Z a-z 0-9 _ . -"
        )
    return name


def seconds(
    value: float | timedelta | None, what: str, *, allow_zero: bool = False
) -> float | None:
    """A positive (or, with allow_zero, non-negative) duration in seconds, from a number or a
    timedelta."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTaskError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    if not (value >= 0 if allow_zero else value > 0) or value > MAX_SECONDS:
        kind = "non-negative" if allow_zero else "positive"
        raise InvalidTaskError(f"{what} must be {kind} and at most 100 years, not {value!r}")
    return float(value)


def epoch_seconds(value: datetime | float | None, what: str) -> float | None:
    """A point in time as epoch seconds, from an aware datetime or a number. A naive datetime is
    refused: it would be read in the local time zone (a naive `utcnow()` five hours off in New
    York)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise NaiveDatetimeError(
                f"{what} must be an aware datetime (with a time zone), not the naive {value!r}:"
                " pass e.g. datetime.now(timezone.utc) + timedelta(seconds=5)"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidTaskError(f"{what} must be a datetime or epoch seconds, not {value!r}")
    if not -MAX_EPOCH_SECONDS < value < MAX_EPOCH_SECONDS:
        raise InvalidTaskError(f"{what} must be a time before the year 10000, not {value!r}")
    return float(value)


def _check_type(_: Task, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_TYPE_LENGTH:
        raise InvalidTaskError(
            f"task type must be a non-empty string of at most {MAX_TYPE_LENGTH} characters,"
            f" not {value!r}"
        )


def _check_queue(_: Task, __: attrs.Attribute[str], value: object) -> None:
    validate_queue_name(value)


def _check_max_retry(_: Task, __: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidTaskError(f"max_retry must be an integer >= 0, not {value!r}")


def _check_priority(_: Task, __: attrs.Attribute[int], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (MIN_PRIORITY <= value <= MAX_PRIORITY)
    ):
        raise InvalidTaskError(
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {value!r}"
        )


def _check_id(_: Task, __: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not TASK_ID_PATTERN.fullmatch(value)):
        raise InvalidTaskError(
            f"invalid task id {value!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . : -"
        )


def _check_unique_key(_: Task, __: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 512):
        raise InvalidTaskError(
            f"unique_key must be a non-empty string of at most 512 characters, not {value!r}"
        )


def _labels(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTaskError(f"labels must be a mapping of str to str, not {value!r}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidTaskError(f"labels must map str to str, not {k!r}: {v!r}")
    return dict(value)


def _timeout(value: float | timedelta | None) -> float | None:
    return seconds(value, "timeout")


def _process_at(value: datetime | float | None) -> float | None:
    return epoch_seconds(value, "process_at")


def _process_in(value: float | timedelta | None) -> float | None:
    return seconds(value, "process_in", allow_zero=True)


def _unique_ttl(value: float | timedelta | None) -> float | None:
    return seconds(value, "unique_ttl")


#: How long a handler's return value is kept when its Task does not say (seconds): one hour,
#: never beyond the backend's retention of completed tasks (the result is part of the record).
DEFAULT_RESULT_TTL = 3600.0


def _result_ttl(value: float | timedelta | None) -> float | None:
    if value is None:  # every Task built without one: no call further
        return None
    return seconds(value, "result_ttl", allow_zero=True)


@attrs.frozen
class Task:
    """A unit of work: a type naming its handler and a payload.

    `max_retry` counts retries after the first failed attempt (3 means at most 4 runs).
    `timeout` (seconds) cancels the handler. Give at most one of `process_at` (a datetime or
    epoch seconds) and `process_in` (seconds or a timedelta). `unique_key` with `unique_ttl`
    refuses a second task with the same key while the first holds it (until it completes, is
    cancelled, or the TTL ends). `priority` 0-10 orders tasks within a queue (10 runs first).
    `result_ttl` (seconds; default `DEFAULT_RESULT_TTL`, one hour) is how long the handler's
    return value is kept for `Client.result`; 0 stores nothing.

    All options are checked here, so an invalid task never reaches a backend.
    """

    type: str = attrs.field(validator=_check_type)
    payload: Any = None
    queue: str = attrs.field(default="default", kw_only=True, validator=_check_queue)
    max_retry: int = attrs.field(default=3, kw_only=True, validator=_check_max_retry)
    timeout: float | None = attrs.field(default=None, kw_only=True, converter=_timeout)
    process_at: float | None = attrs.field(default=None, kw_only=True, converter=_process_at)
    process_in: float | None = attrs.field(default=None, kw_only=True, converter=_process_in)
    priority: int = attrs.field(default=0, kw_only=True, validator=_check_priority)
    unique_key: str | None = attrs.field(default=None, kw_only=True, validator=_check_unique_key)
    unique_ttl: float | None = attrs.field(default=None, kw_only=True, converter=_unique_ttl)
    labels: dict[str, str] = attrs.field(factory=dict, kw_only=True, converter=_labels)
    id: str | None = attrs.field(default=None, kw_only=True, validator=_check_id)
    result_ttl: float | None = attrs.field(default=None, kw_only=True, converter=_result_ttl)

    @classmethod
    def _trusted(
        cls,
        type: str,
        payload: Any,
        *,
        queue: str,
        max_retry: int,
        timeout: float | None,
        priority: int,
        labels: dict[str, str],
        id: str,
    ) -> Task:
        """A Task from fields a backend already validated (a server's hot path): skips the
        validators and converters, which would only re-check the same values."""
        task = object.__new__(cls)
        set_ = object.__setattr__  # the class is frozen
        set_(task, "type", type)
        set_(task, "payload", payload)
        set_(task, "queue", queue)
        set_(task, "max_retry", max_retry)
        set_(task, "timeout", timeout)
        set_(task, "process_at", None)
        set_(task, "process_in", None)
        set_(task, "priority", priority)
        set_(task, "unique_key", None)
        set_(task, "unique_ttl", None)
        set_(task, "labels", dict(labels))  # the handler gets its own copy, as __init__ gives
        set_(task, "id", id)
        set_(task, "result_ttl", None)
        return task

    def __attrs_post_init__(self) -> None:
        if self.process_at is not None and self.process_in is not None:
            raise InvalidTaskError("give at most one of process_at and process_in")
        if self.unique_ttl is not None and self.unique_key is None:
            raise InvalidTaskError("unique_ttl needs a unique_key")
        if self.unique_key is not None and self.unique_ttl is None:
            raise InvalidTaskError("unique_key needs a unique_ttl")


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


@attrs.frozen
class TaskError:
    """Why a task died: the exception's type name, its message and a traceback (truncated)."""

    type: str
    message: str
    traceback: str = ""


@attrs.frozen
class TaskInfo:
    """What a backend knows about one task. Times are epoch milliseconds (`*_ms`), with datetime
    views (`*_at`). `payload` is the serialized payload, `encoding` names its serializer."""

    id: str
    type: str
    queue: str
    state: TaskState
    payload: bytes
    encoding: str
    max_retry: int
    priority: int = 0
    timeout_ms: int | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    unique_key: str | None = None
    #: failures that led to a retry so far; the task is dead after failing with retried == max_retry
    retried: int = 0
    #: how many times the task has been handed to a consumer (fetch or claim)
    deliveries: int = 0
    created_ms: int = 0
    started_ms: int | None = None
    completed_ms: int | None = None
    #: when a scheduled or retry task is due (None in any other state)
    next_run_ms: int | None = None
    #: when a dead, completed or cancelled task ended (None in any other state)
    ended_ms: int | None = None
    last_error: str | None = None
    #: the consumer that holds an active task
    consumer: str | None = None
    #: a completed task's return value as stored: `<encoding>` NL `<serialized value>` (None
    #: when the handler returned None, or its result_ttl is 0)
    result: bytes | None = None
    #: how long the result is kept after the task ended (ms); None: DEFAULT_RESULT_TTL
    result_ttl_ms: int | None = None
    #: a dead task's error (type, message, traceback), when its failure recorded one
    error: TaskError | None = None
    #: `cancel` was asked for while the task was active: its server stops it
    cancel_requested: bool = False
    #: propagation headers (trace context, baggage) set by the client's middleware at enqueue
    headers: dict[str, str] = attrs.field(factory=dict)

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)

    @property
    def started_at(self) -> datetime | None:
        return _from_ms(self.started_ms)

    @property
    def completed_at(self) -> datetime | None:
        return _from_ms(self.completed_ms)

    @property
    def next_run_at(self) -> datetime | None:
        return _from_ms(self.next_run_ms)

    @property
    def ended_at(self) -> datetime | None:
        return _from_ms(self.ended_ms)

    @property
    def timeout(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000
