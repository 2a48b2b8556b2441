"""Serving under a path prefix: the ASGI spec has `path` include `root_path`, which Starlette's
routing relies on, but a server told its root path (Hypercorn's `--root-path`, `strego web
--root-path`) behind a proxy that strips the prefix passes the path without it. This puts the
prefix back, so either kind of proxy works."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class FullPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "").rstrip("/")
        path = scope.get("path", "")
        if (
            scope["type"] in ("http", "websocket")
            and root
            and not (path == root or path.startswith(root + "/"))
        ):
            scope = {**scope, "path": root + path}
            if "raw_path" in scope and scope["raw_path"] is not None:
                scope["raw_path"] = root.encode() + scope["raw_path"]
        await self.app(scope, receive, send)
