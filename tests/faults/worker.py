"""A server process for the fault tests: `python -m tests.faults.worker`, run by the tests as a
real subprocess that they SIGKILL at will. Configured by environment:

- STREGO_FAULT_URL, STREGO_FAULT_PREFIX: the Redis server and key prefix
- STREGO_FAULT_LOOP: "asyncio" (RedisBackend over redis-py) or "trio" (over the anyio transport)
- STREGO_FAULT_LOG: a directory; each process appends `start|finish <task id> <pid> <monotonic s>`
  lines to a file of its own (O_APPEND writes: a line that returned survives a SIGKILL of the
  writer; the monotonic clock is the machine's, shared by every process and never faked)
- STREGO_FAULT_LEASE (claim_stale_after, s), STREGO_FAULT_MAX_DELIVERIES, STREGO_FAULT_CONCURRENCY
- STREGO_FAULT_CRON: an interval in ms: the server defines the schedule `tick`, a `job` (payload
  0) every that long, catching up every missed tick

Handlers: `job` (payload: seconds to sleep; records start and finish) and `poison` (records its
start, then SIGKILLs its own process).

`python -m tests.faults.worker enqueue ID SECONDS` enqueues one `job` of id ID (payload 0) due
SECONDS from now, then exits: a producer whose host clock a test may shift."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from datetime import timedelta

import anyio

import strego
from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport

_fd: int | None = None


def record(event: str, task_id: str | None) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["STREGO_FAULT_LOG"], f"{os.getpid()}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{event} {task_id} {os.getpid()} {time.monotonic():.3f}\n".encode())


def build_backend() -> RedisBackend:
    url, prefix = os.environ["STREGO_FAULT_URL"], os.environ["STREGO_FAULT_PREFIX"]
    if os.environ.get("STREGO_FAULT_LOOP", "asyncio") == "trio":
        return RedisBackend(AnyioTransport.from_url(url), prefix=prefix)
    return RedisBackend.from_url(url, prefix=prefix)


def build_server() -> strego.Server:
    backend = build_backend()
    server = strego.Server(
        backend,
        concurrency=int(os.environ.get("STREGO_FAULT_CONCURRENCY", "10")),
        claim_stale_after=float(os.environ.get("STREGO_FAULT_LEASE", "1.5")),
        recovery_interval=0.25,
        max_deliveries=int(os.environ.get("STREGO_FAULT_MAX_DELIVERIES", "1000")),
        retry_delay=lambda *_: 0.05,
        shutdown_timeout=2,
    )

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        record("start", task.id)
        if task.payload:
            await anyio.sleep(float(task.payload))
        record("finish", task.id)

    cron_ms = os.environ.get("STREGO_FAULT_CRON")
    if cron_ms:
        # "all": a tick found late (a loaded machine) fires late, never skipped
        every = timedelta(milliseconds=int(cron_ms))
        server.cron(every, strego.Task("job", 0), id="tick", catchup="all")

    @server.handler("poison")
    async def poison(task: strego.Task) -> None:
        record("start", task.id)
        os.kill(os.getpid(), signal.SIGKILL)

    return server


async def enqueue(task_id: str, seconds: float) -> None:
    backend = build_backend()
    try:
        await strego.Client(backend).enqueue(strego.Task("job", 0, id=task_id, process_in=seconds))
    finally:
        await backend.aclose()


async def main() -> None:
    if sys.argv[1:2] == ["enqueue"]:
        return await enqueue(sys.argv[2], float(sys.argv[3]))
    server = build_server()
    # imports done, server built: what is left of starting takes no time (chaos tests kill only
    # processes that are up, see Workers.is_up)
    open(os.path.join(os.environ["STREGO_FAULT_LOG"], f"up-{os.getpid()}"), "w").close()  # noqa: ASYNC230
    try:
        await server.run()
    finally:
        await server.backend.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, backend=os.environ.get("STREGO_FAULT_LOOP", "asyncio"))
