"""CSRF tokens for mutations (double submit). A page of the UI sets a random token in a cookie
(HttpOnly, SameSite=Strict) and repeats it in a <meta> tag; the UI's script sends it back in the
`X-Strego-CSRF` header, and a mutation is refused unless header and cookie agree. A cross-site page
can neither read the token nor set the header on a form post, so it cannot forge one.

A request that no browser sent (no Origin, no Sec-Fetch-Site, no Cookie: a script with curl or
httpx) needs no token: a forged request always comes from a browser, which sends at least one of
these on a POST or DELETE. The Origin check (another origin gets 403) applies to every request."""

from __future__ import annotations

import hmac
import re
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from strego.report import dumps
from strego.web.security import SAFE_METHODS

COOKIE = "strego_csrf"
HEADER = "x-strego-csrf"
#: What a token we issued looks like (43 url-safe characters); anything else is replaced.
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{43}")


def from_browser(request: Request) -> bool:
    """Whether a browser sent this request (so that it could have been forged by another site)."""
    headers = request.headers
    return any(name in headers for name in ("origin", "sec-fetch-site", "cookie"))


def page_token(request: Request) -> str:
    """The token for a page: the browser's current one, or a new one (set with `set_cookie`)."""
    current = request.cookies.get(COOKIE, "")
    return current if _TOKEN.fullmatch(current) else secrets.token_urlsafe(32)


def set_cookie(response: Response, request: Request, token: str) -> None:
    root = request.scope.get("root_path", "") or ""
    response.set_cookie(
        COOKIE,
        token,
        path=root.rstrip("/") + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def refusal(request: Request) -> str | None:
    """Why this mutation is refused for want of a valid token, or None when it may go on."""
    if not from_browser(request):
        return None
    cookie = request.cookies.get(COOKIE, "")
    sent = request.headers.get(HEADER, "")
    if not _TOKEN.fullmatch(cookie) or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return "missing or wrong CSRF token (send the page's token in the X-Strego-CSRF header)"
    return None


class CsrfGuard:
    """ASGI middleware: a browser's mutation without the page's token gets 403. It sits inside
    `strego.web.security.Guard`, so authentication, read-only (405) and the Origin check come
    first."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            why = refusal(Request(scope))
            if why is not None:
                response = Response(
                    dumps({"error": "csrf", "message": why}),
                    status_code=403,
                    media_type="application/json",
                    headers={"cache-control": "no-store"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
