"""Task history: events written by each transition (strego.history.events) and drained into
PostgreSQL for search (strego.history.postgres, the `postgres` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strego.history.events import HistoryEvent, HistorySource, history_source

if TYPE_CHECKING:
    from strego.history.postgres import PostgresHistory

__all__ = ["HistoryEvent", "HistorySource", "PostgresHistory", "history_source"]


def __getattr__(name: str) -> Any:
    # psycopg is imported only when PostgresHistory is asked for
    if name == "PostgresHistory":
        from strego.history.postgres import PostgresHistory

        return PostgresHistory
    raise AttributeError(name)
