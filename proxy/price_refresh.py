"""Prices that stay current: OpenRouter's price list fetched every ``[storage] prices_refresh_hours``
(and on ``POST /admin/prices/refresh``), applied to the running config in place, with no restart or
reload, each refresh logged with what changed. Explicit prices in gateway.toml always win; the
refreshed table comes before the prices file and the shipped table (proxy.prices.apply_tables).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from proxy.prices import apply_tables, default_prices, load_prices, parse_openrouter, write_prices

if TYPE_CHECKING:
    from proxy.prices import PriceChange
    from proxy.runtime import Runtime
    from proxy.settings import Config

log = logging.getLogger("gateway.prices")
FETCH_TIMEOUT_S = 30.0
MAX_LOGGED = 50  # change lines per refresh; the rest are counted


class PriceRefresher:
    """App-level (it outlives reloads): the latest fetched table, applied to every Runtime."""

    def __init__(self, config: Config) -> None:
        self.hours = config.storage.prices_refresh_hours
        self.url = config.storage.prices_refresh_url.rstrip("/") + "/api/v1/models"
        self.prices_file = config.storage.prices_file
        self.table: dict[str, dict[str, Any]] | None = None
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    def apply(self, runtime: Runtime) -> list[PriceChange]:
        """The tables in their order onto ``runtime``'s targets (a reload's new Runtime too)."""
        tables = [self.table] if self.table is not None else []
        if self.prices_file:
            try:
                tables.append(load_prices(self.prices_file))
            except (OSError, ValueError):
                pass  # missing or broken: the config check reported it at start
        tables.append(default_prices())
        return apply_tables(runtime.config.models, runtime.config.providers, tables)

    async def refresh(self, runtime: Callable[[], Runtime]) -> dict[str, Any]:
        """Fetch, apply, log; what changed. Raises on a failed fetch (the running prices stay)."""
        async with self.lock:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
                resp = await client.get(self.url, headers={"accept": "application/json"})
            if resp.status_code != 200:
                raise ValueError(f"GET {self.url} answered {resp.status_code}")
            self.table = parse_openrouter(orjson.loads(resp.content))
            changes = self.apply(runtime())
            if self.prices_file:  # a restart (or another replica's reload) starts from these prices too
                await asyncio.to_thread(write_prices, self.prices_file, self.table, "openrouter")
        log.info("prices refreshed from %s: %d models, %d target prices changed", self.url, len(self.table),
                 len(changes))
        for change in changes[:MAX_LOGGED]:
            log.info("price changed: %s", change)
        if len(changes) > MAX_LOGGED:
            log.info("... and %d more price changes", len(changes) - MAX_LOGGED)
        return {"object": "prices.refresh", "source": self.url, "models": len(self.table),
                "changed": [asdict(c) for c in changes]}

    def start(self, runtime: Callable[[], Runtime]) -> None:
        if self.hours > 0:
            self.task = asyncio.create_task(self._every(runtime))

    async def _every(self, runtime: Callable[[], Runtime]) -> None:
        while True:
            try:
                await self.refresh(runtime)
            except Exception as exc:  # the running prices stay; the next period tries again
                log.warning("price refresh from %s failed (%s: %s); next try in %g h", self.url,
                            type(exc).__name__, exc, self.hours)
            await asyncio.sleep(self.hours * 3600)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
