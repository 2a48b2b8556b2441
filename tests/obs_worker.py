"""A worker module for the observability tests, run as ``strego worker tests.obs_worker:server``.

Environment: ``OBS_REDIS`` (a Redis URL; else an in-memory backend seeded here with `SEED`),
``OBS_SPANS`` (a file each finished span is written to, one JSON object a line, by the
OpenTelemetry SDK), ``OBS_PARENT`` (1: consumer spans are children of the producer's)."""

from __future__ import annotations

import os

import anyio
from opentelemetry import baggage, trace

import strego
from strego.backends.base import Backend
from strego.backends.memory import MemoryBackend
from strego.middleware import Middleware
from strego.task import TaskInfo

#: The memory backend's tasks: (type, how many, max_retry).
SEED = [("ok", 5, 3), ("flaky", 3, 3), ("bad", 2, 1)]


def no_delay(retried: int, exc: BaseException, info: TaskInfo) -> float:
    return 0.0


middleware: list[Middleware] = []
if spans := os.environ.get("OBS_SPANS"):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from strego.otel import TracingMiddleware

    provider = TracerProvider()
    out = open(spans, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    )
    middleware.append(
        TracingMiddleware(tracer_provider=provider, parent=os.environ.get("OBS_PARENT") == "1")
    )

backend: Backend
if url := os.environ.get("OBS_REDIS"):
    from strego.backends.redis import RedisBackend

    backend = RedisBackend.from_url(url)
else:
    from strego.prometheus import MetricsMiddleware

    metrics = MetricsMiddleware()
    middleware.append(metrics)
    backend = MemoryBackend()

    async def seed() -> None:
        client = strego.Client(backend, middleware=[metrics])
        for kind, count, max_retry in SEED:
            for _ in range(count):
                await client.enqueue(strego.Task(kind, {}, max_retry=max_retry))

    anyio.run(seed)

server = strego.Server(backend, retry_delay=no_delay, middleware=middleware, concurrency=4)


@server.handler("ok")
async def ok(task: strego.Task) -> None:
    seen = baggage.get_baggage("tenant")
    if seen is not None:
        trace.get_current_span().set_attribute("test.baggage.tenant", str(seen))


@server.handler("flaky")
async def flaky(task: strego.Task) -> None:
    if strego.current_task().retried == 0:
        raise RuntimeError("first attempt fails")


@server.handler("bad")
def bad(task: strego.Task) -> None:
    raise ValueError("always fails")
