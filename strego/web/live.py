"""The overview the UI shows and streams (Server-Sent Events): every queue's counts, paused flag,
oldest-pending age, live consumers and per-minute history, or the error of a queue that could not
be read. Built from the API's shared reads (`Api.overview`, `Api.workers`: one backend read per
interval per process, refreshed after every mutation), so any number of open tabs, event streams
and API pollers cost the backend what one does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from strego.clock import wall_clock_ms
from strego.report import dumps

#: A consumer idle for longer than this does not count as serving its queue (a server's fetch asks
#: again every couple of seconds, so a live one is idle for much less).
LIVE_CONSUMER_MS = 60_000
#: States whose tasks wait for a worker (a queue holding some and served by nobody gets a badge).
WAITING = ("pending", "active", "retry", "scheduled")

Snapshot = dict[str, Any]
Read = Callable[[], Awaitable[list[dict[str, Any]]]]


def _history(row: dict[str, Any]) -> dict[str, list[int]] | None:
    """Processed and failed (to retry or dead) per minute, from the API's per-minute columns when
    the backend counts them."""
    history = row.get("history")
    if not isinstance(history, dict) or not history.get("completed"):
        return None
    failed, dead = history.get("failed", []), history.get("dead", [])
    return {
        "processed": list(history["completed"]),
        "failed": [f + d for f, d in zip(failed, dead, strict=False)],
    }


def compose(queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> Snapshot:
    served: dict[str, int] = {}
    for w in workers:
        if w["idle_ms"] <= LIVE_CONSUMER_MS:
            served[w["queue"]] = served.get(w["queue"], 0) + 1
    rows = []
    for q in queues:
        live = served.get(q["name"], 0)
        if q.get("error") is not None:  # could not be read: its error, and no counts to show
            rows.append(
                {
                    "name": q["name"],
                    "error": q["error"],
                    "paused": None,
                    "counts": None,
                    "oldest_pending_age_ms": None,
                    "consumers": live,
                    "no_workers": False,
                    "history": None,
                }
            )
            continue
        counts = q["counts"]
        rows.append(
            {
                "name": q["name"],
                "error": None,
                "paused": q["paused"],
                "counts": counts,
                "oldest_pending_age_ms": q.get("oldest_pending_age_ms"),
                "consumers": live,
                "no_workers": live == 0 and any(counts.get(s, 0) for s in WAITING),
                "history": _history(q),
            }
        )
    return {"at_ms": wall_clock_ms(), "queues": rows}


class LiveOverview:
    def __init__(self, queues: Read, workers: Read, interval: float) -> None:
        self._queues = queues
        self._workers = workers
        self.interval = interval

    async def current(self) -> Snapshot:
        return compose(await self._queues(), await self._workers())

    async def events(self) -> AsyncIterator[bytes]:
        """The event stream of one tab: the snapshot at once, then each one that differs (a
        comment line otherwise, so a proxy does not close an idle stream)."""
        last = b""
        yield b"retry: 3000\n\n"
        while True:
            snapshot = await self.current()
            data = dumps({k: v for k, v in snapshot.items() if k != "at_ms"})
            if data != last:
                last = data
                yield b"event: overview\ndata: " + dumps(snapshot) + b"\n\n"
            else:
                yield b": unchanged\n\n"
            await anyio.sleep(self.interval)
