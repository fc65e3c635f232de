"""Prometheus metrics: cheap aggregation on the request path, families built at scrape time.

The hooks add numbers to plain dicts and lists owned by the event loop thread (no locks, no
``Counter.labels()`` lookups): one dict lookup per finished request finds its series, keyed by
(endpoint, model, provider, key, status), and a histogram observation is a ``bisect`` plus two
additions. ``/metrics`` turns that state into Prometheus families with ``prometheus_client``, whose
exposition code and process collectors are used as they are.

Label values stay bounded: model is a configured alias (a name matched by a glob alias only once it
was answered, at most ``MAX_GLOB_MODELS`` of them of at most ``MAX_LABEL_CHARS`` characters; otherwise
the glob itself, or ``unknown``), provider and key are configured names, ``none`` when there is none.
Request ids and client text never become labels.

With ``gateway serve --workers N`` every worker publishes its numbers and a scrape answers with their
sum (see proxy.observability.aggregate).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.observability import aggregate
from proxy.observability.aggregate import HistSum, Totals
from proxy.observability.endpoint import MetricsServer
from proxy.observability.observer import Observer

if TYPE_CHECKING:
    from adapters.base import Call, UpstreamError
    from proxy.records import UsageRecord
    from proxy.router import TargetState
    from proxy.runtime import Runtime
    from proxy.settings import ServerConfig

# A glob alias's answered model names become label values up to these caps, then the glob pattern
# does: each value is repeated on ~25 exposition lines, so a client's name must not size /metrics.
MAX_GLOB_MODELS = 200
MAX_LABEL_CHARS = 100

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
GUARDRAIL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UPSTREAM_REASONS = frozenset({"timeout", "connection", "status_5xx", "status_429", "bad_response", "auth_refused"})
# Exported at 0 from the start, so that rate() sees the first refusal.
RATELIMIT_SCOPES = ("key", "model", "global", "parallel", "budget")
AUTH_FAILURE_CODES = ("invalid_api_key", "expired_api_key")  # the 401 codes: a bounded label


class Hist:
    """A histogram's per-bucket (not cumulative) counts; the last slot is +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Series:
    """Everything counted for one (endpoint, model, provider, key, status)."""

    __slots__ = ("requests", "duration", "ttft", "prompt", "completion", "cached", "reasoning", "cost")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = Hist(DURATION_BUCKETS)
        self.ttft: Hist | None = None  # streams only
        self.prompt = 0
        self.completion = 0
        self.cached = 0
        self.reasoning = 0
        self.cost = 0.0


