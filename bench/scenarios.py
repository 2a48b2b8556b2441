"""The measurements behind bench/run.py, one coroutine per target figure. Each takes a `Setup`
(how to make a backend, and the Redis URL when there is one) and returns plain numbers."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs
import redis

from bench import worker
from strego import Client, Server, Task
from strego.backends.base import Backend
from strego.backends.memory import MemoryBackend
from strego.backends.redis.backend import RedisBackend
from strego.backends.redis.keys import Keys

HERE = os.path.dirname(os.path.abspath(__file__))


@attrs.frozen
class Setup:
    """One column of the results: a backend kind under one event loop."""

    name: str
    loop: str  # "asyncio" or "trio"
    transport: str | None  # None (memory), "redispy" or "anyio"
    url: str | None = None

    def backend(self) -> Backend:
        if self.transport is None:
            return MemoryBackend()
        assert self.url is not None
        if self.transport == "anyio":
            from strego.backends.redis.anyio_transport import AnyioTransport

            return RedisBackend(AnyioTransport.from_url(self.url))
        import redis.asyncio

        return RedisBackend(redis.asyncio.Redis.from_url(self.url, decode_responses=False))

    def flush(self) -> None:
        if self.url is not None:
            r = redis.Redis.from_url(self.url)
            try:
                r.flushdb()
            finally:
                r.close()


def used_memory(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return int(r.info("memory")["used_memory"])
    finally:
        r.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def drain(
    backend: Backend,
    n: int,
    concurrency: int,
    queues: list[str] | None = None,
    middleware: Sequence[object] = (),
) -> float:
    """Seconds one Server with `concurrency` takes to run `n` no-op tasks already enqueued."""
    server = Server(
        backend, concurrency=concurrency, queues=queues or ["default"], middleware=middleware
    )
    done = anyio.Event()
    count = 0

    @server.handler("noop")
    async def noop(task: Task) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    t0 = time.perf_counter()
    async with server:  # leaving the block stops it gracefully, flushing every ack
        await done.wait()
    return time.perf_counter() - t0


async def enqueue_batches(client: Client, n: int, batch: int = 1000) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        await client.enqueue_many([Task("noop") for _ in range(min(batch, n - start))])
    return time.perf_counter() - t0


async def throughput(setup: Setup, n: int, concurrency: int) -> dict[str, float]:
    """enqueue_many in batches of 1000, Redis bytes per pending task, then one server drains."""
    backend = setup.backend()
    client = Client(backend)
    # load the scripts first: Redis counts its script cache in used_memory
    await client.enqueue(Task("noop", queue="warmup"))
    await backend.purge("warmup")
    m0 = used_memory(setup.url) if setup.url else 0
    enqueue_s = await enqueue_batches(client, n)
    m1 = used_memory(setup.url) if setup.url else 0
    process_s = await drain(backend, n, concurrency)
    await backend.aclose()
    out = {"enqueue_many_per_s": n / enqueue_s, "process_per_s": n / process_s}
    if setup.url:
        out["bytes_per_task"] = (m1 - m0) / n
    return out


def observability_middleware(sdk: bool, sampled: float = 1.0) -> list[object]:
    """Both extras on: Prometheus metrics in a registry of their own, and OpenTelemetry spans,
    either through the API alone (no SDK configured: what strego[otel] itself costs) or through
    the SDK recording every span (a BatchSpanProcessor, as in production, exporting to
    nowhere: the SDK's cost without a network's), keeping the `sampled` share of the traces."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from prometheus_client import CollectorRegistry

    from strego.otel import TracingMiddleware
    from strego.prometheus import MetricsMiddleware

    class Nowhere(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = None
    if sdk:
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))
        provider.add_span_processor(BatchSpanProcessor(Nowhere()))
    return [
        MetricsMiddleware(registry=CollectorRegistry()),
        TracingMiddleware(tracer_provider=provider),
    ]


async def observed_throughput(setup: Setup, n: int, concurrency: int) -> dict[str, float]:
    """process_per_s with strego[prometheus] and strego[otel] on (the client storing trace
    headers, the server making metrics and a span per attempt), with the OpenTelemetry SDK and
    without, then off, on one backend; and their ratios. `*_cpu_*` figures count this process's
    CPU time instead of the wall clock's (tasks per CPU second of the worker: steadier on a
    shared machine; Redis's own CPU, the same either way, is left out)."""
    out, cpu = {}, {}
    for label, middleware in (
        ("observed", observability_middleware(sdk=False)),
        ("observed_sdk", observability_middleware(sdk=True)),
        ("observed_sdk_10", observability_middleware(sdk=True, sampled=0.1)),
        ("plain", []),
    ):
        backend = setup.backend()
        client = Client(backend, middleware=middleware)
        await enqueue_batches(client, n)
        cpu_start = time.process_time()
        out[label] = n / await drain(backend, n, concurrency, middleware=middleware)
        cpu[label] = n / (time.process_time() - cpu_start)
        await backend.purge("default")
        await backend.aclose()
    return {
        "process_observed_per_s": out["observed"],
        "process_observed_sdk_per_s": out["observed_sdk"],
        "process_plain_per_s": out["plain"],
        "observed_vs_plain": out["observed"] / out["plain"],
        "observed_sdk_vs_plain": out["observed_sdk"] / out["plain"],
        "observed_sdk_10_vs_plain": out["observed_sdk_10"] / out["plain"],
        "observed_vs_plain_cpu": cpu["observed"] / cpu["plain"],
        "observed_sdk_vs_plain_cpu": cpu["observed_sdk"] / cpu["plain"],
        "observed_sdk_10_vs_plain_cpu": cpu["observed_sdk_10"] / cpu["plain"],
    }


