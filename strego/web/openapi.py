"""The OpenAPI 3.1 document of the JSON API, served at /api/v1/openapi.json. Written by hand next
to the routes (a test checks that every route is in it and every path in it is a route); its
server URL is the app's mount point, so a client behind a proxy prefix finds the API."""

from __future__ import annotations

from typing import Any

from strego import __version__
from strego.backends.base import MAX_MINUTES, MAX_PAGE
from strego.history.events import STATES as _HISTORY_STATE_LETTERS
from strego.task import TaskState
from strego.web.history import MAX_LIMIT as _HISTORY_LIMIT

_STATES = [s.value for s in TaskState]
_HISTORY_STATES = list(_HISTORY_STATE_LETTERS.values())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "refused: `error` says why")
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}

_QUEUE = {"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}
_409 = (404, 409)
_TASK = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _ERROR for s in statuses}


def _action(summary: str, params: list[Any], result: str, *statuses: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": params,
        "responses": {"200": _json(_ref(result), "done"), **_errors(403, 405, *statuses, 503)},
    }


_HISTORY = (
    "needs the task history (strego web --postgres DSN): 404 `not_configured` without it, 503 when"
    " its PostgreSQL cannot be read"
)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "a code: not_found, wrong_state, ..."},
            "message": {"type": "string"},
            "state": {**_NULLABLE_STR, "description": "409: the task's state now"},
        },
    },
    "Counts": {
        "type": "object",
        "properties": {s: {"type": "integer"} for s in _STATES},
    },
    "Queue": {
        "type": "object",
        "description": (
            "a queue; in the list of every queue, one that could not be read (another program's"
            " key under the prefix, say) has its `error` and null counts, paused and history"
        ),
        "required": ["name", "error", "paused", "counts"],
        "properties": {
            "name": {"type": "string"},
            "error": {
                **_NULLABLE_STR,
                "description": "null, or why the queue could not be read (text: type and message)",
            },
            "paused": {"type": ["boolean", "null"]},
            "counts": {"anyOf": [_ref("Counts"), {"type": "null"}]},
            "oldest_pending_age_ms": {
                **_NULLABLE_INT,
                "description": "how long the next task to start has waited (null: none pending)",
            },
            "history": {"anyOf": [_ref("History"), {"type": "null"}]},
        },
    },
    "Unreadable": {
        "type": "object",
        "description": "a queue that could not be read, and why",
        "required": ["name", "error"],
        "properties": {"name": {"type": "string"}, "error": {"type": "string"}},
    },
    "History": {
        "type": "object",
        "description": "per-minute counts (the last hour unless asked), oldest minute first",
        "properties": {
            "start_ms": {**_NULLABLE_INT, "description": "the first minute's start"},
            "minute_ms": {"const": 60000},
            "completed": {"type": "array", "items": {"type": "integer"}},
            "failed": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "runs that failed and went to retry",
            },
            "dead": {"type": "array", "items": {"type": "integer"}},
            "total": {"type": "object"},
        },
    },
    "Payload": {
        "type": "object",
        "description": "never deserialized: `text` when the shown bytes are UTF-8, else `base64`",
        "properties": {
            "encoding": {"type": "string"},
            "size": {"type": "integer", "description": "bytes of the whole payload"},
            "truncated": {"type": "boolean"},
            "text": _NULLABLE_STR,
            "base64": _NULLABLE_STR,
        },
    },
    "Task": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "queue": {"type": "string"},
            "type": {"type": "string"},
            "state": {"enum": _STATES},
            "priority": {"type": "integer"},
            "max_retry": {"type": "integer"},
            "retried": {"type": "integer"},
            "deliveries": {"type": "integer"},
            "timeout_ms": _NULLABLE_INT,
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "unique_key": _NULLABLE_STR,
            "created_ms": {"type": "integer"},
            "started_ms": _NULLABLE_INT,
            "completed_ms": _NULLABLE_INT,
            "next_run_ms": _NULLABLE_INT,
            "ended_ms": _NULLABLE_INT,
            "last_error": _NULLABLE_STR,
            "consumer": {**_NULLABLE_STR, "description": "the holder of an active task"},
            "payload": _ref("Payload"),
            "result": {
                "oneOf": [_ref("Payload"), {"type": "null"}],
                "description": "a completed task's return value as stored (`encoding` its "
                "serializer, `raw` for bytes), never deserialized; null when none, or once "
                "result_ttl_ms has passed since it ended",
            },
            "result_ttl_ms": {"type": "integer", "description": "how long the result is kept"},
            "error": {
                "oneOf": [_ref("TaskError"), {"type": "null"}],
                "description": "a dead task's error, when its failure recorded one",
            },
            "cancel_requested": {
                "type": "boolean",
                "description": "cancel was asked for while the task ran: its server stops it",
            },
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "propagation headers (trace context, baggage) set at enqueue",
            },
        },
    },
    "TaskError": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "description": "the exception's type name"},
            "message": {"type": "string"},
            "traceback": {"type": "string", "description": "truncated"},
        },
    },
    "Schedule": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "queue": {"type": "string"},
            "type": {"type": "string", "description": "the type of the task each tick enqueues"},
            "spec": {"type": "string", "description": "a cron expression, or `every <n>ms`"},
            "tz": {"type": "string", "description": "the time zone of a cron expression"},
            "catchup": {"enum": ["latest", "all", "none"]},
            "revision": {"type": "integer", "description": "moves when the definition changes"},
            "next_ms": {"type": "integer", "description": "the next tick to fire"},
            "last_fire_ms": {**_NULLABLE_INT, "description": "the last tick fired"},
            "last_task_id": {**_NULLABLE_STR, "description": "the task that tick enqueued"},
        },
    },
    "TaskPage": {
        "type": "object",
        "properties": {
            "queue": {"type": "string"},
            "state": {"enum": _STATES},
            "tasks": {"type": "array", "items": _ref("Task")},
            "next_cursor": {**_NULLABLE_STR, "description": "null at the end"},
        },
    },
    "Worker": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "queue": {"type": "string"},
            "host": {**_NULLABLE_STR, "description": "from a default name host:pid:random"},
            "pid": _NULLABLE_INT,
            "idle_ms": {"type": "integer"},
            "held": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TaskAction": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "action": {"type": "string"},
            "changed": {"type": "boolean"},
            "state": {**_NULLABLE_STR, "description": "the task's state after (null: deleted)"},
        },
    },
    "HistoryTask": {
        "type": "object",
        "description": "a task as the history last saw it (it outlives Redis's retention)",
        "properties": {
            "id": {"type": "string"},
            "queue": {"type": "string"},
            "type": {**_NULLABLE_STR, "description": "null when its enqueue was not recorded"},
            "state": {"enum": _HISTORY_STATES},
            "created_ms": {"type": "integer", "description": "from its id (0: no time in it)"},
            "updated_ms": {"type": "integer", "description": "its last event"},
            "enqueued_ms": _NULLABLE_INT,
            "retried": _NULLABLE_INT,
            "last_error": _NULLABLE_STR,
            "consumer": {**_NULLABLE_STR, "description": "of its last event"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "payload": {"oneOf": [_ref("Payload"), {"type": "null"}]},
        },
    },
    "HistoryEvent": {
        "type": "object",
        "description": "one transition of the task",
        "properties": {
            "at_ms": {"type": "integer"},
            "state": {"enum": _HISTORY_STATES, "description": "the state it reached"},
            "attempt": {
                **_NULLABLE_INT,
                "description": "the attempt (the n-th start, `active`) it belongs to; null before",
            },
            "retried": _NULLABLE_INT,
            "error": _NULLABLE_STR,
            "consumer": _NULLABLE_STR,
        },
    },
    "HistoryPage": {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": _ref("HistoryTask")},
            "next_cursor": {**_NULLABLE_STR, "description": "null at the end"},
        },
    },
    "TaskStory": {
        "type": "object",
        "properties": {
            "task": _ref("HistoryTask"),
            "events": {"type": "array", "items": _ref("HistoryEvent")},
        },
    },
    "QueueAction": {
        "type": "object",
        "properties": {
            "queue": {"type": "string"},
            "action": {"type": "string"},
            "changed": {"type": "integer", "description": "how many tasks it changed"},
            "paused": {"type": "boolean"},
            "states": {"type": "array", "items": {"enum": _STATES}},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/openapi.json": {
        "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}
    },
    "/queues": {
        "get": {
            "summary": (
                "every queue: counts per state, paused, oldest pending age, last hour; a queue"
                " that could not be read has its error instead"
            ),
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"queues": {"type": "array", "items": _ref("Queue")}},
                    },
                    "queues by name",
                ),
                **_errors(503),
            },
        }
    },
    "/queues/{queue}": {
        "get": {
            "summary": "one queue; its history over `minutes`, of one task `type` if given",
            "parameters": [
                _QUEUE,
                {
                    "name": "minutes",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES},
                },
                {"name": "type", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("Queue"), "the queue"), **_errors(400, 404, 503)},
        }
    },
    "/queues/{queue}/tasks": {
        "get": {
            "summary": "a page of the tasks of one state",
            "parameters": [
                _QUEUE,
                {"name": "state", "in": "query", "schema": {"enum": _STATES, "default": "pending"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "the previous page's next_cursor",
                },
            ],
            "responses": {"200": _json(_ref("TaskPage"), "a page"), **_errors(400, 404, 503)},
        }
    },
    "/queues/{queue}/pause": {"post": _action("pause a queue", [_QUEUE], "QueueAction", 404)},
    "/queues/{queue}/resume": {"post": _action("resume a queue", [_QUEUE], "QueueAction", 404)},
    "/queues/{queue}/requeue-dead": {
        "post": _action("requeue every dead task", [_QUEUE], "QueueAction", 404)
    },
    "/queues/{queue}/purge": {
        "post": _action(
            "delete the tasks of the given states (never active ones)",
            [
                _QUEUE,
                {
                    "name": "state",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "array", "items": {"enum": _STATES}},
                    "style": "form",
                    "explode": True,
                },
            ],
            "QueueAction",
            400,
            404,
        )
    },
    "/tasks/{id}": {
        "get": {
            "summary": "one task",
            "parameters": [_TASK],
            "responses": {"200": _json(_ref("Task"), "the task"), **_errors(404, 503)},
        },
        "delete": _action("delete a task that is not active", [_TASK], "TaskAction", 404, 409),
    },
    "/tasks/{id}/payload": {
        "get": {
            "summary": "the whole payload as stored, to download",
            "parameters": [_TASK],
            "responses": {
                "200": {
                    "description": "the payload bytes",
                    "content": {"application/octet-stream": {}},
                },
                **_errors(404, 503),
            },
        }
    },
    "/tasks/{id}/requeue": {
        "post": _action("a dead task back to pending", [_TASK], "TaskAction", 404, 409)
    },
    "/tasks/{id}/cancel": {
        "post": _action(
            "cancel a task (a running one: its server stops it)", [_TASK], "TaskAction", 404, 409
        )
    },
    "/tasks/{id}/run": {
        "post": _action("a scheduled or retry task runs now", [_TASK], "TaskAction", *_409)
    },
    "/workers": {
        "get": {
            "summary": "each consumer of each queue",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "workers": {"type": "array", "items": _ref("Worker")},
                            "unreadable": {
                                "type": "array",
                                "items": _ref("Unreadable"),
                                "description": "queues whose consumers could not be read",
                            },
                        },
                    },
                    "consumers by name (of every queue that could be read)",
                ),
                **_errors(503),
            },
        }
    },
    "/schedules": {
        "get": {
            "summary": "every periodic schedule: next tick, last tick fired and its task",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "now_ms": {"type": "integer", "description": "the backend's time"},
                            "schedules": {"type": "array", "items": _ref("Schedule")},
                        },
                    },
                    "schedules by id",
                ),
                **_errors(503),
            },
        }
    },
    "/history": {
        "get": {
            "summary": (
                "search the task history, newest first; every filter given must match. " + _HISTORY
            ),
            "parameters": [
                {"name": "queue", "in": "query", "schema": {"type": "string"}},
                {"name": "type", "in": "query", "schema": {"type": "string"}},
                {"name": "state", "in": "query", "schema": {"enum": _HISTORY_STATES}},
                {
                    "name": "label",
                    "in": "query",
                    "schema": {"type": "array", "items": {"type": "string"}},
                    "style": "form",
                    "explode": True,
                    "description": "key=value; repeat it: every pair must match",
                },
                {
                    "name": "text",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "words of the type, labels or payload, or a task id",
                },
                *(
                    {
                        "name": name,
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": f"creation time, {how}: an ISO 8601 date-time with its"
                        " time zone (2026-03-01T12:00:00Z) or epoch milliseconds",
                    }
                    for name, how in (("since", "inclusive"), ("until", "exclusive"))
                ),
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": _HISTORY_LIMIT},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "the previous page's next_cursor",
                },
            ],
            "responses": {
                "200": _json(_ref("HistoryPage"), "a page"),
                **_errors(400, 404, 503),
            },
        }
    },
    "/history/{id}": {
        "get": {
            "summary": "a task's whole story: every event, each attempt with its error. "
            + _HISTORY,
            "parameters": [_TASK],
            "responses": {
                "200": _json(_ref("TaskStory"), "the story"),
                **_errors(400, 404, 503),
            },
        }
    },
}


def document(api_root: str) -> dict[str, Any]:
    """The document for the API at `api_root` (the app's mount point and /api/v1)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "strego", "version": __version__},
        "servers": [{"url": api_root}],
        "paths": _PATHS,
        "components": {"schemas": _SCHEMAS},
    }
