"""Budgets start from the usage ledger: each budgeted key's spend so far in its current period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from proxy.limits.checks import period_of
from proxy.limits.limiter import Limits
from proxy.settings import Config, KeyConfig
from proxy.storage import open_store, redact

log = logging.getLogger("gateway.limits")

SEED_TIMEOUT_S = 5.0  # the gateway starts without the ledger's figures rather than wait longer


async def seed_budgets(config: Config, limits: Limits, keys: list[KeyConfig]) -> None:
    """Read each budgeted key's spend in its current period from the ledger and seed the store with it."""
    budgeted = [k for k in keys if k.budget_usd is not None]
    if not budgeted:
        return
    store = open_store(config.storage.database_url)
    now = datetime.now(UTC)
    spend: dict[str, float] = {}
    try:
        async with asyncio.timeout(SEED_TIMEOUT_S):
            await store.open()
            await store.migrate()
            for key in budgeted:
                _, start, _ = period_of(key.budget_period, now)
                rows = await store.report(start or datetime(1970, 1, 1, tzinfo=UTC), now, "key")
                spend[key.name] = next((r.cost_usd or 0.0 for r in rows if r.group == key.name), 0.0)
    except Exception as exc:  # the gateway still starts; budgets count from zero until seeded
        log.warning("could not read spend so far from %s for budgets: %s", redact(store.url), exc)
        return
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    await limits.seed_budgets(spend, budgeted)
