"""Clears of an in-memory cache that reach every worker of ``gateway serve --workers N``.

Each worker has its own memory cache, and DELETE /admin/cache reaches one of them. That worker appends
the order to a file in the directory the workers share (``$GATEWAY_METRICS_DIR``, made by the
supervisor), and every worker reads the orders it has not seen every ``POLL_S``: a clear reaches the
other workers within that time. One line per order, written with O_APPEND (atomic for a short line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

log = logging.getLogger("gateway.cache")

ORDERS_FILE = "cache-clears.jsonl"
POLL_S = 0.25


class ClearOrders:
    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / ORDERS_FILE
        self.offset = self._size()  # earlier orders are moot: this worker's cache started empty
        self.poller: asyncio.Task[None] | None = None

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def announce(self, alias: str | None) -> None:
        """Tell the other workers to clear ``alias`` (None: everything)."""
        line = orjson.dumps({"pid": os.getpid(), "alias": alias}) + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cache clear not passed to the other workers: %s: %s", self.path, exc)

    def unseen(self) -> list[str | None]:
        """The aliases (None: everything) other workers cleared since the last call."""
        size = self._size()
        if size <= self.offset:
            return []
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read(size - self.offset)
        except OSError:
            return []
        whole = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += whole
        out: list[str | None] = []
        for line in data[:whole].splitlines():
            try:
                order = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(order, dict) and order.get("pid") != os.getpid():
                alias = order.get("alias")
                out.append(alias if isinstance(alias, str) else None)
        return out

    def start(self, clear_here: Callable[[str | None], Awaitable[int]]) -> None:
        self.poller = asyncio.ensure_future(self._poll(clear_here))

    async def _poll(self, clear_here: Callable[[str | None], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for alias in self.unseen():
                with contextlib.suppress(Exception):
                    await clear_here(alias)

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
