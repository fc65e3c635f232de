"""Prometheus metrics: cheap aggregation on the request path, families built at scrape time.

The hooks add numbers to plain dicts and lists owned by the event loop thread (no locks, no
``Counter.labels()`` lookups): one dict lookup per finished request finds its series, keyed by
(endpoint, model, provider, key, status), and a histogram observation is a ``bisect`` plus two
additions. ``/metrics`` turns that state into Prometheus families with ``prometheus_client``, whose
exposition code and process collectors are used as they are.

Label values stay bounded: model is a configured alias (a name matched by a glob alias only once it
was answered, and at most ``MAX_GLOB_MODELS`` of them; otherwise the glob itself, or ``unknown``),
provider and key are configured names, ``none`` when there is none. Request ids and client text never
become labels.

With ``gateway serve --workers N`` each worker writes a snapshot of its state to
``$GATEWAY_METRICS_DIR/worker-<pid>.json`` every ``FLUSH_INTERVAL_S`` and whichever worker answers a
scrape adds them up: counters and histograms over every worker that ever ran in this serve (so they
never go backwards when a worker is replaced), gauges over the workers still alive. Process metrics
are summed the same way (CPU seconds, memory, open fds); ``process_start_time_seconds`` is the oldest
live worker's. Other workers' numbers are at most ``FLUSH_INTERVAL_S`` old; the answering worker
publishes its own before reading the others, so no counter ever goes down from one scrape to the next,
whichever worker answers each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.records import UsageRecord

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"
FLUSH_INTERVAL_S = 1.0
MAX_GLOB_MODELS = 500

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UPSTREAM_REASONS = frozenset({"timeout", "connection", "status_5xx", "status_429", "bad_response"})
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


@dataclass(slots=True)
class Live:
    """Values read at scrape time rather than kept up to date on the request path."""

    inflight: int = 0
    queue_rows: int = 0
    spilled_rows: int = 0  # counter
    write_errors: int = 0  # counter
    circuits: list[tuple[str, str, int]] = field(default_factory=list)  # (provider, target, open)


class Metrics:
    """Per-process metric state for one app; ``live`` supplies the scrape-time values."""

    def __init__(self, live: Callable[[], Live], metrics_dir: str | None = None) -> None:
        self.live = live
        self.series: dict[tuple[str, str, str, str, int], Series] = {}
        self.overhead: dict[str, Hist] = {}
        self.upstream: dict[str, Hist] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.ratelimited_total: dict[str, int] = dict.fromkeys(RATELIMIT_SCOPES, 0)
        self.limits_store_errors = 0
        self.auth_failures: dict[str, int] = dict.fromkeys(AUTH_FAILURE_CODES, 0)
        self.unpriced: dict[tuple[str, str], int] = {}  # (model, provider): requests with tokens but no price
        self.cache_total: dict[str, int] = {}
        self.aliases: frozenset[str] = frozenset()
        self.globs: tuple[str, ...] = ()
        self.glob_models: set[str] = set()
        self.dir = Path(metrics_dir) if metrics_dir else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector(self))
        if self.dir is None:
            # One process: the client library's own collectors, unchanged.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    # --- configuration -----------------------------------------------------------------------------

    def set_models(self, aliases: Iterable[str], globs: Iterable[str]) -> None:
        """The configured alias names (from the current config; called again after a reload)."""
        self.aliases = frozenset(aliases)
        self.globs = tuple(globs)

    def model_label(self, name: str, answered: bool) -> str:
        if name in self.aliases:
            return name
        if name in self.glob_models:
            return name
        glob = next((g for g in self.globs if fnmatchcase(name, g)), None)
        if glob is None:
            return "unknown"  # a name no alias matches is client text: never a label
        if answered and len(self.glob_models) < MAX_GLOB_MODELS:
            self.glob_models.add(name)  # an upstream model answered to it: a real model name
            return name
        return glob

    # --- hot path ----------------------------------------------------------------------------------

    def request_finished(self, r: UsageRecord, overhead_s: float) -> None:
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
        h = self.overhead.get(r.endpoint)
        if h is None:
            h = self.overhead[r.endpoint] = Hist(OVERHEAD_BUCKETS)
        h.observe(overhead_s)
        # A stream that failed after its first byte never went back through attempt_finished.
        if r.ttft_ms is not None and r.error_type in UPSTREAM_REASONS:
            self.upstream_error(provider, r.error_type)  # type: ignore[arg-type]

    def hedge_lost(self, r: UsageRecord) -> None:
        """A hedge loser's row: not a request of its own, but its tokens and cost were spent."""
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

    def attempt_finished(self, provider: str, seconds: float, reason: str | None) -> None:
        h = self.upstream.get(provider)
        if h is None:
            h = self.upstream[provider] = Hist(DURATION_BUCKETS)
        h.observe(seconds)
        if reason is not None and reason in UPSTREAM_REASONS:
            self.upstream_error(provider, reason)

    def upstream_error(self, provider: str, reason: str) -> None:
        k = (provider, reason)
        self.upstream_errors[k] = self.upstream_errors.get(k, 0) + 1

    def ratelimited(self, scope: str) -> None:
        self.ratelimited_total[scope] = self.ratelimited_total.get(scope, 0) + 1

    def limits_store_error(self) -> None:
        self.limits_store_errors += 1

    def auth_failed(self, code: str) -> None:
        code = code if code in self.auth_failures else "invalid_api_key"
        self.auth_failures[code] += 1

    def cache_result(self, hit: bool) -> None:
        result = "hit" if hit else "miss"
        self.cache_total[result] = self.cache_total.get(result, 0) + 1

    # --- scrape ------------------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def snapshot(self) -> dict[str, Any]:
        """This process's numbers as plain JSON-able data: what a worker writes, what a scrape reads."""
        live = self.live()
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
            "cache": self.cache_total,
            "inflight": live.inflight,
            "queue_rows": live.queue_rows,
            "spilled_rows": live.spilled_rows,
            "write_errors": live.write_errors,
            "circuits": live.circuits,
        }
        if self.dir is not None:
            snap["process"] = _process_samples()
        return snap

    # --- several workers ---------------------------------------------------------------------------

    def write_snapshot(self, snap: dict[str, Any] | None = None) -> None:
        """Publish this worker's numbers for the others (atomic rename: readers never see half a file)."""
        assert self.dir is not None
        path = self.dir / f"worker-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(snap or self.snapshot()))
        os.replace(tmp, path)

    def gathered(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(snapshot, alive) for this process (fresh) and every other worker's last file."""
        snap = self.snapshot()
        if self.dir is None:
            yield snap, True
            return
        # Published before it is served: a later scrape answered by another worker then reads at least
        # these numbers, so counters never appear to go backwards between two scrapes.
        with contextlib.suppress(OSError):
            self.write_snapshot(snap)
        yield snap, True
        me = f"worker-{os.getpid()}.json"
        for path in sorted(self.dir.glob("worker-*.json")):
            if path.name == me:
                continue
            try:
                snap = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed or replaced while we looked: its numbers come with the next scrape
            yield snap, _alive(int(snap.get("pid", 0)))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_samples() -> list[list[Any]]:
    out = []
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        for family in collector.collect():
            for s in family.samples:
                out.append([family.name, family.type, family.documentation, s.name, s.labels, s.value])
    return out


# --- exposition -------------------------------------------------------------------------------------


def _cumulative(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        total += n
        out.append((floatToGoString(bound), total))
    out.append(("+Inf", total + counts[-1]))
    return out


def _add(into: list[int], counts: list[int]) -> None:
    for i, n in enumerate(counts):
        into[i] += n


class _HistAcc:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0

    def add(self, counts: list[int], total: float) -> None:
        _add(self.counts, counts)
        self.sum += total


class _GatewayCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests: dict[tuple, float] = {}
        duration: dict[tuple, _HistAcc] = {}
        ttft: dict[tuple, _HistAcc] = {}
        tokens: dict[tuple, float] = {}
        cost: dict[tuple, float] = {}
        overhead: dict[tuple, _HistAcc] = {}
        upstream: dict[tuple, _HistAcc] = {}
        upstream_errors: dict[tuple, float] = {}
        ratelimited: dict[tuple, float] = {}
        auth_failures: dict[tuple, float] = {(code,): 0.0 for code in AUTH_FAILURE_CODES}
        unpriced: dict[tuple, float] = {}
        cache: dict[tuple, float] = {}
        circuits: dict[tuple, float] = {}
        counters = {"spilled_rows": 0.0, "write_errors": 0.0, "limits_store_errors": 0.0}
        gauges = {"inflight": 0.0, "queue_rows": 0.0}
        process: dict[tuple, list[Any]] = {}
        nd, nt = len(DURATION_BUCKETS) + 1, len(TTFT_BUCKETS) + 1

        for snap, alive in self.metrics.gathered():
            for endpoint, model, provider, key, status, n, dc, ds, tc, ts, p, c, ca, r, usd in snap["series"]:
                k = (endpoint, model, provider, str(status))
                requests[k] = requests.get(k, 0) + n
                _acc(duration, (endpoint, model, provider), nd).add(dc, ds)
                if tc is not None:
                    _acc(ttft, (model, provider), nt).add(tc, ts)
                for kind, v in (("prompt", p), ("completion", c), ("cached", ca), ("reasoning", r)):
                    if v:
                        tokens[(model, provider, kind)] = tokens.get((model, provider, kind), 0) + v
                if usd:
                    cost[(model, provider, key)] = cost.get((model, provider, key), 0.0) + usd
            n_over = len(OVERHEAD_BUCKETS) + 1
            for endpoint, (counts, total) in snap["overhead"].items():
                _acc(overhead, (endpoint,), n_over).add(counts, total)
            for provider, (counts, total) in snap["upstream"].items():
                _acc(upstream, (provider,), nd).add(counts, total)
            for provider, reason, n in snap["upstream_errors"]:
                upstream_errors[(provider, reason)] = upstream_errors.get((provider, reason), 0) + n
            for scope, n in snap["ratelimited"].items():
                ratelimited[(scope,)] = ratelimited.get((scope,), 0) + n
            for code, n in snap.get("auth_failures", {}).items():
                auth_failures[(code,)] = auth_failures.get((code,), 0) + n
            for model, provider, n in snap.get("unpriced", ()):
                unpriced[(model, provider)] = unpriced.get((model, provider), 0) + n
            for result, n in snap["cache"].items():
                cache[(result,)] = cache.get((result,), 0) + n
            for name in counters:
                counters[name] += snap.get(name, 0)
            for family, kind, doc, sample, labels, value in snap.get("process", ()):
                _merge_process(process, family, kind, doc, sample, labels, value, alive)
            if not alive:
                continue
            for name in gauges:
                gauges[name] += snap[name]
            for provider, target, is_open in snap["circuits"]:
                circuits[(provider, target)] = max(circuits.get((provider, target), 0), is_open)

        yield _counter("gateway_requests", "Requests answered, by final HTTP status.",
                       ("endpoint", "model", "provider", "status"), requests)
        yield _histogram("gateway_request_duration_seconds", "Whole request time, to the last byte sent.",
                         ("endpoint", "model", "provider"), duration, DURATION_BUCKETS)
        yield _histogram("gateway_time_to_first_token_seconds", "Streams: time until the first content was sent.",
                         ("model", "provider"), ttft, TTFT_BUCKETS)
        yield _histogram("gateway_overhead_seconds", "The gateway's own time per request, excluding upstream waits.",
                         ("endpoint",), overhead, OVERHEAD_BUCKETS)
        yield _histogram("gateway_upstream_duration_seconds",
                         "One upstream attempt: until the whole answer (or a stream's first content) arrived.",
                         ("provider",), upstream, DURATION_BUCKETS)
        yield _counter("gateway_upstream_errors", "Failed upstream attempts, including streams cut after their start.",
                       ("provider", "reason"), upstream_errors)
        yield _counter("gateway_tokens", "Tokens by type; cached is part of prompt, reasoning part of completion.",
                       ("model", "provider", "type"), tokens)
        yield _counter("gateway_cost_usd", "Cost of requests in US dollars, from target prices.",
                       ("model", "provider", "key"), cost)
        yield _counter("gateway_ratelimited", "Requests refused by a rate limit or budget.", ("scope",), ratelimited)
        yield _counter("gateway_unpriced_requests", "Requests whose tokens have no price configured (their usage "
                       "rows carry cost_usd null).", ("model", "provider"), unpriced)
        yield _counter("gateway_auth_failures", "Requests refused for a missing, wrong or expired gateway key "
                       "(401; they leave no usage row).", ("code",), auth_failures)
        yield _counter("gateway_limits_store_errors", "Rate-limit checks that could not reach Redis "
                       "(handled per [limits] on_store_error).", (), {(): counters["limits_store_errors"]})
        yield _counter("gateway_cache_requests", "Response cache lookups.", ("result",), cache)
        yield _gauge("gateway_inflight_requests", "Requests in progress.", (), {(): gauges["inflight"]})
        yield _gauge("gateway_circuit_open", "1 while the target's circuit breaker is open (in any worker).",
                     ("provider", "target"), circuits)
        yield _gauge("gateway_usage_queue_rows", "Usage rows waiting to be written to the database.", (),
                     {(): gauges["queue_rows"]})
        yield _counter("gateway_usage_spilled_rows", "Usage rows spilled to disk while the database was unavailable.",
                       (), {(): counters["spilled_rows"]})
        yield _counter("gateway_usage_write_errors", "Failed usage database writes (the rows are retried).", (),
                       {(): counters["write_errors"]})
        yield from _process_families(process)


def _acc(into: dict[tuple, _HistAcc], key: tuple, size: int) -> _HistAcc:
    acc = into.get(key)
    if acc is None:
        acc = into[key] = _HistAcc(size)
    return acc


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


def _histogram(name: str, doc: str, labels: tuple[str, ...], values: dict[tuple, _HistAcc],
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for k, acc in sorted(values.items()):
        family.add_metric(k, _cumulative(acc.counts, bounds), acc.sum)
    return family


# Process samples of several workers: CPU time and counters add up over every worker that ran, sizes
# over the live ones; these take the extreme instead.
_PROCESS_MIN = {"process_start_time_seconds"}
_PROCESS_MAX = {"process_max_fds", "python_info"}


def _merge_process(into: dict[tuple, list[Any]], family: str, kind: str, doc: str, sample: str,
                   labels: dict[str, str], value: float, alive: bool) -> None:
    if kind != "counter" and not alive:
        return
    key = (family, kind, doc, sample, tuple(sorted(labels.items())))
    have = into.get(key)
    if have is None:
        into[key] = [value]
    elif family in _PROCESS_MIN:
        have[0] = min(have[0], value)
    elif family in _PROCESS_MAX:
        have[0] = max(have[0], value)
    else:
        have[0] += value


def _process_families(process: dict[tuple, list[Any]]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for (family, kind, doc, sample, labels), (value,) in sorted(process.items()):
        metric = families.get(family)
        if metric is None:
            metric = families[family] = Metric(family, doc, kind)
        metric.add_sample(sample, dict(labels), value)
    yield from families.values()


# --- the metrics directory of `gateway serve --workers N` ---------------------------------------------


def prepare_dir() -> tuple[str, bool]:
    """Make sure ``$GATEWAY_METRICS_DIR`` names an empty directory before workers start; returns
    (path, created). A directory given by the operator is kept, only our old snapshots are removed."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for old in Path(given).glob("worker-*.json"):
            with contextlib.suppress(OSError):
                old.unlink()
        return given, False
    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path, True


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
