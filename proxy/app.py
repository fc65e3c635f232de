"""The ASGI application: routes, error rendering and the lifespan that owns upstream clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from proxy import admin, endpoints, observability, reload, usage_api
from proxy.admin import ManagedKeys, apply_keys
from proxy.cache import SharedCache
from proxy.config import Config, keyless_providers, load_config
from proxy.console import Console
from proxy.console import routes as console_routes
from proxy.cors import Cors
from proxy.errors import GatewayError
from proxy.keystore import KeyStore
from proxy.ledger import Ledger
from proxy.limits import Limits, seed_budgets
from proxy.passthrough import http as passthrough_http
from proxy.price_refresh import PriceRefresher
from proxy.prices import warn_unpriced
from proxy.runtime import Runtime
from proxy.uvicorn_protocol import NoDirectWrites

log = logging.getLogger("gateway")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready once the config is loaded, and says how the usage database and the limits store are doing.
    Only a limits store that is down under ``on_store_error = "deny"`` makes it 503: then every limited
    request would be refused. A database outage does not: rows queue and spill until it is back, and
    taking every replica out of the load balancer would turn it into a full outage."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return GatewayError(503, "not ready", "service_unavailable_error", "not_ready").response()
    database = "up" if request.app.state.ledger.stats()["database_up"] else "down"
    store = await request.app.state.limits.store_state()
    if store == "down" and runtime.config.limits.on_store_error == "deny":
        return GatewayError(503, "The limits store (Redis) is unreachable and [limits] on_store_error is deny.",
                            "service_unavailable_error", "limits_unavailable").response()
    body = {"status": "ready", "usage_database": database, "limits_store": store}
    return Response(orjson.dumps(body), media_type="application/json")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = GatewayError(404, f"Unknown path: {request.method} {request.url.path}", code="unknown_url")
    elif exc.status_code == 405:
        err = GatewayError(405, f"Method {request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed")
    else:
        err = GatewayError(exc.status_code, str(exc.detail), code=None)
    return err.response(dict(exc.headers or {}))


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return GatewayError(500, "The gateway hit an internal error.", "server_error", "internal_error").response()


def routes(ui: bool = True) -> list[BaseRoute]:
    table = [
        ("/chat/completions", endpoints.chat_completions, ["POST"]),
        ("/completions", endpoints.completions, ["POST"]),
        ("/embeddings", endpoints.embeddings, ["POST"]),
        ("/messages", endpoints.messages, ["POST"]),
        ("/messages/count_tokens", endpoints.count_tokens, ["POST"]),
        ("/responses", endpoints.responses, ["POST"]),
        ("/responses/{response_id}", endpoints.get_response, ["GET"]),
        ("/models", endpoints.list_models, ["GET"]),
        ("/models/{model_id:path}", endpoints.get_model, ["GET"]),
    ]
    out: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
           Route("/metrics", observability.metrics_endpoint, methods=["GET"]),
           Route("/v1/usage", usage_api.usage, methods=["GET"]),
           Route("/admin/keys", admin.create_key, methods=["POST"]),
           Route("/admin/keys", admin.list_keys, methods=["GET"]),
           Route("/admin/keys/{name}", admin.update_key, methods=["PATCH"]),
           Route("/admin/keys/{name}", admin.revoke_key, methods=["DELETE"]),
           Route("/admin/cache", admin.cache, methods=["GET", "DELETE"]),
           Route("/admin/prices/refresh", admin.refresh_prices, methods=["POST"])]
    out += console_routes(ui)  # audit log, sessions, the console's read-only views and /ui
    for prefix in ("/v1", ""):
        out += [Route(prefix + path, handler, methods=methods) for path, handler, methods in table]
    return out + passthrough_http.routes()  # images, audio, moderations, rerank, files, batches


def create_app(config: Config, tracer_provider: Any = None) -> Starlette | FastPath | Cors:
    """``tracer_provider``: an OpenTelemetry TracerProvider to trace into (tests, embedding programs);
    without one, traces follow the OTEL_* environment (see proxy.observability.tracing)."""
    tracing = observability.tracing_for(config, tracer_provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The ledger outlives config reloads; uvicorn has drained in-flight requests before the
        # shutdown half runs, so closing it last flushes (or spills) every row they submitted.
        ledger = app.state.ledger = Ledger.from_config(config.storage)
        await ledger.start()
        warn_unpriced(config)
        for name in keyless_providers(config):
            log.warning("provider %s (kind %s) has no api_key: its upstream will refuse every call", name,
                        config.providers[name].kind)
        # Metrics, access log and traces: app-level like the ledger, built before what reports to them.
        metrics = app.state.metrics = observability.metrics_for(config, ledger)
        observer = observability.observer_for(config, metrics, tracing)
        # Limits are app-level too: counters must survive config reloads.
        limits = app.state.limits = Limits.from_config(config, observer=observer)
        app.state.background = set()
        managed = app.state.managed_keys = ManagedKeys(KeyStore(config.storage.database_url))
        # The response cache is app-level too: entries outlive reloads; each Runtime gets its stage.
        cache = app.state.cache = SharedCache.from_config(config)
        metrics.cache_gauges = cache.gauges
        cache.start()
        # Audit log and sessions: app-level too, in the ledger's database.
        console = app.state.console = Console(config.storage.database_url, config.storage.retention_days)
        app.state.on_runtime = [lambda rt: apply_keys(rt, managed), cache.attach, console.attach]  # every Runtime
        app.state.runtime = Runtime(config, sink=ledger, limits=limits, observer=observer)
        cache.attach(app.state.runtime)
        console.attach(app.state.runtime)
        console.start()
        await managed.start()
        apply_keys(app.state.runtime, managed)
        await seed_budgets(config, limits, app.state.runtime.all_keys)
        await observer.start()

        def keys_changed(_: object) -> None:
            apply_keys(app.state.runtime, managed)
            task = asyncio.ensure_future(seed_budgets(config, limits, app.state.runtime.all_keys))
            app.state.background.add(task)
            task.add_done_callback(app.state.background.discard)

        managed.on_change.append(keys_changed)
        prices = app.state.prices = PriceRefresher(config)  # app-level: a refreshed table outlives reloads
        app.state.on_runtime.append(prices.apply)
        prices.start(lambda: app.state.runtime)
        pid_file = reload.install(app)
        try:
            yield
        finally:
            reload.uninstall(pid_file)
            try:
                await managed.close()
                await prices.aclose()
                for task in list(app.state.background):
                    task.cancel()
                await app.state.runtime.aclose()
                await limits.aclose()
                await cache.aclose()
                await console.close()
            finally:
                await ledger.close()
                await observer.aclose()

    middleware = observability.middleware(tracing)
    if middleware:  # they see responses through send: no response may be written around it
        middleware.insert(0, Middleware(NoDirectWrites))
        middleware.insert(0, Middleware(TrailingSlash))
    app = Starlette(
        routes=routes(config.server.ui),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    served: Starlette | FastPath = app if app.user_middleware else FastPath(app)
    return Cors(served, config.server.cors_origins) if config.server.cors_origins else served


def without_trailing_slash(scope: Scope) -> str:
    """``POST /v1/chat/completions/`` is served as the path without the slash (Starlette would answer a
    307 that clients do not follow for a POST)."""
    path: str = scope["path"]
    if path[-1:] == "/" and len(path) > 1:
        scope["path"] = path = path.rstrip("/") or "/"
    return path


class TrailingSlash:
    """``without_trailing_slash`` as middleware, for when FastPath is not used."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            without_trailing_slash(scope)
        await self.app(scope, receive, send)


class FastPath:
    """The proxy endpoints straight from the server, everything else through Starlette.

    Starlette's middleware stack, router and response-send wrappers are a real share of a proxied
    request's CPU, and the hot POST routes need none of them. Only used when no middleware (such
    as tracing) must see every request.
    """

    HOT = {"/v1/chat/completions": endpoints.chat_completions, "/chat/completions": endpoints.chat_completions,
           "/v1/embeddings": endpoints.embeddings, "/embeddings": endpoints.embeddings,
           "/v1/messages": endpoints.messages, "/v1/responses": endpoints.responses}

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # state, router, ... as on the Starlette app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.HOT.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None and scope["type"] == "http" and scope["path"][-1:] == "/":
            path = without_trailing_slash(scope)  # off the hot path: only a miss pays for it
            handler = self.HOT.get(path) if scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            response = await server_error(request, exc)
        await response(scope, receive, send)


def app_from_env() -> Starlette | FastPath | Cors:
    """Factory for `uvicorn --factory` and for worker processes: the config path comes from the env."""
    return create_app(load_config(os.environ.get("GATEWAY_CONFIG", "gateway.toml")))
