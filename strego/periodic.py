"""The periodic loop of a server: stores the schedules it defines, then fires the due ticks of every
stored schedule. Any number of servers run it at once with no leader and no lock: each fire is one
conditional backend step (`Backend.fire_schedule`) that only the first caller of a tick wins, so
each tick fires exactly once; the others see STALE and read the schedule again.

Time is the backend's (`list_schedules` reads it), never this host's: a server whose clock is off
neither fires a tick early nor twice (docs/architecture.md, invariant 7); the fire step checks
the tick against the backend's clock once more."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import attrs

from strego.backends.base import Backend, FireResult, ScheduleDefinition, ScheduleInfo
from strego.cron import plan
from strego.failure_log import FailureLog

log = logging.getLogger("strego.periodic")

#: Read the schedules again after a fire found the tick ahead by the backend's clock (the read's
#: estimate of that clock ran a little ahead), seconds.
EARLY_RETRY_S = 0.02
#: Read again at once (but not in a hot loop) after another server moved a schedule on.
STALE_RETRY_S = 0.005


class Periodic:
    """Fires the due ticks of every stored schedule; `definitions` are stored first (a changed
    one replaces the stored one, with its next tick from now). `max_sleep` bounds each wait, so a
    schedule added or moved earlier by another process is seen within it."""

    def __init__(
        self,
        backend: Backend,
        definitions: Sequence[ScheduleDefinition] = (),
        *,
        max_sleep: float = 5.0,
    ) -> None:
        self.backend = backend
        self.definitions = list(definitions)
        self.max_sleep = max_sleep
        #: how many ticks this loop fired (skipped ones not counted)
        self.fired = 0

    async def put_definitions(self) -> None:
        if not self.definitions:
            return
        now = (await self.backend.list_schedules()).now_ms
        for d in self.definitions:
            info = await self.backend.put_schedule(d, d.ticks.after(now))
            log.info(
                "schedule %s: next tick at %d ms (revision %d)", d.id, info.next_ms, info.revision
            )

    async def fire_due(self) -> float:
        """Fire what is due; returns how long to wait (seconds) before the next tick."""
        listing = await self.backend.list_schedules()
        now = listing.now_ms
        wait = self.max_sleep
        for schedule in listing.schedules:
            wait = min(wait, await self._fire(schedule, now))
        return max(0.0, wait)

    async def _fire(self, schedule: ScheduleInfo, now: int) -> float:
        d = schedule.definition
        for step in plan(d.ticks, d.catchup, schedule.next_ms, now):
            result = await self.backend.fire_schedule(
                schedule, step.tick_ms, step.next_ms, enqueue=step.fire
            )
            if result is FireResult.EARLY:
                return EARLY_RETRY_S
            if result is FireResult.STALE:
                return STALE_RETRY_S
            if step.fire:
                self.fired += 1
            else:
                log.info("schedule %s: skipped missed ticks up to %d ms", d.id, step.tick_ms)
            schedule = attrs.evolve(schedule, next_ms=step.next_ms)
        return (schedule.next_ms - now) / 1000

    async def run(self) -> None:
        """Until cancelled. Backend errors are logged and retried after a short pause."""
        failures = FailureLog(log, "periodic schedules")
        stored = False
        while True:
            try:
                if not stored:
                    await self.put_definitions()
                    stored = True
                wait = await self.fire_due()
            except Exception as exc:  # never let a backend hiccup stop the loop
                failures.failed(exc, retry_in=1.0)
                await anyio.sleep(1.0)
            else:
                failures.succeeded()
                await anyio.sleep(wait)
