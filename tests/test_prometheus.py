"""strego[prometheus]: process metrics equal the tasks' real outcomes, scraped over HTTP from a
real `strego worker` subprocess; the backend collector's cost is bounded."""

from __future__ import annotations

import functools
import time
from typing import Any

import anyio
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import strego
from strego.backends.memory import MemoryBackend
from strego.backends.redis import RedisBackend
from strego.middleware import Attempt
from strego.prometheus import BackendCollector, MetricsMiddleware, metrics_app, render, serve
from strego.task import TaskState
from tests.obs_support import free_port, worker
from tests.obs_worker import SEED
from tests.runtime_support import PATIENCE, eventually, make_server

#: What SEED leads to: ok runs once, flaky fails once then succeeds, bad (max_retry 1) fails twice.
EXPECTED_ATTEMPTS = {"completed": 5 + 3, "retried": 3 + 2, "dead": 2}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


def scrape_until_done(port: int) -> dict[Any, float]:
    """Scrape until every attempt of SEED has ended and the collector's reading (cached for a
    second) shows it (a hang guard bounds it, never a timing)."""
    deadline = time.monotonic() + PATIENCE * 2
    last: dict[Any, float] = {}
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        except httpx.TransportError:
            time.sleep(0.05)  # the worker is starting: poll its port
            continue
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        last = samples(reply.text)
        got = {o: total(last, "strego_task_attempts_total", outcome=o) for o in EXPECTED_ATTEMPTS}
        done = all(
            total(last, "strego_queue_tasks", queue="default", state=state) == n
            for state, n in (("completed", 8), ("dead", 2), ("pending", 0), ("retry", 0))
        )
        if got == EXPECTED_ATTEMPTS and total(last, "strego_tasks_in_progress") == 0 and done:
            return last
        time.sleep(0.05)
    raise AssertionError(f"the attempts never added up: {last}")


def check_queue_metrics(found: dict[Any, float]) -> None:
    """The backend collector's reading agrees with the outcomes."""
    assert total(found, "strego_queue_tasks", queue="default", state="completed") == 8
    assert total(found, "strego_queue_tasks", queue="default", state="dead") == 2
    assert total(found, "strego_queue_tasks", queue="default", state="pending") == 0
    assert total(found, "strego_queue_paused", queue="default") == 0
    assert total(found, "strego_queue_ended_per_minute", queue="default", state="completed") == 8
    assert total(found, "strego_queue_ended_per_minute", queue="default", state="dead") == 2
    assert total(found, "strego_collector_queues") == 1


def check_per_type(found: dict[Any, float]) -> None:
    def attempts(kind: str, outcome: str) -> float:
        return total(found, "strego_task_attempts_total", task_type=kind, outcome=outcome)

    assert attempts("ok", "completed") == 5 and attempts("ok", "retried") == 0
    assert attempts("flaky", "retried") == 3 and attempts("flaky", "completed") == 3
    assert attempts("bad", "retried") == 2 and attempts("bad", "dead") == 2
    assert total(found, "strego_task_attempt_duration_seconds_count") == 15
    assert total(found, "strego_task_wait_seconds_count") == 10  # first attempts
    for (name, labels), _ in found.items():
        if name.startswith("strego_task"):
            assert {k for k, _ in labels} <= {"queue", "task_type", "outcome", "le"}


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_worker_metrics_on_memory(loop: str) -> None:
    port = free_port()
    with worker(loop, port=port):
        found = scrape_until_done(port)
    check_per_type(found)
    check_queue_metrics(found)
    assert total(found, "strego_tasks_enqueued_total") == sum(n for _, n, _ in SEED)
    assert total(found, "strego_tasks_enqueued_total", task_type="flaky") == 3


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_worker_metrics_on_redis(clean_redis_url: str, loop: str) -> None:
    async def seed() -> None:
        async with strego.Client.from_url(clean_redis_url) as client:
            for kind, count, max_retry in SEED:
                for _ in range(count):
                    await client.enqueue(strego.Task(kind, {}, max_retry=max_retry))

    anyio.run(seed)
    port = free_port()
    with worker(loop, redis_url=clean_redis_url, port=port):
        found = scrape_until_done(port)

    async def truth() -> dict[TaskState, int]:
        async with strego.Client.from_url(clean_redis_url) as client:
            return (await client.queue_info("default")).counts

    counts = anyio.run(truth)
    assert counts[TaskState.COMPLETED] == 8 and counts[TaskState.DEAD] == 2
    check_per_type(found)
    check_queue_metrics(found)


