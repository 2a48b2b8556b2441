"""Structured logging: the `extra` fields every log line about a task carries, and a JSON
formatter for log pipelines.

Each line of the server, the client and the middleware runner about one task has the attributes
``task_id``, ``task_type``, ``queue`` and ``attempt`` (0 for a task not yet run, at enqueue) on
its `logging.LogRecord`. Nothing is logged at INFO or above per task that succeeds: only
failures (WARNING) and the server's lifecycle (INFO); starts and completions are at DEBUG.

JSON logs::

    import logging
    from strego.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from strego.message import TaskMessage
from strego.task import TaskInfo

#: The `extra` fields of a task's log lines.
TASK_FIELDS = ("task_id", "task_type", "queue", "attempt")


def task_extra(task: TaskInfo | TaskMessage) -> dict[str, Any]:
    """The `extra=` of a log call about `task`."""
    attempt = task.retried + 1 if isinstance(task, TaskInfo) else 0
    return {"task_id": task.id, "task_type": task.type, "queue": task.queue, "attempt": attempt}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the task's
    fields when the line is about one, and the exception's text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in TASK_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
