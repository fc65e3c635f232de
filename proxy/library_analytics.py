"""``Gateway.analytics``: the usage ledger summed up, as ``GET /v1/usage`` reads it (proxy.usage_api)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.storage import ReportRow, total_of
from proxy.usage_api import since_range

# How long a summary waits for the rows of requests already answered to reach the database.
FLUSH_WAIT_S = 5.0


@dataclass(slots=True)
class ProviderStats:
    name: str
    requests: int
    error_rate: float  # share of the provider's requests that failed (status >= 400)


@dataclass(slots=True)
class Summary:
    period: str
    total_requests: int
    total_cost: float  # USD of the priced requests
    avg_latency_ms: float
    cache_hit_rate: float
    by_provider: list[ProviderStats] = field(default_factory=list)


class Analytics:
    """Runs its queries on the gateway's event loop through ``run`` (the Gateway's sync bridge)."""

    def __init__(self, ledger: Callable[[], Any], run: Callable[[Awaitable[Any]], Any],
                 arun: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        self._ledger = ledger
        self._run = run
        self._arun = arun

    def summary(self, period: str = "24h") -> Summary:
        """Totals over the last ``period`` ("30m", "24h", "7d", "2w"), rows of answered requests included."""
        start, end = since_range(period)  # checked here: a bad period is a ValueError-like 400 at once
        return self._run(self._summary(period, start, end))

    async def asummary(self, period: str = "24h") -> Summary:
        start, end = since_range(period)
        return await self._arun(self._summary(period, start, end))

    async def _summary(self, period: str, start: Any, end: Any) -> Summary:
        ledger = self._ledger()
        deadline = time.monotonic() + FLUSH_WAIT_S
        with contextlib.suppress(TimeoutError):  # rows past the journal are queued: queue_depth sees them
            async with asyncio.timeout(FLUSH_WAIT_S):
                await ledger.durable()
        while ledger.queue_depth and time.monotonic() < deadline:  # noqa: ASYNC110 - the ledger has no event for it
            await asyncio.sleep(0.02)
        total = total_of(await ledger.store.report(start, end, None))
        providers = await ledger.store.report(start, end, "provider")
        return Summary(
            period=period, total_requests=total.requests, total_cost=round(total.cost_usd or 0.0, 10),
            avg_latency_ms=total.avg_latency_ms, cache_hit_rate=total.cache_hit_rate,
            # rows with no provider were refused before any upstream was chosen: not a provider's numbers
            by_provider=[_provider(r) for r in sorted(providers, key=lambda r: (-r.requests, r.group or ""))
                         if r.group],
        )


def _provider(row: ReportRow) -> ProviderStats:
    return ProviderStats(row.group or "", row.requests, round(row.errors / row.requests, 6) if row.requests else 0.0)
