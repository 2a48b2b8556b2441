"""Prometheus metrics (`strego[prometheus]`, prometheus-client only).

- `MetricsMiddleware`: what this process does, from the middleware hooks (give it to `Client`
  and `Server`). Labels are the queue and the task type, never a task id.

  ===================================================  ======================================
  ``strego_tasks_enqueued_total{queue,task_type}``     tasks stored by `enqueue`
  ``strego_task_attempts_total{queue,task_type,        attempts by how they ended: completed,
  outcome}``                                           retried, dead, cancelled, lost
  ``strego_task_attempt_duration_seconds{queue,        start to outcome of each attempt
  task_type}`` (histogram)
  ``strego_task_wait_seconds{queue,task_type}``        creation to first start
  (histogram)
  ``strego_tasks_in_progress{queue,task_type}``        attempts running now
  ===================================================  ======================================

- `BackendCollector`: what the backend holds, read at scrape time with bounded cost:
  ``strego_queue_tasks{queue,state}``, ``strego_queue_paused{queue}``,
  ``strego_queue_oldest_pending_age_seconds{queue}`` (how long the oldest pending task has
  waited since it became pending), ``strego_queue_ended_per_minute{queue,state}`` (tasks
  completed, dead or cancelled in the last minute), and
  ``strego_collector_queues`` (queues known); with history on,
  ``strego_history_backlog_entries{queue}`` (history stream entries not stored yet) and
  ``strego_history_cap_entries``. One scrape lists the queues and reads at most `max_queues` of
  them (the least recently read first, so every queue is covered within
  ``ceil(queues / max_queues)`` scrapes; the others show their last reading); a scrape within
  `max_age` seconds of the last read, or during it, reuses it.
- `DrainerCollector`: what a history drainer running in this process has done (register it):
  ``strego_history_stored_events_total``, ``strego_history_failed_batches_total``,
  ``strego_history_last_commit_age_seconds``.
- Exposition: `render` (bytes and content type), `metrics_app` (an ASGI app, mount it at
  ``/metrics``) and `serve` (a small HTTP server on the event loop, asyncio or trio: what
  ``strego worker --metrics-port`` runs).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from strego.backends.base import Backend, QueueInfo
from strego.history.events import history_backlog, history_cap
from strego.middleware import Attempt, EnqueueCall, Middleware
from strego.task import TaskState

__all__ = [
    "REGISTRY",
    "BackendCollector",
    "DrainerCollector",
    "MetricsMiddleware",
    "metrics_app",
    "render",
    "serve",
]

log = logging.getLogger("strego.prometheus")

#: Buckets of the duration and wait histograms: 5 ms to 1 h.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _Histogram:
    """Observations per bucket (the last one +Inf), not cumulative, and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class _Series:
    """The numbers of one (queue, task type)."""

    __slots__ = ("attempts", "duration", "enqueued", "running", "wait")

    def __init__(self, buckets: int) -> None:
        self.enqueued = 0
        self.running = 0
        self.attempts: dict[str, int] = {}
        self.wait = _Histogram(buckets + 1)
        self.duration = _Histogram(buckets + 1)


