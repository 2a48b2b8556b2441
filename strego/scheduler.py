"""The scheduler: moves scheduled and retry tasks to pending when they are due, sleeping until the
next due time (or until the backend says an earlier one arrived) instead of polling."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from strego.backends.base import Backend
from strego.failure_log import FailureLog

log = logging.getLogger("strego.scheduler")


class Scheduler:
    """Calls `promote` whenever something is due. `max_sleep` bounds each wait (a safety net for
    a missed wake-up); every `prune_every` seconds it also forgets consumers idle for longer than
    `consumer_idle` seconds that hold no task (a dead server's name, once its tasks were claimed).
    """

    def __init__(
        self,
        backend: Backend,
        queues: Sequence[str],
        *,
        max_sleep: float = 5.0,
        prune_every: float = 60.0,
        consumer_idle: float = 300.0,
    ) -> None:
        self.backend = backend
        self.queues = list(queues)
        self.max_sleep = max_sleep
        self.prune_every = prune_every
        self.consumer_idle = consumer_idle

    async def promote_once(self) -> float:
        """Promote what is due; returns how long to wait (seconds) before the next due time."""
        due_in_ms = await self.backend.promote(self.queues)
        if due_in_ms is None:
            return self.max_sleep
        return min(self.max_sleep, max(0.0, due_in_ms / 1000))

    async def prune(self) -> None:
        idle_ms = int(self.consumer_idle * 1000)
        for queue in self.queues:
            removed = await self.backend.remove_idle_consumers(queue, idle_ms)
            if removed:
                log.info("forgot idle consumers of queue %s: %s", queue, ", ".join(removed))

    async def run(self) -> None:
        """Until cancelled. Backend errors are logged and retried after a short pause."""
        next_prune = anyio.current_time() + self.prune_every
        failures = FailureLog(log, "scheduler")
        while True:
            try:
                wait = await self.promote_once()
                if anyio.current_time() >= next_prune:
                    next_prune = anyio.current_time() + self.prune_every
                    await self.prune()
                if wait > 0:
                    await self.backend.wait_schedule_change(self.queues, max(1, round(wait * 1000)))
            except Exception as exc:  # never let a backend hiccup stop the scheduler
                failures.failed(exc, retry_in=1.0)
                await anyio.sleep(1.0)
            else:
                failures.succeeded()
