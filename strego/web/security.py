"""The gate every request passes before any route: authentication, then the rules for mutations.

Enforced here, on the server, for every route the app has or will have (not by hiding buttons):

- HTTP Basic (`basic_auth=(user, password)`): both compared with `hmac.compare_digest`, whatever
  the first comparison said, so the time taken tells nothing; 401 with a challenge otherwise.
- An `auth` hook: called with the Starlette `Request` (sync or async); falsy -> 403.
- A mutation (any method but GET, HEAD, OPTIONS) on a read-only app -> 405.
- A mutation a browser sends from a page of another origin -> 403: an `Origin` header naming
  another host than the request's `Host` (or "null"), or `Sec-Fetch-Site` other than
  same-origin/none. Requests without either (curl, scripts, the CLI) are no browser's cross-site
  request. Origins listed in `origins` are accepted too (a proxy that rewrites Host).

No CORS header is ever sent: another origin's page cannot read the API's answers either.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strego.report import dumps

#: A hook deciding whether a request may go on: given the request, returns (or awaits) a truth.
AuthHook = Callable[[Request], bool | Awaitable[bool]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Headers added to every answer (unless the route set its own).
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


def basic_credentials_match(header: str | None, user: str, password: str) -> bool:
    """Whether an Authorization header carries these Basic credentials (compared in constant
    time)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, colon, given_password = given.partition(b":")
    user_ok = hmac.compare_digest(given_user, user.encode())
    password_ok = hmac.compare_digest(given_password, password.encode())
    return bool(colon) and user_ok and password_ok


def _authority(netloc: str, scheme: str) -> str:
    """host:port with the scheme's default port made explicit, lower case."""
    netloc = netloc.lower()
    if netloc.endswith("]") or ":" not in netloc.rpartition("]")[2]:
        netloc += ":443" if scheme in ("https", "wss") else ":80"
    return netloc


def same_origin(request: Request, origins: Collection[str] = ()) -> bool:
    """Whether a request is not a browser's request from a page of another origin."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if origin is not None and origin in origins:
        return True
    if site is not None and site not in ("same-origin", "none"):
        return False
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host")
    if origin == "null" or not parts.netloc or host is None:
        return False
    # a port left out is the default of the Origin's scheme on both sides: behind a proxy that
    # ends TLS, the request reached us over http while the page was on https
    return _authority(parts.netloc, parts.scheme) == _authority(host, parts.scheme)


class Guard:
    """ASGI middleware applying the rules above before the app it wraps."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        readonly: bool,
        auth: AuthHook | None,
        basic_auth: tuple[str, str] | None,
        origins: Collection[str],
    ) -> None:
        self.app = app
        self.readonly = readonly
        self.auth = auth
        self.basic_auth = basic_auth
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        request = Request(scope)
        refusal = await self._refusal(request)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message, headers = refusal
        body = dumps({"error": code, "message": message})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _refusal(
        self, request: Request
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        if self.basic_auth is not None and not basic_credentials_match(
            request.headers.get("authorization"), *self.basic_auth
        ):
            challenge = [(b"www-authenticate", b'Basic realm="strego", charset="UTF-8"')]
            return 401, "unauthorized", "authentication required", challenge
        if self.auth is not None:
            allowed = self.auth(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return 403, "forbidden", "refused by the auth hook", []
        if request.method not in SAFE_METHODS:
            if self.readonly:
                allow = [(b"allow", b"GET, HEAD")]
                return 405, "read_only", "this strego web app is read-only", allow
            if not same_origin(request, self.origins):
                return 403, "cross_origin", "a mutation from a page of another origin", []
        return None


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [(n, v) for n, v in _ALWAYS if n not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending
