"""The guardrails row of `make bench`: the gateway in bare mode with and without [server] guardrails (PII
redaction and injection checks) on a 2 KB chat prompt, side by side: server CPU per request and latency,
the median of alternating rounds, and whether on minus off stays under the issue's 0.1 ms target."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench_load import CHAT, Load, measured, phase, settle, wrk
from bench_procs import Server, log

PROMPT_2KB = ("Hi, I ordered a blue jacket last week (order 48213) and received a red one. Could you exchange it "
              "and send the label to my office? The box was also slightly damaged on one side. ") * 12
BODY_2KB = json.dumps({"model": "fast", "messages": [{"role": "user", "content": PROMPT_2KB[:2048]}],
                       "max_tokens": 16}, separators=(",", ":"))
GUARDRAILS = """
[[guardrails]]
name = "pii"
kind = "pii"
action = "redact"
restore = true

[[guardrails]]
name = "injection"
kind = "injection"
action = "block"
"""


ROUNDS = 5  # off and on alternate, so a neighbour's load on a shared machine falls on both alike
TARGET_US = 100  # issue 22: PII and injection checks on a 2 KB prompt add well under 0.1 ms of CPU


@dataclass
class GuardrailsBench:
    status: str = "ok"
    rounds: dict[str, list[tuple[Load, Load]]] = field(default_factory=dict)  # off | on -> [(c=1, c=16)] per round

    def table(self) -> str:
        if self.status != "ok":
            return f"guardrails row: {self.status}\n"
        lines = [f"| 2 KB prompt, gateway bare (median of {ROUNDS} rounds) | c=1 p50 ms | c=1 CPU us/req | c=16 rps | "
                 "c=16 CPU us/req |", "|---|---|---|---|---|"]
        for name, runs in self.rounds.items():
            lines.append(f"| guardrails {name} | {_median(r[0].p50_ms for r in runs):.2f} | "
                         f"{_median(r[0].server_us for r in runs):.0f} | {_median(r[1].rps for r in runs):.0f} | "
                         f"{_median(r[1].server_us for r in runs):.0f} |")
        off, on = self.rounds.get("off"), self.rounds.get("on")
        if off and on:
            c1 = [b[0].server_us - a[0].server_us for a, b in zip(off, on, strict=False)]
            c16 = [b[1].server_us - a[1].server_us for a, b in zip(off, on, strict=False)]
            worst = max(_median(c1), _median(c16))
            verdict = "met" if worst < TARGET_US else "NOT met"
            lines.append(f"\nguardrails on - off (median of the rounds' differences): {_median(c1):+.0f} us "
                         f"CPU/request at c=1, {_median(c16):+.0f} us at c=16; target < {TARGET_US} us: {verdict}")
            lines.append(f"rounds' differences: c=1 {_list(c1)}; c=16 {_list(c16)}")
        return "\n".join(lines) + "\n"


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:+.0f}" for v in values)


def guarded_config(bare: Path) -> Path:
    """The bare config with the PII and injection guardrails on every request."""
    on = "require_auth = false\nguardrails = [\"pii\", \"injection\"]"
    text = bare.read_text().replace("require_auth = false", on, 1)
    path = bare.with_name("guardrails.toml")
    path.write_text(text + GUARDRAILS)
    return path


def run_guardrails(bench: GuardrailsBench, start: Callable[[str, Path], Server], bare: Path, upstream: Server,
                   seconds: int, min_requests: int, cap_s: int) -> None:
    servers: dict[str, Server] = {}
    try:
        for name, config in (("off", bare), ("on", guarded_config(bare))):
            servers[name] = start(f"gateway-guardrails-{name}", config)
            wrk(servers[name].url + CHAT, 16, 1, None, [BODY_2KB])  # warm-up
        each = max(2, seconds // 2)
        for i in range(ROUNDS):
            for name, server in servers.items():
                url = server.url + CHAT
                settle()
                c1 = measured(server, upstream, lambda u=url: phase(u, 1, each, None, [BODY_2KB], min_requests,
                                                                     cap_s))
                settle()
                c16 = measured(server, upstream, lambda u=url: phase(u, 16, each, None, [BODY_2KB], min_requests,
                                                                      cap_s))
                bench.rounds.setdefault(name, []).append((c1, c16))
                log(f"guardrails {name}, round {i + 1}: {c1.server_us:.0f} us CPU/request at c=1, "
                    f"{c16.server_us:.0f} at c=16")
    finally:
        for server in servers.values():
            server.stop()
