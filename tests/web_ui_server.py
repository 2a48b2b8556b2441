"""Serve `strego.web.create_app` on a Redis backend with Hypercorn, for the browser tests:
`python -m tests.web_ui_server --redis URL --port P [--loop trio] [--prefix /a/b] [--no-readonly]`.
Under a prefix the app is mounted in an outer Starlette app, as an application embedding it
would."""

from __future__ import annotations

import argparse

import anyio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from strego.backends.redis import RedisBackend
from strego.web import create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--prefix", default="", help="the path the app is mounted under")
    parser.add_argument("--key-prefix", default="strego", help="the backend's Redis key prefix")
    parser.add_argument("--no-readonly", action="store_true")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()

    async def serve() -> None:
        backend = RedisBackend.from_url(args.redis, prefix=args.key_prefix)
        app: ASGIApp = create_app(
            backend, readonly=not args.no_readonly, snapshot_interval_s=args.interval
        )
        if args.prefix:
            app = Starlette(routes=[Mount(args.prefix, app=app)])
        config = Config()
        config.bind = [f"127.0.0.1:{args.port}"]
        config.accesslog = None
        config.graceful_timeout = 0.5
        if args.loop == "trio":
            from hypercorn.trio import serve as run
        else:
            from hypercorn.asyncio import serve as run  # type: ignore[assignment]
        try:
            await run(app, config)  # type: ignore[arg-type]
        finally:
            await backend.aclose()

    anyio.run(serve, backend=args.loop)


if __name__ == "__main__":
    main()
