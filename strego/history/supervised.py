"""A drainer beside a server in one process (``strego worker --history-postgres DSN``): it must
never take the server down, whatever goes wrong in it (docs/history.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from strego.history.postgres import PostgresHistory

log = logging.getLogger("strego.history")

#: Seconds between a drainer's unexpected failure and its restart.
RESTART_S = 5.0


async def drain_beside(
    history: PostgresHistory,
    backend: object,
    *,
    restart_s: float = RESTART_S,
    **options: Any,
) -> None:
    """`history.drain(backend, **options)` until cancelled, restarted `restart_s` after any
    exception it raises (logged with its traceback): run it in the server's task group, and the
    server goes on running tasks whatever happens to the drainer. PostgreSQL or Redis failing is
    already retried inside `drain`; this catches the rest (a bug, an unforeseen error)."""
    while True:
        try:
            await history.drain(backend, **options)
            return  # only with until_idle
        except Exception:  # never into the server's task group; cancellation passes through
            log.exception("history: the drainer failed; it restarts in %.0f s", restart_s)
        await anyio.sleep(restart_s)
