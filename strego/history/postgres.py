"""`PostgresHistory`: the task history in PostgreSQL, fed by `drain` and read by `search` and
`task` (docs/history.md).

The driver is sync psycopg 3, each call run in a worker thread (`anyio.to_thread`), so the same
code runs under asyncio and trio; psycopg's async connection is asyncio-only.
bench/history_driver.py measured it against an anyio wait loop over `psycopg.pq`: docs/history.md
gives the figures and why threads were kept."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
import psycopg

from strego.errors import BackendError, InvalidCursorError, InvalidTaskError, NaiveDatetimeError
from strego.history import schema
from strego.history.events import STATES, HistoryEvent, HistorySource, history_source
from strego.ids import id_time_ms

log = logging.getLogger("strego.history")

T = TypeVar("T")

#: Events per batch: one transaction, two statements (events, then tasks).
BATCH = 1000
#: While a backlog lasts (reads come back at least half full), the batch doubles up to this many
#: times `batch`: a task's events then tend to fall in one batch and make one row write, not three.
GROW = 20
#: The most tasks one search returns.
MAX_LIMIT = 1000
#: A WARNING when a queue's backlog reaches this share of its stream's cap.
WARN_SHARE = 0.8
#: How much of a payload is indexed for text search (bytes).
WORDS_PAYLOAD = 4096
#: How much of the labels (keys and values, joined) is indexed for text search (characters):
#: labels have no size limit, and a tsvector past 1 MB is refused.
WORDS_LABELS = 4096

#: What PostgreSQL refuses in an event: the same every time (a value out of range, a 0x00 in
#: text, a string too long for a tsvector or an index row), unlike an outage. ProgramLimitExceeded
#: (SQLSTATE class 54) is an OperationalError in psycopg: listed first, it is not taken for one.
_REFUSALS = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)

_PUNCTUATION = re.compile(r"[^\w]+")

_Conn = psycopg.Connection[tuple[Any, ...]]


@attrs.frozen
class HistoryTask:
    """A task as the history last saw it."""

    id: str
    queue: str
    type: str | None
    state: str
    created_at: datetime
    updated_at: datetime
    enqueued_at: datetime | None
    retried: int | None
    last_error: str | None
    consumer: str | None
    labels: dict[str, str]
    payload: bytes | None
    encoding: str | None


@attrs.frozen
class HistoryRecord:
    """One stored event of a task."""

    at: datetime
    state: str
    retried: int | None
    error: str | None
    consumer: str | None
    seq: tuple[int, int]


@attrs.frozen
class TaskStory:
    """A task and every event of it, in order: each attempt (`active`) and how it ended."""

    task: HistoryTask
    events: list[HistoryRecord]


@attrs.frozen
class HistoryPage:
    tasks: list[HistoryTask]
    #: give it back as `cursor` for the next page; None: no more
    next_cursor: str | None


@attrs.define
class DrainStats:
    """What a running drainer has done, for logs and metrics."""

    #: events stored since start
    stored: int = 0
    #: batches that failed (PostgreSQL down, ...) and were read again
    failures: int = 0
    #: events PostgreSQL refused (a DataError or a limit exceeded: retrying cannot help), logged
    #: and skipped
    refused: int = 0
    #: events waiting in the streams at the last look (the lag), and per queue
    lag: int = 0
    lag_by_queue: dict[str, int] = attrs.field(factory=dict)
    #: when the last batch was committed (time.time()), None before
    last_commit: float | None = None
    #: the events asked for at the last read: `batch`, more while a backlog lasts
    batch_size: int = 0
    #: when `drain` last started (time.time()), None before
    started: float | None = None


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _created_ms(task_id: str) -> int:
    """The partition key of a task's row: the time its id starts with, 0 for none."""
    ms = id_time_ms(task_id)
    return ms if ms is not None and ms < 253402300799000 else 0  # within year 9999


