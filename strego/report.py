"""The JSON form of what a backend reports (queues, tasks, consumers), shared by the HTTP API and
the CLI's ``--json``, so a script reads the same fields from either.

Task data is data: the payload is never deserialized (a msgpack or pickled payload is not
evaluated), only shown as UTF-8 text when it is, else as base64, and cut past a limit. The JSON
text is ASCII with ``<``, ``>`` and ``&`` escaped too, so a lone surrogate or a ``</script>`` in a
task type, error or payload travels intact and inert wherever the JSON is put."""

from __future__ import annotations

import base64
import json
from typing import Any

from strego.backends.base import ConsumerInfo, MinuteCount, QueueInfo, ScheduleInfo
from strego.operate import QueueSummary, Unreadable
from strego.server import parse_consumer_name
from strego.task import TaskError, TaskInfo, TaskState

#: The payload bytes shown of one task (the whole is downloadable by the API).
PAYLOAD_LIMIT = 64 * 1024
#: The payload bytes shown of each task of a listing (a page of a thousand stays small).
LIST_PAYLOAD_LIMIT = 256

#: Every state, in the order a task moves through them (the columns of an overview).
STATES = tuple(TaskState)

_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def dumps(value: Any) -> bytes:
    """JSON text of `value`: ASCII (lone surrogates escaped, never an encoding error), and
    ``<``, ``>``, ``&`` escaped (they can only occur inside strings, where the escapes mean the
    same)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).translate(_ESCAPES).encode()


def payload_view(payload: bytes, encoding: str, limit: int = PAYLOAD_LIMIT) -> dict[str, Any]:
    """The payload as `text` (when its shown part is UTF-8) or `base64`, cut to `limit` bytes."""
    shown = payload[:limit]
    truncated = len(shown) < len(payload)
    text: str | None = None
    for cut in range(4 if truncated else 1):  # a cut may split a character: drop its start
        try:
            text = shown[: len(shown) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        break
    return {
        "encoding": encoding,
        "size": len(payload),
        "truncated": truncated,
        "text": text,
        "base64": None if text is not None else base64.b64encode(shown).decode(),
    }


def result_view(
    task: TaskInfo, now_ms: int | None, limit: int = PAYLOAD_LIMIT
) -> dict[str, Any] | None:
    """A completed task's stored result, shown as a payload is (`encoding` the serializer that
    wrote it, ``raw`` for bytes; never deserialized); None when there is none, or when its
    result_ttl has passed by `now_ms` (None: shown while the record holds it)."""
    if task.result is None:
        return None
    if now_ms is not None and not task.result_kept(now_ms):
        return None
    encoding, _, data = task.result.partition(b"\n")
    return payload_view(data, encoding.decode("utf-8", "replace"), limit)


def error_view(error: TaskError | None) -> dict[str, str] | None:
    """A dead task's error: type, message and (truncated) traceback, as text."""
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def task_view(
    task: TaskInfo, *, payload_limit: int = PAYLOAD_LIMIT, now_ms: int | None = None
) -> dict[str, Any]:
    """A task as JSON. `now_ms` (the backend's time) hides a result whose result_ttl passed."""
    return {
        "id": task.id,
        "queue": task.queue,
        "type": task.type,
        "state": task.state.value,
        "priority": task.priority,
        "max_retry": task.max_retry,
        "retried": task.retried,
        "deliveries": task.deliveries,
        "timeout_ms": task.timeout_ms,
        "labels": dict(task.labels),
        "unique_key": task.unique_key,
        "created_ms": task.created_ms,
        "started_ms": task.started_ms,
        "completed_ms": task.completed_ms,
        "next_run_ms": task.next_run_ms,
        "ended_ms": task.ended_ms,
        "last_error": task.last_error,
        "consumer": task.consumer,
        "payload": payload_view(task.payload, task.encoding, payload_limit),
        "result": result_view(task, now_ms, payload_limit),
        "result_ttl_ms": task.result_ttl_effective_ms,
        "error": error_view(task.error),
        "cancel_requested": task.cancel_requested,
        "headers": dict(task.headers),
    }


def history_view(minutes: list[MinuteCount]) -> dict[str, Any]:
    """Per-minute counts as columns (oldest minute first), and their sums: an hour of a hundred
    queues stays a small document."""
    return {
        "start_ms": minutes[0].minute_ms if minutes else None,
        "minute_ms": 60_000,
        "completed": [m.completed for m in minutes],
        "failed": [m.failed for m in minutes],
        "dead": [m.dead for m in minutes],
        "total": {
            "completed": sum(m.completed for m in minutes),
            "failed": sum(m.failed for m in minutes),
            "dead": sum(m.dead for m in minutes),
        },
    }


def queue_view(info: QueueInfo, history: list[MinuteCount] | None = None) -> dict[str, Any]:
    """A queue; `error` is null (a queue of an overview that could not be read has its text)."""
    view = {
        "name": info.name,
        "error": None,
        "paused": info.paused,
        "counts": {state.value: info.counts.get(state, 0) for state in STATES},
        "oldest_pending_age_ms": info.oldest_pending_age_ms,
    }
    if history is not None:
        view["history"] = history_view(history)
    return view


def unreadable_view(queue: Unreadable) -> dict[str, Any]:
    """A queue that could not be read: its name and the error's text (type and message)."""
    return {"name": queue.queue, "error": queue.error}


def summary_view(summary: QueueSummary | Unreadable) -> dict[str, Any]:
    """A queue of an overview: as `queue_view` with its history, or, when it could not be read,
    its error and null where the counts would be (never zeros that are not)."""
    if isinstance(summary, Unreadable):
        return {
            **unreadable_view(summary),
            "paused": None,
            "counts": None,
            "oldest_pending_age_ms": None,
            "history": None,
        }
    return queue_view(summary.info, summary.history)


def consumer_view(consumer: ConsumerInfo) -> dict[str, Any]:
    """A consumer, with the host and pid its name gives when it is a default name
    (``hostname:pid:random``), else null."""
    host_pid = parse_consumer_name(consumer.name)
    return {
        "name": consumer.name,
        "queue": consumer.queue,
        "host": None if host_pid is None else host_pid[0],
        "pid": None if host_pid is None else host_pid[1],
        "idle_ms": consumer.idle_ms,
        "held": list(consumer.held),
    }


def schedule_view(schedule: ScheduleInfo) -> dict[str, Any]:
    """A periodic schedule: what it enqueues where, when, and what it fired last."""
    definition = schedule.definition
    return {
        "id": schedule.id,
        "queue": schedule.queue,
        "type": definition.template.type,
        "spec": definition.spec,
        "tz": definition.tz,
        "catchup": definition.catchup,
        "revision": schedule.revision,
        "next_ms": schedule.next_ms,
        "last_fire_ms": schedule.last_fire_ms,
        "last_task_id": schedule.last_task_id,
    }