async def enqueue_one_by_one(setup: Setup, n: int, producers: int) -> dict[str, float]:
    """`await client.enqueue(...)` n times from one task, then n times from `producers` tasks."""
    backend = setup.backend()
    client = Client(backend)
    t0 = time.perf_counter()
    for _ in range(n):
        await client.enqueue(Task("noop"))
    sequential_s = time.perf_counter() - t0

    async def produce(count: int) -> None:
        for _ in range(count):
            await client.enqueue(Task("noop"))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(producers):
            tg.start_soon(produce, n // producers + (i < n % producers))
    concurrent_s = time.perf_counter() - t0
    await backend.aclose()
    return {"enqueue_seq_per_s": n / sequential_s, "enqueue_concurrent_per_s": n / concurrent_s}


async def latency(setup: Setup, rate: float, seconds: float) -> dict[str, float]:
    """Offer `rate` tasks/s for `seconds` to a running server; enqueue-to-start latency (ms)."""
    backend = setup.backend()
    client = Client(backend)
    server = Server(backend, concurrency=32)
    sent: dict[str, float] = {}
    waits: list[float] = []
    n = int(rate * seconds)
    done = anyio.Event()

    @server.handler("noop")
    async def noop(task: Task) -> None:
        assert task.id is not None
        waits.append((time.perf_counter() - sent[task.id]) * 1000)
        if len(waits) >= n:
            done.set()

    async with server:
        await anyio.sleep(0.2)  # let the fetcher reach its blocking wait
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            task = Task("noop", id=f"lat-{i}")
            sent[f"lat-{i}"] = time.perf_counter()
            await client.enqueue(task)
        with anyio.move_on_after(30):
            await done.wait()
    await backend.aclose()
    return {"latency_p50_ms": percentile(waits, 0.5), "latency_p99_ms": percentile(waits, 0.99)}


async def scheduled_lateness(setup: Setup, n: int, spread_s: float) -> dict[str, float]:
    """n tasks due at random times over the next `spread_s` seconds: p99 of start - due (ms)."""
    import random

    backend = setup.backend()
    client = Client(backend)
    server = Server(backend, concurrency=32)
    late: list[float] = []
    due: dict[str, float] = {}
    done = anyio.Event()

    @server.handler("noop")
    async def noop(task: Task) -> None:
        assert task.id is not None
        late.append((time.time() - due[task.id]) * 1000)
        if len(late) >= n:
            done.set()

    async with server:
        now = time.time()
        tasks = []
        for i in range(n):
            at = now + 0.5 + random.random() * spread_s
            due[f"s-{i}"] = math.ceil(at * 1000) / 1000  # stored in whole ms
            tasks.append(Task("noop", id=f"s-{i}", process_at=at))
        await client.enqueue_many(tasks)
        with anyio.move_on_after(spread_s + 30):
            await done.wait()
    await backend.aclose()
    return {
        "scheduled_late_p50_ms": percentile(late, 0.5),
        "scheduled_late_p99_ms": percentile(late, 0.99),
    }


async def under_load(setup: Setup, n: int, concurrency: int) -> dict[str, float]:
    """Process throughput with 10,000 scheduled tasks waiting, and with 100 idle queues served."""
    out: dict[str, float] = {}
    backend = setup.backend()
    client = Client(backend)
    for _ in range(10):
        await client.enqueue_many(
            [Task("noop", process_in=3600, queue="default") for _ in range(1000)]
        )
    await enqueue_batches(client, n)
    out["process_with_10k_scheduled_per_s"] = n / await drain(backend, n, concurrency)
    await backend.aclose()
    setup.flush()
    backend = setup.backend()
    client = Client(backend)
    idle = [f"idle{i}" for i in range(100)]
    await enqueue_batches(client, n)
    out["process_with_100_idle_queues_per_s"] = n / await drain(
        backend, n, concurrency, ["default", *idle]
    )
    await backend.aclose()
    return out


def scaling(
    url: str, n: int, concurrency: int, processes: int, loop: str = "asyncio", work_ms: float = 0.0
) -> dict[str, float]:
    """Tasks/s of `processes` server processes running n tasks (Redis only), and how busy Redis
    (% of one core) and the whole machine (% of all cores) were meanwhile: whether the limit was
    Redis, the cores, or neither. Each task burns `work_ms` of CPU time (0: a no-op), so that
    tasks whose handlers compute show how servers scale when they, not Redis, are the limit. The
    tasks are all enqueued before the servers start, so no producer competes for the cores. The
    processes wait, loaded, until all are, then start together; the time runs from the first task
    started to the last one completed, as the task records tell (process start-up is not
    counted)."""
    Setup("redis", loop, "anyio", url).flush()
    first_ids = anyio.run(_enqueue_for_scaling, url, n)
    completed = Keys("strego", "default").completed
    r = redis.Redis.from_url(url)
    worker_py = os.path.join(HERE, "worker.py")
    cmd = [sys.executable, worker_py, url, str(concurrency), loop, str(work_ms)]
    workers = [subprocess.Popen(cmd) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 600
        # all start together: else the first drains much of a short run before the last is up
        while int(r.get(worker.READY_KEY) or 0) < processes:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError("the server processes did not all start")
            time.sleep(0.01)
        r.rpush(worker.GO_KEY, *range(processes))
        while not r.zcard(completed):
            if time.monotonic() > deadline:
                raise TimeoutError("no task completed")
            time.sleep(0.002)
        t0, redis0, (busy0, total0) = time.perf_counter(), redis_cpu(url), _machine_cpu()
        while r.zcard(completed) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("the tasks did not all complete")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        redis_s, (busy1, total1) = redis_cpu(url) - redis0, _machine_cpu()
        last_ms = float(r.zrange(completed, -1, -1, withscores=True)[0][1])
        first_ms = anyio.run(_first_started_ms, url, first_ids)
    finally:
        r.close()
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    return {
        "per_s": n / ((last_ms - first_ms) / 1000),
        "redis_cpu_pct": 100 * redis_s / elapsed,
        "machine_cpu_pct": 100 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0,
    }


async def _enqueue_for_scaling(url: str, n: int) -> list[str]:
    """Enqueue n no-op tasks; the ids of the first ones (the first to be fetched: FIFO)."""
    backend = Setup("redis", "asyncio", "anyio", url).backend()
    first: list[str] = []
    for start in range(0, n, 1000):
        infos = await Client(backend).enqueue_many(
            [Task("noop") for _ in range(min(1000, n - start))]
        )
        if not first:
            first = [i.id for i in infos if not isinstance(i, Exception)]
    await backend.aclose()
    return first


async def _first_started_ms(url: str, ids: list[str]) -> int:
    backend = Setup("redis", "asyncio", "anyio", url).backend()
    started = [
        info.started_ms
        for info in [await backend.get_task(i, "default") for i in ids]
        if info is not None and info.started_ms is not None
    ]
    await backend.aclose()
    return min(started)


def round_trip_floor(
    url: str, n: int = 5_000, runs: int = 3, same_core_as: int | None = None
) -> float:
    """PINGs per second, one at a time over a blocking socket, no event loop, no parsing: the most
    round trips per second any client makes on this machine, so the ceiling of a sequential
    `await client.enqueue(...)` (which also runs a script). Median of `runs`.

    With `same_core_as` (the pid of the Redis server, Linux only), Redis and this process are
    held on one core meanwhile: then no round trip wakes an idle core, and the gap to the figure
    without it is what those wake-ups cost on this machine."""
    if same_core_as is not None:
        before = os.sched_getaffinity(same_core_as), os.sched_getaffinity(0)
        core = {min(before[0])}
        os.sched_setaffinity(same_core_as, core)
        os.sched_setaffinity(0, core)
        try:
            return round_trip_floor(url, n, runs)
        finally:
            os.sched_setaffinity(same_core_as, before[0])
            os.sched_setaffinity(0, before[1])
    r = redis.Redis.from_url(url)
    conn: Any = r.connection_pool.make_connection()  # redis-py types its connections loosely
    try:
        conn.connect()  # logs in (AUTH, SELECT) as the URL says
        sock = conn._sock
        assert sock is not None
        sock.settimeout(10)
        rates = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(n):
                sock.sendall(b"PING\r\n")
                if not sock.recv(64):  # "+PONG\r\n" comes in one segment
                    raise ConnectionError("Redis closed the connection")
            rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates)
    finally:
        conn.disconnect()
        r.close()


def redis_cpu(url: str) -> float:
    """CPU seconds the Redis server has used (user + system)."""
    r = redis.Redis.from_url(url)
    try:
        info = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        r.close()


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def median_of(runs: int, func: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [func() for _ in range(runs)]
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def run_in_loop(loop: str, func: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(func, *args, backend=loop)
