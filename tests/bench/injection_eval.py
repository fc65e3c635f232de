"""Detection and false-positive rates of ``kind = "injection"`` on the labelled set tests/data/injection_set.jsonl,
at several thresholds, with the CPU time a 2 KB prompt costs the PII and injection checks.

    .venv/bin/python -m tests.bench.injection_eval [--threshold 0.5]

The figures in README.md ("Guardrails") come from this script.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import orjson

from proxy.guardrails.detect import Finder
from proxy.guardrails.injection import score
from proxy.settings import PII_ENTITIES

DATA = Path(__file__).resolve().parent.parent / "data" / "injection_set.jsonl"
PROMPT_2KB = ("Hi, I ordered a blue jacket last week (order 48213) and received a red one. Could you exchange it "
              "and send the label to my office? The box was also slightly damaged on one side. ") * 12


def rates(rows: list[dict], threshold: float) -> tuple[float, float, Counter, Counter]:
    missed: Counter = Counter()
    false: Counter = Counter()
    attacks = [r for r in rows if r["label"] == "attack"]
    benign = [r for r in rows if r["label"] == "benign"]
    for r in attacks:
        if score(r["text"], r.get("tool", False)) < threshold:
            missed[r["kind"]] += 1
    for r in benign:
        if score(r["text"], r.get("tool", False)) >= threshold:
            false[r["kind"]] += 1
    return 1 - sum(missed.values()) / len(attacks), sum(false.values()) / len(benign), missed, false


def cpu_us(fn, n: int = 2000) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    rows = [orjson.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    attacks = sum(r["label"] == "attack" for r in rows)
    print(f"{DATA.name}: {attacks} attacks, {len(rows) - attacks} benign")
    print("threshold  detection  false positives")
    for t in sorted({0.3, 0.5, 0.7, args.threshold}):
        detect, fp, _, _ = rates(rows, t)
        print(f"{t:9.2f}  {detect:9.1%}  {fp:15.1%}")
    _, _, missed, false = rates(rows, args.threshold)
    print(f"at {args.threshold}: missed by kind {dict(missed)}; false positives by kind {dict(false)}")
    prompt = PROMPT_2KB[:2048]
    finder = Finder(PII_ENTITIES)
    pii, inj = cpu_us(lambda: finder.spans(prompt)), cpu_us(lambda: score(prompt))
    print(f"CPU per 2 KB prompt (best of 5): pii {pii:.1f} us, injection {inj:.1f} us, both {pii + inj:.1f} us")


if __name__ == "__main__":
    main()
