"""The checks a request must pass, what passing them yields, and the pure arithmetic both stores share."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from proxy.settings import KeyConfig

WINDOW_S = 60.0  # rpm and tpm: a limit of N per minute refills over this window
GCRA_SLACK_S = 1e-9  # float noise allowed past the window before a request is refused
BUDGET_SLACK_USD = 1e-12  # float noise allowed past a budget before a request is refused
PARALLEL_SLOT_TTL_S = 6.0  # a max_parallel slot not renewed for this long is dropped: a dead replica's slots free
PARALLEL_RENEW_S = 2.0  # each replica renews the slots of its running requests this often, in one batch
PARALLEL_HOLD_MAX_S = 600.0  # a slot held this long (a request never settled) is no longer renewed
PARALLEL_RETRY_S = 1.0  # the retry-after of a request refused for max_parallel
# A check's kind, limit and ttl as bytes, encoded once: the Redis client sends bytes as they are.
Encoded = tuple[bytes, ...]
PREFIX = "{llm-gateway}:"  # one hash tag: every key of one script lands in one Redis Cluster slot

REQUESTS_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKENS_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


@dataclass(slots=True)
class Check:
    scope: str  # key | model | global | user | parallel | budget | user_budget
    kind: str  # gcra | parallel | budget
    key: str
    limit: float
    amount: float
    unit: str  # requests | tokens | usd
    ttl_s: float = 0.0  # budget: seconds until the period ends (0 = never); parallel: how long a slot stays
    wire: Encoded | None = None  # kind, limit and ttl as the Redis script takes them, for checks reused by requests


@dataclass(slots=True)
class Plan:
    """A request's checks, ready to admit from leases or to send to the store."""

    checks: list[Check]
    tokens: int
    cost: float
    request_id: str
    leasable: bool = False  # every check is an rpm/tpm one, on Redis: leases can admit it
    asks: list[float] | None = None  # per check, the lease units asked for with this request's script
    slot: Check | None = None  # its max_parallel check: the slot is renewed while the request runs
    owner: KeyConfig | None = None  # the key whose budget it checks: its spend is re-read if the store lost it
    end_user: str | None = None  # its end user, whose spend (user_budget_usd) is re-read the same way
    wait: asyncio.Future[None] | None = None  # a lease grant on its way that may bring room for it


@dataclass(slots=True)
class Denial:
    check: Check
    retry_after_s: float


@dataclass(slots=True)
class Ticket:
    request_id: str
    checks: list[Check]
    results: list[float]  # per check: what remains of its limit after this request, then seconds to its reset
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    settled: bool = False

    def headers(self, out: dict[str, str] | None = None) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers from the tightest rpm and the tightest tpm check (the first on a
        tie), found in one pass, added to ``out`` (the response's headers) or a new dict: this runs on
        every limited request's path."""
        results = self.results
        requests = tokens = -1  # the index of each unit's tightest check
        for i, check in enumerate(self.checks):
            if check.kind == "gcra":
                if check.unit == "requests":
                    if requests < 0 or results[2 * i] < results[2 * requests]:
                        requests = i
                elif tokens < 0 or results[2 * i] < results[2 * tokens]:
                    tokens = i
        if out is None:
            out = {}
        for i, (limit_name, remaining_name, reset_name) in ((requests, REQUESTS_HEADERS), (tokens, TOKENS_HEADERS)):
            if i >= 0:
                remaining = int(results[2 * i] + 1e-9)  # the floor, for what is shown (never below 0)
                out[limit_name] = str(int(self.checks[i].limit))
                out[remaining_name] = str(remaining) if remaining > 0 else "0"
                out[reset_name] = duration(results[2 * i + 1])
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1.5s; under a minute, to the millisecond."""
    if seconds < 60:
        return _short_duration(int(seconds * 1000 + 0.5) if seconds > 0 else 0)
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest}s"


@functools.cache  # at most 60,000 short strings; formatting costs several times a lookup, twice per request
def _short_duration(ms: int) -> str:
    whole, part = divmod(ms, 1000)
    return f"{whole}.{part:03d}".rstrip("0") + "s" if part else f"{whole}s"


def period_of(period: str, now: datetime) -> tuple[str, datetime | None, float]:
    """(id, start, seconds until the next period) for a budget period at ``now`` (UTC)."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y-%m-%d"), start, 86400 - (now - start).total_seconds()
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start.strftime("m%Y-%m"), start, (nxt - now).total_seconds()
    return "total", None, 0.0


def gcra_retry(check: Check, wait: float) -> float:
    """Seconds until a refused rpm/tpm request would pass: a request larger than the whole window can
    never pass, so it is told a full window."""
    return WINDOW_S if check.amount > check.limit else wait


def all_gcra(checks: list[Check]) -> bool:
    for check in checks:  # a loop, not all(genexpr): it runs once per request
        if check.kind != "gcra":
            return False
    return bool(checks)
