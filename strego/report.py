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

from strego.backends.base import ConsumerInfo, MinuteCount, QueueInfo
from strego.server import parse_consumer_name
from strego.task import TaskInfo, TaskState

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


def task_view(task: TaskInfo, *, payload_limit: int = PAYLOAD_LIMIT) -> dict[str, Any]:
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
    view = {
        "name": info.name,
        "paused": info.paused,
        "counts": {state.value: info.counts.get(state, 0) for state in STATES},
        "oldest_pending_age_ms": info.oldest_pending_age_ms,
    }
    if history is not None:
        view["history"] = history_view(history)
    return view


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