def _text(value: str) -> str:
    """`value` as PostgreSQL takes it: text and jsonb refuse 0x00, stored as U+FFFD instead."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _clean(e: HistoryEvent) -> HistoryEvent:
    """`e` with no 0x00 in its text fields (the same event when it has none: the usual case)."""
    # one scan of the fields joined (None reads "None": no 0x00) costs less than one per field
    text = f"{e.queue}{e.task_id}{e.state}{e.error}{e.consumer}{e.type}{e.encoding}"
    labels = e.labels or {}
    if "\x00" not in text and not (labels and "\x00" in "".join((*labels, *labels.values()))):
        return e
    return attrs.evolve(
        e, queue=_text(e.queue), task_id=_text(e.task_id), state=_text(e.state),
        error=None if e.error is None else _text(e.error),
        consumer=None if e.consumer is None else _text(e.consumer),
        type=None if e.type is None else _text(e.type),
        encoding=None if e.encoding is None else _text(e.encoding),
        labels=None if e.labels is None else {_text(k): _text(v) for k, v in labels.items()},
    )  # fmt: skip


def _words(event: HistoryEvent) -> str | None:
    if event.type is None:
        return None
    payload = (event.payload or b"")[:WORDS_PAYLOAD].decode("utf-8", errors="ignore")
    payload = payload.replace("\x00", " ")  # binary payloads: 0x00 separates words
    labels = " ".join(f"{k} {v}" for k, v in (event.labels or {}).items())[:WORDS_LABELS]
    text = f"{event.type} {labels} {payload}"
    # the parser keeps `report.build` or `a@b.c` whole: their parts are words too
    return f"{text} {_PUNCTUATION.sub(' ', text)}"


def fold(events: Sequence[HistoryEvent]) -> list[dict[str, Any]]:
    """One task row per task of `events`: the state of its newest event (by seq), its enqueue's
    fields, its newest error and retry count (each with its event's seq, so that rows of batches
    of any boundaries apply in any order to the same end). The same set of events gives the same
    rows in any order."""
    rows: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=_event_order):
        row = rows.get(e.task_id)
        if row is None:
            row = rows[e.task_id] = {
                "id": e.task_id, "created_ms": _created_ms(e.task_id), "type": None,
                "labels": None, "payload": None, "encoding": None, "enqueued_ms": None,
                "retried": None, "retried_seq": None, "error": None, "error_seq": None,
                "words": None,
            }  # fmt: skip
        # plain item stores: this runs for every event of a batch
        row["state"] = e.state
        row["at_ms"] = e.at_ms
        row["seq"] = e.seq
        row["consumer"] = e.consumer
        row["queue"] = e.queue
        if e.retried is not None:
            row["retried"], row["retried_seq"] = e.retried, e.seq
        if e.error is not None:
            row["error"], row["error_seq"] = e.error, e.seq
        if e.type is not None and row["type"] is None:
            row.update(
                type=e.type, labels=json.dumps(e.labels or {}), payload=e.payload,
                encoding=e.encoding, enqueued_ms=e.created_ms, words=_words(e),
            )  # fmt: skip
    return list(rows.values())


_event_order = operator.attrgetter("queue", "seq")


_COPY_EVENTS = (
    "COPY strego_events (at, queue, seq_ms, seq_n, task_id, state, retried, error, consumer)"
    " FROM STDIN"
)

# %b: the arrays are sent in binary, several times faster to dump than as text
_INSERT_EVENTS = """
INSERT INTO strego_events (at, queue, seq_ms, seq_n, task_id, state, retried, error, consumer)
SELECT to_timestamp(at_ms / 1000.0), queue, seq_ms, seq_n, task_id, state, retried, error, consumer
FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[],
            %b::int[], %b::text[], %b::text[])
     AS e(at_ms, queue, seq_ms, seq_n, task_id, state, retried, error, consumer)
