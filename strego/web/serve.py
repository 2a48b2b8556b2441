"""Serving the app with Hypercorn, under asyncio or trio (`strego web`)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import anyio
from starlette.applications import Starlette

from strego.backends.base import Backend


async def _signalled() -> None:
    """Returns at SIGINT or SIGTERM: Hypercorn then stops gracefully (answers in flight end)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def serve(
    backend: Backend,
    make_app: Callable[[Backend], Starlette],
    *,
    host: str,
    port: int,
    root_path: str = "",
    trio: bool = False,
) -> None:
    """Serve `make_app(backend)` on host:port until SIGINT or SIGTERM, then close the backend.
    Run it under trio with `trio=True`, else under asyncio."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.root_path = root_path
    config.accesslog = None
    app: Any = make_app(backend)  # an ASGI app (Hypercorn's types spell it otherwise)
    try:
        if trio:
            from hypercorn.trio import serve as trio_serve

            await trio_serve(app, config, shutdown_trigger=_signalled)
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            await asyncio_serve(app, config, shutdown_trigger=_signalled)
    finally:
        with anyio.CancelScope(shield=True):
            await backend.aclose()
