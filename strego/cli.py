"""The `strego` command: `strego demo`, `strego worker module:server`, `strego migrate`,
`strego history` (strego/history/cli.py), and the operator commands (`strego queues`, `tasks`,
..., `web`: strego.commands)."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from strego import __version__
from strego.backends.base import Backend
from strego.errors import BackendError
from strego.server import Server

if TYPE_CHECKING:
    from strego.backends.redis import RedisBackend
    from strego.history.postgres import PostgresHistory

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _redis_backend(url: str, prefix: str) -> RedisBackend:
    from strego.backends.redis import RedisBackend

    return RedisBackend.from_url(url, prefix=prefix)  # the anyio transport: asyncio and trio


#: Keys deleted per round trip when the Redis demo cleans up.
CLEANUP_BATCH = 500


async def remove_keys(backend: RedisBackend) -> int:
    """Delete every key under the backend's prefix (the Redis demo's own, unique prefix), in
    batches of SCAN + one DEL per key, so no call blocks Redis for long. Returns how many."""
    from strego.backends.redis.transport import Command

    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", backend.prefix) + ":*"  # the prefix, literally
    removed, cursor = 0, b"0"
    while True:
        cursor, keys = await backend.transport.execute(
            Command(("SCAN", cursor, "MATCH", pattern, "COUNT", CLEANUP_BATCH), idempotent=True)
        )
        if keys:
            for deleted in await backend.transport.pipeline(
                [Command(("DEL", key), idempotent=True) for key in keys]
            ):
                if isinstance(deleted, BaseException):
                    raise deleted
                removed += deleted
        if cursor in (b"0", 0):
            return removed


def _backend_error(exc: BaseException) -> BackendError | None:
    """The first backend error in `exc` or, for an exception group, in its members."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            found = _backend_error(member)
            if found is not None:
                return found
    return None


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C (alone or in an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return isinstance(exc, KeyboardInterrupt)


def _demo(args: argparse.Namespace) -> int:
    from strego.demo import run_demo

    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    # the demo's failures are on purpose: show them only when asked
    logging.getLogger("strego").setLevel(logging.INFO if args.verbose else logging.ERROR)

    async def demo(backend: Backend) -> None:
        await run_demo(
            backend, tasks=args.tasks, seconds=args.seconds, concurrency=args.concurrency
        )

    async def main() -> None:
        where = f"Redis at {args.redis}" if args.redis else "the in-memory backend"
        print(
            f"strego demo: {args.tasks} tasks on {where} under {'trio' if args.trio else 'asyncio'}"
        )
        if not args.redis:
            from strego.backends.memory import MemoryBackend

            await demo(MemoryBackend())
            return
        backend = _redis_backend(args.redis, f"strego-demo-{secrets.token_hex(4)}")
        try:
            await backend.queues()  # an unreachable Redis fails here, before anything starts
            try:
                await demo(backend)
            finally:
                with anyio.CancelScope(shield=True):  # even after Ctrl-C
                    await remove_keys(backend)
        finally:
            await backend.aclose()

    try:
        anyio.run(main, backend="trio" if args.trio else "asyncio")
    except (BackendError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        if _interrupted(exc):
            print("strego demo: interrupted", file=sys.stderr)
            return 130
        cause = _backend_error(exc)
        if cause is None:
            raise
        print(f"strego demo: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    return 0


def load_server(spec: str) -> Server:
    """The Server named by ``module:attribute`` (the current directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected module:attribute, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import module {module_name!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise SystemExit(f"module {module_name!r} has no attribute {attribute!r}")
    server = getattr(module, attribute)
    if not isinstance(server, Server):
        raise SystemExit(f"{spec} is not a strego.Server (found {type(server).__name__})")
    return server


def _worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = load_server(args.server)
    history = None if args.history_postgres is None else _history(server, args)
    metrics = None if args.metrics_port is None else _metrics_server(server, args, history)

    async def main() -> None:
        try:
            if metrics is None and history is None:
                await server.run()
            else:
                async with anyio.create_task_group() as group:
                    if metrics is not None:
                        await group.start(metrics)
                    if history is not None:
                        from strego.history.supervised import drain_beside

                        # under the server's name: its own consumer in the history group
                        group.start_soon(
                            functools.partial(drain_beside, history, server.backend,
                                              consumer=server.name)
                        )  # fmt: skip
                    await server.run()
                    # the graceful shutdown is done: the drainer stops, handing the entries it
                    # has not stored to the next drainer (they stay in Redis)
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if history is not None:
                    await history.aclose()
                await server.backend.aclose()

    anyio.run(main, backend="trio" if args.trio else "asyncio")
    return 0


def _history(server: Server, args: argparse.Namespace) -> PostgresHistory:
    """The drainer of the worker's --history-postgres: history is turned on for the server's
    backend (unless it is on already), stored in the database DSN."""
    try:
        from strego.history.postgres import PostgresHistory
    except ImportError as exc:
        raise SystemExit(f"--history-postgres needs strego[postgres]: {exc}") from exc
    from strego.history.events import enable_history

    try:
        enable_history(server.backend)
    except TypeError as exc:
        raise SystemExit(f"--history-postgres: {exc}") from exc
    return PostgresHistory(args.history_postgres)


def _metrics_server(
    server: Server, args: argparse.Namespace, history: PostgresHistory | None = None
) -> Callable[..., Coroutine[Any, Any, None]]:
    """`strego.prometheus.serve` for the worker's --metrics-port: the server gets a
    MetricsMiddleware unless it has one, and the exposition its queues' backend metrics (and
    the drainer's, with --history-postgres)."""
    try:
        from strego import prometheus
    except ImportError as exc:
        raise SystemExit(f"--metrics-port needs strego[prometheus]: {exc}") from exc
    found = [m for m in server.middleware.items if isinstance(m, prometheus.MetricsMiddleware)]
    if not found:
        found.append(prometheus.MetricsMiddleware())
        server.middleware = server.middleware.with_(found[0])
    collector = prometheus.BackendCollector(server.backend, queues=server.queues)
    registry = found[0].registry or prometheus.REGISTRY
    if history is not None:
        registry.register(prometheus.DrainerCollector(history))
    return functools.partial(
        prometheus.serve,
        args.metrics_port,
        host=args.metrics_host,
        registry=registry,
        collector=collector,
    )


def _batch(text: str) -> int:
    from strego.backends.redis.migrate import MAX_BATCH

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_BATCH}, not {text!r}")
    return value


def _migrate(args: argparse.Namespace) -> int:
    from strego.backends.redis.migrate import Migration, migrate

    try:
        # The URL every process uses: its backend options (history, durable) are accepted, and
        # a Sentinel or Cluster URL gets its own transport. Only the transport is used.
        backend = _redis_backend(args.redis, args.prefix)
    except ValueError as exc:
        print(f"strego migrate: {exc}", file=sys.stderr)
        return 2

    async def main() -> Migration:
        m = Migration(backend.transport, args.prefix, dry_run=args.dry_run, batch=args.batch)
        try:
            await migrate(m)
        finally:
            await backend.aclose()
        return m

    try:
        m = anyio.run(main)
    except BaseException as exc:
        cause = _backend_error(exc)
        if cause is None:
            raise
        print(f"strego migrate: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    if m.unreadable:
        print(
            f"strego migrate: {len(m.unreadable)} of {m.checked} records do not decode (listed "
            "above): servers bury each in dead when they meet it, as before",
            file=sys.stderr,
        )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="strego", description="strego task queue")
    root.add_argument("--version", action="version", version=f"strego {__version__}")
    commands = root.add_subparsers(dest="command", title="commands")

    demo = commands.add_parser("demo", help="run producers and a server, show progress")
    demo.add_argument("--redis", metavar="URL", help="use Redis at URL (default: in memory)")
    demo.add_argument("--tasks", type=int, default=1000, help="how many tasks (default 1000)")
    demo.add_argument(
        "--seconds", type=float, default=8.0, help="spread enqueues over this long (default 8)"
    )
    demo.add_argument("--concurrency", type=int, default=20, help="handlers at once (20)")
    demo.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    demo.add_argument("-v", "--verbose", action="store_true", help="log the server's events")
    demo.set_defaults(run=_demo)

    worker = commands.add_parser("worker", help="run the Server named module:attribute")
    worker.add_argument("server", metavar="module:attribute")
    worker.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    worker.add_argument(
        "--log-level",
        type=str.upper,  # before the choices are checked: "debug" is DEBUG
        choices=LOG_LEVELS,
        default="INFO",
        help="logging level (default INFO)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics (needs strego[prometheus])",
    )
    worker.add_argument(
        "--metrics-host", default="0.0.0.0", help="address to serve metrics on (0.0.0.0)"
    )
    worker.add_argument(
        "--history-postgres",
        metavar="DSN",
        help="turn history on for the server's backend and run a drainer beside the server, "
        "storing it in this PostgreSQL database (needs strego[postgres]; docs/history.md)",
    )
    worker.set_defaults(run=_worker)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade the data of a Redis installation to this strego's record version",
        description="Upgrade the data under a prefix to this strego's record version, in "
        "bounded batches, while servers run (docs/redis.md, Schema version). Exit code 0 when "
        "done (or nothing to do), 1 when Redis fails or the data is newer than this strego, "
        "2 for a usage error.",
    )
    migrate.add_argument(
        "--redis", metavar="URL", required=True, help="the Redis to upgrade (the servers' URL)"
    )
    migrate.add_argument("--prefix", default="strego", help="the key prefix (default strego)")
    migrate.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    migrate.add_argument(
        "--batch", type=_batch, default=1000, help="records per HSCAN batch (1-1000, default 1000)"
    )
    migrate.set_defaults(run=_migrate)

    from strego.commands import add_commands  # queues, tasks, ..., web
    from strego.history.cli import add_parser as add_history

    add_commands(commands)
    add_history(commands)  # `strego history`: strego/history/cli.py
    return root


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    if args.command is None:  # a bare `strego`: show what it can do
        root.print_help(sys.stderr)
        return 2
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
