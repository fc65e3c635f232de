"""Observability: Prometheus metrics, the JSON access log and OpenTelemetry traces.

Each is an ``Observer`` (proxy.observability.observer); the app builds them once in its lifespan,
before anything that reports to them, and hands the one ``Observers`` over them to the limits and to
every Runtime, the first and each one a reload builds, so counters never reset. ``GET /metrics`` is
served on the main port, or on ``[server] metrics_port``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware

from proxy.observability.access_log import AccessLog
from proxy.observability.aggregate import METRICS_DIR_ENV
from proxy.observability.endpoint import metrics_endpoint
from proxy.observability.metrics import Metrics
from proxy.observability.observer import Observer, Observers

if TYPE_CHECKING:
    from proxy.observability.tracing import Tracing
    from proxy.settings import Config

__all__ = ["AccessLog", "Metrics", "Observer", "Observers", "metrics_endpoint", "metrics_for", "middleware",
           "observer_for", "tracing_for"]


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


def metrics_for(config: Config, sink: Any) -> Metrics:
    """The app's metrics; ``sink`` (the usage ledger) is read for its queue depth and spill counts.
    Under ``gateway serve --workers N`` they are published for the other workers' scrapes."""
    return Metrics(config.server, sink, os.environ.get(METRICS_DIR_ENV))


def observer_for(config: Config, metrics: Metrics, tracing: Tracing | None) -> Observers:
    """The app's one observer: metrics, and the access log and traces when configured."""
    parts: list[Observer] = [metrics]
    if config.observability.access_log:
        parts.append(AccessLog(log_bodies=config.observability.log_bodies))
    if tracing is not None:
        parts.append(tracing)
    return Observers(parts)