ON CONFLICT DO NOTHING
"""

# Every column is set so that applying rows in any order ends the same: the enqueue's fields are
# kept once known, the state fields follow the newest event (seq), last_error the newest error,
# retried the newest count (each of these two by the seq of the event that carried it). A row
# with a count and no retried_seq was stored before schema version 2: its count came from an
# event no newer than the row's seq, which stands in for it.
# The batch's task rows are COPYed into this (a temporary table of the connection), then upserted.
_STAGE_TASKS = """
CREATE TEMPORARY TABLE IF NOT EXISTS strego_tasks_in (id text, created_ms bigint, queue text,
    type text, state text, labels text, payload bytea, encoding text, enqueued_ms bigint,
    retried int, error text, consumer text, at_ms bigint, seq_ms bigint, seq_n bigint,
    error_seq_ms bigint, error_seq_n bigint, words text, retried_seq_ms bigint,
    retried_seq_n bigint) ON COMMIT DELETE ROWS
"""
_COPY_TASKS = "COPY strego_tasks_in FROM STDIN"

_UPSERT_TASKS = """
INSERT INTO strego_tasks AS t (id, created_at, queue, type, state, labels, payload, encoding,
    enqueued_at, retried, last_error, consumer, updated_at, seq_ms, seq_n, error_seq_ms,
    error_seq_n, words, retried_seq_ms, retried_seq_n)
SELECT id, to_timestamp(created_ms / 1000.0), queue, type, state, labels::jsonb, payload,
    encoding, to_timestamp(enqueued_ms / 1000.0), retried, error, consumer,
    to_timestamp(at_ms / 1000.0), seq_ms, seq_n, error_seq_ms, error_seq_n,
    to_tsvector('simple', words), retried_seq_ms, retried_seq_n
FROM strego_tasks_in
-- one order for every batch: two batches in flight that share tasks lock their rows in the same
-- order, so they wait for each other instead of deadlocking
ORDER BY created_ms, id
ON CONFLICT (created_at, id) DO UPDATE SET
    type = coalesce(t.type, excluded.type),
    labels = coalesce(t.labels, excluded.labels),
    payload = coalesce(t.payload, excluded.payload),
    encoding = coalesce(t.encoding, excluded.encoding),
    enqueued_at = coalesce(t.enqueued_at, excluded.enqueued_at),
    words = coalesce(t.words, excluded.words),
    queue = CASE WHEN (excluded.seq_ms, excluded.seq_n) > (t.seq_ms, t.seq_n)
                 THEN excluded.queue ELSE t.queue END,
    state = CASE WHEN (excluded.seq_ms, excluded.seq_n) > (t.seq_ms, t.seq_n)
                 THEN excluded.state ELSE t.state END,
    consumer = CASE WHEN (excluded.seq_ms, excluded.seq_n) > (t.seq_ms, t.seq_n)
                    THEN excluded.consumer ELSE t.consumer END,
    updated_at = CASE WHEN (excluded.seq_ms, excluded.seq_n) > (t.seq_ms, t.seq_n)
                      THEN excluded.updated_at ELSE t.updated_at END,
    retried = CASE WHEN excluded.retried_seq_ms IS NOT NULL AND (t.retried IS NULL
                   OR (excluded.retried_seq_ms, excluded.retried_seq_n)
                      > (coalesce(t.retried_seq_ms, t.seq_ms),
                         coalesce(t.retried_seq_n, t.seq_n)))
                   THEN excluded.retried ELSE t.retried END,
    retried_seq_ms = CASE WHEN excluded.retried_seq_ms IS NOT NULL AND (t.retried IS NULL
                          OR (excluded.retried_seq_ms, excluded.retried_seq_n)
                             > (coalesce(t.retried_seq_ms, t.seq_ms),
                                coalesce(t.retried_seq_n, t.seq_n)))
                          THEN excluded.retried_seq_ms ELSE t.retried_seq_ms END,
    retried_seq_n = CASE WHEN excluded.retried_seq_ms IS NOT NULL AND (t.retried IS NULL
                         OR (excluded.retried_seq_ms, excluded.retried_seq_n)
                            > (coalesce(t.retried_seq_ms, t.seq_ms),
                               coalesce(t.retried_seq_n, t.seq_n)))
                         THEN excluded.retried_seq_n ELSE t.retried_seq_n END,
    last_error = CASE WHEN excluded.error_seq_ms IS NOT NULL AND (t.error_seq_ms IS NULL
                      OR (excluded.error_seq_ms, excluded.error_seq_n)
                         > (t.error_seq_ms, t.error_seq_n))
                      THEN excluded.last_error ELSE t.last_error END,
    error_seq_ms = CASE WHEN excluded.error_seq_ms IS NOT NULL AND (t.error_seq_ms IS NULL
                        OR (excluded.error_seq_ms, excluded.error_seq_n)
                           > (t.error_seq_ms, t.error_seq_n))
                        THEN excluded.error_seq_ms ELSE t.error_seq_ms END,
    error_seq_n = CASE WHEN excluded.error_seq_ms IS NOT NULL AND (t.error_seq_ms IS NULL
                       OR (excluded.error_seq_ms, excluded.error_seq_n)
                          > (t.error_seq_ms, t.error_seq_n))
                       THEN excluded.error_seq_n ELSE t.error_seq_n END,
    seq_n = CASE WHEN (excluded.seq_ms, excluded.seq_n) > (t.seq_ms, t.seq_n)
                 THEN excluded.seq_n ELSE t.seq_n END,
    seq_ms = greatest(t.seq_ms, excluded.seq_ms)