@pytest.mark.anyio
async def test_middleware_counts_in_process(anyio_backend: Any) -> None:
    registry = CollectorRegistry()
    metrics = MetricsMiddleware(registry=registry)
    backend = MemoryBackend()
    collector = BackendCollector(backend, max_age=0)
    registry.register(collector)
    client = strego.Client(backend, middleware=[metrics])
    server = make_server(backend, middleware=[metrics], queues=["a", "b"])

    @server.handler("ok")
    async def ok(task: strego.Task) -> None:
        pass

    await client.enqueue(strego.Task("ok", queue="a"))
    await client.enqueue_many([strego.Task("ok", queue="b"), strego.Task("ok", queue="b")])
    async with server:
        await eventually(lambda: server.stats.processed == 3, "three acks")
    body, content_type = await render(registry, collector)
    found = samples(body.decode())
    assert content_type.startswith("text/plain")
    assert total(found, "strego_tasks_enqueued_total", queue="b", task_type="ok") == 2
    assert total(found, "strego_task_attempts_total", queue="a", outcome="completed") == 1
    assert total(found, "strego_queue_tasks", queue="b", state="completed") == 2


def registry_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


@pytest.mark.anyio
async def test_metrics_app_serves_the_exposition(anyio_backend: Any) -> None:
    registry = CollectorRegistry()
    MetricsMiddleware(registry=registry)
    backend = MemoryBackend()
    await strego.Client(backend).enqueue(strego.Task("t", queue="q"))
    app = metrics_app(registry, BackendCollector(backend))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
        reply = await http.get("/metrics")
    assert reply.status_code == 200
    assert total(samples(reply.text), "strego_queue_tasks", queue="q", state="pending") == 1


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def queue_info(self, queue: str) -> Any:
        self.reads += 1
        await anyio.sleep(0.01)  # a slow read: concurrent scrapes arrive during it
        return await super().queue_info(queue)


@pytest.mark.anyio
async def test_concurrent_scrapes_share_one_read(anyio_backend: Any) -> None:
    backend = CountingBackend()
    for q in ("a", "b", "c"):
        await strego.Client(backend).enqueue(strego.Task("t", queue=q))
    registry = CollectorRegistry()
    collector = BackendCollector(backend, max_age=60)
    registry.register(collector)
    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(render, registry, collector)
    assert backend.reads == 3  # one read of each queue, for ten scrapes
    found = samples((await render(registry, collector))[0].decode())
    assert backend.reads == 3
    assert total(found, "strego_queue_tasks", state="pending") == 3


@pytest.mark.anyio
async def test_collector_reads_at_most_max_queues_and_covers_all(anyio_backend: Any) -> None:
    backend = CountingBackend()
    client = strego.Client(backend)
    for i in range(25):
        await client.enqueue(strego.Task("t", queue=f"q{i}"))
    collector = BackendCollector(backend, max_queues=10, max_age=0)
    for _ in range(3):
        before = backend.reads
        await collector.refresh()
        assert backend.reads - before == 10
    registry = CollectorRegistry()
    registry.register(collector)
    found = samples(registry_text(registry))
    # three bounded reads covered every queue (the never read first)
    assert total(found, "strego_queue_tasks", state="pending") == 25
    assert total(found, "strego_collector_queues") == 25


