"""Single flight: while one request for a key is calling its upstream, identical ones wait for its answer.

Per replica. The first miss for a key leads; the others wait up to ``wait_s`` for the entry it stores,
and call the upstream themselves if it stores none (it failed, or its answer may not be kept) or
takes longer. A leader always ends its flight: when it stores, and at the latest when its task ends.
"""

from __future__ import annotations

import asyncio
import contextlib


class Flights:
    def __init__(self) -> None:
        self.inflight: dict[str, asyncio.Future[bytes | None]] = {}

    def lead(self, key: str) -> asyncio.Future[bytes | None] | None:
        """This request's own flight if it is the first for ``key``; None if another one leads."""
        if key in self.inflight:
            return None
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        task = asyncio.current_task()
        if task is not None:  # however the request ends, its followers are let go
            task.add_done_callback(lambda _: self.land(key, future, None))
        return future

    async def follow(self, key: str, wait_s: float) -> bytes | None:
        """The leader's stored entry, or None (no leader, none stored, or not within ``wait_s``)."""
        future = self.inflight.get(key)
        if future is None or wait_s <= 0:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        return None

    def land(self, key: str, future: asyncio.Future[bytes | None], data: bytes | None) -> None:
        if not future.done():
            future.set_result(data)
        if self.inflight.get(key) is future:
            del self.inflight[key]
