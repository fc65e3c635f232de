"""`make scale`: the scale-out proof. Three `gateway serve --workers 2` replicas on one config, a three-master
Redis Cluster (made with `redis-cli --cluster create` from redis-servers started here, reached through one
node's URL), Postgres as the ledger (a throwaway schema in the shared `test` database) and the fake OpenAI
upstream (tests/fakes). Client processes send mixed chat, stream and embeddings traffic with the OpenAI SDK
under per-key rpm, tpm and budget limits that bind; one replica is killed with SIGKILL mid-run and restarted.
Asserts: each limit admits within its exact allowance, one usage row per answered request, no 5xx, drops
only at the killed replica; and the gateways' CPU per request is flat from one replica to three at the same
load per replica.

Usage: .venv/bin/python -m tests.bench.scale [--duration 20] [--short] [--durability strict|batch] [--keep]
       [--out tests/bench/RESULTS.md | --no-write]
Postgres: $GATEWAY_TEST_PG_URL, else postgresql://postgres@127.0.0.1:5432/test (a schema is made and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.scale_checks import Findings, Kill, check
from tests.bench.scale_procs import ROOT, Replica, Upstream, run_clients
from tests.bench.scale_report import replace_section, report
from tests.redis_util import RedisCluster
from tests.servers import free_port

PG_BASE = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Plan:
    """The run's sizes. Limits are chosen so that each binds (each limited key is offered a sixth of the
    load, about twice its allowance); the other half goes to an unlimited key."""

    duration_s: float = 20.0  # the limited, mixed phase with the kill
    clients: int = 4  # client processes in that phase
    rps: float = 15.0  # per client process, over all keys
    threads: int = 8  # per client process (requests in flight at once, at most)
    rpm: int = 60
    tpm: int = 600
    budget_usd: float = 0.5
    cpu_window_s: float = 6.0  # each CPU phase's measured window
    cpu_rounds: int = 2  # of each CPU phase, alternating
    cpu_rps: float = 40.0  # per replica (one client process each): the load grows with the replicas
    workers: int = 2
    # CPU per request with three replicas over one: what "flat" allows on this shared 2-core machine; the
    # short (pytest) run's windows are a few seconds, so it allows more noise
    cpu_ratio_limit: float = 1.5
    durability: str = "strict"  # [storage] durability: "batch" may lose the killed replica's last rows
    short: bool = False

    @classmethod
    def quick(cls, duration_s: float = 5.0) -> Plan:
        return cls(duration_s=duration_s, clients=2, rps=16.0, threads=8, rpm=5, tpm=100, budget_usd=0.08,
                   cpu_window_s=4.0, cpu_rounds=1, cpu_rps=50.0, cpu_ratio_limit=2.0, short=True)


@dataclass
class CpuPhase:
    replicas: int
    requests: int
    cpu_s: float
    window_s: float
    idle_cpu_per_s: float  # the replicas' CPU seconds per second with no traffic
    offered_rps: float
    rounds: int = 1

    @classmethod
    def pooled(cls, phases: list[CpuPhase]) -> CpuPhase:
        """Rounds of one phase as one: their CPU, requests, windows and idle time summed."""
        window = sum(p.window_s for p in phases)
        return cls(phases[0].replicas, sum(p.requests for p in phases), sum(p.cpu_s for p in phases), window,
                   sum(p.idle_cpu_per_s * p.window_s for p in phases) / window, phases[0].offered_rps, len(phases))

    @property
    def net_us_per_request(self) -> float:
        """Less the idle CPU the replicas would have spent anyway over the window."""
        busy = self.cpu_s - self.idle_cpu_per_s * self.window_s
        return busy / self.requests * 1e6 if self.requests else float("nan")

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


@dataclass
class Outcome:
    plan: Plan
    findings: Findings
    cpu: list[CpuPhase] = field(default_factory=list)
    kill: Kill | None = None
    started: str = ""

    @property
    def cpu_ratio(self) -> float:
        return self.cpu[1].us_per_request / self.cpu[0].us_per_request

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        out = list(self.findings.failures)
        if len(self.cpu) >= 2 and not self.cpu_ratio <= self.plan.cpu_ratio_limit:
            out.append(f"CPU per request with 3 replicas is {self.cpu_ratio:.2f}x that with 1 "
                       f"(limit {self.plan.cpu_ratio_limit}x)")
        return out


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _pg(url: str, *statements: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        out = []
        for statement in statements:
            out = await conn.fetch(statement)
        return out
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A database URL whose search_path is a fresh schema of the database at ``base``, dropped afterwards."""
    schema = f"gw_scale_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(base, f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}{'&' if '?' in base else '?'}search_path={schema}"
    finally:
        asyncio.run(_pg(base, f"DROP SCHEMA {schema} CASCADE"))


