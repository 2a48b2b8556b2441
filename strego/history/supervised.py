"""A drainer beside a server in one process (``strego worker --history-postgres DSN``): it must
never take the server down, whatever goes wrong in it (docs/history.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from strego.history.events import release_history
from strego.server import consumer_name

if TYPE_CHECKING:
    from strego.history.postgres import PostgresHistory

log = logging.getLogger("strego.history")

#: Seconds between a drainer's unexpected failure and its restart.
RESTART_S = 5.0
#: The longest a stopping drainer spends handing on its entries (Redis may be gone).
RELEASE_S = 2.0


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
    already retried inside `drain`; this catches the rest (a bug, an unforeseen error).

    When it stops, the entries it read and did not store are handed to the next drainer at
    once (`release_history`), under `consumer` (default: a new unique name)."""
    consumer = options.pop("consumer", None) or consumer_name()
    try:
        while True:
            try:
                await history.drain(backend, consumer=consumer, **options)
                return  # only with until_idle
            except Exception:  # never into the server's task group; cancellation goes through
                log.exception("history: the drainer failed; it restarts in %.0f s", restart_s)
            await anyio.sleep(restart_s)
    finally:
        await hand_on(backend, consumer)


async def hand_on(backend: object, consumer: str) -> None:
    """At a drainer's stop (even a cancelled one): hand the entries it read and did not store to
    the next drainer (`release_history`), within RELEASE_S; a failure is only logged (they are
    taken over a minute later instead)."""
    with anyio.move_on_after(RELEASE_S, shield=True):
        try:
            await release_history(backend, consumer)
        except Exception as exc:
            log.warning("history: handing on the entries not stored failed: %s", exc)
