"""Corrections after requests, batched: freed slots, real usage in place of reservations, lease give-backs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.limits.checks import Check
from proxy.limits.store import Backend, Settlement, StoreUnavailable

SETTLE_BATCH_S = 0.005  # corrections wait this long to be sent with others (one script call per batch)
SETTLE_BATCH_MAX = 500  # entries per script call


class Settlements:
    """Corrections not yet sent, and the task that sends them; runs off the request path."""

    __slots__ = ("backend", "flusher", "mirror", "on_store_error", "owed", "releases", "waiting")

    def __init__(self, backend: Backend, on_store_error: Callable[[StoreUnavailable, str], None]) -> None:
        self.backend = backend
        self.on_store_error = on_store_error
        self.releases: list[Settlement] = []  # freed concurrency slots, one per request
        # Token and budget corrections summed per store key: the script adds them, so one entry per key.
        self.owed: dict[str, tuple[Check, float]] = {}
        self.flusher: asyncio.Task[None] | None = None
        self.waiting = False  # the flusher is still waiting for its batch to fill (nothing taken yet)
        self.mirror: Callable[[Check, float], None] | None = None  # told of every correction (degraded.py's shadow)

    def release(self, check: Check, request_id: str) -> None:
        self.releases.append((check, 0.0, request_id))

    def owe(self, check: Check, delta: float) -> None:
        if self.mirror is not None:
            self.mirror(check, delta)
        seen = self.owed.get(check.key)
        self.owed[check.key] = (check, delta if seen is None else seen[1] + delta)

    def send_soon(self, urgent: bool) -> None:
        """Send what is pending: a freed slot (``urgent``) at once, corrections after a short batch."""
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush_after(0 if urgent else SETTLE_BATCH_S))

    async def _flush_after(self, delay: float) -> None:
        if delay:
            self.waiting = True
            try:
                await asyncio.sleep(delay)
            finally:
                self.waiting = False
        await self.flush()

    async def flush(self) -> None:
        while self.releases or self.owed:
            entries = self.releases + [(check, delta, "") for check, delta in self.owed.values()]
            self.releases, self.owed = [], {}
            for start in range(0, len(entries), SETTLE_BATCH_MAX):
                try:
                    await self.backend.settle(entries[start:start + SETTLE_BATCH_MAX])
                except StoreUnavailable as exc:  # logged once per outage by the caller, not per batch
                    self.on_store_error(exc, "settling")

    async def close(self) -> None:
        """At shutdown: a batch still waiting is sent now, and one being sent is waited for. Cancelling
        that one would lose it: its entries are no longer pending, and redis-py may not have written
        the call yet (it can wait on the connection first)."""
        flusher = self.flusher
        if flusher is not None and not flusher.done():
            if self.waiting:
                flusher.cancel()
            await asyncio.wait((flusher,))
        await self.flush()
