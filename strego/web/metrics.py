"""/metrics of the web app: the Prometheus exposition of this process's registry and of the
app's backend (`strego.prometheus.BackendCollector`: tasks per queue and state, paused, oldest
pending age, ended per minute), when prometheus-client is installed (`strego[prometheus]`).
It is a GET like any page: the app's gate (Basic, the auth hook) applies to it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from strego.backends.base import Backend

PATH = "/metrics"


def metrics_route(backend: Backend, max_age_s: float) -> Route | None:
    """The /metrics route on `backend`, its queues read at most once per `max_age_s` however
    many scrape it; None without prometheus-client."""
    try:
        from strego.prometheus import REGISTRY, BackendCollector, render
    except ImportError:
        return None
    collector = BackendCollector(backend, max_age=max_age_s)

    async def metrics(request: Request) -> Response:
        body, content_type = await render(REGISTRY, collector)
        return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

    return Route(PATH, metrics, methods=["GET"], name="metrics")
