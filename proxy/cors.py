"""CORS for browser apps: ``[server] cors_origins``. Without origins the app is served unwrapped, so the
hot routes pay nothing; with them, only a request carrying an allowed ``Origin`` is touched.

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is answered here
with 204, on any path; every other request from one goes to the app with the CORS headers added to its
response head. A request from an origin not in the list gets no CORS headers at all (a preflight then
reaches the router and its 405), so the browser refuses it.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.uvicorn_protocol import NoDirectWrites

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
# What the SDKs and browser clients send: OpenAI's and Anthropic's keys and versions, Azure's api-key.
ALLOW_HEADERS = ("authorization", "content-type", "x-api-key", "api-key", "anthropic-version", "anthropic-beta",
                 "anthropic-dangerous-direct-browser-access", "openai-organization", "openai-project",
                 "openai-beta", "x-request-id", "traceparent", "tracestate", "content-encoding")
# Families whose members the SDKs name per platform and version (x-stainless-os, -retry-count, ...).
ALLOW_PREFIXES = ("x-stainless-", "x-gateway-")
EXPOSE_HEADERS = ", ".join((
    "x-request-id", "x-gateway-provider", "x-gateway-upstream-model", "x-gateway-model-resolved",
    "x-gateway-attempts", "x-gateway-cost-usd", "x-gateway-overhead-ms", "retry-after",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
))
MAX_AGE_S = "600"


class Cors:
    """ASGI wrapper around the whole app (outside proxy.app.FastPath) when ``cors_origins`` is set."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.direct = NoDirectWrites(app)  # responses written around ``send`` would miss the headers
        self.any = "*" in origins
        self.origins = frozenset(o.encode("latin-1") for o in origins)

    def __getattr__(self, name: str) -> Any:  # state, router, ... as on the wrapped app
        return getattr(self.app, name)

    def allowed(self, origin: bytes) -> bool:
        return self.any or origin in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None or not self.allowed(origin):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            requested = _header(scope, b"access-control-request-method")
            if requested is not None:
                await _preflight(origin, _header(scope, b"access-control-request-headers"), send)
                return
        extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                 (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.direct(scope, receive, send_with_cors)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def allow_headers(requested: bytes | None) -> str:
    """The fixed list, plus each requested header of an allowed family (a browser names them lowercase)."""
    names = list(ALLOW_HEADERS)
    if requested:
        for raw in requested.decode("latin-1").split(","):
            name = raw.strip().lower()
            if name.startswith(ALLOW_PREFIXES) and name not in names and name.isascii():
                names.append(name)
    return ", ".join(names)


async def _preflight(origin: bytes, requested: bytes | None, send: Send) -> None:
    headers = [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", ALLOW_METHODS.encode()),
               (b"access-control-allow-headers", allow_headers(requested).encode("latin-1")),
               (b"access-control-max-age", MAX_AGE_S.encode()),
               (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
               (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
