"""The guardrails row of `make bench`: the gateway in bare mode with and without [server] guardrails (PII
redaction and injection checks) on a 2 KB chat prompt, side by side: server CPU per request and latency."""

from __future__ import annotations

import json
from collections.abc import Callable
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


@dataclass
class GuardrailsBench:
    status: str = "ok"
    loads: dict[str, tuple[Load, Load]] = field(default_factory=dict)  # off | on -> (c=1, c=16)

    def table(self) -> str:
        if self.status != "ok":
            return f"guardrails row: {self.status}\n"
        lines = ["| 2 KB prompt, gateway bare | c=1 p50 ms | c=1 CPU us/req | c=16 rps | c=16 CPU us/req |",
                 "|---|---|---|---|---|"]
        for name, (c1, c16) in self.loads.items():
            lines.append(f"| guardrails {name} | {c1.p50_ms:.2f} | {c1.server_us:.0f} | {c16.rps:.0f} | "
                         f"{c16.server_us:.0f} |")
        off, on = self.loads.get("off"), self.loads.get("on")
        if off and on:
            lines.append(f"\nguardrails on - off: {on[0].server_us - off[0].server_us:+.0f} us CPU/request at c=1, "
                         f"{on[1].server_us - off[1].server_us:+.0f} us at c=16")
        return "\n".join(lines) + "\n"


def guarded_config(bare: Path) -> Path:
    """The bare config with the PII and injection guardrails on every request."""
    on = "require_auth = false\nguardrails = [\"pii\", \"injection\"]"
    text = bare.read_text().replace("require_auth = false", on, 1)
    path = bare.with_name("guardrails.toml")
    path.write_text(text + GUARDRAILS)
    return path


def run_guardrails(bench: GuardrailsBench, start: Callable[[str, Path], Server], bare: Path, upstream: Server,
                   seconds: int, min_requests: int, cap_s: int) -> None:
    for name, config in (("off", bare), ("on", guarded_config(bare))):
        server = start(f"gateway-guardrails-{name}", config)
        try:
            url = server.url + CHAT
            wrk(url, 16, 1, None, [BODY_2KB])  # warm-up
            settle()
            c1 = measured(server, upstream, lambda u=url: phase(u, 1, seconds, None, [BODY_2KB], min_requests,
                                                                 cap_s))
            settle()
            c16 = measured(server, upstream, lambda u=url: phase(u, 16, seconds, None, [BODY_2KB], min_requests,
                                                                  cap_s))
            bench.loads[name] = (c1, c16)
            log(f"guardrails {name}: {c1.server_us:.0f} us CPU/request at c=1, {c16.server_us:.0f} at c=16")
        finally:
            server.stop()
