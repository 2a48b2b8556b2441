"""JSON answers and the errors they report: one shape, ``{"error": code, "message": text}``, for
every refusal, whether a route, the router (unknown path, method) or the backend refused."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from strego.errors import BackendError, InvalidTaskError, StregoError, TaskNotFoundError
from strego.operate import QueueNotFoundError, TaskStateError
from strego.report import dumps


class JsonResponse(Response):
    """JSON rendered by `strego.report.dumps` (ASCII, markup characters escaped), never cached."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200) -> None:
        super().__init__(content, status_code, headers={"cache-control": "no-store"})

    def render(self, content: Any) -> bytes:
        return dumps(content)

    @classmethod
    def encoded(cls, body: bytes) -> Response:
        """An answer of JSON encoded already (by `dumps`)."""
        return Response(body, media_type=cls.media_type, headers={"cache-control": "no-store"})


def error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "message": message, **extra}, status)


_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    """The router's refusals (no such path, method not allowed) as JSON."""
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "http_error")
    response = error(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def strego_error(request: Request, exc: Exception) -> Response:
    """A typed error of strego as the status it means."""
    if isinstance(exc, TaskNotFoundError | QueueNotFoundError):
        return error(404, "not_found", str(exc))
    if isinstance(exc, TaskStateError):
        state = None if exc.state is None else exc.state.value
        return error(409, "wrong_state", str(exc), state=state)
    if isinstance(exc, InvalidTaskError):
        return error(400, "invalid", str(exc))
    if isinstance(exc, BackendError):
        return error(503, "backend", f"{type(exc).__name__}: {exc}")
    return error(500, "error", f"{type(exc).__name__}: {exc}")


EXCEPTION_HANDLERS = {HTTPException: http_error, StregoError: strego_error}
