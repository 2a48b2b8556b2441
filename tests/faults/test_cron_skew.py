"""Each tick of a periodic schedule fires exactly once, with no leader and no lock: three server
processes on one Redis run a one-second schedule for about ten seconds, their host clocks shifted
by +5 s and -5 s (Debian's faketime) or not, and one of them is SIGKILLed and started again
meanwhile. Every tick from the first to the last has its task, none fires before its time (the
Redis clock decides, not the hosts'), and none is lost to the kill."""

from __future__ import annotations

import time

import anyio
import pytest

from strego import Client
from strego.task import TaskState
from tests.faults.support import Workers, make_backend

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

#: the longest any one step may take on a loaded machine (a process starting, a tick running)
STEP_S = 60.0
EVERY_MS = 1000


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the servers alternate asyncio and trio
async def test_every_tick_fires_once_across_skewed_killed_servers(
    workers: Workers, anyio_backend: object
) -> None:
    workers.env["STREGO_FAULT_CRON"] = str(EVERY_MS)
    # the test's own clocks are real: a run's monotonic start maps to epoch by this offset
    to_epoch = time.time() - time.monotonic()
    procs = [workers.start(clock_shift=shift) for shift in (None, "+5s", "-5s")]
    backend = make_backend(workers.url, workers.prefix, anyio_backend)

    def ticks_run() -> list[int]:
        return sorted(int(i.split(":")[1]) for i in workers.runs() if i.startswith("tick:"))

    async def wait_ticks(n: int) -> None:
        with anyio.fail_after(STEP_S):
            while len(ticks_run()) < n:  # noqa: ASYNC110 (files: nothing to wait on)
                await anyio.sleep(0.05)

    try:
        await wait_ticks(3)
        workers.kill(procs[1])  # the one 5 s ahead, between ticks or in one
        killed_after = len(ticks_run())
        workers.start(clock_shift="+5s")
        await wait_ticks(killed_after + 7)
        for proc in workers.alive():
            workers.kill(proc)
        infos = []
        for state in (TaskState.PENDING, TaskState.ACTIVE, TaskState.COMPLETED):
            infos += (await backend.list_tasks("default", state, limit=1000)).tasks
        ticks = sorted(int(t.id.split(":")[1]) for t in infos)
        [schedule] = await Client(backend).schedules()
    finally:
        await backend.aclose()
    detail = f"{ticks}\n{workers.stderr_text()}"
    assert len(ticks) >= 10, detail
    # every tick from the first to the last, each once (a task per tick, its id the tick's)
    assert ticks == list(range(ticks[0], ticks[-1] + EVERY_MS, EVERY_MS)), detail
    assert schedule.last_fire_ms == ticks[-1]
    assert schedule.next_ms == ticks[-1] + EVERY_MS
    # none ran before its tick, though two hosts' clocks said it was 5 s later or earlier
    for task_id, runs in workers.runs().items():
        tick_s = int(task_id.split(":")[1]) / 1000
        first = min(run.started for run in runs) + to_epoch
        assert first >= tick_s - 0.05, f"{task_id} ran {tick_s - first:.2f} s early"
