"""`strego history --redis URL --postgres DSN`: the drainer as a command (docs/history.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from typing import Any

import anyio

from strego.history.events import DEFAULT_HISTORY_CAP


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def add_parser(commands: Any) -> None:
    """Add the `history` command to the `strego` subcommands."""
    history = commands.add_parser(
        "history",
        help="store the task history of a Redis installation in PostgreSQL",
        description="Read every queue's history stream (servers run with history on: "
        "RedisBackend.from_url(url, history=True)) and store its events in PostgreSQL, one "
        "transaction per batch, acknowledging each batch after it commits. Runs until "
        "interrupted (--until-idle: until no event is left). Exit code 0, 1 when Redis or "
        "PostgreSQL fails at the start, 2 for a usage error.",
    )
    history.add_argument("--redis", metavar="URL", required=True, help="the Redis to read")
    history.add_argument("--postgres", metavar="DSN", required=True, help="the database")
    history.add_argument("--prefix", default="strego", help="the key prefix (default strego)")
    history.add_argument(
        "--batch", type=_positive, default=1000, help="events per transaction (default 1000)"
    )
    history.add_argument(
        "--max-batch",
        type=_positive,
        help="while a backlog lasts the batch doubles up to this many events (default 20 x "
        "--batch)",
    )
    history.add_argument(
        "--connections",
        type=_positive,
        default=2,
        help="batches in flight at once, each on a PostgreSQL connection of its own (default 2)",
    )
    history.add_argument(
        "--cap",
        type=_positive,
        default=DEFAULT_HISTORY_CAP,
        help="the servers' history_cap, to warn as a backlog nears it "
        f"(default {DEFAULT_HISTORY_CAP})",
    )
    history.add_argument(
        "--retention-days",
        type=_positive,
        help="drop history partitions older than this many days (hourly; default: keep all)",
    )
    history.add_argument("--until-idle", action="store_true", help="stop when no event is left")
    history.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    history.add_argument(
        "--log-level",
        type=str.upper,
        choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"),
        default="INFO",
        help="logging level (default INFO)",
    )
    history.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        from strego.history.postgres import PostgresHistory
    except ImportError:
        print("strego history: needs psycopg: pip install 'strego[postgres]'", file=sys.stderr)
        return 2
    import psycopg

    from strego.backends.redis import RedisBackend
    from strego.errors import BackendError

    if args.max_batch is not None and args.max_batch < args.batch:
        print("strego history: --max-batch must be at least --batch", file=sys.stderr)
        return 2
    try:
        backend = RedisBackend.from_url(
            args.redis, prefix=args.prefix, history=True, history_cap=args.cap
        )
    except ValueError as exc:
        print(f"strego history: {exc}", file=sys.stderr)
        return 2
    history = PostgresHistory(args.postgres)
    retention = None if args.retention_days is None else timedelta(days=args.retention_days)

    async def main() -> None:
        try:
            await history.migrate()  # a wrong DSN fails here, not in the retry loop
            await history.drain(
                backend,
                batch=args.batch,
                max_batch=args.max_batch,
                connections=args.connections,
                retention=retention,
                until_idle=args.until_idle,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await history.aclose()
                await backend.aclose()

    try:
        anyio.run(main, backend="trio" if args.trio else "asyncio")
    except KeyboardInterrupt:
        return 0
    except (psycopg.Error, BackendError) as exc:
        print(f"strego history: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
