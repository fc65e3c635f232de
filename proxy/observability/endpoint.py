"""``GET /metrics``: on the main port, or on ``[server] metrics_port`` only, kept off the public one."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import GatewayError

if TYPE_CHECKING:
    from proxy.observability.metrics import Metrics
    from proxy.settings import ServerConfig

log = logging.getLogger("gateway.observability")

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_ADMIN_ONLY = "GET /metrics needs the admin key: Authorization: Bearer <admin_key>."


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics on the main port: no gateway key needed; the admin key with metrics_require_admin."""
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    runtime = getattr(request.app.state, "runtime", None)
    if metrics is None or runtime is None:
        return GatewayError(503, "not ready", "service_unavailable_error", "not_ready").response()
    if metrics.port:  # served on its own port only, kept off the public one
        return GatewayError(404, f"Unknown path: GET {request.url.path}", code="unknown_url").response()
    if not _authorized(runtime.config.server, request.headers.get("authorization")):
        return GatewayError(401, _ADMIN_ONLY, code="invalid_api_key").response()
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


class MetricsServer:
    """A minimal HTTP/1.1 server for GET /metrics on its own port: one request per connection."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self, reuse_port: bool) -> None:
        """``reuse_port`` lets several workers bind the port; any of them answers with the sum."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_port=reuse_port)
        except OSError as e:
            log.error("cannot serve /metrics on %s:%d ([server] metrics_port): %s", self.host, self.port,
                      e.strerror or e)
            raise

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            method, status, content_type, body = self._answer(head)
            reason = _REASONS.get(status, "Error")
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, int, str, bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return "", 400, "application/json", _error_body(400, "Malformed request line.", "bad_request")
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if target.split("?", 1)[0] != "/metrics":
            return method, 404, "application/json", _error_body(404, f"Unknown path: {method} {target}", "unknown_url")
        if method not in ("GET", "HEAD"):
            return method, 405, "application/json", _error_body(405, f"Method {method} is not allowed on /metrics",
                                                                "method_not_allowed")
        runtime = self.metrics.runtime
        if runtime is not None and not _authorized(runtime.config.server, headers.get("authorization")):
            return method, 401, "application/json", _error_body(401, _ADMIN_ONLY, "invalid_api_key")
        body, content_type = self.metrics.render(headers.get("accept"))
        return method, 200, content_type, body


def _error_body(status: int, message: str, code: str) -> bytes:
    return GatewayError(status, message, code=code).response().body


def _authorized(server: ServerConfig, authorization: str | None) -> bool:
    if not server.metrics_require_admin:
        return True
    if not authorization or not server.admin_key:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), server.admin_key.encode())
