"""Which way to drive PostgreSQL under both asyncio and trio (issue 20): sync psycopg 3 in worker
threads (`anyio.to_thread.run_sync`), or an anyio wait loop over psycopg's libpq wrapper
(`psycopg.pq`: non-blocking connection, `anyio.wait_readable` on its socket).

    python bench/history_driver.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Measures, under each loop and each driver: the round trip of `SELECT 1` one after another
(latency), 8 tasks doing it at once (each with its connection), and batches of 1,000 rows
inserted with one unnest statement (what the drainer sends). Both drivers send the same text
parameters, so only the way of waiting differs."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.postgres_server import throwaway_database

ROUND_TRIPS = 2000
CONCURRENT = 8
BATCHES = 50
ROWS = 1000

INSERT = (
    b"INSERT INTO bench_driver (id, state, at) SELECT * FROM unnest($1::text[], $2::text[],"
    b" $3::bigint[])"
)


class PqConnection:
    """A minimal anyio driver over psycopg.pq: connect, then one query at a time."""

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        self.pgconn = pgconn

    @classmethod
    async def connect(cls, dsn: str) -> PqConnection:
        pgconn = pq.PGconn.connect_start(dsn.encode())
        while True:
            status = pgconn.connect_poll()
            if status == pq.PollingStatus.OK:
                break
            if status == pq.PollingStatus.READING:
                await anyio.wait_readable(pgconn.socket)
            elif status == pq.PollingStatus.WRITING:
                await anyio.wait_writable(pgconn.socket)
            else:
                raise psycopg.OperationalError(pgconn.error_message.decode())
        pgconn.nonblocking = 1
        return cls(pgconn)

    async def query(self, sql: bytes, params: list[bytes | None] | None = None) -> list[Any]:
        pgconn = self.pgconn
        if params is None:
            pgconn.send_query(sql)
        else:
            pgconn.send_query_params(sql, params)
        while pgconn.flush():
            await anyio.wait_writable(pgconn.socket)
        results = []
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    for r in results:
                        if r.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
                            raise psycopg.DatabaseError(r.error_message.decode())
                    return results
                results.append(result)
            await anyio.wait_readable(pgconn.socket)

    def close(self) -> None:
        self.pgconn.finish()


def _arrays(batch: int) -> list[bytes | None]:
    ids = ",".join(f"t{batch}-{i}" for i in range(ROWS))
    states = ",".join("completed" for _ in range(ROWS))
    ats = ",".join(str(1_700_000_000_000 + i) for i in range(ROWS))
    return [f"{{{ids}}}".encode(), f"{{{states}}}".encode(), f"{{{ats}}}".encode()]


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def bench_threads(dsn: str) -> dict[str, float]:
    conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))

    async def latency() -> None:
        for _ in range(ROUND_TRIPS):
            await anyio.to_thread.run_sync(conn.execute, "SELECT 1")

    async def concurrent() -> None:
        conns = [
            await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
            for _ in range(CONCURRENT)
        ]

        async def one(c: psycopg.Connection[Any]) -> None:
            for _ in range(ROUND_TRIPS // CONCURRENT):
                await anyio.to_thread.run_sync(c.execute, "SELECT 1")

        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(one, c)
        for c in conns:
            c.close()

    async def inserts() -> None:
        for b in range(BATCHES):
            params = _arrays(b)
            await anyio.to_thread.run_sync(
                lambda p=params: conn.execute(
                    INSERT.replace(b"$1", b"%s").replace(b"$2", b"%s").replace(b"$3", b"%s"),
                    [x.decode() if x else None for x in p],
                )
            )

    out = {
        "select1 us": await _timed(latency) / ROUND_TRIPS * 1e6,
        f"select1 x{CONCURRENT} us": await _timed(concurrent) / ROUND_TRIPS * 1e6,
        "insert rows/s": BATCHES * ROWS / await _timed(inserts),
    }
    conn.close()
    return out


async def bench_pq(dsn: str) -> dict[str, float]:
    conn = await PqConnection.connect(dsn)

    async def latency() -> None:
        for _ in range(ROUND_TRIPS):
            await conn.query(b"SELECT 1")

    async def concurrent() -> None:
        conns = [await PqConnection.connect(dsn) for _ in range(CONCURRENT)]

        async def one(c: PqConnection) -> None:
            for _ in range(ROUND_TRIPS // CONCURRENT):
                await c.query(b"SELECT 1")

        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(one, c)
        for c in conns:
            c.close()

    async def inserts() -> None:
        for b in range(BATCHES):
            await conn.query(INSERT, _arrays(b))

    out = {
        "select1 us": await _timed(latency) / ROUND_TRIPS * 1e6,
        f"select1 x{CONCURRENT} us": await _timed(concurrent) / ROUND_TRIPS * 1e6,
        "insert rows/s": BATCHES * ROWS / await _timed(inserts),
    }
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is shown")
    args = parser.parse_args()
    with throwaway_database(args.dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE UNLOGGED TABLE bench_driver (id text, state text, at bigint)")
        _run(dsn, args.repeat)


def _run(dsn: str, repeat: int) -> None:
    if True:
        rows = []
        for loop in ("asyncio", "trio"):
            for name, fn in (("threads", bench_threads), ("pq loop", bench_pq)):
                runs = [anyio.run(fn, dsn, backend=loop) for _ in range(repeat)]
                median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((loop, name, median))
        keys = list(rows[0][2])
        print(f"{'loop':8} {'driver':8} " + " ".join(f"{k:>16}" for k in keys))
        for loop, name, figures in rows:
            print(f"{loop:8} {name:8} " + " ".join(f"{figures[k]:16.0f}" for k in keys))


if __name__ == "__main__":
    main()
