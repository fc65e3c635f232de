"""What `make scale` asserts, from the clients' records and the usage rows: limits within their exact
allowance, one row per answered request, no 5xx, drops only where the replica was killed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 60.0  # the gateway's rpm/tpm window (proxy/limits/checks.py)
EPS = 1e-9


@dataclass
class Kill:
    gateway: str  # URL of the replica killed
    at: float  # wall clock of the SIGKILL
    back: float  # wall clock when the restarted replica answered /readyz


@dataclass
class LimitRow:
    key: str
    limit: str  # "rpm = 120", ...
    sent: int
    admitted: float  # requests (rpm, budget) or tokens (tpm) of the answered 200s
    allowance: float
    limited: int  # 429s
    dropped: int
    ok: bool
    note: str = ""


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    limits: list[LimitRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # answered requests whose row the kill took, and why allowed

    def fail(self, message: str) -> None:
        self.failures.append(message)


def gcra_allowance(limit: float, span_s: float) -> float:
    """What GCRA over 60 s admits in a span from a fresh state: a burst of the limit, then limit/60 a second."""
    return limit + limit * span_s / WINDOW_S


def worst_subwindow(items: list[tuple[float, float, float]], limit: float, slack: float) -> tuple[float, str]:
    """The largest overshoot over every window [sent of one request, end of another] of the amounts of the
    requests wholly inside it, against that window's GCRA allowance plus ``slack`` (units leased before the
    window opened may be spent inside it)."""
    worst, where = -math.inf, ""
    by_sent = sorted(items)
    for i, (start, _, _) in enumerate(by_sent):
        used = 0.0
        for _sent, ended, amount in sorted(by_sent[i:], key=lambda x: x[1]):
            used += amount
            over = used - gcra_allowance(limit, ended - start) - slack
            if over > worst:
                worst, where = over, f"{used:g} in [{start:.3f}, {ended:.3f}]"
    return worst, where


def check(records: list[dict[str, Any]], rows: dict[str, dict[str, Any]], keys: dict[str, dict[str, Any]],
          kill: Kill | None, strict: bool = True, tick_s: float = 0.2) -> Findings:
    """``keys``: secret -> {"name", "rpm"|"tpm"|"budget_usd": limit}; ``rows``: usage rows by the client's id.
    A row may be missing only where the gateway documents the loss: under batch durability (not ``strict``,
    which holds an answer, or a stream's last event, until its row is journaled), an answer the killed
    replica finished in the journal tick (``tick_s``, flush_interval_ms) before the kill. Those are counted
    and listed."""
    found = Findings()
    answered = [r for r in records if r["outcome"] == "answered"]
    dropped = [r for r in records if r["outcome"] == "dropped"]
    refused = [r for r in records if r["outcome"] == "refused"]
    found.counts = {"sent": len(records), "answered": len(answered), "ok": sum(r["status"] == 200 for r in answered),
                    "429": sum(r["status"] == 429 for r in answered), "dropped": len(dropped),
                    "refused": len(refused), "rows": len(rows)}

    # no 5xx, no broken stream, no other status
    for r in answered:
        if r["status"] >= 500 or r["status"] not in (200, 429) or (r["status"] == 200 and r["error"]):
            found.fail(f"{r['id']} ({r['kind']} via {r['gateway']}): status {r['status']} {r['error']}")

    # drops and refusals only at the killed replica: a request whose time [sent, ended] spans the kill, or
    # overlaps the time it was down (on a loaded machine a client thread may wait long between the two)
    # (in flight at the kill, or sent on a kept-alive connection to the replica that had died)
    for r in dropped:
        if kill is None or r["gateway"] != kill.gateway or not (r["sent"] <= kill.back and r["ended"] >= kill.at):
            found.fail(f"{r['id']} dropped away from the kill ({r['gateway']}, sent {r['sent']:.3f}): {r['error']}")
    for r in refused:
        if kill is None or r["gateway"] != kill.gateway or not (r["sent"] <= kill.back and r["ended"] >= kill.at):
            found.fail(f"{r['id']} refused while its replica was up ({r['gateway']}, sent {r['sent']:.3f}): "
                       f"{r['error']}")

    # one usage row per answered request, with its status; rows beyond those only for dropped requests
    missing = [r for r in answered if r["id"] not in rows]
    lost = [r for r in missing if kill is not None and r["gateway"] == kill.gateway
            and kill.at - tick_s - 0.1 <= r["ended"] <= kill.at + 0.1 and not strict]
    found.lost = [f"{r['id']} ({r['kind']}, {r['status']}): the client read its end {_when(r['ended'], kill.at)} the "
                  "SIGKILL was sent" for r in lost if kill is not None]
    missing = [r for r in missing if r not in lost]
    for r in missing[:10]:
        found.fail(f"{r['id']} ({r['kind']}, {r['status']} via {r['gateway']}, ended {r['ended']:.3f}) has no row")
    if len(missing) > 10:
        found.fail(f"... {len(missing)} answered requests have no usage row")
    for r in answered:
        row = rows.get(r["id"])
        if row is not None and row["status"] != r["status"]:
            found.fail(f"{r['id']}: the client got {r['status']}, its row says {row['status']}")
    known = {r["id"] for r in records}
    dropped_ids = {r["id"] for r in dropped}
    strays = [i for i in rows if i not in known]
    if strays:
        found.fail(f"{len(strays)} rows match no request sent: {strays[:5]}")
    found.counts["rows of dropped"] = sum(1 for i in rows if i in dropped_ids)
    found.counts["rows of answered"] = len(answered) - len(missing) - len(lost)
    found.counts["rows lost at the kill"] = len(lost)

    for secret, spec in keys.items():
        mine = [r for r in records if r["key"] == secret]
        if not mine:
            continue
        ok = [r for r in mine if r["outcome"] == "answered" and r["status"] == 200]
        limited = sum(1 for r in mine if r["outcome"] == "answered" and r["status"] == 429)
        lost = sum(1 for r in mine if r["outcome"] == "dropped")
        span = max(r["ended"] for r in mine) - min(r["sent"] for r in mine)
        first = min(r["sent"] for r in mine)
        common = dict(key=spec["name"], sent=len(mine), limited=limited, dropped=lost)
        if "rpm" in spec:
            limit = spec["rpm"]
            allowance = gcra_allowance(limit, max(r["ended"] for r in ok) - first) if ok else limit
            over, where = worst_subwindow([(r["sent"], r["ended"], 1.0) for r in ok], limit,
                                          math.ceil(limit / 100))
            good = len(ok) <= allowance + EPS and over <= EPS and limited > 0
            note = "" if over <= EPS else f"sub-window over by {over:g}: {where}"
            found.limits.append(LimitRow(limit=f"rpm = {limit}", admitted=len(ok), allowance=allowance, ok=good,
                                         note=note, **common))
        if "tpm" in spec:
            limit = spec["tpm"]
            tokens = sum(_tokens(rows.get(r["id"])) for r in ok)
            allowance = gcra_allowance(limit, max(r["ended"] for r in ok) - first) if ok else limit
            good = tokens <= allowance + EPS and limited > 0
            found.limits.append(LimitRow(limit=f"tpm = {limit}", admitted=tokens, allowance=allowance, ok=good,
                                         note="tokens (prompt + completion) of the answered rows", **common))
        if "budget_usd" in spec:
            limit = spec["budget_usd"]
            spent = sum((rows.get(r["id"]) or {}).get("cost_usd") or 0.0 for r in ok)
            good = spent <= limit + EPS and limited > 0
            found.limits.append(LimitRow(limit=f"budget_usd = {limit:g} (total)", admitted=round(spent, 6),
                                         allowance=limit, ok=good, note="USD of the answered rows", **common))
        for row in found.limits[-1:]:
            if not row.ok:
                found.fail(f"key {row.key} {row.limit}: admitted {row.admitted:g} of allowance {row.allowance:g}, "
                           f"{row.limited} refused in a span of {span:.1f} s {row.note}")
    return found


def _tokens(row: dict[str, Any] | None) -> int:
    return 0 if row is None else int(row["prompt_tokens"]) + int(row["completion_tokens"])


def _when(t: float, at: float) -> str:
    ms = (t - at) * 1000
    return f"{-ms:.0f} ms before" if ms < 0 else f"{ms:.0f} ms after"
