"""The app's observer: Prometheus metrics, the JSON access log and OpenTelemetry traces behind the
request-path hooks of ``proxy.observability.observer``, plus ``GET /metrics`` (main port, or ``[server] metrics_port``).

One GatewayObserver per app, created in the lifespan and kept across config reloads: ``attach`` binds
it to each new Runtime (the app registers it in ``app.state.on_runtime``), so counters never reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import GatewayError
from proxy.observability.access_log import AccessLog
from proxy.observability.metrics import FLUSH_INTERVAL_S, METRICS_DIR_ENV, Live, Metrics
from proxy.observability.observer import Observer

if TYPE_CHECKING:
    from adapters.base import Call, UpstreamError, UpstreamRequest
    from proxy.observability.tracing import Tracing
    from proxy.records import UsageRecord
    from proxy.router import TargetState
    from proxy.runtime import Runtime
    from proxy.settings import Config, ServerConfig

log = logging.getLogger("gateway.observability")

# log_bodies: the request body, handed from the attempt (possibly in a dispatch task) to the request's end.
_BODY: ContextVar[list[Any] | None] = ContextVar("gateway_log_body", default=None)


class GatewayObserver(Observer):
    def __init__(self, config: Config, sink: Any = None, tracing: Tracing | None = None,
                 metrics_dir: str | None = None) -> None:
        self.inflight = 0
        self.sink = sink  # the usage ledger: queue depth and spill counts are read from it at scrape time
        self.runtime: Runtime | None = None
        self.metrics = Metrics(self._live, metrics_dir)
        obs = config.observability
        self.access_log = AccessLog() if obs.access_log else None
        self.log_bodies = obs.access_log and obs.log_bodies
        self.tracing = tracing
        self.metrics_port = config.server.metrics_port
        self.metrics_host = config.server.host
        self._publisher: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None

    def attach(self, runtime: Runtime) -> None:
        """Observe ``runtime``: for the app's first Runtime and for every one a reload builds."""
        runtime.obs = self
        self.runtime = runtime
        models = runtime.config.models.values()
        self.metrics.set_models((a.name for a in models if not a.is_glob), (a.name for a in runtime.globs))
        if self.tracing is not None:
            self.tracing.attach(runtime)

    # --- hooks (hot path) ----------------------------------------------------------------------------

    def request_started(self, endpoint: str) -> None:
        self.inflight += 1
        if self.log_bodies:
            _BODY.set([None])

    def attempt_started(self, state: TargetState, call: Call, request: UpstreamRequest) -> None:
        if self.tracing is not None:
            self.tracing.attempt_started(state, call, request)

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        self.metrics.attempt_finished(state.target.provider, seconds, None if error is None else error.reason)
        if self.tracing is not None:
            self.tracing.attempt_finished(state, call, seconds, error)
        if self.log_bodies:
            holder = _BODY.get()
            if holder is not None:
                holder[0] = call.body

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        self.inflight -= 1
        self.metrics.request_finished(record, overhead_s)
        if self.tracing is not None:
            self.tracing.request_finished(record)
        if self.access_log is not None:
            holder = _BODY.get() if self.log_bodies else None
            self.access_log.write(record, overhead_s, holder[0] if holder else None)

    def hedge_lost(self, row: UsageRecord) -> None:
        self.metrics.hedge_lost(row)

    def ratelimited(self, scope: str) -> None:
        self.metrics.ratelimited(scope)

    def limits_store_error(self) -> None:
        self.metrics.limits_store_error()

    def auth_failed(self, code: str) -> None:
        self.metrics.auth_failed(code)

    def cache_result(self, hit: bool) -> None:
        """For the response cache, once there is one: a lookup that hit or missed."""
        self.metrics.cache_result(hit)

    # --- scrape-time values --------------------------------------------------------------------------

    def _live(self) -> Live:
        circuits: dict[tuple[str, str], int] = {}
        if self.runtime is not None:
            for _, state in self.runtime.router.all_states():
                k = (state.target.provider, state.label)  # one target can serve several aliases
                circuits[k] = max(circuits.get(k, 0), 1 if state.circuit_open else 0)
        sink = self.sink
        return Live(inflight=self.inflight, queue_rows=getattr(sink, "queue_depth", 0),
                    spilled_rows=getattr(sink, "spilled_rows_total", 0),
                    write_errors=getattr(sink, "write_errors_total", 0),
                    circuits=[(p, t, v) for (p, t), v in circuits.items()])

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.tracing is not None:
            self.tracing.start()
        if self.metrics.dir is not None:
            self.metrics.write_snapshot()
            self._publisher = asyncio.create_task(self._publish(), name="metrics-publisher")
        if self.metrics_port:
            # Several workers each bind the port (SO_REUSEPORT); any of them answers with the sum.
            try:
                self._server = await asyncio.start_server(self._serve_metrics, self.metrics_host, self.metrics_port,
                                                          reuse_port=self.metrics.dir is not None)
            except OSError as e:
                log.error("cannot serve /metrics on %s:%d ([server] metrics_port): %s", self.metrics_host,
                          self.metrics_port, e.strerror or e)
                raise

    async def aclose(self) -> None:
        """Stop serving and publishing; flush traces. Never raises: shutdown goes on regardless."""
        if self.access_log is not None:
            self.access_log.flush()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(BaseException):
                await self._publisher
            with contextlib.suppress(OSError):
                self.metrics.write_snapshot()  # this worker's final numbers stay in the sum
        if self.tracing is not None:
            try:
                await asyncio.to_thread(self.tracing.shutdown)
            except Exception as e:
                log.warning("could not flush traces at shutdown: %s", e)

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.metrics.write_snapshot()
            except OSError as e:
                log.warning("cannot write metrics snapshot to %s: %s", self.metrics.dir, e)

    # --- the metrics port ------------------------------------------------------------------------------

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 server for GET /metrics: one request per connection."""
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
        if self.runtime is not None and not _authorized(self.runtime.config.server, headers.get("authorization")):
            return method, 401, "application/json", _error_body(401, _ADMIN_ONLY, "invalid_api_key")
        body, content_type = self.metrics.render(headers.get("accept"))
        return method, 200, content_type, body


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_ADMIN_ONLY = "GET /metrics needs the admin key: Authorization: Bearer <admin_key>."


def _error_body(status: int, message: str, code: str) -> bytes:
    return GatewayError(status, message, code=code).response().body


def _authorized(server: ServerConfig, authorization: str | None) -> bool:
    if not server.metrics_require_admin:
        return True
    if not authorization or not server.admin_key:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), server.admin_key.encode())


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics on the main port: no gateway key needed; the admin key with metrics_require_admin."""
    observer: GatewayObserver | None = getattr(request.app.state, "observer", None)
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if observer is None or runtime is None:
        return GatewayError(503, "not ready", "service_unavailable_error", "not_ready").response()
    if observer.metrics_port:  # served on its own port only, kept off the public one
        return GatewayError(404, f"Unknown path: GET {request.url.path}", code="unknown_url").response()
    if not _authorized(runtime.config.server, request.headers.get("authorization")):
        return GatewayError(401, _ADMIN_ONLY, code="invalid_api_key").response()
    body, content_type = observer.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


# --- wiring, called from proxy.app ----------------------------------------------------------------------


def tracing_for(config: Config, tracer_provider: Any = None) -> Tracing | None:
    """Traces when configured (see proxy.observability.tracing); None costs nothing, not even an import."""
    if (tracer_provider is None and not any(k.startswith("OTEL_") for k in os.environ)
            and "opentelemetry.trace" not in sys.modules):
        return None
    from proxy.observability.tracing import setup

    return setup(config.observability.capture_content, tracer_provider)


def middleware(tracing: Tracing | None) -> list[Middleware]:
    if tracing is None:
        return []
    from proxy.observability.tracing import TraceMiddleware

    return [Middleware(TraceMiddleware, tracing=tracing)]


async def start(app: Any, config: Config, sink: Any, tracing: Tracing | None) -> GatewayObserver:
    """Create the app's observer, attach it to the current runtime and to every later one."""
    observer = app.state.observer = GatewayObserver(config, sink, tracing, os.environ.get(METRICS_DIR_ENV))
    observer.attach(app.state.runtime)
    hooks = getattr(app.state, "on_runtime", None)
    if hooks is None:
        hooks = app.state.on_runtime = []
    hooks.append(observer.attach)
    await observer.start()
    return observer
