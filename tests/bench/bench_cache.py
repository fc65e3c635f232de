"""The response cache's bench row: the same request answered from the cache (memory backend) against the
bare gateway proxying it, and the cache's memory over many distinct requests.

Targets (issue 21): a hit costs less CPU than a proxied request, its added latency at concurrency 1 is
below the bare gateway's, and the cache stays within max_size_mb over 100k distinct requests (read from
gateway_cache_bytes, with the process's RSS alongside).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_load import CHAT, NONSTREAM, Load, measured, phase, settle, wrk
from bench_procs import Server, http_get, log, status_kb

CACHE_MB = 4  # the memory check's max_size_mb: small, so 100k distinct answers must evict
CACHE_TABLE = f'\n[cache]\nbackend = "memory"\nmax_size_mb = {CACHE_MB}\n'


@dataclass
class CacheBench:
    status: str = "not run"
    proxied: Load | None = None  # bare gateway, c=16
    proxied_c1: Load | None = None
    hit: Load | None = None  # cache hits, c=16
    hit_c1: Load | None = None
    direct_c1_ms: float | None = None
    distinct: int = 0  # the memory check's distinct requests
    cache_bytes: float | None = None  # gateway_cache_bytes after them
    rss_mb: tuple[float, float] = (0.0, 0.0)  # after a tenth of them, after all
    notes: list[str] = field(default_factory=list)


def with_cache(config: Path) -> Path:
    path = config.with_name("cache.toml")
    path.write_text(config.read_text() + CACHE_TABLE)
    return path


def cache_bytes(server: Server) -> float | None:
    status, body = http_get(server.url + "/metrics", timeout=10)
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("gateway_cache_bytes "):
            return float(line.split()[1])
    return None


def run_cache(bench: CacheBench, start: Callable[[str, Path], Server], bare: Path, upstream: Server,
              plan: object, direct_c1_ms: float | None) -> None:
    """``start(name, config)`` starts a gateway on the server core; ``bare``: the bare config."""
    limits = (plan.min_requests, plan.phase_cap_s)  # type: ignore[attr-defined]
    c1_s, c16_s = plan.c1_s, plan.c16_s  # type: ignore[attr-defined]
    url_of: dict[str, str] = {}
    for name, config in (("proxied", bare), ("hit", with_cache(bare))):
        gw = start(f"cache-{name}", config)
        try:
            url = url_of[name] = gw.url + CHAT
            wrk(url, 16, plan.warmup_s, None, [NONSTREAM])  # type: ignore[attr-defined]
            settle()
            log(f"cache bench ({name}): concurrency 1, {c1_s} s; concurrency 16, {c16_s} s")
            c1 = measured(gw, upstream, lambda u=url: phase(u, 1, c1_s, None, [NONSTREAM], *limits))
            settle()
            c16 = measured(gw, upstream, lambda u=url: phase(u, 16, c16_s, None, [NONSTREAM], *limits))
            setattr(bench, f"{name}_c1", c1)
            setattr(bench, name, c16)
            settle()
        finally:
            gw.stop()
    bench.direct_c1_ms = direct_c1_ms
    bench.status = "ok"


def memory_check(bench: CacheBench, start: Callable[[str, Path], Server], bare: Path, total: int,
                 cap_s: float) -> None:
    """``total`` distinct requests (each a miss that is stored) on a fresh cache of CACHE_MB."""
    gw = start("cache-memory", with_cache(bare))
    prefix = f"{os.getpid()}-{time.time_ns()}"
    body = NONSTREAM.replace("Say hello.", f"Say hello {prefix} {{n}}.")
    deadline = time.monotonic() + cap_s
    try:
        rps = 500.0
        tenth = 0.0
        while bench.distinct < total and time.monotonic() < deadline:
            seconds = int(min(15, max(1, (total - bench.distinct) / rps), max(1, deadline - time.monotonic())))
            load = wrk_unique(gw.url + CHAT, seconds, body.replace("{n}", f"{bench.distinct}-{{n}}"))
            if load.errors:
                raise RuntimeError(f"{load.errors} failed or non-2xx responses")
            bench.distinct += load.requests
            rps = max(load.rps, 50.0)
            if not tenth and bench.distinct >= total // 10:
                tenth = status_kb(gw.pids, "VmRSS") / 1024
        bench.cache_bytes = cache_bytes(gw)
        bench.rss_mb = (tenth, status_kb(gw.pids, "VmRSS") / 1024)
        if bench.distinct < total:
            bench.notes.append(f"memory check stopped by its {cap_s:.0f} s cap at {bench.distinct:,} requests")
    finally:
        gw.stop()


def wrk_unique(url: str, seconds: int, body: str) -> Load:
    os.environ["BENCH_UNIQUE"] = body
    try:
        return wrk(url, 16, seconds, None, [NONSTREAM])
    finally:
        del os.environ["BENCH_UNIQUE"]


def lines(bench: CacheBench) -> list[str]:
    out = ["## Response cache", ""]
    if bench.status != "ok" or bench.hit is None or bench.proxied is None:
        return out + [f"- {bench.status}", ""]
    out += ["| | rps c=16 | p50 c=1 ms | added p50 c=1 ms | CPU µs/req | upstream µs/req |",
            "|---|---|---|---|---|---|"]
    for name, c16, c1 in (("gateway bare (proxied)", bench.proxied, bench.proxied_c1),
                          ("gateway cache hit (memory)", bench.hit, bench.hit_c1)):
        assert c1 is not None
        added = "—" if bench.direct_c1_ms is None else f"{c1.p50_ms - bench.direct_c1_ms:.3f}"
        out.append(f"| {name} | {c16.rps:,.0f} | {c1.p50_ms:.3f} | {added} | {c16.server_us:,.0f} "
                   f"| {c16.upstream_us:,.0f} |")
    out += ["", "Both gateways run the bare config (the cache one adds `[cache] backend = \"memory\"`) and serve the "
            "same non-stream request over and over: after its first answer, every request the cache gateway "
            "serves is a hit (its upstream CPU is ~0).", ""]
    return out + [f"- {n}" for n in bench.notes]


def verdicts(bench: CacheBench, memory_total: int) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    label_cpu = "cache: a hit costs less CPU than a proxied request"
    label_lat = "cache: a hit's added p50 at concurrency 1 is below the bare gateway's"
    if bench.status != "ok" or not (bench.hit and bench.proxied and bench.hit_c1 and bench.proxied_c1):
        out += [(label_cpu, None, bench.status), (label_lat, None, bench.status)]
    else:
        out.append((label_cpu, bench.hit.server_us < bench.proxied.server_us,
                    f"{bench.hit.server_us:,.0f} µs vs {bench.proxied.server_us:,.0f} µs proxied"))
        base = bench.direct_c1_ms or 0.0
        hit, proxied = bench.hit_c1.p50_ms - base, bench.proxied_c1.p50_ms - base
        out.append((label_lat, hit < proxied, f"{hit:.3f} ms vs {proxied:.3f} ms (minus direct {base:.3f} ms)"))
    label = f"cache: gateway_cache_bytes ≤ max_size_mb ({CACHE_MB} MB) over {memory_total:,} distinct requests"
    if bench.cache_bytes is None or not bench.distinct:
        out.append((label, None, "not measured"))
    else:
        ok = bench.cache_bytes <= CACHE_MB * 1024 * 1024 and bench.distinct >= memory_total
        out.append((label, ok, f"{bench.cache_bytes / 1024 / 1024:.2f} MB after {bench.distinct:,} requests; RSS "
                               f"{bench.rss_mb[0]:.1f} MB after a tenth, {bench.rss_mb[1]:.1f} MB after all"))
    return out
