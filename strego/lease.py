"""Leases: the tasks a server holds, renewed often enough that no other server claims them while
this one lives."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import anyio

from strego.backends.base import Backend
from strego.failure_log import FailureLog

log = logging.getLogger("strego.lease")


class LeaseKeeper:
    """Tracks the tasks held by one consumer (fetched, buffered, running or awaiting their ack)
    and renews all their leases every `interval` seconds."""

    def __init__(
        self,
        backend: Backend,
        consumer: str,
        lease_ms: int,
        interval: float,
        *,
        on_cancel_requested: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.backend = backend
        #: told of the held tasks whose cancel was requested (each renewal reports them)
        self.on_cancel_requested = on_cancel_requested
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.interval = interval
        self._held: dict[str, set[str]] = defaultdict(set)

    def hold(self, queue: str, task_id: str) -> None:
        self._held[queue].add(task_id)

    def drop(self, queue: str, task_id: str) -> None:
        ids = self._held.get(queue)
        if ids is not None:
            ids.discard(task_id)
            if not ids:
                del self._held[queue]

    def held(self) -> dict[str, set[str]]:
        return {queue: set(ids) for queue, ids in self._held.items()}

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._held.values())

    async def renew_all(self) -> None:
        for queue, ids in self.held().items():
            renewal = await self.backend.renew(
                queue, sorted(ids), self.consumer, lease_ms=self.lease_ms
            )
            if renewal.cancel_requested and self.on_cancel_requested is not None:
                self.on_cancel_requested(queue, renewal.cancel_requested)
            for task_id in renewal.lost:
                # Completed meanwhile (its ack raced the renewal), or another server claimed it:
                # our handler may still finish, and the backend then counts the work once.
                if task_id in self._held.get(queue, ()):
                    log.warning("lease of task %s in queue %s was lost", task_id, queue)

    async def run(self) -> None:
        """Renew forever (until cancelled); a failed renewal is logged and tried next round."""
        failures = FailureLog(log, "renewing leases")
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.renew_all()
            except Exception as exc:  # never let a backend hiccup stop the renewals
                failures.failed(exc, retry_in=self.interval)
            else:
                failures.succeeded()