class MetricsMiddleware(Middleware):
    """Process metrics from the middleware hooks, registered in `registry` (the default one
    unless given; one instance per registry). Give the same instance to a client and a server.

    The hooks update plain numbers, on the event loop's thread where they run (a few hundred
    nanoseconds, no lock); a scrape, from any thread, turns a copy of them into metric families.
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = REGISTRY, buckets: Sequence[float] = BUCKETS
    ) -> None:
        self.registry = registry
        bounds = sorted(float(b) for b in buckets if b != math.inf)
        if not bounds:
            raise ValueError("give at least one finite bucket bound")
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, str], _Series] = {}
        if registry is not None:
            registry.register(self)

    def _of(self, queue: str, task_type: str) -> _Series:
        key = (queue, task_type)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = _Series(len(self.bounds))
        return found

    def after_enqueue(self, call: EnqueueCall) -> None:
        if call.info is not None:
            self._of(call.message.queue, call.message.type).enqueued += 1

    def before_attempt(self, attempt: Attempt) -> None:
        series = self._of(attempt.info.queue, attempt.info.type)
        series.running += 1
        wait = attempt.wait
        if wait is not None:
            series.wait.counts[bisect.bisect_left(self.bounds, wait)] += 1
            series.wait.sum += wait

    def after_attempt(self, attempt: Attempt) -> None:
        series = self._of(attempt.info.queue, attempt.info.type)
        series.running -= 1
        duration = attempt.duration
        series.duration.counts[bisect.bisect_left(self.bounds, duration)] += 1
        series.duration.sum += duration
        outcome = str(attempt.outcome)
        series.attempts[outcome] = series.attempts.get(outcome, 0) + 1

    # -- the prometheus-client collector -------------------------------------------------------

    def describe(self) -> list[Metric]:
        return self._families()  # empty families: their names, for the registry's clash check

    def collect(self) -> list[Metric]:
        return self._families(list(self._series.items()))  # a copy: scrapes may be on a thread

    def _families(self, series: Sequence[tuple[tuple[str, str], _Series]] = ()) -> list[Metric]:
        labels = ("queue", "task_type")
        enqueued = CounterMetricFamily("strego_tasks_enqueued", "Tasks enqueued.", labels=labels)
        attempts = CounterMetricFamily(
            "strego_task_attempts",
            "Attempts by outcome (completed, retried, dead, cancelled, lost).",
            labels=(*labels, "outcome"),
        )
        duration = HistogramMetricFamily(
            "strego_task_attempt_duration_seconds",
            "Seconds from an attempt's start to its outcome.",
            labels=labels,
        )
        wait = HistogramMetricFamily(
            "strego_task_wait_seconds",
            "Seconds from a task's creation to its first start.",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "strego_tasks_in_progress", "Attempts running now.", labels=labels
        )
        les = [*(repr(b) for b in self.bounds), "+Inf"]  # as prometheus-client writes them
        for key, s in series:
            enqueued.add_metric(key, s.enqueued)
            for outcome, count in sorted(s.attempts.items()):
                attempts.add_metric((*key, outcome), count)
            for family, hist in ((duration, s.duration), (wait, s.wait)):
                counts = list(hist.counts)
                family.add_metric(
                    key, list(zip(les, itertools.accumulate(counts), strict=True)), hist.sum
                )
            running.add_metric(key, s.running)
        return [enqueued, attempts, duration, wait, running]


@attrs.frozen
class _Reading:
    at: float  #: anyio.current_time() of the reading
    info: QueueInfo
    oldest_pending_age: float | None


class BackendCollector:
    """Queue metrics read from a backend. Give it to `render`, `metrics_app` or `serve`, which
    refresh it before each exposition; or register it in a registry (it is a prometheus-client
    collector) and `await refresh()` yourself.

    `queues`: the queues to report (default: every queue the backend knows). `max_queues`: the
    most queues one refresh reads. `max_age`: seconds a reading is reused. `history`: also read
    each queue's history backlog (one XLEN each, in one round trip), by default when the backend
    has history on."""

    def __init__(
        self,
        backend: Backend,
        *,
        queues: Sequence[str] | None = None,
        max_queues: int = 50,
        max_age: float = 1.0,
        history: bool | None = None,
    ) -> None:
        if isinstance(max_queues, bool) or not isinstance(max_queues, int) or max_queues < 1:
            raise ValueError(f"max_queues must be an integer >= 1, not {max_queues!r}")
        self.backend = backend
        self.queues = None if queues is None else list(queues)
        self.max_queues = max_queues
        self.max_age = max_age
        self.history = history
        self._lock = anyio.Lock()
        self._read_at = -math.inf
        #: queue -> its last reading
        self._readings: dict[str, _Reading] = {}
        self._known = 0
        #: when each queue was last tried (read or failed): the order queues are read in
        self._tried: dict[str, float] = {}
        #: queue -> history entries not stored yet, at its last reading
        self._backlog: dict[str, int] = {}
        self._cap = 0

    async def refresh(self) -> None:
        """Read the backend unless a reading younger than `max_age` exists; concurrent callers
        share one read."""
        if anyio.current_time() - self._read_at < self.max_age:
            return
        async with self._lock:
            if anyio.current_time() - self._read_at < self.max_age:
                return  # read while this caller waited
            try:
                await self._read()
            except Exception as exc:  # the process metrics are still worth serving
                log.warning("reading queue metrics failed: %s", exc)
            self._read_at = anyio.current_time()

    async def _read(self) -> None:
        names = self.queues if self.queues is not None else await self.backend.queues()
        self._known = len(names)
        listed = set(names)
        for gone in [q for q in self._tried if q not in listed]:
            del self._tried[gone]
            self._readings.pop(gone, None)
            self._backlog.pop(gone, None)
        # never tried first, then the least recently tried
        chosen = sorted(names, key=lambda q: self._tried.get(q, -math.inf))[: self.max_queues]
        now = anyio.current_time()
        await self._read_backlog(chosen)
        for queue in chosen:
            # tried, read or not: a queue that cannot be read (its keys foreign, say) goes to
            # the back, and the others are still read; it keeps its last reading
            self._tried[queue] = now
            try:
                info = await self.backend.queue_info(queue)
            except Exception as exc:
                log.warning("reading the metrics of queue %s failed: %s", queue, exc)
                continue
            # by the backend's clock, from when the task last became pending
            age_ms = info.oldest_pending_age_ms
            oldest = None if age_ms is None else age_ms / 1000
            self._readings[queue] = _Reading(now, info, oldest)

    async def _read_backlog(self, queues: Sequence[str]) -> None:
        cap = history_cap(self.backend)
        on = self.history if self.history is not None else bool(cap)
        self._cap = cap if on else 0
        if not on:
            self._backlog.clear()
            return
        try:
            self._backlog.update(await history_backlog(self.backend, queues))
        except Exception as exc:  # the queues' own readings are still worth taking
            log.warning("reading the history backlog failed: %s", exc)

    def describe(self) -> list[Metric]:
        return []  # its metrics depend on the backend: not checked for clashes at register

    def collect(self) -> Iterable[Metric]:
        tasks = GaugeMetricFamily(
            "strego_queue_tasks", "Tasks in each state, per queue.", labels=("queue", "state")
        )
        paused = GaugeMetricFamily(
            "strego_queue_paused", "1 if the queue is paused.", labels=("queue",)
        )
        oldest = GaugeMetricFamily(
            "strego_queue_oldest_pending_age_seconds",
            "How long the oldest pending task has waited since it became pending.",
            labels=("queue",),
        )
        ended = GaugeMetricFamily(
            "strego_queue_ended_per_minute",
            "Tasks that ended (completed, dead, cancelled) in the last minute, per queue.",
            labels=("queue", "state"),
        )
        for queue, reading in sorted(self._readings.items()):
            info = reading.info
            for state in TaskState:
                tasks.add_metric((queue, str(state)), info.counts.get(state, 0))
            for state, count in info.ended_last_minute.items():
                ended.add_metric((queue, str(state)), count)
            paused.add_metric((queue,), 1 if info.paused else 0)
            age = reading.oldest_pending_age
            oldest.add_metric((queue,), 0 if age is None else age)
        known = GaugeMetricFamily("strego_collector_queues", "Queues the collector reports.")
        known.add_metric((), self._known)
        families: list[Metric] = [tasks, ended, paused, oldest, known]
        if self._backlog or self._cap:
            backlog = GaugeMetricFamily(
                "strego_history_backlog_entries",
                "Entries of the queue's history stream not stored in PostgreSQL yet (one"
                " transition of one or more tasks each).",
                labels=("queue",),
            )
            for queue, waiting in sorted(self._backlog.items()):
                backlog.add_metric((queue,), waiting)
            families.append(backlog)
        if self._cap:  # unknown here when history is read with the backend's off
            cap = GaugeMetricFamily(
                "strego_history_cap_entries",
                "Each history stream's cap: entries past it are trimmed, oldest first.",
            )
            cap.add_metric((), self._cap)
            families.append(cap)
        return families


class DrainerCollector:
    """What a history drainer (`strego.history.PostgresHistory.drain`) running in this process
    has done, read from its `stats` at scrape time. Register it:
    ``REGISTRY.register(DrainerCollector(history))``."""

    def __init__(self, history: Any) -> None:
        self.history = history

    def describe(self) -> list[Metric]:
        return self._families()  # their names, for the registry's clash check

    def collect(self) -> list[Metric]:
        return self._families(self.history.stats)

    @staticmethod
    def _families(stats: Any = None) -> list[Metric]:
        stored = CounterMetricFamily(
            "strego_history_stored_events", "History events stored in PostgreSQL by this drainer."
        )
        failed = CounterMetricFamily(
            "strego_history_failed_batches",
            "Batches this drainer failed to store (PostgreSQL down, ...) and read again.",
        )
        refused = CounterMetricFamily(
            "strego_history_refused_events",
            "Events PostgreSQL refused (logged at ERROR with their ids) and this drainer skipped.",
        )
        age = GaugeMetricFamily(
            "strego_history_last_commit_age_seconds",
            "Seconds since this drainer last committed a batch (since it started, before one).",
        )
        if stats is not None:
            stored.add_metric((), stats.stored)
            failed.add_metric((), stats.failures)
            refused.add_metric((), stats.refused)
            since = stats.last_commit if stats.last_commit is not None else stats.started
            if since is not None:
                age.add_metric((), max(0.0, time.time() - since))
        return [stored, failed, refused, age]


async def render(
    registry: CollectorRegistry = REGISTRY, collector: BackendCollector | None = None
) -> tuple[bytes, str]:
    """The exposition of `registry` and of `collector` (refreshed first; it need not be
    registered), and its content type."""
    if collector is None:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    await collector.refresh()
    return generate_latest(_Both(registry, collector)), CONTENT_TYPE_LATEST


@attrs.frozen
class _Both:
    """A registry's metrics and a collector's, without registering the collector."""

    registry: CollectorRegistry
    collector: BackendCollector

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.collector.collect()


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_app(
    registry: CollectorRegistry = REGISTRY, collector: BackendCollector | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering every GET with the exposition, e.g. in Starlette
    ``Mount("/metrics", app=metrics_app(collector=BackendCollector(backend)))``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, content_type = await render(registry, collector)
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


#: The longest a scrape may take to send its request.
REQUEST_TIMEOUT = 10.0


async def serve(
    port: int,
    *,
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
    collector: BackendCollector | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` over HTTP/1.1 on `host`:`port` until cancelled (on the running
    event loop; `task_status.started` gets the port bound, useful with port 0)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(bound)
        await listener.serve(lambda stream: _answer(stream, registry, collector))


async def _answer(
    stream: anyio.abc.SocketStream,
    registry: CollectorRegistry,
    collector: BackendCollector | None,
) -> None:
    try:
        await _exchange(stream, registry, collector)
    except Exception as exc:  # one scrape gone wrong never stops the server it runs in
        log.warning("serving metrics failed: %s", exc)


async def _exchange(
    stream: anyio.abc.SocketStream,
    registry: CollectorRegistry,
    collector: BackendCollector | None,
) -> None:
    async with stream:
        request = b""
        with anyio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in request and len(request) < 16_384:
                try:
                    request += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
        method, _, rest = request.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"GET" and path in (b"/metrics", b"/"):
            try:
                body, content_type = await render(registry, collector)
                status = b"200 OK"
            except Exception as exc:  # the backend unreachable: say so, keep serving
                body, content_type = f"reading the backend failed: {exc}\n".encode(), "text/plain"
                status = b"503 Service Unavailable"
        else:
            body, content_type, status = b"not found\n", "text/plain", b"404 Not Found"
        head = (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        with contextlib.suppress(anyio.BrokenResourceError, OSError):  # the scraper left
            await stream.send(head + body)
