"""The cache stage: an answer served without calling an upstream, and answers kept for later requests.

The response cache (a later issue) implements ``Cache``; until then ``NoCache`` never has an answer.
"""

from __future__ import annotations

from typing import Protocol

from adapters.base import Reply
from proxy.pipeline.transaction import Transaction


class Cache(Protocol):
    async def lookup(self, tx: Transaction) -> Reply | None:
        """A stored answer for this request (after limits, before dispatch), or None to call upstream."""
        ...

    async def store(self, tx: Transaction) -> None:
        """After every whole answer: keep ``tx.outcome.reply`` for later requests if this one may be
        cached (``tx.outcome`` is None when the answer came from the cache itself)."""
        ...


class NoCache:
    async def lookup(self, tx: Transaction) -> Reply | None:
        return None

    async def store(self, tx: Transaction) -> None:
        return None
