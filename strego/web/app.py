"""`create_app`: the one ASGI app of `strego web` (Starlette), the JSON API under /api/v1 and,
around every route, the security gate (`strego.web.security`). Everything it shows it reads
through the backend contract, so any backend serves it (the memory backend in tests). Every URL
is relative to the app's mount point (`root_path`): it works under any path prefix, mounted in
another ASGI app or behind a proxy."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute, Mount, Route

from strego.backends.base import Backend
from strego.web.api import Api
from strego.web.csrf import CsrfGuard
from strego.web.metrics import metrics_route
from strego.web.prefix import FullPath
from strego.web.responses import EXCEPTION_HANDLERS
from strego.web.security import AuthHook, Guard
from strego.web.ui import UI

if TYPE_CHECKING:
    from strego.history.postgres import PostgresHistory

#: The API's version prefix; a new version is a new mount beside it.
API_PREFIX = "/api/v1"


def create_app(
    backend: Backend,
    *,
    readonly: bool = True,
    auth: AuthHook | None = None,
    basic_auth: tuple[str, str] | None = None,
    origins: Collection[str] = (),
    allowed_hosts: Collection[str] | None = None,
    snapshot_interval_s: float = 1.0,
    metrics: bool = True,
    history: PostgresHistory | None = None,
) -> Starlette:
    """The web app on `backend`. Read-only unless `readonly=False` (every mutation answers 405
    otherwise). `auth` is called with each request and refuses it (403) by returning false;
    `basic_auth=(user, password)` asks for HTTP Basic credentials (401). A mutation from a page of
    another origin is refused (403) unless its origin is in `origins` (e.g. the public origin a
    Host-rewriting proxy serves). `allowed_hosts` (host names, no port) refuses (400) a request
    whose Host header names another: against DNS rebinding, where a page of another site reaches
    a server on localhost under its own name (and so its own origin). `snapshot_interval_s`: the
    overview (queues, workers) is read from the backend at most once per interval, however many
    clients poll it. `metrics`: serve the Prometheus exposition at /metrics (this process's
    registry and the backend's queues, read at most once per `snapshot_interval_s`) when
    prometheus-client is installed; behind the same gate as every route. `history`: the task
    history in PostgreSQL (`strego.history.PostgresHistory`): a History tab (search, each task's
    story) and /api/v1/history; without it those answer 404 and the tab is absent."""
    if basic_auth is not None and (
        not isinstance(basic_auth, tuple)
        or len(basic_auth) != 2
        or not all(isinstance(part, str) and part for part in basic_auth)
    ):
        raise ValueError("basic_auth is a (user, password) pair of non-empty strings")
    api = Api(backend, snapshot_interval_s=snapshot_interval_s, history=history)
    ui = UI(api, readonly=readonly)  # the web UI at /, on the same shared reads
    routes: list[BaseRoute] = [Mount(API_PREFIX, routes=api.routes()), *ui.routes()]
    scrape: Route | None = metrics_route(backend, snapshot_interval_s) if metrics else None
    if scrape is not None:
        routes.append(scrape)
    app = Starlette(
        routes=routes,
        middleware=[
            *(
                [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
                if allowed_hosts is not None
                else []
            ),
            Middleware(FullPath),
            Middleware(Guard, readonly=readonly, auth=auth, basic_auth=basic_auth, origins=origins),
            Middleware(CsrfGuard),  # a browser's mutation needs the UI page's token
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.api = api  # the UI (and tests) reach the shared reads here
    app.state.ui = ui
    return app
