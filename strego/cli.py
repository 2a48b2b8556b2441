"""The `strego` command: `strego demo` and `strego worker module:server`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import sys
from collections.abc import Sequence

import anyio

from strego.backends.base import Backend
from strego.server import Server


def _redis_backend(url: str, prefix: str) -> Backend:
    from strego.backends.redis import RedisBackend

    return RedisBackend.from_url(url, prefix=prefix)  # the anyio transport: asyncio and trio


def _demo(args: argparse.Namespace) -> int:
    from strego.demo import run_demo

    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    # the demo's failures are on purpose: show them only when asked
    logging.getLogger("strego").setLevel(logging.INFO if args.verbose else logging.ERROR)

    async def main() -> None:
        if args.redis:
            backend = _redis_backend(args.redis, f"strego-demo-{secrets.token_hex(4)}")
        else:
            from strego.backends.memory import MemoryBackend

            backend = MemoryBackend()
        where = f"Redis at {args.redis}" if args.redis else "the in-memory backend"
        print(
            f"strego demo: {args.tasks} tasks on {where} under {'trio' if args.trio else 'asyncio'}"
        )
        try:
            await run_demo(
                backend, tasks=args.tasks, seconds=args.seconds, concurrency=args.concurrency
            )
            if args.redis:
                for queue in await backend.queues():
                    await backend.purge(queue)
        finally:
            await backend.aclose()

    anyio.run(main, backend="trio" if args.trio else "asyncio")
    return 0


def load_server(spec: str) -> Server:
    """The Server named by ``module:attribute`` (the current directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected module:attribute, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    server = getattr(module, attribute, None)
    if not isinstance(server, Server):
        raise SystemExit(f"{spec} is not a strego.Server (found {type(server).__name__})")
    return server


def _worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = load_server(args.server)

    async def main() -> None:
        try:
            await server.run()
        finally:
            with anyio.CancelScope(shield=True):
                await server.backend.aclose()

    anyio.run(main, backend="trio" if args.trio else "asyncio")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="strego", description="strego task queue")
    commands = root.add_subparsers(dest="command", required=True)

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
    worker.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    worker.set_defaults(run=_worker)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
