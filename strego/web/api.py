"""The JSON API under /api/v1 (its document: `strego.web.openapi`). Every route uses the backend
contract only, through `strego.operate` (the CLI's operations too); refusals are typed errors that
`strego.web.responses` turns into 400/404/409/503."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from strego import operate
from strego.backends.base import MAX_MINUTES, MAX_PAGE, Backend
from strego.errors import InvalidTaskError
from strego.report import (
    LIST_PAYLOAD_LIMIT,
    consumer_view,
    dumps,
    queue_view,
    schedule_view,
    summary_view,
    task_view,
    unreadable_view,
)
from strego.task import TaskState
from strego.web.history import HistoryApi
from strego.web.openapi import document
from strego.web.responses import JsonResponse
from strego.web.shared import Shared

if TYPE_CHECKING:
    from strego.history.postgres import PostgresHistory

#: The minutes of per-minute history a queue's summary shows.
HISTORY_MINUTES = 60
#: Tasks per page when `limit` is not given.
DEFAULT_LIMIT = 50


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidTaskError(f"{name} must be a whole number from {low} to {high}")
    return value


def _limit(request: Request) -> int:
    return _int(request, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)


def _state(request: Request) -> TaskState:
    text = request.query_params.get("state", TaskState.PENDING.value)
    try:
        return TaskState(text)
    except ValueError:
        raise InvalidTaskError(f"no state {text!r}") from None


@attrs.frozen
class Snapshot:
    """A shared read: its data (for whoever builds on it) and its JSON answer, encoded once for
    every poller that gets it."""

    data: list[dict[str, Any]]
    body: bytes
    #: the queues that could not be read (the workers' read; the overview has them as rows)
    unreadable: list[dict[str, Any]] = attrs.field(factory=list)


def _snapshot(
    key: str, data: list[dict[str, Any]], unreadable: list[dict[str, Any]] | None = None
) -> Snapshot:
    if unreadable is None:
        return Snapshot(data, dumps({key: data}))
    return Snapshot(data, dumps({key: data, "unreadable": unreadable}), unreadable)


class Api:
    """The routes, bound to one backend and the reads shared by every caller (and to the task
    history in PostgreSQL, when there is one)."""

    def __init__(
        self,
        backend: Backend,
        *,
        snapshot_interval_s: float = 1.0,
        history: PostgresHistory | None = None,
    ) -> None:
        self.backend = backend
        self.history = history
        self._history_api = HistoryApi(history)
        #: every queue's summary, read once per interval whatever the number of pollers
        self.overview: Shared[Snapshot] = Shared(self._overview, snapshot_interval_s)
        self.workers: Shared[Snapshot] = Shared(self._workers, snapshot_interval_s)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/openapi.json", self.openapi),
            Route("/queues", self.list_queues),
            Route("/queues/{queue}", self.get_queue),
            Route("/queues/{queue}/tasks", self.list_tasks),
            Route("/queues/{queue}/pause", self.pause, methods=["POST"]),
            Route("/queues/{queue}/resume", self.resume, methods=["POST"]),
            Route("/queues/{queue}/requeue-dead", self.requeue_dead, methods=["POST"]),
            Route("/queues/{queue}/purge", self.purge, methods=["POST"]),
            Route("/tasks/{id}", self.get_task, methods=["GET"]),
            Route("/tasks/{id}", self.delete_task, methods=["DELETE"]),
            Route("/tasks/{id}/payload", self.payload),
            Route("/tasks/{id}/requeue", self.requeue_task, methods=["POST"]),
            Route("/tasks/{id}/cancel", self.cancel_task, methods=["POST"]),
            Route("/tasks/{id}/run", self.run_task, methods=["POST"]),
            Route("/workers", self.list_workers),
            Route("/schedules", self.list_schedules),
            Route("/history", self._history_api.search),
            Route("/history/{id}", self._history_api.story),
        ]

    def changed(self) -> None:
        """After a mutation: the next read shows it."""
        self.overview.invalidate()
        self.workers.invalidate()

    # -- reads --------------------------------------------------------------------------------

    async def _overview(self) -> Snapshot:
        found = await operate.overview(self.backend, HISTORY_MINUTES)
        return _snapshot("queues", [summary_view(q) for q in found])

    async def _workers(self) -> Snapshot:
        found = await operate.consumers(self.backend)
        return _snapshot(
            "workers",
            [consumer_view(c) for c in found.found],
            [unreadable_view(u) for u in found.unreadable],
        )

    async def openapi(self, request: Request) -> Response:
        # within the API's mount, root_path is the app's mount point and /api/v1
        return JsonResponse(document(request.scope.get("root_path", "")))

    async def list_queues(self, request: Request) -> Response:
        return JsonResponse.encoded((await self.overview.get()).body)

    async def get_queue(self, request: Request) -> Response:
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        minutes = _int(request, "minutes", HISTORY_MINUTES, 1, MAX_MINUTES)
        task_type = request.query_params.get("type") or None
        info = await self.backend.queue_info(queue)
        history = await self.backend.throughput(queue, minutes=minutes, task_type=task_type)
        return JsonResponse(queue_view(info, history))

    async def list_tasks(self, request: Request) -> Response:
        state, limit = _state(request), _limit(request)
        cursor = request.query_params.get("cursor") or None
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        page = await self.backend.list_tasks(queue, state, cursor=cursor, limit=limit)
        now = self.backend.clock()
        return JsonResponse(
            {
                "queue": queue,
                "state": state.value,
                "tasks": [
                    task_view(t, payload_limit=LIST_PAYLOAD_LIMIT, now_ms=now) for t in page.tasks
                ],
                "next_cursor": page.next_cursor,
            }
        )

    async def get_task(self, request: Request) -> Response:
        task = await operate.find_task(self.backend, request.path_params["id"])
        return JsonResponse(task_view(task, now_ms=self.backend.clock()))

    async def payload(self, request: Request) -> Response:
        """The whole payload, as stored, to download (never shown inline by a browser)."""
        task = await operate.find_task(self.backend, request.path_params["id"])
        name = f"{task.id}.{'json' if task.encoding == 'json' else 'bin'}"
        return Response(
            task.payload,
            media_type="application/octet-stream",
            headers={
                "content-disposition": f'attachment; filename="{name}"',
                "cache-control": "no-store",
                "x-strego-encoding": task.encoding.encode("ascii", "replace").decode(),
            },
        )

    async def list_workers(self, request: Request) -> Response:
        return JsonResponse.encoded((await self.workers.get()).body)

    async def list_schedules(self, request: Request) -> Response:
        # schedules are few (each is defined in code): one read of them all
        found = await self.backend.list_schedules()
        return JsonResponse(
            {"now_ms": found.now_ms, "schedules": [schedule_view(s) for s in found.schedules]}
        )

    # -- actions --------------------------------------------------------------------------------

    async def _task_action(self, request: Request, action: str) -> Response:
        task_id = request.path_params["id"]
        done = {
            "requeue": operate.requeue_task,
            "cancel": operate.cancel_task,
            "delete": operate.delete_task,
            "run": operate.run_task,
        }[action]
        try:
            await done(self.backend, task_id)
        finally:
            self.changed()
        task = await self.backend.get_task(task_id)
        state = None if task is None else task.state.value
        return JsonResponse({"id": task_id, "action": action, "changed": True, "state": state})

    async def requeue_task(self, request: Request) -> Response:
        return await self._task_action(request, "requeue")

    async def cancel_task(self, request: Request) -> Response:
        return await self._task_action(request, "cancel")

    async def run_task(self, request: Request) -> Response:
        return await self._task_action(request, "run")

    async def delete_task(self, request: Request) -> Response:
        return await self._task_action(request, "delete")

    async def pause(self, request: Request) -> Response:
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        await self.backend.pause(queue)
        self.changed()
        return JsonResponse({"queue": queue, "paused": True})

    async def resume(self, request: Request) -> Response:
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        await self.backend.resume(queue)
        self.changed()
        return JsonResponse({"queue": queue, "paused": False})

    async def requeue_dead(self, request: Request) -> Response:
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        try:
            changed = await self.backend.requeue_all_dead(queue)
        finally:
            self.changed()
        return JsonResponse({"queue": queue, "action": "requeue-dead", "changed": changed})

    async def purge(self, request: Request) -> Response:
        states = operate.purge_states(
            [s for value in request.query_params.getlist("state") for s in value.split(",") if s]
        )
        queue = await operate.require_queue(self.backend, request.path_params["queue"])
        try:
            changed = await self.backend.purge(queue, states)
        finally:
            self.changed()
        return JsonResponse(
            {
                "queue": queue,
                "action": "purge",
                "states": [s.value for s in states],
                "changed": changed,
            }
        )
