"""`strego history --redis URL --postgres DSN`: the drainer as a command (docs/history.md)."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from strego.history.events import DEFAULT_HISTORY_CAP

if TYPE_CHECKING:
    from strego.backends.redis import RedisBackend


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
        help="the servers' history_cap, to warn as a backlog nears it (default: the URL's "
        f"history_cap=N, else {DEFAULT_HISTORY_CAP})",
    )
    history.add_argument(
        "--retention-days",
        type=_positive,
        help="drop history partitions older than this many days (hourly; default: keep all)",
    )
    history.add_argument("--until-idle", action="store_true", help="stop when no event is left")
    history.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics: the drainer's counters and "
        "each queue's backlog (needs strego[prometheus])",
    )
    history.add_argument(
        "--metrics-host", default="0.0.0.0", help="address to serve metrics on (0.0.0.0)"
    )
    history.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    history.add_argument(
        "--log-level",
        type=str.upper,
        choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"),
        default="INFO",
        help="logging level (default INFO)",
    )
    history.set_defaults(run=run)


def _metrics(args: argparse.Namespace, backend: Any, history: Any) -> Any:
    """`strego.prometheus.serve` on --metrics-port: the default registry with the drainer's
    counters, and a BackendCollector of the backend (each queue's backlog, its tasks)."""
    try:
        from strego import prometheus
    except ImportError as exc:
        print(f"strego history: --metrics-port needs strego[prometheus]: {exc}", file=sys.stderr)
        return None
    prometheus.REGISTRY.register(prometheus.DrainerCollector(history))
    return functools.partial(
        prometheus.serve,
        args.metrics_port,
        host=args.metrics_host,
        collector=prometheus.BackendCollector(backend),
    )


def _failure(exc: BaseException, kinds: tuple[type[Exception], ...]) -> BaseException | None:
    """`exc` if it is of `kinds`, or the first such member of an exception group."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            found = _failure(member, kinds)
            if found is not None:
                return found
    return None


def redis_backend(args: argparse.Namespace) -> RedisBackend:
    """The backend to drain, history on: its cap is --cap if given, else the URL's (its
    history_cap=N, else the default), as the servers writing with that URL have it."""
    from strego.backends.redis import RedisBackend

    cap = {} if args.cap is None else {"history_cap": args.cap}
    return RedisBackend.from_url(args.redis, prefix=args.prefix, history=True, **cap)


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

    from strego.errors import BackendError

    if args.max_batch is not None and args.max_batch < args.batch:
        print("strego history: --max-batch must be at least --batch", file=sys.stderr)
        return 2
    try:
        backend = redis_backend(args)
    except ValueError as exc:
        print(f"strego history: {exc}", file=sys.stderr)
        return 2
    history = PostgresHistory(args.postgres)
    retention = None if args.retention_days is None else timedelta(days=args.retention_days)
    metrics = None if args.metrics_port is None else _metrics(args, backend, history)
    if metrics is None and args.metrics_port is not None:
        return 2

    async def main() -> None:
        from strego.history.supervised import hand_on
        from strego.server import consumer_name

        consumer = consumer_name()
        try:
            await history.migrate()  # a wrong DSN fails here, not in the retry loop
            drain = functools.partial(
                history.drain,
                backend,
                batch=args.batch,
                max_batch=args.max_batch,
                connections=args.connections,
                consumer=consumer,
                retention=retention,
                until_idle=args.until_idle,
            )
            if metrics is None:
                await drain()
                return
            async with anyio.create_task_group() as group:
                await group.start(metrics)
                await drain()
                group.cancel_scope.cancel()
        finally:
            await hand_on(backend, consumer)  # Ctrl-C: what it read goes to the next drainer
            with anyio.CancelScope(shield=True):
                await history.aclose()
                await backend.aclose()

    try:
        anyio.run(main, backend="trio" if args.trio else "asyncio")
    except BaseException as exc:  # alone, or in the group of the metrics server's task group
        from strego.cli import _interrupted

        if _interrupted(exc):
            return 0
        cause = _failure(exc, (psycopg.Error, BackendError))
        if cause is None:
            raise
        print(f"strego history: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    return 0
