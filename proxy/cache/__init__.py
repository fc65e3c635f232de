"""The response cache: exact (and semantic) answers kept in memory or Redis. See README, "Response cache".

``SharedCache`` is app-level, like the ledger: its store and single flights outlive config reloads,
and each new Runtime gets a ``ResponseCache`` stage over them. Backend and size are read at start.

    module          its one job
    key             the canonical request form and its SHA-256
    store           the store interface and the in-memory LRU bounded by bytes
    redis_store     the store in Redis, shared by replicas
    entry           a stored answer's bytes
    response        the cache stage: lookups, stores, per-request control, headers, metrics
    capture         a relayed stream rebuilt as the whole answer to store
    replay          a stored answer sent as a chunk stream
    embeddings      embeddings cached per input item
    flight          identical misses wait for the first one's answer
    semantic        the nearest earlier prompt's answer, by embeddings
    clears          a memory cache's clear passed to every worker of ``--workers N``
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from proxy.cache.clears import ClearOrders
from proxy.cache.flight import Flights
from proxy.cache.semantic import SemanticIndex
from proxy.cache.store import CacheStore, MemoryStore, Stats
from proxy.observability.aggregate import METRICS_DIR_ENV

if TYPE_CHECKING:
    from proxy.runtime import Runtime
    from proxy.settings import Config

__all__ = ["SharedCache", "Stats"]


class SharedCache:
    def __init__(self, store: CacheStore | None) -> None:
        self.store = store
        self.flights = Flights()
        self.semantic: SemanticIndex | None = None
        self.orders: ClearOrders | None = None  # memory caches of several workers: clears reach them all

    @classmethod
    def from_config(cls, config: Config) -> SharedCache:
        cache = config.cache
        if cache.backend == "memory":
            shared = cls(MemoryStore(int(cache.max_size_mb * 1024 * 1024)))
            workers_dir = os.environ.get(METRICS_DIR_ENV)  # set by the supervisor of `--workers N`
            if workers_dir:
                shared.orders = ClearOrders(workers_dir)
        elif cache.backend == "redis":
            from proxy.cache.redis_store import RedisStore  # only a Redis cache loads the client
            from proxy.redis_client import RedisTLS

            storage = config.storage
            tls = RedisTLS(storage.redis_ca_file, storage.redis_client_cert, storage.redis_client_key)
            shared = cls(RedisStore(storage.redis_url, tls))
        else:
            return cls(None)
        if cache.mode == "semantic":
            shared.semantic = SemanticIndex(cache.semantic_max_entries)
        return shared

    def attach(self, runtime: Runtime) -> None:
        """The cache stage for a new Runtime (at start and after every reload)."""
        if self.store is None or not runtime.config.cache.enabled:
            return
        from proxy.cache.response import ResponseCache

        semantic = self.semantic if runtime.config.cache.mode == "semantic" else None
        runtime.pipeline.cache = ResponseCache(runtime, self.store, self.flights, semantic)

    def gauges(self) -> tuple[int, int] | None:
        """(entries, bytes) of an in-memory store, read at scrape time; None for Redis or no cache."""
        if isinstance(self.store, MemoryStore):
            return len(self.store.entries), self.store.bytes
        return None

    async def stats(self) -> Stats:
        if self.store is None:
            return Stats("off", 0, 0, None)
        return await self.store.stats()

    def start(self) -> None:
        if self.orders is not None:
            self.orders.start(self._clear_here)

    async def clear(self, alias: str | None) -> int:
        """Drop every entry, or one alias's: here, and in the other workers' memory caches too."""
        dropped = await self._clear_here(alias)
        if self.orders is not None:
            self.orders.announce(alias)
        return dropped

    async def _clear_here(self, alias: str | None) -> int:
        if self.semantic is not None and alias is None:
            self.semantic.clear()  # vectors of one alias's dropped entries just find nothing
        return 0 if self.store is None else await self.store.clear(alias)

    async def aclose(self) -> None:
        if self.orders is not None:
            self.orders.stop()
        if self.store is not None:
            await self.store.aclose()
