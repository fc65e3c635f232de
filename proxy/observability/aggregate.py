"""Metrics of several processes: snapshot files of ``gateway serve --workers N`` and their sum.

Each worker writes a snapshot of its numbers to ``$GATEWAY_METRICS_DIR/worker-<pid>.json`` every
``FLUSH_INTERVAL_S`` and whichever worker answers a scrape adds them up: counters and histograms over
every worker that ever ran in this serve (so they never go backwards when a worker is replaced),
gauges over the workers still alive. Process metrics are summed the same way (CPU seconds, memory,
open fds); ``process_start_time_seconds`` is the oldest live worker's. Other workers' numbers are at
most ``FLUSH_INTERVAL_S`` old; the answering worker publishes its own before reading the others, so no
counter ever goes down from one scrape to the next, whichever worker answers each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.core import Metric

log = logging.getLogger("gateway.observability")

METRICS_DIR_ENV = "GATEWAY_METRICS_DIR"
FLUSH_INTERVAL_S = 1.0

# Process samples of several workers: CPU time and counters add up over every worker that ran, sizes
# over the live ones; these take the extreme instead.
_PROCESS_MIN = frozenset({"process_start_time_seconds"})
_PROCESS_MAX = frozenset({"process_max_fds", "python_info"})


# --- snapshot files --------------------------------------------------------------------------------------


def write_snapshot(directory: Path, snap: dict[str, Any]) -> None:
    """Publish this worker's numbers for the others (atomic rename: readers never see half a file)."""
    path = directory / f"worker-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(snap))
    os.replace(tmp, path)


