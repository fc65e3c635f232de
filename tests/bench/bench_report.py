"""What a run found (plain data) and how it is written: the table, the targets, RESULTS.md."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import bench_cache
from bench_cache import CacheBench
from bench_load import PACED_EXTRA_CHUNKS, Load
from bench_procs import ROOT, cpus


@dataclass
class Plan:
    quick: bool
    warmup_s: int
    c1_s: int
    c16_s: int  # per round
    stream_s: int  # per round
    paced_s: int  # per round of paced streams: each lasts 10-100+ ms, and the ones cut off at the end are
    # charged but not counted, so these rounds are longer
    rounds: int  # c=16 and stream phases run this many times; the median round counts
    ttft_n: int
    ttft_cap_s: float
    min_requests: int  # a slow server's phase is extended until it served this many (or phase_cap_s)
    phase_cap_s: int
    memory_first: int
    memory_total: int
    memory_cap_s: float

    @property
    def gateway_pairs(self) -> int:
        """Back-to-back pairs of stream rounds for the gateway rows, whose 200 ÷ 5 ratio is a target."""
        return self.rounds + 2

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:  # a smoke run of the whole harness, about 1.5 minutes: numbers are rough
            return cls(quick=True, warmup_s=1, c1_s=2, c16_s=3, stream_s=2, paced_s=2, rounds=1, ttft_n=30,
                       ttft_cap_s=10, min_requests=20, phase_cap_s=10, memory_first=2_000,
                       memory_total=10_000, memory_cap_s=60)
        return cls(quick=False, warmup_s=2, c1_s=6, c16_s=3, stream_s=2, paced_s=4, rounds=3, ttft_n=300,
                   ttft_cap_s=20, min_requests=200, phase_cap_s=30, memory_first=10_000,
                   memory_total=100_000, memory_cap_s=300)


@dataclass
class Row:
    name: str
    status: str = "ok"  # "ok", or why there are no numbers
    c1: Load | None = None
    c16: Load | None = None
    s5: Load | None = None
    s200: Load | None = None
    p5: Load | None = None  # paced: events 2 ms apart, one per read
    p50: Load | None = None
    ttft_ms: float | None = None  # median, 5-chunk stream
    ttft200_ms: float | None = None  # median, 200-chunk stream: the first event may wait behind the burst
    stream_ratios: list[float] = field(default_factory=list)  # CPU per 200-chunk ÷ per 5-chunk stream, per pair
    peak_rss_mb: float | None = None
    commit: str = ""  # HEAD when this row's server started: others may commit during a run
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def stream_ratio(self) -> float | None:
        """200 ÷ 5: the median back-to-back pair's ratio (run.stream_pairs); None before any pair ran."""
        ratios = sorted(self.stream_ratios)
        return ratios[len(ratios) // 2] if ratios else None


@dataclass
class Memory:
    first: int = 0
    total: int = 0
    rss_first_mb: float = 0.0
    rss_total_mb: float = 0.0
    status: str = "ok"

    @property
    def growth(self) -> float:
        return self.rss_total_mb / self.rss_first_mb - 1 if self.rss_first_mb else float("nan")


@dataclass
class Results:
    plan: Plan
    commit: str  # HEAD when the run started
    rows: dict[str, Row] = field(default_factory=dict)
    bare_notes: list[str] = field(default_factory=list)
    governed_notes: list[str] = field(default_factory=list)
    ledger: str = "not run"
    ledger_ok: bool | None = None
    memory: Memory | None = None
    litellm_version: str = ""
    portkey_version: str = ""
    noise: str = ""
    # bare and governed side by side, c=16 rounds taken in turns: (bare rps, governed rps) per pair
    paired: list[tuple[float, float]] = field(default_factory=list)
    paired_status: str = "not run"
    services: str = "not moved"  # where the local Redis and Postgres ran during the gateway rows
    cache: CacheBench | None = None  # the response cache row (bench_cache)


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


def git_head() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "?"


def machine(res: Results) -> list[str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "proxy", "adapters"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    pkgs = ", ".join(f"{p} {_version(p)}" for p in ("starlette", "uvicorn", "aiohttp", "httpx",
                                                    "orjson", "uvloop", "httptools", "redis", "hiredis", "asyncpg"))
    server_cpu, load_cpu = cpus()
    pinning = (f"server under test on core {server_cpu} (taskset), load generator + fake upstream on core {load_cpu}"
               if server_cpu is not None else "not pinned (fewer than 2 cores or no taskset)")
    head = git_head()
    commit = res.commit + ("" if head == res.commit else f" (HEAD moved to {head} during the run)")
    commit += " (the gateway code has uncommitted changes)" if dirty else ""
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {commit}",
        f"- machine: {os.cpu_count()} cores, {model}, Linux {platform.release()}",
        f"- pinning: {pinning}; {res.services}",
        f"- Python {platform.python_version()}; {pkgs}",
        f"- load: {wrk_version.strip()}, closed loop, 1 thread; TTFT by a raw-socket client at concurrency 1",
    ]


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def table(res: Results) -> list[str]:
    direct = res.rows.get("direct")
    head = ("| | rps c=16 | ÷ direct | p50 c=1 ms | p99 c=1 ms | p50 c=16 ms | p99 c=16 ms | added p50 c=1 ms "
            "| CPU µs/req | upstream µs/req | CPU ÷ upstream | peak RSS MB | TTFT p50 ms (5 / 200 chunks) "
            "| added TTFT ms (5 / 200) | stream CPU µs (5 / 200 chunks) | 200 ÷ 5 | CPU µs per paced chunk |")
    columns = head.count("|") - 1
    out = [head, "|" + "---|" * columns]
    for key in ("direct", "bare", "governed", "litellm", "portkey"):
        row = res.rows.get(key)
        if row is None:
            continue
        if row.status != "ok" or row.c1 is None or row.c16 is None or row.s5 is None or row.s200 is None:
            out.append(f"| {row.name} | {row.status} |" + " |" * (columns - 2))
            continue
        base = None if key == "direct" else direct
        added = _added(row, base, "c1")
        vs_direct = row.c16.rps / direct.c16.rps if direct and direct.c16 else None
        ratio = "—" if base is None else fmt(row.c16.server_us / row.c16.upstream_us)
        out.append(
            f"| {row.name} | {row.c16.rps:,.0f} | {fmt(vs_direct)} | {row.c1.p50_ms:.3f} | {row.c1.p99_ms:.3f} "
            f"| {row.c16.p50_ms:.2f} | {row.c16.p99_ms:.2f} | {_ms(added)} | {row.c16.server_us:,.0f} "
            f"| {row.c16.upstream_us:,.0f} | {ratio} | {fmt(row.peak_rss_mb, 1)} "
            f"| {_ms(row.ttft_ms)} / {_ms(row.ttft200_ms)} "
            f"| {_ms(_added(row, base, 'ttft'))} / {_ms(_added(row, base, 'ttft200'))} "
            f"| {row.s5.server_us:,.0f} / {row.s200.server_us:,.0f} | {fmt(row.stream_ratio)} "
            f"| {fmt(paced_chunk_us(row), 1)} |"
        )
    return out


def paced_chunk_us(row: Row) -> float | None:
    """CPU per chunk when every chunk is a read of its own: (paced 50-chunk − paced 5-chunk) / 45."""
    if row.p5 is None or row.p50 is None or not row.p5.requests or not row.p50.requests:
        return None
    return (row.p50.server_us - row.p5.server_us) / PACED_EXTRA_CHUNKS


def _added(row: Row, direct: Row | None, what: str) -> float | None:
    """Milliseconds the row adds over the direct row: p50 at c=1 ("c1"), or a median TTFT."""
    if direct is None:
        return None
    if what == "c1":
        return row.c1.p50_ms - direct.c1.p50_ms if row.c1 and direct.c1 else None
    mine, theirs = getattr(row, f"{what}_ms"), getattr(direct, f"{what}_ms")
    return None if mine is None or theirs is None else mine - theirs


def details(res: Results) -> list[str]:
    out = ["| | requests c=1 / c=16 / 5-chunk / 200-chunk / paced 5 / paced 50 | errors "
           "| upstream CPU µs per stream (5 / 200) | CPU µs per paced stream (5 / 50) "
           "| read + write calls per stream (5 / 200 chunks) | HEAD at its start |",
           "|---|---|---|---|---|---|---|"]
    for row in res.rows.values():
        if row.status == "ok" and row.c1 and row.c16 and row.s5 and row.s200:
            paced = ("— / —", "— / —")
            if row.p5 and row.p50:
                paced = (f"{row.p5.requests:,} / {row.p50.requests:,}",
                         f"{row.p5.server_us:,.0f} / {row.p50.server_us:,.0f}")
            out.append(f"| {row.name} | {row.c1.requests:,} / {row.c16.requests:,} / {row.s5.requests:,} / "
                       f"{row.s200.requests:,} / {paced[0]} | {row.errors} | {row.s5.upstream_us:,.0f} / "
                       f"{row.s200.upstream_us:,.0f} | {paced[1]} | {_calls(row.s5)} / {_calls(row.s200)} "
                       f"| {row.commit} |")
    return out


def _calls(load: Load) -> str:
    """Read and write system calls per request of a phase: how many pieces a stream was read and
    written in (a zero-delay burst reaches a busy server in fewer, larger reads)."""
    if not load.requests:
        return "—"
    return f"{load.server_reads / load.requests:.1f} + {load.server_writes / load.requests:.1f}"


def verdicts(res: Results) -> list[tuple[str, bool | None, str]]:
    """(target, passed or None when it could not be measured, the numbers)."""
    rows = {k: r for k, r in res.rows.items() if r.status == "ok" and r.c16 is not None}
    direct, bare, gov, lite = (rows.get(k) for k in ("direct", "bare", "governed", "litellm"))
    out: list[tuple[str, bool | None, str]] = []

    def ratio_target(label: str, row: Row | None, limit: float) -> None:
        if row is None or row.c16 is None:
            out.append((label, None, "not measured"))
            return
        r = row.c16.server_us / row.c16.upstream_us
        out.append((label, r <= limit, f"{row.c16.server_us:.0f} µs vs upstream {row.c16.upstream_us:.0f} µs "
                                       f"= {r:.2f}x (limit {limit:g}x)"))

    ratio_target("bare: CPU per non-stream request ≤ 4x the upstream's", bare, 4)
    ratio_target("governed: CPU per non-stream request ≤ 6x the upstream's", gov, 6)
    if bare and lite and bare.c16 and lite.c16:
        r = lite.c16.server_us / bare.c16.server_us
        extra = f"; governed: {lite.c16.server_us / gov.c16.server_us:.1f}x" if gov and gov.c16 else ""
        out.append(("≥ 15x less CPU per request than LiteLLM (bare)", r >= 15,
                    f"LiteLLM {lite.c16.server_us:,.0f} µs vs {bare.c16.server_us:,.0f} µs = {r:.1f}x{extra}"))
    else:
        out.append(("≥ 15x less CPU per request than LiteLLM (bare)", None, "not measured"))
    for key, row in (("bare", bare), ("governed", gov)):
        if row is None or direct is None or row.c1 is None or direct.c1 is None:
            out.append((f"{key}: added p50 at concurrency 1 ≤ 0.5 ms", None, "not measured"))
            out.append((f"{key}: added time to first token ≤ 0.5 ms", None, "not measured"))
            continue
        added = row.c1.p50_ms - direct.c1.p50_ms
        out.append((f"{key}: added p50 at concurrency 1 ≤ 0.5 ms", added <= 0.5,
                    f"{row.c1.p50_ms:.3f} − {direct.c1.p50_ms:.3f} = {added:.3f} ms"))
        t5, t200 = _added(row, direct, "ttft"), _added(row, direct, "ttft200")
        if t5 is None or t200 is None:
            out.append((f"{key}: added time to first token ≤ 0.5 ms", None, "not measured"))
            continue
        out.append((f"{key}: added time to first token ≤ 0.5 ms (5- and 200-chunk streams)",
                    max(t5, t200) <= 0.5, f"5 chunks: {t5:.3f} ms, 200 chunks: {t200:.3f} ms"))
    for key, row in (("bare", bare), ("governed", gov)):
        r = None if row is None else row.stream_ratio
        if row is None or row.s5 is None or row.s200 is None or r is None:
            out.append((f"{key}: 200-chunk stream costs ≤ 3x a 5-chunk one", None, "not measured"))
            continue
        pairs = ", ".join(f"{x:.2f}" for x in row.stream_ratios)
        out.append((f"{key}: 200-chunk stream costs ≤ 3x a 5-chunk one", r <= 3,
                    f"median of {len(row.stream_ratios)} back-to-back pairs ({pairs}) = {r:.2f}x; "
                    f"median rounds {row.s200.server_us:,.0f} / {row.s5.server_us:,.0f} µs"))
    if res.paired:
        losses = sorted(1 - g / b for b, g in res.paired)
        loss = losses[len(losses) // 2]
        pairs = ", ".join(f"{g:,.0f}/{b:,.0f}" for b, g in res.paired)
        sequential = (f"; in the per-front phases above, minutes apart: {1 - gov.c16.rps / bare.c16.rps:+.1%}"
                      if bare and gov and bare.c16 and gov.c16 else "")
        out.append(("governed loses ≤ 25% throughput vs bare", loss <= 0.25,
                    f"median of {len(losses)} back-to-back pairs (governed/bare rps: {pairs}) = {loss:+.1%}"
                    f"{sequential}"))
    elif bare and gov and bare.c16 and gov.c16:
        loss = 1 - gov.c16.rps / bare.c16.rps
        out.append(("governed loses ≤ 25% throughput vs bare", loss <= 0.25,
                    f"{gov.c16.rps:,.0f} vs {bare.c16.rps:,.0f} rps = {loss:+.1%} "
                    f"(paired rounds: {res.paired_status})"))
    else:
        out.append(("governed loses ≤ 25% throughput vs bare", None, "not measured"))
    out.append(("governed: one usage row per request served", res.ledger_ok, res.ledger))
    mem = res.memory
    label = "memory: RSS after N requests within 10% of RSS after the first N/10"
    if mem is None or not mem.rss_first_mb or not mem.rss_total_mb:
        out.append((label, None, mem.status if mem else "skipped"))
    else:
        label = f"memory: RSS after {mem.total:,} requests within 10% of RSS after {mem.first:,}"
        numbers = f"{mem.rss_first_mb:.1f} MB → {mem.rss_total_mb:.1f} MB ({mem.growth:+.1%})"
        if mem.status != "ok":
            out.append((label, None, f"{numbers}; {mem.status}"))
        else:
            out.append((label, abs(mem.growth) <= 0.10, numbers))
    if res.cache is not None:
        out += bench_cache.verdicts(res.cache, res.plan.memory_total)
    return out


def report(res: Results) -> str:
    plan = res.plan
    lines = ["# `make bench` results", ""]
    lines += machine(res)
    if res.litellm_version:
        lines.append(f"- LiteLLM: litellm[proxy]=={res.litellm_version} in its own venv, 1 worker, no database")
    if res.portkey_version:
        lines.append(f"- Portkey: {res.portkey_version}, one process, routed by x-portkey-provider: openai and "
                     "x-portkey-custom-host (tests/bench/portkey_preload.mjs: loopback only, upstream headers made "
                     "mutable so streams work)")
    lines.append(f"- mode: {'QUICK (smoke run: short phases, numbers are rough)' if plan.quick else 'full'}; "
                 f"phases: warm-up {plan.warmup_s} s, c=1 {plan.c1_s} s, c=16 {plan.rounds} x {plan.c16_s} s, "
                 f"streams of 5 and 200 chunks at c=16 in back-to-back pairs of {plan.stream_s} s rounds "
                 f"({plan.gateway_pairs} pairs for the gateway rows, {plan.rounds} for the others), "
                 f"paced streams {plan.rounds} x {plan.paced_s} s each at c=32 (of repeated rounds, the median one by "
                 f"rate counts; a round that served fewer than {plan.min_requests} "
                 f"requests is extended, up to {plan.phase_cap_s} s); TTFT: up to {plan.ttft_n} streams of each "
                 f"length at c=1")
    lines.append(f"- noise: {res.noise}")
    lines += ["", "## Results", ""]
    lines += table(res)
    lines += [""] + details(res)
    lines += ["", "CPU µs/req: utime+stime of the serving process (from /proc) over the c=16 non-stream phase, "
              "divided by the requests served; upstream µs/req: the fake upstream's own CPU in the same phase. "
              "Added latency and TTFT: minus the direct row's, same run. TTFT: median time to the first "
              "`data:` byte at c=1. Streams: 5 or 200 content chunks sent back to back (zero delay) "
              "with include_usage, CPU per stream at c=16. CPU µs per paced chunk: streams of 5 and 50 chunks "
              "sent 2 ms apart (each chunk reaches the server in a read of its own, as tokens from a real model "
              f"do) at c=32; (CPU per 50-chunk stream − CPU per 5-chunk stream) / {PACED_EXTRA_CHUNKS}. "
              "Read + write calls per stream: the serving process's read- and write-family system calls "
              "(syscr / syscw of /proc/<pid>/io: read, readv, write, writev; not recv or send) in the "
              "zero-delay stream phases, divided by the streams served. They count all of the process's calls "
              "(bare also writes its SQLite ledger, governed talks to Redis and Postgres), but most are the "
              "stream's: a gateway reads a stream from its upstream in as many pieces as the burst reached it "
              "in, and writes each piece to the client as it comes, or several at once when the client is "
              "slower than the upstream.", ""]
    if res.cache is not None:
        lines += bench_cache.lines(res.cache)
    lines += ["## Targets", ""]
    for label, ok, detail in verdicts(res):
        mark = "PASS" if ok else ("n/a" if ok is None else "FAIL")
        lines.append(f"- **{mark}** {label}: {detail}")
    lines += ["", "## Gateway modes", ""]
    lines += [f"- bare: {n}" for n in res.bare_notes]
    lines += [f"- governed: {n}" for n in res.governed_notes]
    lines.append(f"- governed: ledger check: {res.ledger}")
    notes = [f"- {r.name}: {n}" for r in res.rows.values() for n in r.notes]
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"
