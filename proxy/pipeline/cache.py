"""The cache stage: an answer served without calling an upstream, and answers kept for later requests.

The response cache (proxy.cache) implements ``Cache``; without a ``[cache]`` backend, ``NoCache``
never has an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from adapters.base import Reply
from proxy.pipeline.stream import StreamTap
from proxy.pipeline.transaction import StreamAnswer, Transaction

StreamEnd = Callable[[Transaction, int, str | None], Awaitable[None]]


class Cache(Protocol):
    async def lookup(self, tx: Transaction) -> Reply | None:
        """A stored answer for this request (after limits, before dispatch), or None to call upstream."""
        ...

    async def store(self, tx: Transaction) -> None:
        """After every whole answer: keep ``tx.outcome.reply`` for later requests if this one may be
        cached (``tx.outcome`` is None when the answer came from the cache itself)."""
        ...

    def replay(self, tx: Transaction, on_end: StreamEnd) -> StreamAnswer:
        """A stream request's hit (``tx.cached``), sent as the chunks a stream would have had."""
        ...

    def tap(self, tx: Transaction) -> StreamTap | None:
        """What sees a stream request's miss as it is relayed, to keep it once it completes; None: nothing."""
        ...


class NoCache:
    async def lookup(self, tx: Transaction) -> Reply | None:
        return None

    async def store(self, tx: Transaction) -> None:
        return None

    def replay(self, tx: Transaction, on_end: StreamEnd) -> StreamAnswer:
        raise AssertionError("NoCache has no hits to replay")

    def tap(self, tx: Transaction) -> StreamTap | None:
        return None
