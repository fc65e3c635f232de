"""Where entries live: the interface both backends implement, and the in-memory LRU bounded by bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

ENTRY_OVERHEAD = 160  # bytes the dict slot, tuple and key string cost beyond the value itself


@dataclass(slots=True)
class Stats:
    backend: str
    entries: int
    bytes: int
    max_bytes: int | None


class CacheStore(Protocol):
    """Entries by key; an entry belongs to one alias (for clearing) and expires after its TTL."""

    remote: bool

    async def get(self, key: str) -> bytes | None:
        """The entry's bytes; raises when the store cannot be reached (the request then bypasses)."""
        ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set(self, key: str, alias: str, value: bytes, ttl_s: float) -> None: ...

    async def set_many(self, items: list[tuple[str, bytes]], alias: str, ttl_s: float) -> None:
        """Several entries of one alias at once (an embeddings batch's new items)."""
        ...

    async def clear(self, alias: str | None) -> int:
        """Drop every entry, or one alias's; how many were dropped."""
        ...

    async def stats(self) -> Stats: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """One replica's LRU: past ``max_bytes`` the least recently used entries go first; expired ones
    go when next read (or when evicted), so memory stays within the bound either way."""

    remote = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, tuple[bytes, float, str]] = OrderedDict()  # value, expires, alias

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return entry[0]

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get_now(k) for k in keys]

    async def set(self, key: str, alias: str, value: bytes, ttl_s: float) -> None:
        size = len(value) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        self.entries[key] = (value, time.monotonic() + ttl_s, alias)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    async def set_many(self, items: list[tuple[str, bytes]], alias: str, ttl_s: float) -> None:
        for key, value in items:
            await self.set(key, alias, value, ttl_s)

    def _drop(self, key: str) -> None:
        value, _, _ = self.entries.pop(key)
        self.bytes -= len(value) + len(key) + ENTRY_OVERHEAD

    async def clear(self, alias: str | None) -> int:
        doomed = [k for k, e in self.entries.items() if alias is None or e[2] == alias]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def stats(self) -> Stats:
        return Stats("memory", len(self.entries), self.bytes, self.max_bytes)

    async def aclose(self) -> None:
        self.entries.clear()
        self.bytes = 0