"""

_TASK_COLUMNS = (
    "id, queue, type, state, created_at, updated_at, enqueued_at, retried, last_error, consumer,"
    " labels, payload, encoding"
)


def _task(row: Sequence[Any]) -> HistoryTask:
    (id_, queue, type_, state, created, updated, enqueued, retried, error, consumer, labels,
     payload, encoding) = row  # fmt: skip
    return HistoryTask(
        id_, queue, type_, state, created, updated, enqueued, retried, error, consumer,
        dict(labels or {}), None if payload is None else bytes(payload), encoding,
    )  # fmt: skip


def _instant(value: datetime | float | None, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise NaiveDatetimeError(f"{what} must be timezone-aware")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    raise InvalidTaskError(f"{what} must be a datetime or epoch seconds, got {value!r}")


def _encode_cursor(task: HistoryTask) -> str:
    raw = json.dumps([task.created_at.isoformat(), task.id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, id_ = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(when), str(id_)
    except (ValueError, TypeError) as exc:
        raise InvalidCursorError(f"not a history cursor: {cursor!r}") from exc


class PostgresHistory:
    """The task history in the PostgreSQL database `dsn` (a libpq connection string or URL).
    `drain(backend)` stores a backend's history events; `search` and `task` read them. Every
    method may be called under asyncio or trio."""

    def __init__(self, dsn: str, *, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.stats = DrainStats()
        self._conn: _Conn | None = None
        # one connection, used by one thread at a time
        self._lock = threading.Lock()
        self._migrated = False
        self._partitions: set[str] = set()
        self._warned_at = self._logged_at = float("-inf")

    # -- connection -------------------------------------------------------------------------------

    def _connect(self) -> _Conn:
        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            application_name="strego-history",
        )
        if not self._migrated:
            try:
                schema.migrate(conn)  # an advisory lock serializes concurrent callers
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        return conn

    def _connection(self) -> _Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._conn = self._connect()
            self._partitions = set()
        return self._conn

    def _sync(self, fn: Callable[[_Conn], T]) -> T:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.OperationalError:
                conn.close()  # a broken connection is made again at the next call
                raise

    async def _run(self, fn: Callable[[_Conn], T]) -> T:
        return await anyio.to_thread.run_sync(self._sync, fn)

    async def migrate(self) -> None:
        """Create or upgrade the schema now (the first call of any method does it otherwise)."""
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(close)

    # -- storing ----------------------------------------------------------------------------------

    def _store(
        self, conn: _Conn, events: Sequence[HistoryEvent], known: set[str] | None = None
    ) -> None:
        """One batch in one transaction on `conn`; `known`: the partitions `conn` has seen
        (per connection: another's may not be committed yet)."""
        known = self._partitions if known is None else known
        events = [_clean(e) for e in events]
        try:
            try:
                self._store_batch(conn, events, known)
            except psycopg.errors.CheckViolation:
                if not known:
                    raise
                # "no partition found for row": one it had seen was dropped since (retention,
                # here or in another process): make the partitions again, once
                known.clear()
                self._store_batch(conn, events, known)
        except psycopg.Error:
            known.clear()  # what it knew may be what failed; checking again costs little
            raise

    def _store_batch(self, conn: _Conn, events: Sequence[HistoryEvent], known: set[str]) -> None:
        rows = fold(events)
        with conn.transaction():
            made = schema.ensure_partitions(
                conn, "strego_events", schema.days_of(e.at_ms for e in events), known
            )
            made |= schema.ensure_partitions(
                conn, "strego_tasks", schema.days_of(r["created_ms"] for r in rows), known
            )
            self._insert_events(conn, events)
            conn.execute(_STAGE_TASKS)
            with conn.cursor().copy(_COPY_TASKS) as copy:
                for r in rows:
                    error_seq = r["error_seq"] or (None, None)
                    retried_seq = r["retried_seq"] or (None, None)
                    copy.write_row((
                        r["id"], r["created_ms"], r["queue"], r["type"], r["state"],
                        r["labels"], r["payload"], r["encoding"], r["enqueued_ms"], r["retried"],
                        r["error"], r["consumer"], r["at_ms"], r["seq"][0], r["seq"][1],
                        error_seq[0], error_seq[1], r["words"], retried_seq[0], retried_seq[1],
                    ))  # fmt: skip
            conn.execute(_UPSERT_TASKS)
        known |= made  # committed: another connection sees them now

    @staticmethod
    def _insert_events(conn: _Conn, events: Sequence[HistoryEvent]) -> None:
        """COPY the events (the fast way); when some are stored already (a batch read again),
        COPY fails on the primary key, and they go through INSERT ... ON CONFLICT DO NOTHING."""
        at: dict[int, datetime] = {}  # the events of one entry share their time
        try:
            with conn.transaction(), conn.cursor().copy(_COPY_EVENTS) as copy:
                for e in events:
                    when = at.get(e.at_ms)
                    if when is None:
                        when = at[e.at_ms] = _ms_to_dt(e.at_ms)
                    copy.write_row((
                        when, e.queue, e.seq[0], e.seq[1], e.task_id, e.state, e.retried,
                        e.error, e.consumer,
                    ))  # fmt: skip
        except psycopg.errors.UniqueViolation:
            conn.execute(
                _INSERT_EVENTS,
                (
                    [e.at_ms for e in events], [e.queue for e in events],
                    [e.seq[0] for e in events], [e.seq[1] for e in events],
                    [e.task_id for e in events], [e.state for e in events],
                    [e.retried for e in events], [e.error for e in events],
                    [e.consumer for e in events],
                ),
            )  # fmt: skip

    async def store(self, events: Sequence[HistoryEvent]) -> None:
        """Store `events` in one transaction. Storing an event again, or a batch in another
        order, gives the same rows."""
        if events:
            await self._run(lambda conn: self._store(conn, events))

    async def drain(
        self,
        backend: object,
        *,
        batch: int = BATCH,
        max_batch: int | None = None,
        connections: int = 2,
        poll_s: float = 0.1,
        retry_s: float = 1.0,
        lag_every_s: float = 5.0,
        retention: timedelta | None = None,
        until_idle: bool = False,
        consumer: str | None = None,
    ) -> None:
        """Store the history events of `backend` (a RedisBackend or MemoryBackend with
        history on) as they come, `batch` per transaction, acknowledging each batch after it
        commits. While a backlog lasts (reads come back at least half full) the batch doubles,
        up to `max_batch` (default `GROW` times `batch`), and it is back to `batch` once a read
        is not: fewer, larger transactions, in which a task's events fold into one row write.
        Up to `connections` batches are in flight, each on a connection of its own (one is read
        from Redis while another is written). PostgreSQL down: the batch is logged and read
        again every `retry_s`, from `batch` events (nothing lost while the streams stay under
        their cap; a WARNING as a backlog nears it). With `retention`, partitions older than
        that are dropped once an hour. Runs until cancelled (`until_idle`: until no event is
        left). On Redis, `consumer` names this drainer in the consumer group (default: unique,
        ``hostname:pid:random``; its batches in flight share it); several drainers may run at
        once, each under its own name."""
        if batch < 1:
            raise InvalidTaskError(f"batch must be at least 1, got {batch}")
        if max_batch is None:
            max_batch = GROW * batch
        elif max_batch < batch:
            raise InvalidTaskError(f"max_batch must be at least batch ({batch}), got {max_batch}")
        if connections < 1:
            raise InvalidTaskError(f"connections must be at least 1, got {connections}")
        source = history_source(backend, consumer)
        self.stats.started = time.time()
        run = _Drain(self, source, batch, max_batch, retry_s, lag_every_s, retention)
        async with anyio.create_task_group() as tg:
            for _ in range(connections):
                tg.start_soon(run.worker, poll_s, until_idle)
        if until_idle:
            await self._look_at_lag(source)

    async def _look_at_lag(self, source: HistorySource) -> None:
        backlog = await source.history_backlog()
        self.stats.lag_by_queue = backlog
        self.stats.lag = sum(backlog.values())
        if time.monotonic() - self._logged_at >= 60:
            self._logged_at = time.monotonic()
            log.info("history: %d events stored, %d waiting", self.stats.stored, self.stats.lag)
        cap = source.history_cap
        near = {q: n for q, n in backlog.items() if cap and n >= WARN_SHARE * cap}
        if near and time.monotonic() - self._warned_at >= 60:
            self._warned_at = time.monotonic()
            log.warning(
                "history: backlog near the cap of %d events (oldest trimmed past it): %s",
                cap, ", ".join(f"{q}={n}" for q, n in sorted(near.items())),
            )  # fmt: skip

    # -- reading ----------------------------------------------------------------------------------

    async def search(
        self,
        queue: str | None = None,
        type: str | None = None,
        state: str | None = None,
        label: str | Mapping[str, str] | None = None,
        text: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> HistoryPage:
        """Tasks matching every filter given, newest first (by creation): `state` a state name
        (or `deleted`), `label` ``"key=value"`` or a mapping (all must match), `text` words of the
        type, labels or payload (or a task id), `since`/`until` bound the creation time
        (inclusive, exclusive). Pages by `cursor` (the last page's `next_cursor`)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidTaskError(f"limit must be 1..{MAX_LIMIT}, got {limit!r}")
        if state is not None and state not in STATES.values():
            raise InvalidTaskError(f"unknown state {state!r}")
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("queue", queue), ("type", type), ("state", state)):
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidTaskError(f"{column} must be a str, got {value!r}")
                where.append(f"{column} = %s")
                params.append(value)
        if label is not None:
            if isinstance(label, str):
                key, sep, value = label.partition("=")
                if not sep:
                    raise InvalidTaskError(f"label must be key=value, got {label!r}")
                label = {key: value}
            where.append("labels @> %s::jsonb")
            params.append(json.dumps(dict(label)))
        if text is not None:
            # a task id too: by the primary key (created_at from the id), so that both sides of
            # the OR use an index
            where.append(
                "(words @@ plainto_tsquery('simple', %s)"
                " OR (created_at = to_timestamp(%s / 1000.0) AND id = %s))"
            )
            params += [text, _created_ms(text), text]
        bounds: tuple[tuple[str, datetime | float | None, str], ...] = (
            (">=", since, "since"), ("<", until, "until"),
        )  # fmt: skip
        for op, bound, what in bounds:
            instant = _instant(bound, what)
            if instant is not None:
                where.append(f"created_at {op} %s")
                params.append(instant)
        if cursor is not None:
            after, after_id = _decode_cursor(cursor)
            where.append("(created_at, id) < (%s, %s)")
            params += [after, after_id]
        sql = f"SELECT {_TASK_COLUMNS} FROM strego_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(limit + 1)
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        tasks = [_task(r) for r in rows[:limit]]
        more = len(rows) > limit
        return HistoryPage(tasks, _encode_cursor(tasks[-1]) if more else None)

    async def task(self, task_id: str) -> TaskStory | None:
        """The task's whole story (every event, in order: each attempt with its error), or None
        when the history has no such task."""
        if not isinstance(task_id, str):
            raise InvalidTaskError(f"task id must be a str, got {task_id!r}")

        def read(conn: _Conn) -> TaskStory | None:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM strego_tasks WHERE id = %s"
                " AND created_at = to_timestamp(%s / 1000.0)",
                (task_id, _created_ms(task_id)),
            ).fetchone()
            if row is None:
                return None
            events = conn.execute(
                "SELECT at, state, retried, error, consumer, seq_ms, seq_n FROM strego_events"
                " WHERE task_id = %s ORDER BY seq_ms, seq_n",
                (task_id,),
            ).fetchall()
            records = [HistoryRecord(a, s, r, e, c, (m, n)) for a, s, r, e, c, m, n in events]
            return TaskStory(_task(row), records)

        return await self._run(read)

    # -- retention --------------------------------------------------------------------------------

    async def drop_partitions(self, before: datetime | date) -> list[str]:
        """Drop the day partitions wholly before `before` (retention without DELETE)."""
        day = before.date() if isinstance(before, datetime) else before
        return await self._run(lambda conn: schema.drop_before(conn, day))


class _Writer:
    """A connection of the drainer's own, for one batch in flight at a time."""

    def __init__(self, history: PostgresHistory) -> None:
        self._history = history
        self._conn: _Conn | None = None
        #: the partitions this connection has made or seen
        self._known: set[str] = set()

    def store(
        self, events: Sequence[HistoryEvent]
    ) -> list[tuple[HistoryEvent, psycopg.Error]]:  # in a worker thread
        """Store `events`; returns those PostgreSQL refused (`_REFUSALS`: the same every time,
        unlike an outage), with why. The batch is then split in halves, each a transaction,
        down to the refused events alone: the rest is stored."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = self._history._connect()
        try:
            self._history._store(self._conn, events, self._known)
            return []
        except _REFUSALS as exc:
            if len(events) == 1:
                return [(events[0], exc)]
        except psycopg.OperationalError:
            self.close()  # made again at the next batch
            raise
        half = len(events) // 2
        return self.store(events[:half]) + self.store(events[half:])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._known = set()


class _Drain:
    """One `drain` call: its workers share the source, the batch size and the outage state.
    Reads (and rewinds) take turns under a lock; stores run at once, on a connection each."""

    def __init__(
        self,
        history: PostgresHistory,
        source: HistorySource,
        batch: int,
        max_batch: int,
        retry_s: float,
        lag_every_s: float,
        retention: timedelta | None,
    ) -> None:
        self.history, self.source, self.stats = history, source, history.stats
        self.batch, self.max_batch, self.retry_s = batch, max_batch, retry_s
        self.lag_every_s, self.retention = lag_every_s, retention
        self.size = self.stats.batch_size = batch
        self.reading = anyio.Lock()
        self.last_lag = self.last_prune = float("-inf")
        self.down_since: float | None = None

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self.last_lag >= self.lag_every_s:
            with contextlib.suppress(BackendError):  # a failing read says so below
                await self.history._look_at_lag(self.source)
            self.last_lag = now
        if self.retention is not None and now - self.last_prune >= 3600:
            try:
                await self.history.drop_partitions(datetime.now(UTC) - self.retention)
                self.last_prune = now
            except psycopg.Error as exc:
                log.warning("history: dropping old partitions failed: %s", exc)

    async def _read(self) -> list[HistoryEvent] | None:
        """The next batch ([]: none waiting; None: Redis failed)."""
        async with self.reading:
            await self._housekeeping()
            try:
                events = await self.source.read_history(self.size)
            except BackendError as exc:
                log.error(
                    "history: reading the events failed (again in %.1f s): %s", self.retry_s, exc
                )
                self.source.rewind()  # its reply may be lost: read the pending entries again
                return None
            # follow the backlog: a read at least half full (Redis counts entries, of one or
            # many events each, so a full read is only about `size`) asks for twice as many
            full = 2 * len(events) >= self.size
            self.size = min(2 * self.size, self.max_batch) if full else self.batch
            self.stats.batch_size = self.size
            return events

    async def _failed(self, events: list[HistoryEvent], exc: psycopg.Error) -> None:
        async with self.reading:
            # read again from the last commit (the batches in flight may be stored twice,
            # which changes nothing), `batch` events at first
            self.source.rewind()
            self.size = self.stats.batch_size = self.batch
            now = time.monotonic()
            self.stats.failures += 1
            if self.down_since is None:
                self.down_since = now
            with contextlib.suppress(BackendError):
                await self.history._look_at_lag(self.source)
            self.last_lag = now
        log.error(
            "history: PostgreSQL failed, %d events kept in Redis to store again"
            " (PostgreSQL failing for %.0f s, %d events waiting): %s",
            len(events), now - self.down_since, self.stats.lag, exc,
        )  # fmt: skip

    def _refused(self, refused: list[tuple[HistoryEvent, psycopg.Error]]) -> None:
        # acknowledged with the batch: kept, they would stop the drainer for good
        self.stats.refused += len(refused)
        for e, exc in refused:
            log.error(
                "history: PostgreSQL refused an event, skipped (not stored): queue %s entry"
                " %d-%d task %s state %s: %s",
                e.queue, e.seq[0], e.seq[1], e.task_id, e.state, exc,
            )  # fmt: skip

    async def worker(self, poll_s: float, until_idle: bool) -> None:
        writer = _Writer(self.history)
        try:
            while True:
                events = await self._read()
                if events is None:
                    await anyio.sleep(self.retry_s)
                    continue
                if not events:
                    if until_idle:
                        return
                    await anyio.sleep(poll_s)
                    continue
                try:
                    refused = await anyio.to_thread.run_sync(writer.store, events)
                except psycopg.Error as exc:
                    await self._failed(events, exc)
                    await anyio.sleep(self.retry_s)
                    continue
                if refused:
                    self._refused(refused)
                if self.down_since is not None:
                    log.warning(
                        "history: PostgreSQL is back after %.0f s",
                        time.monotonic() - self.down_since,
                    )
                    self.down_since = None
                try:
                    await self.source.ack_history(events)
                except BackendError as exc:
                    # stored but not acknowledged: they come again, and storing them again
                    # is a no-op
                    log.error("history: acknowledging a stored batch failed: %s", exc)
                    async with self.reading:
                        self.source.rewind()
                    await anyio.sleep(self.retry_s)
                    continue
                self.stats.stored += len(events)
                self.stats.last_commit = time.time()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.close)
