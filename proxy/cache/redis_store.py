"""Entries in Redis ([storage] redis_url), shared by every replica; Redis evicts and expires them.

Entries are ``gateway:cache:e:<sha256>``, each with a marker ``gateway:cache:a:<alias>:<sha256>``
so that one alias's entries can be cleared by a SCAN.
A failed call opens a short circuit: for ``COOLDOWN_S`` requests bypass the cache at once rather
than each waiting for a timeout from a Redis that is down.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.cache.store import Stats
from proxy.redis_client import RedisClient, RedisTLS

PREFIX = "gateway:cache:"
TIMEOUT_S = 0.5
COOLDOWN_S = 1.0


class RedisUnavailable(Exception):
    """The cache's Redis failed recently: bypass without trying (and without a log line each time)."""

    quiet = True


class RedisStore:
    remote = True

    def __init__(self, url: str, tls: RedisTLS | None = None) -> None:
        # The limits' client class: rediss (with [storage] redis_* files), unix, ACL, Sentinel and Cluster.
        self.redis = RedisClient(url, tls)
        self.down_until = 0.0

    @staticmethod
    def _key(key: str) -> str:
        return f"{PREFIX}e:{key}"

    async def _call(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        """``op`` on the connected redis-py client; any failure opens the short circuit."""
        if time.monotonic() < self.down_until:
            raise RedisUnavailable("the cache's Redis failed within the last second")
        try:
            return await op(await self.redis.connection())
        except Exception:
            self.down_until = time.monotonic() + COOLDOWN_S
            raise

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda c: c.get(self._key(key)))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        names = [self._key(k) for k in keys]
        # Entries live in many slots of a cluster: mget_nonatomic splits the call by node.
        return list(await self._call(lambda c: c.mget_nonatomic(names) if self.redis.cluster else c.mget(names)))

    async def set(self, key: str, alias: str, value: bytes, ttl_s: float) -> None:
        await self.set_many([(key, value)], alias, ttl_s)

    async def set_many(self, items: list[tuple[str, bytes]], alias: str, ttl_s: float) -> None:
        # A marker key with the alias in its name, so that clearing one alias finds its entries by a SCAN.
        px = max(1, int(ttl_s * 1000))

        def run(client: Any) -> Awaitable[Any]:
            pipe = client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(self._key(key), value, px=px)
                pipe.set(f"{PREFIX}a:{alias}:{key}", b"", px=px)
            return pipe.execute()

        await self._call(run)

    async def vectors(self, bucket: str, count: int) -> list[bytes]:
        """Semantic mode: a bucket's newest packed vectors (proxy.cache.semantic)."""
        return list(await self._call(lambda c: c.lrange(f"{PREFIX}v:{bucket}", 0, count - 1)))

    async def add_vector(self, bucket: str, packed: bytes, count: int, ttl_s: float) -> None:
        name = f"{PREFIX}v:{bucket}"

        def run(client: Any) -> Awaitable[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.lpush(name, packed)
            pipe.ltrim(name, 0, count - 1)
            pipe.pexpire(name, max(1, int(ttl_s * 1000)))
            return pipe.execute()

        await self._call(run)

    async def clear(self, alias: str | None) -> int:
        """Every entry (and marker) under the prefix, or one alias's entries through their markers."""
        pattern = f"{PREFIX}a:{alias}:*" if alias is not None else f"{PREFIX}*"
        dropped = 0
        batch: list[str] = []
        async for raw in (await self.redis.connection()).scan_iter(match=pattern, count=1000):
            name = raw.decode() if isinstance(raw, bytes) else raw
            if alias is not None:
                batch += [name, self._key(name.rsplit(":", 1)[1])]
            else:
                batch.append(name)
                dropped += name.startswith(f"{PREFIX}e:")
            if len(batch) >= 1000:
                dropped += await self._drop(batch, alias)
                batch = []
        if batch:
            dropped += await self._drop(batch, alias)
        return dropped

    async def _drop(self, names: list[str], alias: str | None) -> int:
        deleted = int(await (await self.redis.connection()).delete(*names))
        return deleted // 2 if alias is not None else 0

    async def stats(self) -> Stats:
        entries = 0
        async for _ in (await self.redis.connection()).scan_iter(match=f"{PREFIX}e:*", count=1000):
            entries += 1
        return Stats("redis", entries, 0, None)

    async def aclose(self) -> None:
        await self.redis.aclose()