def config_text(plan: Plan, upstream: str, redis_url: str, database_url: str, spill: Path,
                run: str) -> tuple[str, dict[str, dict[str, Any]], str, str]:
    """The replicas' shared gateway.toml, the limited keys (secret -> limits), the CPU phases' key and the
    unlimited key that keeps requests in flight through the limited phase."""
    keys = {f"sk-scale-rpm-{run}": {"name": f"rpm-{run}", "rpm": plan.rpm},
            f"sk-scale-tpm-{run}": {"name": f"tpm-{run}", "tpm": plan.tpm},
            f"sk-scale-budget-{run}": {"name": f"budget-{run}", "budget_usd": plan.budget_usd}}
    cpu_key = f"sk-scale-cpu-{run}"
    load_key = f"sk-scale-load-{run}"
    tables = []
    for secret, spec in keys.items():
        limits = "\n".join(f"{k} = {v}" for k, v in spec.items() if k != "name")
        period = 'budget_period = "total"\n' if "budget_usd" in spec else ""
        tables.append(f'[[keys]]\nname = "{spec["name"]}"\nkey = "{secret}"\n{limits}\n{period}')
    # the CPU phases' key and the limited phase's unlimited share are governed too (Redis checks, leases),
    # with limits far above their load
    for name, secret in (("cpu", cpu_key), ("load", load_key)):
        tables.append(f'[[keys]]\nname = "{name}-{run}"\nkey = "{secret}"\nrpm = 10000000\ntpm = 10000000000\n')
    price = "input_per_mtok = 1000.0, output_per_mtok = 1000.0"  # a token costs $0.001: budgets bind soon
    text = f"""# written by tests/bench/scale.py for one run
[server]
require_auth = true

[storage]
database_url = "{database_url}"
redis_url = "{redis_url}"
spill_dir = "{spill}"
durability = "{plan.durability}"

[providers.fake]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "sk-scale-provider-secret"

[[models]]
name = "chat"
targets = [{{ provider = "fake", model = "ok", {price} }}]

# the limited phase's aliases answer after 400 ms (a stream: its head at once, its first chunk 400 ms later),
# so the killed replica has requests in flight, streams among them
[[models]]
name = "chat-slow"
targets = [{{ provider = "fake", model = "delay-400", {price} }}]

[[models]]
name = "stream-slow"
targets = [{{ provider = "fake", model = "stall-400", {price} }}]

[[models]]
name = "embed"
targets = [{{ provider = "fake", model = "text-embedding-fake", {price} }}]

{chr(10).join(tables)}"""
    return text, keys, cpu_key, load_key


def fetch_rows(database_url: str) -> dict[str, dict[str, Any]]:
    rows = asyncio.run(_pg(database_url, "SELECT request_id, key_name, status, prompt_tokens, completion_tokens, "
                                         "cost_usd FROM usage_log"))
    # a client-supplied x-request-id is the row id's prefix: the gateway adds ".<random>"
    return {r["request_id"].rsplit(".", 1)[0]: dict(r) for r in rows}


def wait_rows(database_url: str, answered: set[str], timeout: float = 40.0) -> dict[str, dict[str, Any]]:
    """The rows once every answered request has one (the killed replica's journal is replayed by a
    surviving replica's scan), or whatever is there at the deadline; then one more read for stragglers."""
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch_rows(database_url)
        if answered <= rows.keys() or time.monotonic() > deadline:
            time.sleep(1.0)
            return fetch_rows(database_url)
        time.sleep(0.5)


def cpu_phase(plan: Plan, replicas: list[Replica], key: str, workdir: Path, label: str,
              per_replica_rps: float) -> tuple[CpuPhase, list[dict[str, Any]]]:
    """Unlimited governed traffic, the same rate per replica (as replicas are added for more traffic), one
    client process per replica each sending to every replica in turn; the replicas' CPU between two samples
    taken while every client is sending, over the requests that ended between them. Before it, the
    replicas' idle CPU over 2 s (timers, heartbeats, key sync), reported beside it."""
    idle_from = sum(r.cpu() for r in replicas)
    time.sleep(2.0)
    idle = (sum(r.cpu() for r in replicas) - idle_from) / 2.0
    warm = 1.5  # every worker warms up (connections, scripts) before the window opens
    specs = [{"name": f"{label}{i}", "gateways": [r.url for r in replicas], "keys": [key], "rps": per_replica_rps,
              "threads": 3, "duration_s": plan.cpu_window_s + warm + 0.5,
              "models": {"chat": "chat", "stream": "chat", "embed": "embed"}} for i in range(len(replicas))]
    marks: list[tuple[float, float]] = []

    def sample() -> None:
        marks.append((time.time(), sum(r.cpu() for r in replicas)))

    records = run_clients(specs, workdir, [(warm, sample), (warm + plan.cpu_window_s, sample)])
    (t0, c0), (t1, c1) = marks
    done = [r for r in records if t0 <= r["ended"] <= t1]
    bad = [r for r in records if r["outcome"] != "answered" or r["status"] != 200]
    if bad:
        raise RuntimeError(f"CPU phase {label}: {len(bad)} requests not answered 200, e.g. {bad[0]}")
    return CpuPhase(len(replicas), len(done), c1 - c0, t1 - t0, idle, per_replica_rps * len(replicas)), records


