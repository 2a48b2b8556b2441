"""The task history (`strego.history.PostgresHistory`, PostgreSQL) in the web app, when it is
configured (`strego web --postgres DSN`): the search's query parameters, the JSON of a history
task and of its story, the API's two reads (GET /api/v1/history and /api/v1/history/{id}), and
PostgreSQL's failures as typed errors (400 for input it refuses, 503 when it cannot be read,
never a 500). The UI's pages on the same reads are in `strego.web.ui`.

Nothing here imports psycopg until a history is read: the web app runs without the `postgres`
extra, and then has no history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from strego.errors import BackendError, InvalidTaskError, NaiveDatetimeError
from strego.history.events import STATES
from strego.report import LIST_PAYLOAD_LIMIT, PAYLOAD_LIMIT, payload_view
from strego.web.responses import JsonResponse, error

if TYPE_CHECKING:
    from strego.history.postgres import HistoryRecord, HistoryTask, PostgresHistory, TaskStory

T = TypeVar("T")

#: Every state a history task or event can be in (the task states, and `deleted`).
HISTORY_STATES = tuple(STATES.values())
#: Tasks per page when `limit` is not given, and the most (PostgresHistory.search's bound).
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: The answer of a history route when no history is configured.
NOT_CONFIGURED = "no task history is configured: start strego web with --postgres DSN"


class HistoryUnavailableError(BackendError):
    """The history's PostgreSQL could not be read (down, refused, wrong DSN): 503."""


async def read(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, a read of the history, with PostgreSQL's errors made typed: a value PostgreSQL
    refuses (a NUL in a text) is invalid input, anything else of psycopg means the history cannot
    be read now."""
    import psycopg

    try:
        return await call()
    except psycopg.DataError as exc:
        raise InvalidTaskError(f"the history refused the query: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise HistoryUnavailableError(
            f"the history's PostgreSQL cannot be read: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- the search's parameters ----------------------------------------------------------------------


def _text(params: QueryParams, name: str) -> str | None:
    value = params.get(name, "")
    if "\x00" in value:
        raise InvalidTaskError(f"{name} must not contain a NUL character")
    return value if value.strip() else None


def parse_instant(value: str, name: str, *, naive_utc: bool = False) -> datetime | None:
    """A bound of the creation time: an ISO 8601 date-time with its time zone (a trailing Z is
    UTC), or epoch milliseconds. Without a time zone it is refused (NaiveDatetimeError), unless
    `naive_utc` (the UI's date-time fields, labelled UTC)."""
    value = value.strip()
    if not value:
        return None
    try:
        if value.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise InvalidTaskError(
            f"{name} must be an ISO 8601 date-time with a time zone (2026-03-01T12:00:00Z)"
            f" or epoch milliseconds, not {value!r}"
        ) from None
    if parsed.tzinfo is None:
        if not naive_utc:
            raise NaiveDatetimeError(
                f"{name} has no time zone: add Z or an offset (2026-03-01T12:00:00Z)"
            )
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def search_arguments(params: QueryParams, *, naive_utc: bool = False) -> dict[str, Any]:
    """The keyword arguments of `PostgresHistory.search` from a query string (the API's and the
    UI's form): queue, type, state, label (repeatable key=value, all must match), text, since,
    until, limit, cursor. Bad input raises InvalidTaskError before any query."""
    state = _text(params, "state")
    if state is not None and state not in HISTORY_STATES:
        raise InvalidTaskError(f"unknown state {state!r}: one of {', '.join(HISTORY_STATES)}")
    labels: dict[str, str] = {}
    for pair in params.getlist("label"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key or "\x00" in pair:
            raise InvalidTaskError(f"label must be key=value, not {pair!r}")
        labels[key] = value
    limit_text = params.get("limit", "").strip()
    limit = DEFAULT_LIMIT
    if limit_text:
        limit = int(limit_text) if limit_text.isdigit() else 0
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidTaskError(
                f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit_text!r}"
            )
    return {
        "queue": _text(params, "queue"),
        "type": _text(params, "type"),
        "state": state,
        "label": labels or None,
        "text": _text(params, "text"),
        "since": parse_instant(params.get("since", ""), "since", naive_utc=naive_utc),
        "until": parse_instant(params.get("until", ""), "until", naive_utc=naive_utc),
        "limit": limit,
        "cursor": _text(params, "cursor"),
    }


# -- the JSON views ---------------------------------------------------------------------------


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def history_task_view(task: HistoryTask, payload_limit: int = PAYLOAD_LIMIT) -> dict[str, Any]:
    """A task as the history last saw it; its payload never deserialized (as the live task's)."""
    return {
        "id": task.id,
        "queue": task.queue,
        "type": task.type,
        "state": task.state,
        "created_ms": _ms(task.created_at),
        "updated_ms": _ms(task.updated_at),
        "enqueued_ms": _ms(task.enqueued_at),
        "retried": task.retried,
        "last_error": task.last_error,
        "consumer": task.consumer,
        "labels": task.labels,
        "payload": (
            None
            if task.payload is None
            else payload_view(task.payload, task.encoding or "", payload_limit)
        ),
    }


def attempts(events: Sequence[HistoryRecord]) -> list[int | None]:
    """For each event, the attempt it belongs to: the n-th start (`active`) so far, None before
    the first. A fetch records no retry count, so the starts are counted."""
    started = 0
    found: list[int | None] = []
    for event in events:
        if event.state == "active":
            started += 1
        found.append(started or None)
    return found


def story_view(story: TaskStory) -> dict[str, Any]:
    return {
        "task": history_task_view(story.task),
        "events": [
            {
                "at_ms": _ms(e.at),
                "state": e.state,
                "attempt": attempt,
                "retried": e.retried,
                "error": e.error,
                "consumer": e.consumer,
            }
            for e, attempt in zip(story.events, attempts(story.events), strict=True)
        ],
    }


# -- the API's routes ---------------------------------------------------------------------------


class HistoryApi:
    """GET /history (a search) and GET /history/{id} (a task's story) of the JSON API; 404
    `not_configured` without a history."""

    def __init__(self, history: PostgresHistory | None) -> None:
        self.history = history

    async def search(self, request: Request) -> Response:
        if self.history is None:
            return error(404, "not_configured", NOT_CONFIGURED)
        history = self.history
        arguments = search_arguments(request.query_params)
        page = await read(lambda: history.search(**arguments))
        return JsonResponse(
            {
                "tasks": [history_task_view(t, LIST_PAYLOAD_LIMIT) for t in page.tasks],
                "next_cursor": page.next_cursor,
            }
        )

    async def story(self, request: Request) -> Response:
        if self.history is None:
            return error(404, "not_configured", NOT_CONFIGURED)
        history = self.history
        task_id = request.path_params["id"]
        story = await read(lambda: history.task(task_id))
        if story is None:
            return error(404, "not_found", f"no task with id {task_id!r} in the history")
        return JsonResponse(story_view(story))