class Metrics(Observer):
    """This process's metric state. ``sink`` (the usage ledger) and the current runtime's routers are
    read at scrape time rather than kept up to date on the request path."""

    def __init__(self, server: ServerConfig, sink: Any = None, metrics_dir: str | None = None) -> None:
        self.sink = sink
        self.runtime: Runtime | None = None
        self.inflight = 0
        self.series: dict[tuple[str, str, str, str, int], Series] = {}
        self.overhead: dict[str, Hist] = {}
        self.upstream: dict[str, Hist] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.ratelimited_total: dict[str, int] = dict.fromkeys(RATELIMIT_SCOPES, 0)
        self.limits_store_errors = 0
        self.auth_failures: dict[str, int] = dict.fromkeys(AUTH_FAILURE_CODES, 0)
        self.unpriced: dict[tuple[str, str], int] = {}  # (model, provider): requests with tokens but no price
        self.cache_total: dict[tuple[str, str], int] = {}  # (alias, result)
        self.cache_saved_usd = 0.0
        self.guardrail_actions: dict[tuple[str, str, str], int] = {}  # (guardrail, action, on)
        self.guardrail_seconds: dict[str, Hist] = {}  # by guardrail
        self.cache_gauges: Any = None  # () -> (entries, bytes) of this process's in-memory cache, or None
        self.aliases: frozenset[str] = frozenset()
        self.globs: tuple[str, ...] = ()
        self.glob_models: set[str] = set()
        self.dir = Path(metrics_dir) if metrics_dir else None
        self.port = server.metrics_port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector(self))
        if self.dir is None:
            # One process: the client library's own collectors, unchanged.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self._server = MetricsServer(self, server.host, server.metrics_port) if server.metrics_port else None
        self._publisher: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def attach(self, runtime: Runtime) -> None:
        """The configured alias names label requests; the runtime's router tells which circuits are open."""
        self.runtime = runtime
        self.aliases = frozenset(a.name for a in runtime.config.models.values() if not a.is_glob)
        self.globs = tuple(a.name for a in runtime.globs)

    async def start(self) -> None:
        if self.dir is not None:
            aggregate.write_snapshot(self.dir, self.snapshot())
            self._publisher = asyncio.create_task(aggregate.publish(self.dir, self.snapshot),
                                                  name="metrics-publisher")
        if self._server is not None:
            await self._server.start(reuse_port=self.dir is not None)

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.aclose()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(BaseException):
                await self._publisher
        if self.dir is not None:
            with contextlib.suppress(OSError):
                aggregate.write_snapshot(self.dir, self.snapshot())  # this worker's final numbers stay in the sum

    # --- hooks (hot path) ----------------------------------------------------------------------------

    def model_label(self, name: str, answered: bool) -> str:
        if name in self.aliases:
            return name
        if name in self.glob_models:
            return name
        glob = next((g for g in self.globs if fnmatchcase(name, g)), None)
        if glob is None:
            return "unknown"  # a name no alias matches is client text: never a label
        if (answered and len(self.glob_models) < MAX_GLOB_MODELS and len(name) <= MAX_LABEL_CHARS
                and name.isprintable()):
            self.glob_models.add(name)  # an upstream model answered to it: a real model name
            return name
        return glob  # past the caps (or a name no model id looks like), the pattern stands for them all

    def request_started(self, endpoint: str) -> None:
        self.inflight += 1

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        self.inflight -= 1
        r = record
        provider = r.provider or "none"
        model = r.model if r.model in self.aliases else self.model_label(r.model, r.status == 200)
        key = (r.endpoint, model, provider, r.key_name or "none", r.status)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        s.requests += 1
        s.duration.observe(r.latency_ms / 1000)
        if r.ttft_ms is not None:
            if s.ttft is None:
                s.ttft = Hist(TTFT_BUCKETS)
            s.ttft.observe(r.ttft_ms / 1000)
        self._spent(s, r, model, provider)
        if r.cost_saved_usd:
            self.cache_saved_usd += r.cost_saved_usd
        if r.guardrail_actions is not None:
            self._guardrail_actions(r.guardrail_actions)
        h = self.overhead.get(r.endpoint)
        if h is None:
            h = self.overhead[r.endpoint] = Hist(OVERHEAD_BUCKETS)
        h.observe(overhead_s)
        # A stream that failed after its first byte never went back through attempt_finished.
        if r.ttft_ms is not None and r.error_type in UPSTREAM_REASONS:
            self._upstream_error(provider, r.error_type)  # type: ignore[arg-type]

    def hedge_lost(self, record: UsageRecord) -> None:
        r = record
        provider = r.provider or "none"
        model = r.model if r.model in self.aliases else self.model_label(r.model, False)
        key = (r.endpoint, model, provider, r.key_name or "none", r.status)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        self._spent(s, r, model, provider)

    def _spent(self, s: Series, r: UsageRecord, model: str, provider: str) -> None:
        if r.prompt_tokens or r.completion_tokens:
            s.prompt += r.prompt_tokens
            s.completion += r.completion_tokens
            s.cached += r.cached_tokens
            s.reasoning += r.reasoning_tokens
        if r.cost_usd:
            s.cost += r.cost_usd
        elif r.cost_usd is None and (r.prompt_tokens or r.completion_tokens):
            self.unpriced[(model, provider)] = self.unpriced.get((model, provider), 0) + 1

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        provider = state.target.provider
        h = self.upstream.get(provider)
        if h is None:
            h = self.upstream[provider] = Hist(DURATION_BUCKETS)
        h.observe(seconds)
        if error is not None and error.reason in UPSTREAM_REASONS:
            self._upstream_error(provider, error.reason)

    def _upstream_error(self, provider: str, reason: str) -> None:
        k = (provider, reason)
        self.upstream_errors[k] = self.upstream_errors.get(k, 0) + 1

    def ratelimited(self, scope: str) -> None:
        self.ratelimited_total[scope] = self.ratelimited_total.get(scope, 0) + 1

    def limits_store_error(self) -> None:
        self.limits_store_errors += 1

    def auth_failed(self, code: str) -> None:
        code = code if code in self.auth_failures else "invalid_api_key"
        self.auth_failures[code] += 1

    def cache_result(self, alias: str, result: str) -> None:
        k = (alias, result)  # a configured alias (a glob alias's pattern): a bounded label
        self.cache_total[k] = self.cache_total.get(k, 0) + 1

    def guardrail_ran(self, name: str, on: str, seconds: float) -> None:
        h = self.guardrail_seconds.get(name)
        if h is None:
            h = self.guardrail_seconds[name] = Hist(GUARDRAIL_BUCKETS)
        h.observe(seconds)

    def _guardrail_actions(self, actions: str) -> None:
        """One count per guardrail, action and side that acted on the request (configured names only)."""
        for a in orjson.loads(actions):
            k = (a["guardrail"], a["action"], a["on"])
            self.guardrail_actions[k] = self.guardrail_actions.get(k, 0) + 1

    # --- scrape ------------------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def snapshot(self) -> dict[str, Any]:
        """This process's numbers as plain JSON-able data: what a worker writes, what a scrape reads."""
        sink = self.sink
        snap: dict[str, Any] = {
            "pid": os.getpid(),
            "series": [[*k, s.requests, s.duration.counts, s.duration.sum, s.ttft.counts if s.ttft else None,
                        s.ttft.sum if s.ttft else 0.0, s.prompt, s.completion, s.cached, s.reasoning, s.cost]
                       for k, s in self.series.items()],
            "overhead": {k: [h.counts, h.sum] for k, h in self.overhead.items()},
            "upstream": {k: [h.counts, h.sum] for k, h in self.upstream.items()},
            "upstream_errors": [[p, r, n] for (p, r), n in self.upstream_errors.items()],
            "ratelimited": self.ratelimited_total,
            "limits_store_errors": self.limits_store_errors,
            "auth_failures": self.auth_failures,
            "unpriced": [[m, p, n] for (m, p), n in self.unpriced.items()],
            "cache": [[a, r, n] for (a, r), n in self.cache_total.items()],
            "cache_saved_usd": self.cache_saved_usd,
            "guardrail_actions": [[g, a, o, n] for (g, a, o), n in self.guardrail_actions.items()],
            "guardrail_seconds": {k: [h.counts, h.sum] for k, h in self.guardrail_seconds.items()},
            "cache_entries_bytes": self.cache_gauges() if self.cache_gauges is not None else None,
            "inflight": self.inflight,
            "queue_rows": getattr(sink, "queue_depth", 0),
            "spilled_rows": getattr(sink, "spilled_rows_total", 0),
            "write_errors": getattr(sink, "write_errors_total", 0),
            "circuits": self._circuits(),
            "limits_degraded": 1 if self.runtime is not None and self.runtime.limits.degraded.active else 0,
        }
        if self.dir is not None:
            snap["process"] = aggregate.process_samples()
        return snap

    def _circuits(self) -> list[tuple[str, str, int]]:
        """(provider, target, open) per target; one target can serve several aliases."""
        circuits: dict[tuple[str, str], int] = {}
        if self.runtime is not None:
            for _, state in self.runtime.router.all_states():
                k = (state.target.provider, state.label)
                circuits[k] = max(circuits.get(k, 0), 1 if state.circuit_open else 0)
        return [(p, t, v) for (p, t), v in circuits.items()]

    def gathered(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(snapshot, alive) for this process and, with several workers, each other worker's last one."""
        if self.dir is None:
            yield self.snapshot(), True
        else:
            yield from aggregate.gather(self.dir, self.snapshot())


class _GatewayCollector(Collector):
    """Every gateway metric family: its name, help text and labels are the public contract."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        t = Totals(self.metrics.gathered())
        yield _counter("gateway_requests", "Requests answered, by final HTTP status.",
                       ("endpoint", "model", "provider", "status"), t.requests)
        yield _histogram("gateway_request_duration_seconds", "Whole request time, to the last byte sent.",
                         ("endpoint", "model", "provider"), t.duration, DURATION_BUCKETS)
        yield _histogram("gateway_time_to_first_token_seconds", "Streams: time until the first content was sent.",
                         ("model", "provider"), t.ttft, TTFT_BUCKETS)
        yield _histogram("gateway_overhead_seconds", "The gateway's own time per request, excluding upstream waits.",
                         ("endpoint",), t.overhead, OVERHEAD_BUCKETS)
        yield _histogram("gateway_upstream_duration_seconds",
                         "One upstream attempt: until the whole answer (or a stream's first content) arrived.",
                         ("provider",), t.upstream, DURATION_BUCKETS)
        yield _counter("gateway_upstream_errors", "Failed upstream attempts, including streams cut after their start.",
                       ("provider", "reason"), t.upstream_errors)
        yield _counter("gateway_tokens", "Tokens by type; cached is part of prompt, reasoning part of completion.",
                       ("model", "provider", "type"), t.tokens)
        yield _counter("gateway_cost_usd", "Cost of requests in US dollars, from target prices.",
                       ("model", "provider", "key"), t.cost)
        yield _counter("gateway_ratelimited", "Requests refused by a rate limit or budget.", ("scope",), t.ratelimited)
        yield _counter("gateway_unpriced_requests", "Requests whose tokens have no price configured (their usage "
                       "rows carry cost_usd null).", ("model", "provider"), t.unpriced)
        auth_failures = {(code,): 0.0 for code in AUTH_FAILURE_CODES} | t.auth_failures
        yield _counter("gateway_auth_failures", "Requests refused for a missing, wrong or expired gateway key "
                       "(401; they leave no usage row).", ("code",), auth_failures)
        yield _counter("gateway_limits_store_errors", "Rate-limit checks that could not reach Redis "
                       "(handled per [limits] on_store_error).", (), {(): t.counters["limits_store_errors"]})
        yield _gauge("gateway_limits_degraded", "1 while a worker enforces limits in-process because Redis is "
                     "unreachable ([limits] on_store_error = \"local\").", (), {(): t.degraded})
        yield _counter("gateway_cache_requests", "Response cache verdicts: hit, semantic_hit, miss, bypass, error.",
                       ("alias", "result"), t.cache)
        yield _counter("gateway_cache_saved_usd", "What cache hits would have cost upstream, in US dollars.", (),
                       {(): t.counters["cache_saved_usd"]})
        yield _gauge("gateway_cache_entries", "Entries in the in-memory response cache.", (),
                     {(): t.gauges["cache_entries"]})
        yield _gauge("gateway_cache_bytes", "Bytes held by the in-memory response cache.", (),
                     {(): t.gauges["cache_bytes"]})
        yield _counter("gateway_guardrail_actions", "Requests a guardrail acted on (redact, block, flag, modify, "
                       "error), by side (input, output).", ("guardrail", "action", "on"), t.guardrail_actions)
        yield _histogram("gateway_guardrail_duration_seconds", "Time one guardrail took on one request or answer.",
                         ("guardrail",), t.guardrail_seconds, GUARDRAIL_BUCKETS)
        yield _gauge("gateway_inflight_requests", "Requests in progress.", (), {(): t.gauges["inflight"]})
        yield _gauge("gateway_circuit_open", "1 while the target's circuit breaker is open (in any worker).",
                     ("provider", "target"), t.circuits)
        yield _gauge("gateway_usage_queue_rows", "Usage rows waiting to be written to the database.", (),
                     {(): t.gauges["queue_rows"]})
        yield _counter("gateway_usage_spilled_rows", "Usage rows spilled to disk while the database was unavailable.",
                       (), {(): t.counters["spilled_rows"]})
        yield _counter("gateway_usage_write_errors", "Failed usage database writes (the rows are retried).", (),
                       {(): t.counters["write_errors"]})
        yield from t.process_families()


def _counter(name: str, doc: str, labels: tuple[str, ...], values: dict[tuple, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for k, v in sorted(values.items()):
        family.add_metric(k, v)
    return family


def _gauge(name: str, doc: str, labels: tuple[str, ...], values: dict[tuple, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for k, v in sorted(values.items()):
        family.add_metric(k, v)
    return family


def _histogram(name: str, doc: str, labels: tuple[str, ...], values: dict[tuple, HistSum],
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for k, acc in sorted(values.items()):
        family.add_metric(k, _cumulative(acc.counts, bounds), acc.sum)
    return family


def _cumulative(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        total += n
        out.append((floatToGoString(bound), total))
    out.append(("+Inf", total + counts[-1]))
    return out
