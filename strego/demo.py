"""`strego demo`: producers and a server on one backend, with a few task types — some fail into
retry and dead, some are scheduled — a live progress line and a summary at the end."""

from __future__ import annotations

import random
import sys
import time
from typing import TextIO

import anyio
import attrs

from strego.backends.base import Backend
from strego.client import Client
from strego.errors import SkipRetry
from strego.retry import ExponentialBackoff
from strego.server import Server
from strego.task import Task, TaskState

QUEUES = {"critical": 6, "default": 3, "low": 1}
_FINISHED = (TaskState.COMPLETED, TaskState.DEAD, TaskState.CANCELLED)


@attrs.frozen
class Report:
    user_id: int
    pages: int


@attrs.define
class DemoResult:
    enqueued: int = 0
    completed: int = 0
    dead: int = 0
    retried: int = 0
    elapsed: float = 0.0
    #: how long the enqueues were spread over: it paces the whole run
    seconds: float = 0.0
    per_queue: dict[str, dict[TaskState, int]] = attrs.field(factory=dict)

    @property
    def rate(self) -> float:
        """Tasks finished (completed or dead) per second of the whole run: the pace the enqueues
        set, not how fast strego can go."""
        return (self.completed + self.dead) / self.elapsed if self.elapsed else 0.0


def build_server(backend: Backend, concurrency: int) -> Server:
    server = Server(
        backend,
        queues=QUEUES,
        concurrency=concurrency,
        retry_delay=ExponentialBackoff(base=0.2, cap=1.0),
        shutdown_timeout=2.0,
    )

    @server.handler("email:send")
    async def send_email(task: Task) -> None:
        await anyio.sleep(random.uniform(0.005, 0.03))

    @server.handler("image:resize")
    def resize_image(payload: dict[str, int]) -> None:  # sync: runs in a worker thread
        time.sleep(random.uniform(0.005, 0.02))

    @server.handler("report:build")
    async def build_report(report: Report) -> None:
        await anyio.sleep(0.002 * report.pages)
        if random.random() < 0.25:
            raise RuntimeError("report service unavailable")

    @server.handler("payment:charge")
    async def charge(payload: dict[str, int]) -> None:
        if payload["amount"] < 0:
            raise SkipRetry(f"refusing to charge {payload['amount']}")
        await anyio.sleep(0.01)

    @server.handler("legacy:sync")
    async def legacy(task: Task) -> None:
        raise ConnectionError("legacy system is down")

    return server


def make_task(i: int, rng: random.Random) -> Task:
    later = rng.uniform(0.5, 3.0) if rng.random() < 0.1 else None  # some run later
    kind = rng.random()
    if kind < 0.4:
        return Task("email:send", {"to": f"u{i}@example.com"}, queue="critical", process_in=later)
    if kind < 0.65:
        return Task("image:resize", {"width": 640, "height": 480}, queue="low", process_in=later)
    if kind < 0.85:
        return Task("report:build", Report(user_id=i, pages=rng.randint(1, 10)), process_in=later)
    if kind < 0.95:
        amount = rng.choice([-5, 10, 20, 30])
        return Task("payment:charge", {"amount": amount}, queue="critical", max_retry=2)
    return Task("legacy:sync", None, queue="low", max_retry=1)


async def _counts(backend: Backend) -> dict[str, dict[TaskState, int]]:
    return {queue: (await backend.queue_info(queue)).counts for queue in QUEUES}


async def run_demo(
    backend: Backend,
    *,
    tasks: int = 1000,
    seconds: float = 8.0,
    concurrency: int = 20,
    out: TextIO = sys.stdout,
) -> DemoResult:
    """Enqueue `tasks` tasks spread over `seconds`, process them, print progress and a summary.
    Returns when every task finished (completed or dead), or `seconds` + 15 s at the latest."""
    rng = random.Random()
    client = Client(backend)
    server = build_server(backend, concurrency)
    result = DemoResult(seconds=seconds)
    started = time.monotonic()
    live = out.isatty()

    async def produce() -> None:
        batches = max(1, int(seconds / 0.1))
        per_batch, extra = divmod(tasks, batches)
        for b in range(batches):
            size = per_batch + (1 if b < extra else 0)
            batch = [make_task(result.enqueued + j, rng) for j in range(size)]
            if batch:
                await client.enqueue_many(batch)
                result.enqueued += len(batch)
            await anyio.sleep(seconds / batches)

    async with server, anyio.create_task_group() as group:
        group.start_soon(produce)
        deadline = started + seconds + 15
        while time.monotonic() < deadline:
            await anyio.sleep(0.5)
            counts = await _counts(backend)
            total = {state: sum(c[state] for c in counts.values()) for state in TaskState}
            finished = sum(total[state] for state in _FINISHED)
            elapsed = time.monotonic() - started
            line = (
                f"{elapsed:5.1f}s  enqueued {result.enqueued:>5}/{tasks}"
                f"  scheduled {total[TaskState.SCHEDULED]:>4}"
                f"  pending {total[TaskState.PENDING]:>4}"
                f"  active {total[TaskState.ACTIVE]:>3}  retry {total[TaskState.RETRY]:>4}"
                f"  completed {total[TaskState.COMPLETED]:>5}  dead {total[TaskState.DEAD]:>4}"
                f"  {finished / elapsed:7.1f} finished/s"
            )
            print(("\r" + line) if live else line, end="" if live else "\n", file=out, flush=True)
            if result.enqueued >= tasks and finished >= tasks:
                break
        group.cancel_scope.cancel()
    if live:
        print(file=out)
    result.elapsed = time.monotonic() - started
    result.per_queue = await _counts(backend)
    result.completed = sum(c[TaskState.COMPLETED] for c in result.per_queue.values())
    result.dead = sum(c[TaskState.DEAD] for c in result.per_queue.values())
    result.retried = server.stats.retried
    print_summary(result, out)
    return result


def print_summary(result: DemoResult, out: TextIO) -> None:
    print("\nsummary", file=out)
    print(f"  {'queue':<10}{'completed':>10}{'dead':>8}{'unfinished':>12}", file=out)
    for queue, counts in result.per_queue.items():
        unfinished = sum(n for state, n in counts.items() if state not in _FINISHED)
        print(
            f"  {queue:<10}{counts[TaskState.COMPLETED]:>10}{counts[TaskState.DEAD]:>8}"
            f"{unfinished:>12}",
            file=out,
        )
    print(f"  enqueued    {result.enqueued}", file=out)
    print(f"  processed   {result.completed}", file=out)
    print(f"  retried     {result.retried}", file=out)
    print(f"  dead        {result.dead}", file=out)
    print(f"  elapsed     {result.elapsed:.1f} s", file=out)
    print(
        f"  rate        {result.rate:.1f} tasks/s finished, paced by enqueues spread over"
        f" {result.seconds:g} s\n              (the demo's pace, not strego's speed: see the"
        " README's Performance section)",
        file=out,
    )
