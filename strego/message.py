"""`TaskMessage`: a validated task with its payload serialized, as a backend stores it."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from strego.errors import InvalidTaskError
from strego.task import TaskInfo, TaskState


def _check_headers(_: object, __: object, value: object) -> None:
    """Headers are str -> str (else InvalidTaskError, before a backend writes anything)."""
    if not isinstance(value, dict) or (
        value and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise InvalidTaskError(f"headers must be a dict of str to str, not {value!r}")


@attrs.frozen
class TaskMessage:
    """Everything a backend stores about a task at enqueue. Built by the client from a `Task`
    (validated, payload serialized); backends treat `payload` as opaque bytes."""

    id: str
    type: str
    queue: str
    payload: bytes
    encoding: str
    max_retry: int = 3
    priority: int = 0
    timeout_ms: int | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    unique_key: str | None = None
    unique_ttl_ms: int | None = None
    created_ms: int = 0
    #: None or a time at or before now: pending at once; later: scheduled until then
    process_at_ms: int | None = None
    #: instead of process_at_ms: scheduled this long after the backend stores it, by the
    #: backend's clock (not the producer's, which may be off)
    process_in_ms: int | None = None
    #: how long the handler's return value is kept (ms); None: the default (DEFAULT_RESULT_TTL)
    result_ttl_ms: int | None = None
    #: propagation headers (trace context, baggage) written once at creation by the client's
    #: middleware; kept unchanged through retries and dead-letter requeues
    headers: dict[str, str] = attrs.field(factory=dict, validator=_check_headers)

    def due_ms(self, now: int) -> int | None:
        """When the task is due by a backend whose clock reads `now`: None for at once."""
        if self.process_in_ms is not None:
            return now + self.process_in_ms
        return self.process_at_ms

    def info(self, state: TaskState, **fields: object) -> TaskInfo:
        """A TaskInfo for this message in `state`; `fields` sets the state-dependent fields."""
        if (
            not fields and self.result_ttl_ms is None
        ):  # every task enqueued: TaskInfo's fields in order, no keywords to match
            return TaskInfo(
                self.id, self.type, self.queue, state, self.payload, self.encoding,
                self.max_retry, self.priority, self.timeout_ms, self.labels, self.unique_key,
                0, 0, self.created_ms, None, None, None, None, None, None, None, None, None, False,
                self.headers,
            )  # fmt: skip
        return TaskInfo(
            id=self.id,
            type=self.type,
            queue=self.queue,
            state=state,
            payload=self.payload,
            encoding=self.encoding,
            max_retry=self.max_retry,
            priority=self.priority,
            timeout_ms=self.timeout_ms,
            labels=self.labels,
            unique_key=self.unique_key,
            created_ms=self.created_ms,
            result_ttl_ms=self.result_ttl_ms,
            headers=self.headers,
            **fields,  # type: ignore[arg-type]
        )


def check_unique_ttl(messages: Iterable[TaskMessage]) -> None:
    """Refuse, before a backend writes anything, a message with a unique key but no TTL (the
    contract's rule, as `strego.Task` has it: a key with no end could only be freed by hand)."""
    for m in messages:
        if m.unique_key is not None and m.unique_ttl_ms is None:
            raise InvalidTaskError(f"task {m.id}: unique_key needs a unique_ttl_ms")
