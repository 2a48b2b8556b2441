"""The web UI: server-rendered pages (Jinja2, autoescaped: task data is only ever text) for the
overview, a queue, a task (its payload, result and error), the workers, the schedules and, when
a history in PostgreSQL is configured, the history's search and each task's whole story, a
static script and stylesheet, and the live overview as Server-Sent Events with a JSON poll as
fallback. Actions are the script calling the JSON API with the page's CSRF token; the pages
never change anything themselves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from strego import operate
from strego.backends.base import MAX_SCAN, Backend
from strego.errors import InvalidCursorError, InvalidTaskError
from strego.operate import QueueNotFoundError
from strego.report import dumps
from strego.task import TASK_ID_PATTERN, TaskInfo, TaskState
from strego.web import csrf
from strego.web.api import Api
from strego.web.history import (
    HISTORY_STATES,
    NOT_CONFIGURED,
    HistoryUnavailableError,
    attempts,
    read,
    search_arguments,
)
from strego.web.live import LiveOverview
from strego.web.payload_view import payload_view

HERE = Path(__file__).parent
#: Tasks per page of a queue listing.
PAGE_SIZE = 50
#: Backend pages read at most for one filtered page of the UI (bounded work per request).
FILTER_PAGES = 10

#: No inline script or style anywhere: everything comes from /static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

#: What can be done to a task in each state (the API refuses the rest with 409 anyway).
TASK_ACTIONS: dict[str, tuple[TaskState, ...]] = {
    "run": (TaskState.SCHEDULED, TaskState.RETRY),
    "requeue": (TaskState.DEAD,),
    "cancel": (TaskState.SCHEDULED, TaskState.PENDING, TaskState.RETRY),
    "delete": tuple(s for s in TaskState if s is not TaskState.ACTIVE),
}


def age(ms: int | None) -> str:
    """A duration for people: 45s, 3m 12s, 5h 02m, 2d 03h."""
    if ms is None:
        return "-"
    s = max(0, ms // 1000)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc(at: datetime | None) -> str:
    """A history time (an aware datetime) for people, in UTC like `when`."""
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


#: Characters of a last error shown in a row of the history's search (the story has it whole).
EXCERPT = 160


def excerpt(text: str | None) -> str:
    """The first line of an error, cut to EXCERPT characters."""
    if not text:
        return ""
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= EXCERPT else line[: EXCERPT - 1] + "…"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template is HTML: task data must never become markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = age
    env.filters["when"] = when
    env.filters["utc"] = utc
    env.filters["excerpt"] = excerpt
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return env


def _parse_time(value: str) -> int | None:
    """A filter bound from a datetime-local field, read as UTC; None when empty or invalid."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class UI:
    def __init__(self, api: Api, *, readonly: bool) -> None:
        self.api = api
        self.backend: Backend = api.backend
        self.readonly = readonly
        self.live = LiveOverview(self._queues, self._workers, api.overview.max_age_s)
        self.env = _environment()

    async def _queues(self) -> list[dict[str, Any]]:
        return (await self.api.overview.get()).data

    async def _workers(self) -> list[dict[str, Any]]:
        return (await self.api.workers.get()).data

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.overview, name="ui-overview"),
            Route("/queues/{queue}", self.queue, name="ui-queue"),
            Route("/jump", self.jump, name="ui-jump"),
            Route("/tasks/{id}", self.task, name="ui-task"),
            Route("/workers", self.workers, name="ui-workers"),
            Route("/schedules", self.schedules, name="ui-schedules"),
            Route("/history", self.history, name="ui-history"),
            Route("/history/{id}", self.history_task, name="ui-history-task"),
            Route("/ui/events", self.events, name="ui-events"),
            Route("/ui/overview.json", self.overview_json, name="ui-overview-json"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="ui-static"),
        ]

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        base = (request.scope.get("root_path", "") or "").rstrip("/")
        token = csrf.page_token(request)
        html = self.env.get_template(template).render(
            base=base,
            csrf_token=token,
            readonly=self.readonly,
            states=list(TaskState),
            history_on=self.api.history is not None,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-store"
        csrf.set_cookie(response, request, token)
        return response

    def not_found(self, request: Request, what: str, **context: Any) -> Response:
        context = {"history_url": None, "history_note": None, **context}
        return self.render(request, "not_found.html", 404, title="Not found", what=what, **context)

    async def overview(self, request: Request) -> Response:
        snapshot = await self.live.current()
        return self.render(request, "overview.html", title="Queues", snapshot=snapshot)

    async def overview_json(self, request: Request) -> Response:
        snapshot = await self.live.current()
        headers = dict(SECURITY_HEADERS, **{"Cache-Control": "no-store"})
        return Response(dumps(snapshot), media_type="application/json", headers=headers)

    async def events(self, request: Request) -> Response:
        headers = dict(SECURITY_HEADERS, **{"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        return StreamingResponse(
            self.live.events(), media_type="text/event-stream", headers=headers
        )

    async def queue(self, request: Request) -> Response:
        name = request.path_params["queue"]
        try:
            await operate.require_queue(self.backend, name)
        except QueueNotFoundError:
            return self.not_found(request, f"queue {name!r}")
        params = request.query_params
        try:
            state = TaskState(params.get("state", "pending"))
        except ValueError:
            state = TaskState.PENDING
        type_filter = params.get("type", "")
        since, until = params.get("from", ""), params.get("to", "")
        since_ms, until_ms = _parse_time(since), _parse_time(until)
        cursor = params.get("cursor") or None
        info = await self.backend.queue_info(name)

        def keep(task: TaskInfo) -> bool:
            return (
                (not type_filter or type_filter in task.type)
                and (since_ms is None or task.created_ms >= since_ms)
                and (until_ms is None or task.created_ms <= until_ms)
            )

        tasks: list[TaskInfo] = []
        error = None
        try:
            for _ in range(FILTER_PAGES):
                page = await self.backend.list_tasks(
                    name, state, cursor=cursor, limit=min(MAX_SCAN, PAGE_SIZE - len(tasks))
                )
                tasks.extend(t for t in page.tasks if keep(t))
                cursor = page.next_cursor
                if cursor is None or len(tasks) >= PAGE_SIZE:
                    break
        except InvalidCursorError:
            error = "That page's cursor is not valid for this listing: first page shown."
            cursor = None
        filters = {"state": state.value, "type": type_filter, "from": since, "to": until}
        next_url = None
        if cursor is not None:
            query = urlencode({k: v for k, v in {**filters, "cursor": cursor}.items() if v})
            next_url = f"?{query}"
        first_url = "?" + urlencode({k: v for k, v in filters.items() if v})
        return self.render(
            request,
            "queue.html",
            title=f"Queue {name}",
            queue=name,
            info=info,
            state=state,
            tasks=tasks,
            filters=filters,
            next_url=next_url,
            first_url=first_url,
            paged=bool(params.get("cursor")),
            error=error,
            actions=TASK_ACTIONS,
            now_ms=self.backend.clock(),
        )

    async def jump(self, request: Request) -> Response:
        task_id = request.query_params.get("id", "").strip()
        base = (request.scope.get("root_path", "") or "").rstrip("/")
        if not TASK_ID_PATTERN.fullmatch(task_id):
            return self.not_found(request, f"task {task_id!r}")
        return RedirectResponse(f"{base}/tasks/{quote(task_id, safe='')}", status_code=303)

    async def _task(self, request: Request) -> TaskInfo | None:
        task_id = request.path_params["id"]
        if not TASK_ID_PATTERN.fullmatch(task_id):
            return None
        return await self.backend.get_task(task_id)

    async def task(self, request: Request) -> Response:
        task = await self._task(request)
        if task is None:
            return await self._task_gone(request, request.path_params["id"])
        now_ms = self.backend.clock()
        result = result_encoding = None
        if task.result is not None and task.result_kept(now_ms):
            encoding, _, data = task.result.partition(b"\n")
            result, result_encoding = payload_view(data), encoding.decode("utf-8", "replace")
        return self.render(
            request,
            "task.html",
            title=f"Task {task.id}",
            task=task,
            payload=payload_view(task.payload),
            result=result,
            result_encoding=result_encoding,
            actions=[a for a, states in TASK_ACTIONS.items() if task.state in states],
            now_ms=now_ms,
        )

    async def schedules(self, request: Request) -> Response:
        found = await self.backend.list_schedules()
        return self.render(
            request,
            "schedules.html",
            title="Schedules",
            schedules=found.schedules,
            now_ms=found.now_ms,
        )

    async def workers(self, request: Request) -> Response:
        read = await self.api.workers.get()
        by_name: dict[str, dict[str, Any]] = {}
        for c in read.data:
            row = by_name.setdefault(c["name"], {"name": c["name"], "queues": [], "held": []})
            held = len(c["held"])
            row["queues"].append({"queue": c["queue"], "idle_ms": c["idle_ms"], "held": held})
            row["held"].extend(c["held"])
        workers = [by_name[name] for name in sorted(by_name)]
        for row in workers:
            row["idle_ms"] = min(q["idle_ms"] for q in row["queues"])
        return self.render(
            request, "workers.html", title="Workers", workers=workers, unreadable=read.unreadable
        )

    # -- the task history (PostgreSQL), when configured ------------------------------------------

    async def _task_gone(self, request: Request, task_id: str) -> Response:
        """Redis has no such task (never created, or past its retention): the history's story of
        it is offered when the history has one."""
        history = self.api.history
        if history is None or not TASK_ID_PATTERN.fullmatch(task_id):
            return self.not_found(request, f"task {task_id!r}")
        try:
            story = await read(lambda: history.task(task_id))
        except (InvalidTaskError, HistoryUnavailableError) as exc:
            note = f"The history could not be searched for it: {exc}"
            return self.not_found(request, f"task {task_id!r}", history_note=note)
        if story is None:
            note = "The task history has no such task either."
            return self.not_found(request, f"task {task_id!r}", history_note=note)
        base = (request.scope.get("root_path", "") or "").rstrip("/")
        url = f"{base}/history/{quote(task_id, safe='')}"
        return self.not_found(request, f"task {task_id!r}", history_url=url)

    def _history_error(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "history_error.html", status, title="History", message=message)

    async def history(self, request: Request) -> Response:
        """The search: the form's GET query string is the search's arguments (date-times without
        a zone read as UTC, as the fields say)."""
        history = self.api.history
        if history is None:
            return self._history_error(request, 404, NOT_CONFIGURED)
        params = request.query_params
        kept = ("queue", "type", "state", "label", "text", "since", "until", "limit")
        form = {name: params.get(name, "") for name in kept}
        tasks: list[Any] = []
        error, status, next_url = None, 200, None
        try:
            arguments = search_arguments(params, naive_utc=True)
            page = await read(lambda: history.search(**arguments))
        except InvalidTaskError as exc:
            error, status = str(exc), 400
        except HistoryUnavailableError as exc:
            error, status = str(exc), 503
        else:
            tasks = page.tasks
            if page.next_cursor is not None:
                # every label= of the search (each must match), not only the form's first one
                query = [
                    (k, v)
                    for k in kept
                    for v in (params.getlist(k) if k == "label" else [form[k]])
                    if v
                ]
                next_url = "?" + urlencode([*query, ("cursor", page.next_cursor)])
        return self.render(
            request,
            "history.html",
            status,
            title="History",
            form=form,
            history_states=HISTORY_STATES,
            tasks=tasks,
            error=error,
            next_url=next_url,
            paged=bool(params.get("cursor")),
            first_url="?" + urlencode({k: v for k, v in form.items() if v}),
        )

    async def history_task(self, request: Request) -> Response:
        """A task's whole story: every event (each attempt and how it ended) and its enqueue."""
        history = self.api.history
        if history is None:
            return self._history_error(request, 404, NOT_CONFIGURED)
        task_id = request.path_params["id"]
        try:
            story = await read(lambda: history.task(task_id))
        except InvalidTaskError as exc:
            return self._history_error(request, 400, str(exc))
        except HistoryUnavailableError as exc:
            return self._history_error(request, 503, str(exc))
        if story is None:
            return self.not_found(request, f"task {task_id!r} in the history")
        task = story.task
        return self.render(
            request,
            "history_task.html",
            title=f"History of task {task.id}",
            task=task,
            events=list(zip(story.events, attempts(story.events), strict=True)),
            payload=None if task.payload is None else payload_view(task.payload),
        )
