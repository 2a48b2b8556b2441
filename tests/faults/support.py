"""Helpers of the fault tests: worker subprocesses (tests/faults/worker.py) that can be killed and
replaced, and reading the start/finish records they leave."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import attrs

from strego.backends.redis import RedisBackend
from strego.backends.redis.anyio_transport import AnyioTransport
from tests.redis_server import unavailable

ROOT = Path(__file__).resolve().parents[2]

#: A fault test fails when nothing progressed for this long (a hang), never because the whole run
#: took longer than some fixed time: a loaded 2-core machine makes every step slower.
STALL_S = 60.0


class Progress:
    """Fails a wait that stopped moving: `moved(done)` records the count of things done so far,
    and raises when it has not grown for `stall` seconds, or when the whole wait passed
    `ceiling` seconds (a hang guard far above any healthy run, under the pytest timeout)."""

    def __init__(self, what: str, *, stall: float = STALL_S, ceiling: float = 600.0) -> None:
        self.what = what
        self.stall = stall
        self.started = self.last_move = time.monotonic()
        self.ceiling = ceiling
        self.best = -1

    def moved(self, done: int, detail: str = "") -> None:
        now = time.monotonic()
        if done > self.best:
            self.best, self.last_move = done, now
        detail = f" ({detail})" if detail else ""
        if now - self.last_move > self.stall:
            raise AssertionError(f"{self.what}: stuck at {done} for {self.stall:g}s{detail}")
        if now - self.started > self.ceiling:
            raise AssertionError(f"{self.what}: {done} after {self.ceiling:g}s{detail}")


async def wait_for_progress(
    count_done: Callable[[], Awaitable[int]], total: int, what: str, *, stall: float = STALL_S
) -> None:
    """Wait until `count_done()` reaches `total`, failing only when it stops growing for `stall`
    seconds (see Progress)."""
    progress = Progress(what, stall=stall)
    while (done := await count_done()) < total:
        progress.moved(done, f"of {total}")
        await anyio.sleep(0.05)


def faketime(shift: str | None) -> dict[str, str]:
    """The environment that runs a process with its host clock shifted by `shift` (Debian's
    libfaketime, e.g. "+120s"; the monotonic clock stays real, so sleeps and timeouts are
    unaffected). Preloaded into the process itself, not through the `faketime` command, which
    forks: killing it would orphan the process under test."""
    if shift is None:
        return {}
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    found += sorted(glob.glob("/usr/lib/faketime/libfaketimeMT.so.1"))
    if not found:
        unavailable("libfaketime is not installed (apt-get install faketime)")
    return {"LD_PRELOAD": found[0], "FAKETIME": shift, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def make_backend(url: str, prefix: str, anyio_backend: object) -> RedisBackend:
    """redis-py under asyncio, strego's anyio transport under trio."""
    loop = anyio_backend[0] if isinstance(anyio_backend, tuple) else anyio_backend
    if loop == "trio":
        return RedisBackend(AnyioTransport.from_url(url), prefix=prefix)
    return RedisBackend.from_url(url, prefix=prefix)


@attrs.define
class Run:
    """One handler run: the process that ran it and whether it got to its end."""

    pid: int
    #: when it started, by the machine's monotonic clock (the same in every process)
    started: float
    finished: bool = False


@attrs.define
class Workers:
    """Server subprocesses on one Redis and prefix, alternating asyncio (redis-py) and trio (the
    anyio transport). Every process started is remembered, and killed (if still alive) by
    `close`."""

    url: str
    prefix: str
    log_dir: Path
    env: dict[str, str] = attrs.Factory(dict)
    procs: list[subprocess.Popen[bytes]] = attrs.Factory(list)
    killed: set[int] = attrs.Factory(set)
    started: int = 0

    def start(
        self, *args: str, clock_shift: str | None = None, loop: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process (or, with args, `tests.faults.worker` run with them). `clock_shift`
        (faketime's offset, e.g. "+120s") shifts its host clock, not its monotonic clock."""
        loop = loop or ("asyncio", "trio")[self.started % 2]
        self.started += 1
        env = dict(
            os.environ,
            STREGO_FAULT_URL=self.url,
            STREGO_FAULT_PREFIX=self.prefix,
            STREGO_FAULT_LOOP=loop,
            STREGO_FAULT_LOG=str(self.log_dir),
            **self.env,
            **faketime(clock_shift),
        )
        stderr = open(self.log_dir / f"stderr-{self.started}.txt", "wb")  # noqa: SIM115
        with stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.worker", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def is_up(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether the worker process has started (imports done, its server built)."""
        return (self.log_dir / f"up-{proc.pid}").exists()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed.add(proc.pid)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    def runs(self) -> dict[str, list[Run]]:
        """Every handler run per task id, in the order each process recorded them."""
        runs: dict[str, list[Run]] = defaultdict(list)
        open_runs: dict[tuple[str, int], Run] = {}
        for path in sorted(self.log_dir.glob("*.log")):
            for line in path.read_text().splitlines():
                event, task_id, pid, at = line.split()
                if event == "start":
                    run = Run(int(pid), float(at))
                    runs[task_id].append(run)
                    open_runs[task_id, int(pid)] = run
                else:
                    open_runs[task_id, int(pid)].finished = True
        return runs

    def stderr_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("stderr-*.txt")))
