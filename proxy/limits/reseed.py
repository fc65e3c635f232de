"""Budgets whose spend the store does not hold (lost with Redis's data by a restart without
persistence, FLUSHDB or an eviction; or a new period): their spend is read again from the usage ledger
before the request is checked, once per key at a time on each replica, and written with SET NX so
replicas that race never count it twice.

The ledger's database holds the rows written so far: rows still queued on a replica (normally those
of its last ``flush_interval_ms``; during a database outage every queued or spilled row), and requests
in flight when the data was lost, are not in the re-read spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from proxy.limits.checks import Check, period_of
from proxy.limits.outage import Outage
from proxy.limits.store import Backend
from proxy.settings import KeyConfig
from proxy.storage import open_store, redact, total_of

SEED_TIMEOUT_S = 5.0  # a spend the ledger cannot give within this long is treated as unavailable
RESEED_RETRY_S = 5.0  # after a failed re-read, a key's requests follow on_store_error this long before another try
CLOCK_SKEW_S = 60.0  # rows stamped this far ahead of this replica's clock still count

# A key's spend so far in its current budget period, or one end user's within it:
# (key name, budget period, end user or None) -> USD.
SpendSource = Callable[[str, str, str | None], Awaitable[float]]


class LedgerSpend:
    """A SpendSource reading the usage ledger's database: one query per call."""

    __slots__ = ("url",)

    def __init__(self, database_url: str) -> None:
        self.url = database_url

    async def __call__(self, key_name: str, period: str, end_user: str | None = None) -> float:
        now = datetime.now(UTC)
        _, start, _ = period_of(period, now)
        store = open_store(self.url)
        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                await store.open()
                await store.migrate()
                group = None if end_user is None else "end_user"
                rows = await store.report(start or datetime(1970, 1, 1, tzinfo=UTC),
                                          now + timedelta(seconds=CLOCK_SKEW_S), group, key_name)
        finally:
            with contextlib.suppress(Exception):
                await store.close()
        if end_user is not None:
            return next((r.cost_usd or 0.0 for r in rows if r.group == end_user), 0.0)
        return total_of(rows).cost_usd or 0.0

    def __repr__(self) -> str:
        return f"LedgerSpend({redact(self.url)})"


class Reseeder:
    """Re-reads budgets' spend into the store: single-flight per store key, backing off after a failure."""

    __slots__ = ("backend", "outage", "pending", "retry_at", "spend")

    def __init__(self, backend: Backend, spend: SpendSource | None) -> None:
        self.backend = backend
        self.spend = spend  # None: no ledger (tests, embedded use): a lost spend starts again at 0
        self.pending: dict[str, asyncio.Future[bool]] = {}
        self.retry_at: dict[str, float] = {}  # store key -> monotonic time before which no new try is made
        self.outage = Outage("usage database (budget spend)")

    async def reseed(self, check: Check, owner: KeyConfig, end_user: str | None = None) -> bool:
        """Whether the budget's spend is in the store now (seeded here, or by another replica); False
        while the ledger cannot give it. Raises StoreUnavailable when the store itself failed."""
        key = check.key
        if self.retry_at and time.monotonic() < self.retry_at.get(key, 0.0):
            return False
        future = self.pending.get(key)
        if future is None:
            future = self.pending[key] = asyncio.ensure_future(self._seed(check, owner, end_user))
            future.add_done_callback(lambda _: self.pending.pop(key, None))
        return await asyncio.shield(future)

    async def _seed(self, check: Check, owner: KeyConfig, end_user: str | None) -> bool:
        try:
            value = 0.0 if self.spend is None else await self.spend(owner.name, owner.budget_period, end_user)
        except Exception as exc:  # the database is down or slow: on_store_error applies for a while
            self.retry_at[check.key] = time.monotonic() + RESEED_RETRY_S
            self.outage.failed(f"{type(exc).__name__}: {exc}", f"re-reading the spend of key {owner.name}")
            return False
        self.retry_at.pop(check.key, None)
        self.outage.recovered()
        await self.backend.seed(check.key, value, check.ttl_s)  # StoreUnavailable: the caller's to handle
        return True