def gather(directory: Path, own: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    """(snapshot, alive) for this worker (``own``, just taken) and every other worker's last file."""
    # Published before it is served: a later scrape answered by another worker then reads at least
    # these numbers, so counters never appear to go backwards between two scrapes.
    with contextlib.suppress(OSError):
        write_snapshot(directory, own)
    yield own, True
    me = f"worker-{os.getpid()}.json"
    for path in sorted(directory.glob("worker-*.json")):
        if path.name == me:
            continue
        try:
            snap = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # removed or replaced while we looked: its numbers come with the next scrape
        yield snap, _alive(int(snap.get("pid", 0)))


async def publish(directory: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Write this worker's snapshot every FLUSH_INTERVAL_S until cancelled, so other workers can serve it."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        try:
            write_snapshot(directory, snapshot())
        except OSError as e:
            log.warning("cannot write metrics snapshot to %s: %s", directory, e)


def process_samples() -> list[list[Any]]:
    """This process's CPU, memory, fd, platform and GC samples, as a snapshot carries them."""
    out = []
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        for family in collector.collect():
            for s in family.samples:
                out.append([family.name, family.type, family.documentation, s.name, s.labels, s.value])
    return out


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


# --- the sum -------------------------------------------------------------------------------------------


class HistSum:
    """Per-bucket (not cumulative) counts and the sum of one histogram series, over several snapshots."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0

    def add(self, counts: list[int], total: float) -> None:
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.sum += total


class Totals:
    """The numbers of one or more snapshots added up, keyed by the label values they are exported with."""

    def __init__(self, snapshots: Iterable[tuple[dict[str, Any], bool]]) -> None:
        self.requests: dict[tuple, float] = {}  # (endpoint, model, provider, status)
        self.duration: dict[tuple, HistSum] = {}  # (endpoint, model, provider)
        self.ttft: dict[tuple, HistSum] = {}  # (model, provider)
        self.tokens: dict[tuple, float] = {}  # (model, provider, type)
        self.cost: dict[tuple, float] = {}  # (model, provider, key)
        self.overhead: dict[tuple, HistSum] = {}  # (endpoint,)
        self.upstream: dict[tuple, HistSum] = {}  # (provider,)
        self.upstream_errors: dict[tuple, float] = {}  # (provider, reason)
        self.ratelimited: dict[tuple, float] = {}  # (scope,)
        self.auth_failures: dict[tuple, float] = {}  # (code,)
        self.unpriced: dict[tuple, float] = {}  # (model, provider)
        self.cache: dict[tuple, float] = {}  # (alias, result)
        self.guardrail_actions: dict[tuple, float] = {}  # (guardrail, action, on)
        self.guardrail_seconds: dict[tuple, HistSum] = {}  # (guardrail,)
        self.circuits: dict[tuple, float] = {}  # (provider, target): open in any live worker
        self.counters = {"spilled_rows": 0.0, "write_errors": 0.0, "limits_store_errors": 0.0, "cache_saved_usd": 0.0}
        self.gauges = {"inflight": 0.0, "queue_rows": 0.0, "cache_entries": 0.0, "cache_bytes": 0.0}  # live only
        self.degraded = 0.0  # 1 if any live worker enforces limits in-process
        self.process: dict[tuple, list[Any]] = {}
        for snap, alive in snapshots:
            self.add(snap, alive)

    def add(self, snap: dict[str, Any], alive: bool) -> None:
        for endpoint, model, provider, key, status, n, dc, ds, tc, ts, p, c, ca, r, usd in snap["series"]:
            k = (endpoint, model, provider, str(status))
            self.requests[k] = self.requests.get(k, 0) + n
            _hist(self.duration, (endpoint, model, provider), dc, ds)
            if tc is not None:
                _hist(self.ttft, (model, provider), tc, ts)
            for kind, v in (("prompt", p), ("completion", c), ("cached", ca), ("reasoning", r)):
                if v:
                    _count(self.tokens, (model, provider, kind), v)
            if usd:
                _count(self.cost, (model, provider, key), usd)
        for endpoint, (counts, total) in snap["overhead"].items():
            _hist(self.overhead, (endpoint,), counts, total)
        for provider, (counts, total) in snap["upstream"].items():
            _hist(self.upstream, (provider,), counts, total)
        for provider, reason, n in snap["upstream_errors"]:
            _count(self.upstream_errors, (provider, reason), n)
        for scope, n in snap["ratelimited"].items():
            _count(self.ratelimited, (scope,), n)
        for code, n in snap.get("auth_failures", {}).items():
            _count(self.auth_failures, (code,), n)
        for model, provider, n in snap.get("unpriced", ()):
            _count(self.unpriced, (model, provider), n)
        for alias, result, n in snap["cache"]:
            _count(self.cache, (alias, result), n)
        for guardrail, action, on, n in snap.get("guardrail_actions", ()):
            _count(self.guardrail_actions, (guardrail, action, on), n)
        for guardrail, (counts, total) in snap.get("guardrail_seconds", {}).items():
            _hist(self.guardrail_seconds, (guardrail,), counts, total)
        for name in self.counters:
            self.counters[name] += snap.get(name, 0)
        for family, kind, doc, sample, labels, value in snap.get("process", ()):
            self._add_process(family, kind, doc, sample, labels, value, alive)
        if not alive:
            return
        for name in ("inflight", "queue_rows"):
            self.gauges[name] += snap[name]
        self.degraded = max(self.degraded, snap.get("limits_degraded", 0))
        if snap.get("cache_entries_bytes"):
            self.gauges["cache_entries"] += snap["cache_entries_bytes"][0]
            self.gauges["cache_bytes"] += snap["cache_entries_bytes"][1]
        for provider, target, is_open in snap["circuits"]:
            self.circuits[(provider, target)] = max(self.circuits.get((provider, target), 0), is_open)

    def _add_process(self, family: str, kind: str, doc: str, sample: str, labels: dict[str, str], value: float,
                     alive: bool) -> None:
        if kind != "counter" and not alive:
            return
        key = (family, kind, doc, sample, tuple(sorted(labels.items())))
        have = self.process.get(key)
        if have is None:
            self.process[key] = [value]
        elif family in _PROCESS_MIN:
            have[0] = min(have[0], value)
        elif family in _PROCESS_MAX:
            have[0] = max(have[0], value)
        else:
            have[0] += value

    def process_families(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for (family, kind, doc, sample, labels), (value,) in sorted(self.process.items()):
            metric = families.get(family)
            if metric is None:
                metric = families[family] = Metric(family, doc, kind)
            metric.add_sample(sample, dict(labels), value)
        yield from families.values()


def _count(into: dict[tuple, float], key: tuple, n: float) -> None:
    into[key] = into.get(key, 0) + n


def _hist(into: dict[tuple, HistSum], key: tuple, counts: list[int], total: float) -> None:
    acc = into.get(key)
    if acc is None:
        acc = into[key] = HistSum(len(counts))
    acc.add(counts, total)