@pytest.mark.redis
@pytest.mark.anyio
async def test_collector_redis_cost_is_bounded_with_1000_queues(
    clean_redis_url: str, anyio_backend: Any
) -> None:
    backend = RedisBackend.from_url(clean_redis_url)
    admin = redis.Redis.from_url(clean_redis_url)
    try:
        client = strego.Client(backend)
        for start in range(0, 1000, 100):
            tasks = [strego.Task("t", queue=f"q{i}") for i in range(start, start + 100)]
            await client.enqueue_many(tasks)
        collector = BackendCollector(backend, max_age=0)
        costs = []
        for _ in range(3):
            admin.config_resetstat()
            await collector.refresh()
            stats = admin.info("commandstats")
            costs.append(sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info"))
        print("Redis commands per scrape, 1,000 queues:", costs)
        # one SMEMBERS, and per queue read (50 of them): a time read and a pipeline of its counts
        # and oldest pending age (some 50 commands); never a pass over 1,000 queues
        per_queue = 60
        assert all(c <= 1 + collector.max_queues * per_queue for c in costs), costs
        # reading every queue would take some 50 commands each, 50,000 a scrape
        assert max(costs) < 5 * 1000
    finally:
        admin.close()
        await backend.aclose()


@pytest.mark.anyio
async def test_collector_paused_and_oldest_pending_age(anyio_backend: Any) -> None:
    now = [1_767_225_600_000]
    backend = MemoryBackend(clock=lambda: now[0])
    client = strego.Client(backend)
    await client.enqueue(strego.Task("t", queue="old"))
    now[0] += 90_000
    await client.enqueue(strego.Task("t", queue="old"))
    await client.enqueue(strego.Task("t", queue="idle"))
    await client.pause("idle")
    now[0] += 10_000
    body, _ = await render(CollectorRegistry(), BackendCollector(backend))
    found = samples(body.decode())
    assert total(found, "strego_queue_oldest_pending_age_seconds", queue="old") == 100
    assert total(found, "strego_queue_paused", queue="idle") == 1
    assert total(found, "strego_queue_paused", queue="old") == 0


@pytest.mark.anyio
async def test_serve_answers_scrapes_and_survives_bad_clients(anyio_backend: Any) -> None:
    registry = CollectorRegistry()
    metrics = MetricsMiddleware(registry=registry)
    backend = MemoryBackend()
    await strego.Client(backend, middleware=[metrics]).enqueue(strego.Task("t"))
    async with anyio.create_task_group() as group:
        port = await group.start(
            functools.partial(
                serve, 0, host="127.0.0.1", registry=registry, collector=BackendCollector(backend)
            )
        )
        # a client that leaves at once, and one that sends garbage
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        async with await anyio.connect_tcp("127.0.0.1", port) as raw:
            await raw.send(b"\x00\xff nonsense\r\n\r\n")
            assert (await raw.receive()).startswith(b"HTTP/1.1 404")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/other")).status_code == 404
            reply = await http.get("/metrics")
        group.cancel_scope.cancel()
    assert reply.status_code == 200
    found = samples(reply.text)
    assert total(found, "strego_tasks_enqueued_total", queue="default", task_type="t") == 1
    assert total(found, "strego_queue_tasks", queue="default", state="pending") == 1


def test_histograms_match_prometheus_client() -> None:
    from prometheus_client import Histogram

    values = [0.0, 0.005, 0.0051, 0.3, 1.0, 7.0, 10_000.0]
    registry = CollectorRegistry()
    metrics = MetricsMiddleware(registry=registry, buckets=(0.005, 0.5, 1, 10))
    their_registry = CollectorRegistry()
    reference = Histogram(
        "strego_task_wait_seconds",
        "x",
        ("queue", "task_type"),
        buckets=(0.005, 0.5, 1, 10),
        registry=their_registry,
    )
    info = strego.TaskInfo("i", "t", "q", TaskState.ACTIVE, b"", "json", 3, started_ms=1)
    for v in values:
        metrics.before_attempt(Attempt(info, "c", 0.0, wait=v))
        reference.labels("q", "t").observe(v)
    ours = {k: v for k, v in samples(registry_text(registry)).items() if "wait" in k[0]}
    theirs = {
        k: v
        for k, v in samples(generate_latest(their_registry).decode()).items()
        if not k[0].endswith("_created")
    }
    assert ours == theirs
