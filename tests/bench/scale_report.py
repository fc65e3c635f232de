"""The `make scale` table, and its own delimited section of tests/bench/RESULTS.md (the rest of the file,
`make bench`'s, is left as it is)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tests.bench.scale_procs import ROOT

if TYPE_CHECKING:
    from tests.bench.scale import Outcome

BEGIN = "<!-- make scale: begin (written by tests/bench/scale.py; the rest of this file is make bench's) -->"
END = "<!-- make scale: end -->"


def _head() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def report(o: Outcome) -> str:
    p, f, k = o.plan, o.findings, o.kill
    c = f.counts
    lines = ["## `make scale`: three replicas, a Redis Cluster, Postgres, one replica killed", "",
             f"- date: {o.started}; commit {_head()}; {p.duration_s:g} s limited phase"
             f"{' (short run)' if p.short else ''}",
             f"- setup: 3 x `gateway serve --workers {p.workers}` on one config; a 3-master Redis Cluster "
             "(`redis-cli --cluster create --cluster-replicas 0`, the gateways given one node's URL); Postgres "
             f"ledger (a throwaway schema, `durability = \"{p.durability}\"`); the fake OpenAI upstream (tests/fakes)",
             f"- load: {p.clients} client processes (OpenAI SDK, {p.threads} threads each) x {p.rps:g} rps, "
             "round-robin over the replicas; half to the three limited keys, half to an unlimited one; "
             "mix chat, stream, chat, embeddings, stream (chat and streams answered after 400 ms)",
             ]
    if k is not None:
        lines.append(f"- kill: SIGKILL to one replica's process group {p.duration_s * 0.4:g} s into the phase; "
                     f"restarted 1 s later, answering again {k.back - k.at:.1f} s after the kill")
    lines += ["", "| requests sent | answered | 200 | 429 | 5xx | dropped (connection broke at the kill) | "
              "refused (replica down) | usage rows | rows of answered | answered, row lost at the kill | "
              "rows of dropped |",
              "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| {c['sent']:,} | {c['answered']:,} | {c['ok']:,} | {c['429']:,} | "
              f"{c['answered'] - c['ok'] - c['429']:,} | {c['dropped']} | {c['refused']} | {c['rows']:,} | "
              f"{c['rows of answered']:,} | {c['rows lost at the kill']} | {c['rows of dropped']} |", "",
              "| key | limit | sent | admitted (200) | exact allowance | used | 429 | dropped | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in f.limits:
        used = row.admitted / row.allowance if row.allowance else 0.0
        lines.append(f"| {row.key.rsplit('-', 1)[0]} | {row.limit} | {row.sent} | {row.admitted:g} | "
                     f"{row.allowance:.4g} | {used:.0%} | {row.limited} | {row.dropped} | "
                     f"{'PASS' if row.ok else 'FAIL'} |")
    lines += ["", "| CPU phase (unlimited key) | offered | requests in window (rps) | gateway CPU s | "
              "CPU per request | idle CPU (ms/s) | CPU per request less idle |", "|---|---|---|---|---|---|---|"]
    for phase in o.cpu:
        rounds = f", {phase.rounds} rounds" if phase.rounds > 1 else ""
        lines.append(f"| {phase.replicas} replica{'s' if phase.replicas > 1 else ''} x {p.workers} workers{rounds} | "
                     f"{phase.offered_rps:g} rps | {phase.requests:,} in {phase.window_s:.1f} s "
                     f"({phase.requests / phase.window_s:.0f}) | {phase.cpu_s:.2f} | "
                     f"{phase.us_per_request:,.0f} µs | {phase.idle_cpu_per_s * 1000:.1f} | "
                     f"{phase.net_us_per_request:,.0f} µs |")
    if len(o.cpu) >= 2:
        lines += ["", f"CPU per request, 3 replicas ÷ 1 at the same load per replica: **{o.cpu_ratio:.2f}x** "
                  f"(asserted ≤ {p.cpu_ratio_limit:g}x)."]
    if len(o.cpu) >= 3:
        spread = o.cpu[2].us_per_request / o.cpu[0].us_per_request
        lines += [f"One replica's load spread over three (not asserted): {spread:.2f}x; each worker then sees a "
                  "third of the requests, so work done per event-loop wake-up, per journal tick and per ledger "
                  "batch is shared by fewer requests."]
    lines += ["", "Exact allowance: GCRA over 60 s from a fresh key admits the limit at once and then limit/60 a "
              "second, so over the span from the key's first request sent to its last 200 answered it is "
              "limit x (1 + span / 60); rpm is also checked on every sub-window (plus 1% of the limit: units "
              "leased before a window opens may be spent in it). tpm counts the rows' prompt + completion tokens, "
              "the budget their `cost_usd`. Rows: every answered request (200 or 429) must have its row with "
              "its status; dropped requests (the connection broke) must be the killed replica's: in flight at "
              "the kill, or sent on a kept-alive connection to it after it died; refused ones, sent while it was "
              "down. CPU: utime + stime of every "
              "gateway process (supervisors and workers, from /proc) between two samples taken while the "
              "clients send, over the requests that ended between them; one client process per replica; "
              "the one- and three-replica phases alternate, and their rounds are pooled.", ""]
    failures = o.failures
    lines.append("Result: **PASS**" if not failures else "Result: **FAIL**")
    lines += [f"- {x}" for x in failures[:20]]
    if f.lost:
        lines += ["", "Answered requests without a row (the gateway documents this loss under `durability = "
                  "\"batch\"`: the journal is written once per `flush_interval_ms`, so a request the killed replica "
                  "answered in that interval has no row; `strict` holds an answer, or a stream's last event, until "
                  "its row is journaled):"]
        lines += [f"- {x}" for x in f.lost]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, text: str) -> None:
    """Put ``text`` between the section's markers, replacing what was there, or append it with them."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n\n{text}\n{END}\n"
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(before + block + ("\n" + after if after else ""))
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + block if old else block)
