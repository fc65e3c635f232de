"""`make bench`: the fast fake upstream called directly, through the gateway (bare and governed) and through
LiteLLM's proxy and Portkey's gateway, in one run, on loopback; prints one table and writes it to
tests/bench/RESULTS.md, keeping the file's sections other runs wrote (`make scale`'s; results_file.py).

Layout on a machine with 2+ cores: the server under test is pinned to core 0 (taskset), everything else
(this driver, wrk, the fake upstream) to core 1, so the CPU time read from /proc/<pid>/stat for the server
is its own. For the "direct" row the fake upstream itself is the server under test and moves to core 0.

Usage: .venv/bin/python tests/bench/run.py [--quick] [--skip-litellm] [--skip-portkey] [--skip-memory]
       [--skip-cache | --only-cache | --only-guardrails] [--out PATH]
       (BENCH_QUICK=1, BENCH_SKIP_LITELLM=1 and BENCH_SKIP_PORTKEY=1 do the same as the flags)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_cache import CacheBench, run_cache
from bench_cache import memory_check as cache_memory_check
from bench_guardrails import GuardrailsBench, run_guardrails
from bench_ledger import count_rows, prepare_db, settle_rows
from bench_load import (
    CHAT,
    EMBED,
    EMBEDDINGS,
    NONSTREAM,
    PACED5,
    PACED50,
    STREAM5,
    STREAM200,
    Load,
    measured,
    phase,
    sanity,
    settle,
    ttft,
    upstream_requests,
    wrk,
)
from bench_procs import Noise, Server, cpus, free_port, http_get, log, pin, services_on, status_kb
from bench_report import Memory, Plan, Results, Row, git_head, report
from results_file import write_results

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
# The gateway measured: this checkout's, or another build's (to compare two commits with the same bench).
GATEWAY = Path(os.environ.get("BENCH_GATEWAY") or HERE.parent.parent / ".venv" / "bin" / "gateway")
LITELLM_VERSION = "1.102.4"  # newer releases need a certifi that the package index here does not have yet
LITELLM_VENV = HERE / ".litellm-venv"
PORTKEY_VERSION = "1.15.2"  # @portkey-ai/gateway on npm
# Installed with npm outside the checkout, once per version; BENCH_PORTKEY_DIR overrides.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
PORTKEY_DIR = Path(os.environ.get("BENCH_PORTKEY_DIR") or CACHE / "llm-gateway-bench" / f"portkey-{PORTKEY_VERSION}")
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
PORTKEY_KEY = "sk-bench-portkey"  # forwarded to the fake upstream as its provider key; the fake ignores it
GATEWAY_KEY = "sk-bench-governed"
PACED_CONNS = 32  # paced streams spend most of their time waiting: more of them keep the server busy
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/gateway_bench")
# Optional parts of the governed config, kept only if `gateway check` accepts them (the schema is growing).
# "key" parts go into the [[keys]] table that ends governed.toml; "table" parts are whole new tables.
GOVERNED_EXTRAS = [
    ("per-key rpm/tpm limits (never reached)", "key", "rpm = 100000000\ntpm = 100000000000\n"),
    ("JSON access log", "table", "\n[observability]\naccess_log = true\n"),
]


@contextlib.contextmanager
def off_the_upstreams_core(server: Server, upstream: Server) -> Iterator[None]:
    """The time-to-first-token client (this driver) must not share a core with the fake upstream: a
    fake busy writing a 200-chunk stream keeps a client on its core from running, so the first byte
    seems to arrive only with the last (measured here: 2.6 ms instead of 0.74 ms). For the gateway
    rows the client runs on the server's core for these c=1 phases; the direct row already has them
    apart."""
    if server is upstream:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(server.pids[0]))
    except OSError:
        pass
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def median_round(server: Server, upstream: Server, plan: Plan, run: Callable[[], Load]) -> Load:
    """plan.rounds runs of one phase, each charged its own CPU; the median one by rate. On this shared
    2-core machine one slow spell (another tenant, a service waking on the server's core) moves a single
    run's rate by a third; the median of three keeps it out of the ratios."""
    loads = []
    for _ in range(plan.rounds):
        loads.append(measured(server, upstream, run))
        settle()
    return sorted(loads, key=lambda load: load.rps)[len(loads) // 2]


def stream_pairs(server: Server, upstream: Server, plan: Plan, pairs: int, url: str,
                 auth: str | None, headers: dict[str, str] | None = None) -> tuple[Load, Load, list[float]]:
    """Rounds of 5-chunk and 200-chunk streams taken back to back, `pairs` times, the order swapped
    each pair so neither length always runs second: each pair sees the same machine, and its ratio
    (CPU per 200-chunk stream / CPU per 5-chunk stream) is one sample of the 200 ÷ 5 target, which
    takes the median pair (single pairs ranged from 1.8 to 3.4 here on 12-04). The s5 and s200 columns
    are each length's median round by rate, as elsewhere."""
    limits = (plan.min_requests, plan.phase_cap_s)
    rounds: dict[str, list[Load]] = {STREAM5: [], STREAM200: []}
    ratios = []
    for i in range(pairs):
        got = {}
        for body in (STREAM5, STREAM200) if i % 2 == 0 else (STREAM200, STREAM5):
            got[body] = measured(server, upstream,
                                 lambda b=body: phase(url, 16, plan.stream_s, auth, [b], *limits,  # type: ignore[misc]
                                                      headers))
            rounds[body].append(got[body])
            settle()
        ratios.append(got[STREAM200].server_us / got[STREAM5].server_us)
    s5, s200 = (sorted(rounds[b], key=lambda load: load.rps)[len(rounds[b]) // 2] for b in (STREAM5, STREAM200))
    return s5, s200, ratios


def measure(name: str, server: Server, upstream: Server, auth: str | None, plan: Plan, pairs: int,
            headers: dict[str, str] | None = None) -> Row:
    """Every phase of one front; `pairs`: back-to-back pairs of stream rounds (see stream_pairs);
    `headers`: sent with every request besides the key (Portkey routes by them)."""
    row = Row(name, commit=git_head())
    url = server.url + CHAT
    limits = (plan.min_requests, plan.phase_cap_s)
    sanity(server.port, auth, headers)
    log(f"{name}: warm-up")
    wrk(url, 16, plan.warmup_s, auth, [NONSTREAM], headers=headers)
    wrk(url, 16, 1, auth, [STREAM5], headers=headers)
    settle()
    log(f"{name}: concurrency 1, {plan.c1_s} s")
    row.c1 = measured(server, upstream, lambda: phase(url, 1, plan.c1_s, auth, [NONSTREAM], *limits, headers))
    settle()
    log(f"{name}: time to first token, up to {plan.ttft_n} streams of 5 and of 200 chunks")
    with off_the_upstreams_core(server, upstream):
        row.ttft_ms = statistics.median(ttft(server.port, auth, STREAM5, plan.ttft_n, plan.ttft_cap_s,
                                             headers)) * 1000
        row.ttft200_ms = statistics.median(ttft(server.port, auth, STREAM200, plan.ttft_n, plan.ttft_cap_s,
                                                headers)) * 1000
    log(f"{name}: concurrency 16, {plan.rounds} x {plan.c16_s} s")
    row.c16 = median_round(server, upstream, plan,
                           lambda: phase(url, 16, plan.c16_s, auth, [NONSTREAM], *limits, headers))
    log(f"{name}: streams of 5 and 200 chunks, {pairs} pairs of {plan.stream_s} s rounds")
    row.s5, row.s200, row.stream_ratios = stream_pairs(server, upstream, plan, pairs, url, auth, headers)
    log(f"{name}: paced streams of 5 and 50 chunks, {plan.rounds} x {plan.paced_s} s each at c={PACED_CONNS}")
    row.p5 = median_round(server, upstream, plan,
                          lambda: phase(url, PACED_CONNS, plan.paced_s, auth, [PACED5], *limits, headers))
    row.p50 = median_round(server, upstream, plan,
                           lambda: phase(url, PACED_CONNS, plan.paced_s, auth, [PACED50], *limits, headers))
    row.peak_rss_mb = status_kb(server.pids, "VmHWM") / 1024
    row.errors = sum(x.errors for x in (row.c1, row.c16, row.s5, row.s200, row.p5, row.p50))
    if row.errors:
        row.notes.append(f"{row.errors} failed or non-2xx responses under load")
    log(f"{name}: {row.c16.rps:.0f} rps, {row.c16.server_us:.0f} us CPU/request")
    return row


def gateway_check(config: Path, env: dict[str, str]) -> str | None:
    """None if `gateway check` accepts the config, else its error line."""
    out = subprocess.run([str(GATEWAY), "check", "--config", str(config)], env=env, capture_output=True,
                         text=True, timeout=60, cwd=HERE.parent.parent)
    if out.returncode == 0:
        return None
    return (out.stderr.strip() or out.stdout.strip()).splitlines()[-1]


def bare_config(tmp: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    """bare.toml with the usage ledger and the access log off where the schema allows it."""
    base, path, notes = (CONFIGS / "bare.toml").read_text(), tmp / "bare.toml", []
    path.write_text(base + '\n[storage]\ndatabase_url = ""\n')
    err = gateway_check(path, env)
    if err is None:
        notes.append("usage ledger: off")
    else:  # the ledger cannot be switched off: keep its SQLite file out of the work tree
        path.write_text(base + f'\n[storage]\ndatabase_url = "sqlite:///{tmp}/bare-usage.db"\n')
        notes.append(f"usage ledger: cannot be switched off yet (`gateway check` on database_url = \"\": {err}); "
                     "bare mode writes its rows to SQLite in the run's temp dir")
        if gateway_check(path, env) is not None:
            path.write_text(base)
    base = path.read_text()
    path.write_text(base + "\n[observability]\naccess_log = false\n")
    err = gateway_check(path, env)
    if err is None:
        notes.append("access log: off")
    else:
        path.write_text(base)
        notes.append(f"access log: default (`gateway check` on access_log = false: {err})")
    return path, notes


def governed_config(tmp: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    """governed.toml plus each optional part the current schema accepts; notes say what was left out."""
    base = (CONFIGS / "governed.toml").read_text()
    path = tmp / "governed.toml"
    path.write_text(base)
    err = gateway_check(path, env)
    if err:
        raise RuntimeError(f"governed.toml rejected by `gateway check`: {err}")
    kept: list[tuple[str, str, str]] = []
    notes = []
    for label, kind, text in GOVERNED_EXTRAS:
        path.write_text(_assemble(base, kept + [(label, kind, text)]))
        err = gateway_check(path, env)
        if err is None:
            kept.append((label, kind, text))
            notes.append(f"{label}: on")
        else:
            notes.append(f"{label}: not available yet (`gateway check`: {err})")
    path.write_text(_assemble(base, kept))
    return path, notes


def _assemble(base: str, extras: list[tuple[str, str, str]]) -> str:
    keys = "".join(text for _, kind, text in extras if kind == "key")
    tables = "".join(text for _, kind, text in extras if kind == "table")
    return base.rstrip("\n") + "\n" + keys + tables


def litellm_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def ensure_litellm() -> str | None:
    """Install the pinned LiteLLM proxy into its own venv if needed; None when ready, else why not."""
    py = litellm_python()
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    if py.exists():
        got = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=60)
        if got.returncode == 0 and got.stdout.strip() == LITELLM_VERSION and (LITELLM_VENV / "bin/litellm").exists():
            return None
    log(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (first run only)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True, timeout=120,
                       capture_output=True)
        out = subprocess.run([str(LITELLM_VENV / "bin/pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                             capture_output=True, text=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        return f"unavailable: {e}"
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR")] or out.stderr.splitlines()
        return f"unavailable: pip install failed: {(lines or ['?'])[-1][:200]}"
    return None


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk from Debian's packages")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, timeout=300)
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is required (apt-get install wrk)")


def memory_check(server: Server, plan: Plan, rps_hint: float) -> Memory:
    """Mixed requests (chat, 5-chunk stream, embeddings) on a fresh gateway: RSS after `first`, then `total`."""
    mem = Memory()
    bodies, paths = [NONSTREAM, STREAM5, NONSTREAM, EMBED], [CHAT, CHAT, CHAT, EMBEDDINGS]
    deadline = time.monotonic() + plan.memory_cap_s
    rps = max(rps_hint, 200.0)

    def drive(goal: int) -> None:
        nonlocal rps
        while mem.total < goal and time.monotonic() < deadline:
            seconds = int(min(15, max(1, (goal - mem.total) / rps), max(1, deadline - time.monotonic())))
            load = wrk(server.url + CHAT, 16, seconds, None, bodies, paths)
            if load.errors:
                raise RuntimeError(f"{load.errors} failed or non-2xx responses")
            mem.total += load.requests
            rps = max(load.rps, 50.0)

    drive(plan.memory_first)
    mem.first, mem.rss_first_mb = mem.total, status_kb(server.pids, "VmRSS") / 1024
    log(f"memory: RSS {mem.rss_first_mb:.1f} MB after {mem.first} requests")
    drive(plan.memory_total)
    mem.rss_total_mb = status_kb(server.pids, "VmRSS") / 1024
    log(f"memory: RSS {mem.rss_total_mb:.1f} MB after {mem.total} requests")
    if mem.total < plan.memory_total:
        mem.status = f"incomplete: the {plan.memory_cap_s:.0f} s cap stopped it at {mem.total:,} requests"
    return mem


def start_gateway(name: str, config: Path, cpu: int | None, env: dict[str, str], logdir: Path) -> Server:
    port = free_port()
    cmd = [str(GATEWAY), "serve", "--config", str(config), "--port", str(port), "--workers", "1"]
    server = Server(name, cmd, port, "/healthz", cpu, env, logdir)
    server.wait_ready(30)
    return server


def run(args: argparse.Namespace) -> Results:
    plan = Plan.make(args.quick)
    res = Results(plan, commit=git_head())
    noise = Noise()
    server_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this driver, wrk and the fake upstream share the load core
    ensure_wrk()
    logdir = Path(tempfile.mkdtemp(prefix="bench-"))
    log(f"logs in {logdir}")

    up_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_URL", "LITELLM_"))}
    env["BENCH_UPSTREAM_URL"] = f"http://127.0.0.1:{up_port}/v1"
    upstream = Server("upstream", [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)],
                      up_port, "/stats", load_cpu, env, logdir)
    try:
        upstream.wait_ready(15)
        pin(upstream.pids, server_cpu)  # direct: the fake upstream is the server under test
        if args.only_guardrails:  # guardrails off and on, side by side, on a 2 KB prompt
            run_guardrails_row(res, env, upstream, server_cpu, logdir)
            res.noise = noise.summary()
            return res
        if args.only_cache:  # the response cache's row alone, against the direct p50 at c=1
            direct_c1 = measured(upstream, upstream, lambda: phase(upstream.url + CHAT, 1, plan.c1_s, None,
                                                                   [NONSTREAM], plan.min_requests, plan.phase_cap_s))
            pin(upstream.pids, load_cpu)
            run_cache_row(res, env, upstream, server_cpu, logdir, direct_c1.p50_ms)
            res.noise = noise.summary()
            return res
        res.rows["direct"] = measure("direct", upstream, upstream, GATEWAY_KEY, plan, plan.rounds)
        pin(upstream.pids, load_cpu)
        with services_on(load_cpu) as res.services:
            run_bare(res, env, upstream, server_cpu, logdir)
            run_governed(res, env, upstream, server_cpu, logdir)
            run_paired(res, env, upstream, server_cpu, logdir)
        if args.skip_litellm:
            res.rows["litellm"] = Row("litellm", status="skipped (--skip-litellm)")
        else:
            run_litellm(res, env, upstream, server_cpu, logdir)
        if args.skip_portkey:
            res.rows["portkey"] = Row("Portkey", status="skipped (--skip-portkey)")
        else:
            run_portkey(res, env, upstream, server_cpu, logdir)
        if not args.skip_memory:
            run_memory(res, env, upstream, server_cpu, logdir)
        if not args.skip_cache:
            direct = res.rows["direct"]
            run_cache_row(res, env, upstream, server_cpu, logdir, direct.c1.p50_ms if direct.c1 else None)
    finally:
        upstream.stop()
    res.noise = noise.summary()
    return res


def run_bare(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    config, res.bare_notes = bare_config(logdir, env)
    try:
        gw = start_gateway("gateway-bare", config, cpu, env, logdir)
    except RuntimeError as e:
        res.rows["bare"] = Row("gateway bare", status=f"failed to start: {e}")
        return
    try:
        res.rows["bare"] = measure("gateway bare", gw, upstream, GATEWAY_KEY, res.plan, res.plan.gateway_pairs)
    except (RuntimeError, OSError) as e:
        res.rows["bare"] = Row("gateway bare", status=f"failed: {e}")
    finally:
        gw.stop()


def run_governed(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    env = {**env, "BENCH_DATABASE_URL": DATABASE_URL}
    try:
        config, res.governed_notes = governed_config(logdir, env)
    except RuntimeError as e:
        res.rows["governed"] = Row("gateway governed", status=str(e))
        return
    try:
        db = prepare_db(DATABASE_URL)
        res.governed_notes.append(f"usage rows: Postgres database {db!r}, table usage_log (emptied first)")
        db_ok = True
    except Exception as e:  # any failure to reach Postgres is reported, not raised
        res.ledger = f"unavailable: Postgres at {DATABASE_URL}: {type(e).__name__}: {e}"
        db_ok = False
    served_before = upstream_requests(upstream)
    try:
        gw = start_gateway("gateway-governed", config, cpu, env, logdir)
    except RuntimeError as e:
        res.rows["governed"] = Row("gateway governed", status=f"failed to start: {e}")
        return
    try:
        status, _ = http_get(gw.url + "/metrics")
        res.governed_notes.append("metrics: on (GET /metrics 200)" if status == 200
                                  else f"metrics: not served (GET /metrics {status})")
        res.rows["governed"] = measure("gateway governed", gw, upstream, GATEWAY_KEY, res.plan, res.plan.gateway_pairs)
    except (RuntimeError, OSError) as e:
        res.rows["governed"] = Row("gateway governed", status=f"failed: {e}")
    served = upstream_requests(upstream) - served_before
    if db_ok:
        settle_rows(DATABASE_URL, served)
    gw.stop()  # graceful stop: whatever the ledger still holds is flushed now
    if db_ok:
        check_ledger(res, served)


def run_paired(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    """The throughput cost of governance, measured fairly on a machine whose speed drifts: a bare and a
    governed gateway run side by side (both on the server core; the idle one costs nothing) and take
    c=16 rounds in turns, so each pair sees the same machine. The target uses the median pair."""
    bare, gov = res.rows.get("bare"), res.rows.get("governed")
    if not (bare and gov and bare.status == "ok" and gov.status == "ok"):
        res.paired_status = "skipped: a gateway row failed"
        return
    env = {**env, "BENCH_DATABASE_URL": DATABASE_URL}
    servers: list[Server] = []
    try:
        bare_cfg, _ = bare_config(logdir, env)
        gov_cfg, _ = governed_config(logdir, env)
        servers = [start_gateway("paired-bare", bare_cfg, cpu, env, logdir),
                   start_gateway("paired-governed", gov_cfg, cpu, env, logdir)]
        for server in servers:
            wrk(server.url + CHAT, 16, res.plan.warmup_s, GATEWAY_KEY, [NONSTREAM])
        settle()
        log(f"bare and governed side by side: {res.plan.rounds + 2} pairs of {res.plan.c16_s} s rounds")
        for _ in range(res.plan.rounds + 2):
            b = wrk(servers[0].url + CHAT, 16, res.plan.c16_s, GATEWAY_KEY, [NONSTREAM])
            settle()
            g = wrk(servers[1].url + CHAT, 16, res.plan.c16_s, GATEWAY_KEY, [NONSTREAM])
            settle()
            res.paired.append((b.rps, g.rps))
        res.paired_status = "ok"
    except (RuntimeError, OSError) as e:
        res.paired_status = f"failed: {e}"
    finally:
        for server in servers:
            server.stop()


def check_ledger(res: Results, served: int) -> None:
    """Every request the gateway served (= every request the upstream saw from it) has one usage row,
    and no row is there twice. Requests whose client left before any upstream call (wrk closes its
    connections at the end of each phase; a request waiting on the limits check then never reaches
    the upstream) have rows too, with attempts = 0: they are counted apart."""
    got = count_rows(DATABASE_URL)
    if got is None:
        res.ledger = f"not available yet: no usage_log table after {served} requests"
        return
    rows, distinct, reached = got
    res.ledger_ok = reached == served and distinct == rows
    res.ledger = (f"{reached} usage rows ({distinct} distinct request_id in all) for {served} requests served, "
                  f"and {rows - reached} rows of requests whose client left before any upstream call")


def run_litellm(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    why = ensure_litellm()
    if why:
        res.rows["litellm"] = Row("litellm", status=why)
        return
    res.litellm_version = LITELLM_VERSION
    port = free_port()
    lenv = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    cmd = [str(LITELLM_VENV / "bin/litellm"), "--config", str(CONFIGS / "litellm.yaml"), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", "1", "--log_config", str(CONFIGS / "litellm-logging.json")]
    server = Server("litellm", cmd, port, "/health/liveliness", cpu, lenv, logdir)
    try:
        server.wait_ready(120)
        res.rows["litellm"] = measure(f"LiteLLM {LITELLM_VERSION}", server, upstream, None, res.plan, res.plan.rounds)
    except (RuntimeError, OSError) as e:
        res.rows["litellm"] = Row("litellm", status=f"unavailable: {e}")
    finally:
        server.stop()


def ensure_portkey() -> str | None:
    """Install the pinned Portkey gateway with npm into PORTKEY_DIR if needed; None when ready, else why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return "skipped: `node` not found (Portkey's gateway is a Node package)"
    if PORTKEY_SERVER.exists():
        return None
    if not npm:
        return "skipped: `npm` not found (needed once to install @portkey-ai/gateway)"
    log(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {PORTKEY_DIR} (first run only)")
    try:
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        # --ignore-scripts: its one install script is patch-package, and the published package has no patches
        out = subprocess.run([npm, "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund",
                              "--ignore-scripts", f"@portkey-ai/gateway@{PORTKEY_VERSION}"],
                             capture_output=True, text=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as e:
        return f"unavailable: npm install failed: {e}"
    if out.returncode != 0 or not PORTKEY_SERVER.exists():
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("npm error") and "complete log" not in ln]
        why = "; ".join(lines[:2]) or out.stderr.strip()[-200:] or f"exit status {out.returncode}"
        return f"unavailable: npm install @portkey-ai/gateway@{PORTKEY_VERSION} failed: {why[:300]}"
    return None


def run_portkey(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    """Portkey's open-source gateway on Node, one process, routed to the fake upstream by its headers
    (x-portkey-provider: openai, x-portkey-custom-host: the upstream's /v1). portkey_preload.mjs keeps it
    on 127.0.0.1 and works around its "immutable headers" failure on streams (see that file)."""
    why = ensure_portkey()
    if why:
        res.rows["portkey"] = Row("Portkey", status=why)
        return
    node = shutil.which("node") or "node"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    res.portkey_version = f"@portkey-ai/gateway@{PORTKEY_VERSION} on Node {version}"
    port = free_port()
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream.url}/v1"}
    penv = {**env, "NODE_ENV": "production"}  # no UI, no dev-only routes
    cmd = [node, "--import", str(HERE / "portkey_preload.mjs"), str(PORTKEY_SERVER), f"--port={port}", "--headless"]
    name = f"Portkey {PORTKEY_VERSION}"
    server = Server("portkey", cmd, port, "/", cpu, penv, logdir)
    try:
        server.wait_ready(60)
        before = upstream_requests(upstream)
        sanity(server.port, PORTKEY_KEY, headers)  # four answers: chat, two streams, embeddings
        if upstream_requests(upstream) - before < 4:
            raise RuntimeError("it answered without calling the fake upstream")
        res.rows["portkey"] = measure(name, server, upstream, PORTKEY_KEY, res.plan, res.plan.rounds, headers)
    except (RuntimeError, OSError) as e:
        res.rows["portkey"] = Row(name, status=f"unavailable: {e}")
    finally:
        server.stop()


def run_memory(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    bare = res.rows.get("bare")
    rps = bare.c16.rps if bare and bare.c16 else 1000.0
    try:
        gw = start_gateway("gateway-memory", bare_config(logdir, env)[0], cpu, env, logdir)
    except RuntimeError as e:
        res.memory = Memory(status=f"failed to start: {e}")
        return
    try:
        res.memory = memory_check(gw, res.plan, rps)
    except (RuntimeError, OSError) as e:
        res.memory = Memory(status=f"failed: {e}")
    finally:
        gw.stop()


def run_guardrails_row(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path) -> None:
    """Guardrails (PII redaction with restore, injection check) on a 2 KB prompt vs none, both in bare mode."""
    bench = res.guardrails = GuardrailsBench()  # type: ignore[attr-defined]
    plan = res.plan
    try:
        run_guardrails(bench, lambda name, config: start_gateway(name, config, cpu, env, logdir),
                       bare_config(logdir, env)[0], upstream, plan.c1_s, plan.min_requests, plan.phase_cap_s)
    except (RuntimeError, OSError) as e:
        bench.status = f"failed: {e}"


def run_cache_row(res: Results, env: dict[str, str], upstream: Server, cpu: int | None, logdir: Path,
                  direct_c1_ms: float | None) -> None:
    """The response cache: hits vs proxied requests, then its memory over memory_total distinct requests."""
    res.cache = CacheBench()
    bare = bare_config(logdir, env)[0]

    def start(name: str, config: Path) -> Server:
        return start_gateway(name, config, cpu, env, logdir)

    try:
        run_cache(res.cache, start, bare, upstream, res.plan, direct_c1_ms)
        cache_memory_check(res.cache, start, bare, res.plan.memory_total, res.plan.memory_cap_s)
    except (RuntimeError, OSError) as e:
        res.cache.status = f"failed: {e}"


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark: direct vs gateway (bare, governed) vs LiteLLM "
                                                 "and Portkey.")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="short phases for a smoke run (also BENCH_QUICK=1)")
    parser.add_argument("--skip-litellm", action="store_true", default=os.environ.get("BENCH_SKIP_LITELLM") == "1",
                        help="do not install or run LiteLLM (also BENCH_SKIP_LITELLM=1)")
    parser.add_argument("--skip-portkey", action="store_true", default=os.environ.get("BENCH_SKIP_PORTKEY") == "1",
                        help="do not install or run Portkey's gateway (also BENCH_SKIP_PORTKEY=1)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 100,000-request memory check")
    parser.add_argument("--skip-cache", action="store_true", help="skip the response cache row")
    parser.add_argument("--only-cache", action="store_true", help="run only the response cache row (and the "
                        "direct p50 at c=1 it is compared with)")
    parser.add_argument("--only-guardrails", action="store_true", help="run only the guardrails row: a 2 KB "
                        "prompt through the bare gateway with PII and injection guardrails off and on")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the table")
    args = parser.parse_args()
    if not GATEWAY.exists():
        raise SystemExit(f"bench: {GATEWAY} not found: run `make install` first")
    started = time.monotonic()
    res = run(args)
    if args.only_guardrails:  # its own small table, printed; RESULTS.md keeps the full run's
        print(res.guardrails.table())  # type: ignore[attr-defined]
        return 0
    text = report(res)
    print(text)
    write_results(args.out, text)
    log(f"done in {time.monotonic() - started:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
