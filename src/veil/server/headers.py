"""Security headers on every answer: the web page, the API, errors and downloads alike.

The page loads only its own script, style sheet and icon (no inline code), so its policy
allows nothing else; photos and previews are ``blob:`` URLs made in the browser, and
videos play from the server's Range-capable downloads (``media-src 'self'``) or, for
the local original, from ``blob:``.
Swagger UI at ``/docs`` is FastAPI's page, with an inline script and assets from an
https CDN: it gets a looser policy of its own, still not frameable.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https:; style-src 'self' 'unsafe-inline' https:; "
    "img-src 'self' data: https:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
COMMON = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class SecurityHeaders:
    """ASGI middleware adding :data:`COMMON` and a Content-Security-Policy to each answer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (DOCS_CSP if scope.get("path", "").startswith("/docs") else PAGE_CSP).encode()

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for k, v in {**COMMON, b"content-security-policy": csp}.items():
                    if k not in present:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
