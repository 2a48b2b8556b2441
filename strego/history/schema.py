"""The history schema in PostgreSQL: creating it, migrating it, and its daily partitions.

A fresh database gets schema.sql (the latest version in one go); an older one gets the steps of
migrations/ from its version up, each in its transaction. tests/test_history_postgres.py checks
that both give the same catalog, so the two cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from importlib import resources

import psycopg

#: (version, file) of every migration step, in order; the last version is the current one.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, "0001_initial.sql"), (2, "0002_retried_seq.sql"))
VERSION = MIGRATIONS[-1][0]

#: The partitioned tables, by the column they are partitioned on.
PARTITIONED = {"strego_tasks": "created_at", "strego_events": "at"}
#: A task whose id carries no time is stored under this day, which retention keeps.
NO_TIME_DAY = date(1970, 1, 1)

_PARTITION = re.compile(r"^(strego_tasks|strego_events)_p(\d{8})$")


def _sql(path: str) -> str:
    return resources.files("strego.history").joinpath(path).read_text(encoding="utf-8")


def current_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The schema version stored (0: no schema)."""
    found = conn.execute("SELECT to_regclass('strego_history_version') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM strego_history_version").fetchone()
    return int(str(row[0])) if row and row[0] is not None else 0


def migrate(conn: psycopg.Connection[tuple[object, ...]], *, fresh: bool = True) -> int:
    """Bring the schema to VERSION (schema.sql on an empty database unless `fresh` is False,
    else the steps from the stored version); returns the version found before. An advisory lock
    keeps two drainers starting together from migrating at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('strego_history_migrate'))")
        found = current_version(conn)
        if found > VERSION:
            from strego.errors import SchemaVersionError

            raise SchemaVersionError(
                f"the history schema is version {found}; this strego knows {VERSION}"
            )
        if found == 0 and fresh:
            conn.execute(_sql("schema.sql").encode())
            conn.execute("INSERT INTO strego_history_version VALUES (%s)", (VERSION,))
            return found
        for version, path in MIGRATIONS:
            if version > found:
                conn.execute(_sql(f"migrations/{path}").encode())
                conn.execute("DELETE FROM strego_history_version")
                conn.execute("INSERT INTO strego_history_version VALUES (%s)", (version,))
    return found


def day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


_DAY_MS = 86_400_000


def days_of(times_ms: Iterable[int]) -> set[date]:
    """The UTC days of epoch milliseconds (by integer division: a batch has thousands)."""
    return {NO_TIME_DAY + timedelta(days=d) for d in {ms // _DAY_MS for ms in times_ms}}


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def ensure_partitions(
    conn: psycopg.Connection[tuple[object, ...]], table: str, days: set[date], known: set[str]
) -> set[str]:
    """Create the day partitions of `table` that `days` need and `known` lacks; returns their
    names, for the caller to add to `known` once its transaction commits (a rollback undoes
    them). Called in the batch's transaction: a lock held to its end keeps two drainers from
    creating the same partition at once (IF NOT EXISTS alone races: "relation already exists")."""
    made: set[str] = set()
    locked = False
    for day in sorted(days):
        name = partition_name(table, day)
        if name in known:
            continue
        if not locked:
            # two batches in flight may need the same new day: the second waits for the first
            # to commit (the lock is the transaction's), then finds the partition made
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('strego_history_partitions'))")
            locked = True
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}"
            f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        made.add(name)
    return made


def partitions(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, list[date]]:
    """The day partitions of each partitioned table, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%s)",
        (list(PARTITIONED),),
    ).fetchall()
    out: dict[str, list[date]] = {table: [] for table in PARTITIONED}
    for (name,) in rows:
        m = _PARTITION.match(str(name))
        if m:
            out[m.group(1)].append(datetime.strptime(m.group(2), "%Y%m%d").date())
    return {table: sorted(days) for table, days in out.items()}


def drop_before(conn: psycopg.Connection[tuple[object, ...]], before: date) -> list[str]:
    """Drop every day partition wholly before `before` (events by their time, tasks by their
    creation; the day of tasks with no time in their id stays). Returns the names dropped."""
    dropped = []
    with conn.transaction():
        for table, days in partitions(conn).items():
            for day in days:
                if day < before and not (table == "strego_tasks" and day == NO_TIME_DAY):
                    name = partition_name(table, day)
                    conn.execute(f"DROP TABLE IF EXISTS {name}")
                    dropped.append(name)
    return dropped
