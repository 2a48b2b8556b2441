"""`strego web`: the web app (`strego.web.create_app`) on Redis, served by Hypercorn under asyncio
or trio. Read-only unless --no-readonly; HTTP Basic when $STREGO_WEB_PASSWORD is set (user
$STREGO_WEB_USER, default admin): a password on the command line would show in `ps`. With
--postgres DSN, the task history in PostgreSQL (docs/history.md) gets a History tab and
/api/v1/history."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio

from strego.commands.common import DONE, USAGE, add_options, fail, redis_url
from strego.errors import InvalidTaskError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0 to 65535, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 to 3600 seconds, not {text!r}")
    return value


#: Names a server listening on a loopback address is reached by.
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _allowed_hosts(args: argparse.Namespace) -> list[str] | None:
    """The Host names to answer: --allowed-host, plus the loopback names when listening on a
    loopback address (so a page of another site cannot reach it by rebinding its own name to
    127.0.0.1); any Host when listening elsewhere without --allowed-host."""
    hosts = list(args.allowed_host or ())
    if args.host in LOOPBACK:
        hosts += LOOPBACK
    return hosts or None


def web(args: argparse.Namespace) -> int:
    try:
        from strego.web import create_app
        from strego.web.serve import serve
    except ImportError as exc:
        return fail(args, USAGE, "usage", f"{exc}: install strego[web]")
    from starlette.applications import Starlette

    from strego.backends.base import Backend
    from strego.backends.redis import RedisBackend

    history = None
    if args.postgres:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict

            from strego.history.postgres import PostgresHistory
        except ImportError as exc:
            return fail(args, USAGE, "usage", f"{exc}: --postgres needs strego[postgres]")
        try:
            conninfo_to_dict(args.postgres)  # a malformed DSN is a usage error, now
        except psycopg.ProgrammingError as exc:
            return fail(args, USAGE, "usage", f"--postgres: {exc}")
        # not connected here: PostgreSQL down makes the history pages answer 503, not the UI
        history = PostgresHistory(args.postgres)

    try:
        # with the history shown, the UI's own changes (retry, cancel, ...) are part of it too
        on: dict[str, Any] = {"history": True} if history is not None else {}
        backend = RedisBackend.from_url(redis_url(args), prefix=args.prefix, **on)
    except (ValueError, InvalidTaskError) as exc:
        return fail(args, USAGE, "usage", str(exc))
    password = os.environ.get("STREGO_WEB_PASSWORD")
    basic = (os.environ.get("STREGO_WEB_USER") or "admin", password) if password else None

    def make_app(backend: Backend) -> Starlette:
        return create_app(
            backend,
            readonly=not args.no_readonly,
            basic_auth=basic,
            snapshot_interval_s=args.interval,
            allowed_hosts=_allowed_hosts(args),
            history=history,
        )

    mode = "read-only" if not args.no_readonly else "read-write"
    where = f"http://{args.host}:{args.port}{args.root_path}/"
    with_history = ", with the task history" if history is not None else ""
    print(
        f"strego web: {mode}{with_history}, on {where} (Ctrl-C stops)", file=sys.stderr, flush=True
    )

    async def main() -> None:
        try:
            await serve(
                backend,
                make_app,
                host=args.host,
                port=args.port,
                root_path=args.root_path,
                trio=args.trio,
            )
        finally:
            if history is not None:
                with anyio.CancelScope(shield=True):
                    await history.aclose()

    anyio.run(main, backend="trio" if args.trio else "asyncio")
    return DONE


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "web",
        help="serve the web UI and the JSON API on Redis",
        description="Serve the web UI (/) and the JSON API (/api/v1) with Hypercorn. Read-only "
        "unless --no-readonly. Set STREGO_WEB_PASSWORD (and STREGO_WEB_USER, default admin) to ask "
        "for HTTP Basic credentials.",
    )
    add_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port (8000)")
    parser.add_argument("--trio", action="store_true", help="serve under trio, not asyncio")
    parser.add_argument(
        "--no-readonly", action="store_true", help="allow actions (every mutation is 405 without)"
    )
    parser.add_argument(
        "--root-path", default="", help="the path prefix a proxy serves the app under (/strego)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name to answer (repeat); on a loopback address, the loopback names are",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        help="read the overview (queues, workers) from Redis at most once per this many seconds,"
        " however many clients poll it (1; 0 reads it for every request)",
    )
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="the task history's PostgreSQL (what `strego history` fills): a History tab and"
        " /api/v1/history; a password is best in PGPASSWORD or ~/.pgpass, not here",
    )
    parser.set_defaults(run=web)