def run(plan: Plan, workdir: Path, pg_base: str = PG_BASE) -> Outcome:
    """The whole scenario; every file it writes (logs, node configs, the spill dir) goes in ``workdir``."""
    run_id = uuid.uuid4().hex[:8]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cluster = RedisCluster(workdir)
    upstream: Upstream | None = None
    replicas: list[Replica] = []
    with pg_schema(pg_base) as database_url:
        try:
            cluster.start()
            log(f"Redis Cluster on ports {cluster.ports}")
            upstream = Upstream(free_port(), workdir)
            text, keys, cpu_key, load_key = config_text(plan, upstream.url, f"redis://127.0.0.1:{cluster.ports[0]}/0",
                                              database_url, workdir / "spill", run_id)
            config = workdir / "gateway.toml"
            config.write_text(text)
            replicas = [Replica(config, free_port(), workdir, plan.workers) for _ in range(3)]
            replicas[0].start()  # alone first: it migrates the schema
            for r in replicas[1:]:
                r.start()
            # one replica and three alternate, so that the machine's drifting load falls on both alike
            rounds: dict[str, list[CpuPhase]] = {"one": [], "three": []}
            cpu_records: list[dict[str, Any]] = []
            for n in range(plan.cpu_rounds):
                for name, serving in (("one", replicas[:1]), ("three", replicas)):
                    log(f"CPU phase: {len(serving)} replica(s), round {n + 1} of {plan.cpu_rounds}")
                    phase, more = cpu_phase(plan, serving, cpu_key, workdir, f"cpu{name}{n}-", plan.cpu_rps)
                    rounds[name].append(phase)
                    cpu_records += more
            phases = [CpuPhase.pooled(rounds["one"]), CpuPhase.pooled(rounds["three"])]
            if not plan.short:  # for the record: one replica's load spread over three (not asserted)
                spread, more = cpu_phase(plan, replicas, cpu_key, workdir, "cpu3s-", plan.cpu_rps / 3)
                phases.append(spread)
                cpu_records += more
            victim = replicas[1]
            kill_at = {"at": 0.0, "back": 0.0}

            def kill() -> None:
                kill_at["at"] = time.time()
                victim.kill()
                log(f"SIGKILL to the replica on port {victim.port}")

            def restart() -> None:
                victim.start()
                kill_at["back"] = time.time()
                log(f"replica on port {victim.port} restarted")

            specs = [{"name": f"main{i}", "gateways": [r.url for r in replicas], "keys": [*keys, *[load_key] * 3],
                      "rps": plan.rps,
                      "threads": plan.threads, "duration_s": plan.duration_s,
                      "models": {"chat": "chat-slow", "stream": "stream-slow", "embed": "embed"}}
                     for i in range(plan.clients)]
            log(f"limited phase: {plan.clients} clients x {plan.rps:g} rps for {plan.duration_s:g} s")
            kill_offset = plan.duration_s * 0.4
            records = run_clients(specs, workdir, [(kill_offset, kill), (kill_offset + 1.0, restart)])
            killed = Kill(victim.url, kill_at["at"], kill_at["back"])
            answered = {r["id"] for r in cpu_records + records if r["outcome"] == "answered"}
            rows = wait_rows(database_url, answered)
            # the CPU phases' requests must have their rows too (they hold no limit and see no kill)
            findings = check(cpu_records + records, rows, keys, killed,
                             strict=plan.durability == "strict")
            return Outcome(plan, findings, phases, killed, started)
        finally:
            for r in replicas:
                r.stop()
            if upstream is not None:
                upstream.stop()
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds of the limited phase (default 20; --short: 5)")
    parser.add_argument("--short", action="store_true", help="the pytest-sized run: fewer clients, smaller limits")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "RESULTS.md",
                        help="the file whose `make scale` section is replaced")
    parser.add_argument("--durability", choices=["strict", "batch"], default="strict",
                        help="the replicas' [storage] durability (default strict: every answered request has its row)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, client records)")
    args = parser.parse_args()
    plan = Plan.quick(args.duration or 5.0) if args.short else Plan(duration_s=args.duration or 20.0)
    plan.durability = args.durability
    workdir = Path(tempfile.mkdtemp(prefix="gw-scale-"))
    try:
        outcome = run(plan, workdir)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(outcome)
    print(text)
    if not args.no_write:
        replace_section(args.out, text)
        log(f"wrote the `make scale` section of {args.out}")
    for failure in outcome.failures:
        log(f"FAIL {failure}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
