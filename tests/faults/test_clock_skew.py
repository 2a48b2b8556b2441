"""One clock decides (docs/architecture.md, invariant 7): worker and producer processes whose host
clocks are shifted by two minutes (Debian's faketime) neither steal a live task nor run a
scheduled task early, because every lease, due time and stale claim is judged by Redis TIME.

Each wait is bounded by progress (a process that has not started, a task that has not run), with
ceilings far above what an idle machine needs, so a loaded CI machine passes them."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from strego import Client, Task
from tests.faults.support import Workers, make_backend

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

#: the longest any one step may take on a loaded machine (a process starting, a task running)
STEP_S = 60.0
#: how long the victim's task runs: the thief has this long to (wrongly) claim it
JOB_S = 6.0


async def wait_for(check: Callable[[], object]) -> None:
    """Poll `check` (a file or a Redis read: nothing to wait on) until it holds."""
    with anyio.fail_after(STEP_S):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.05)


@pytest.mark.parametrize(
    ("victim_shift", "thief_shift"),
    [
        pytest.param(None, "+120s", id="thief-ahead"),
        pytest.param("-120s", None, id="victim-behind"),
    ],
)
async def test_a_skewed_clock_steals_no_live_task(
    workers: Workers, anyio_backend: object, victim_shift: str | None, thief_shift: str | None
) -> None:
    """Two servers with the default 30 s lease; one host clock two minutes off. Judged by host
    clocks, the victim's lease looked expired to the thief at its first recovery pass (every
    0.25 s here), and the handler ran twice at the same time."""
    workers.env["STREGO_FAULT_LEASE"] = "30"
    backend = make_backend(workers.url, workers.prefix, anyio_backend)
    try:
        await Client(backend).enqueue(Task("job", JOB_S, id="long"))
        workers.start(clock_shift=victim_shift)
        await wait_for(lambda: workers.runs().get("long"))
        workers.start(clock_shift=thief_shift)
        consumers: list[object] = []

        async def both_serving() -> bool:
            consumers[:] = await backend.consumers("default")
            return len(consumers) == 2

        with anyio.fail_after(STEP_S):
            while not await both_serving():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        thief_up = time.monotonic()
        await wait_for(lambda: workers.runs()["long"][-1].finished)
        runs = workers.runs()["long"]
        assert len(runs) == 1, f"run {len(runs)} times: {runs}\n{workers.stderr_text()}"
        # the thief had several recovery passes while the task ran, or this proved nothing
        assert runs[0].started + JOB_S - thief_up >= 1.0, "the thief came up too late to try"
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("producer_shift", "worker_shift"),
    [
        pytest.param(None, "+120s", id="worker-ahead"),
        pytest.param("-120s", None, id="producer-behind"),
    ],
)
async def test_a_skewed_clock_runs_no_scheduled_task_early(
    workers: Workers, producer_shift: str | None, worker_shift: str | None
) -> None:
    """A task due 4 s after it is enqueued starts no earlier, whichever host clock is off: the
    producer's (which once computed the due time) or the worker's (which once judged it)."""
    delay = 4.0
    workers.start(clock_shift=worker_shift)
    before = time.monotonic()  # the enqueue happens after this
    producer = workers.start("enqueue", "later", str(delay), clock_shift=producer_shift)
    await wait_for(lambda: producer.poll() is not None)
    assert producer.returncode == 0, workers.stderr_text()
    await wait_for(lambda: workers.runs().get("later"))
    [run] = workers.runs()["later"]
    assert run.started - before >= delay - 0.05, f"started {run.started - before:.2f} s after"
