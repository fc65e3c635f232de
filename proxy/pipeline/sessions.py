"""The sessions stage: a chat request that names a session (``session_id`` in the body, or the
``x-gateway-session-id`` header) gets the session's stored history before it is parsed (so token
estimates and limits see it), and its new messages and the answer are kept once it is answered.

proxy.console.stage implements ``Sessions`` over the ledger's database; without it, ``NoSessions``
refuses a request that names a session rather than forwarding the name to a provider.
"""

from __future__ import annotations

from typing import Protocol

from proxy.errors import bad_request
from proxy.pipeline.stream import StreamTap
from proxy.pipeline.transaction import Transaction

SESSION_HEADER = "x-gateway-session-id"


class Sessions(Protocol):
    async def open(self, tx: Transaction, header: str | None) -> None:
        """Before parse: the named session's history into ``tx.body`` (404 if the key has no such session)."""
        ...

    async def record(self, tx: Transaction) -> None:
        """After a whole answer: the request's new messages and the answer appended to its session."""
        ...

    def tap(self, tx: Transaction) -> StreamTap | None:
        """What sees a stream that belongs to a session, to append it once it completes; None: nothing."""
        ...


class NoSessions:
    async def open(self, tx: Transaction, header: str | None) -> None:
        if header is not None or (tx.body is not None and "session_id" in tx.body):
            raise bad_request("sessions are not available here", param="session_id")

    async def record(self, tx: Transaction) -> None:
        return None

    def tap(self, tx: Transaction) -> StreamTap | None:
        return None


class BothTaps:
    """Two taps fed the same stream (the response cache's and the session's)."""

    def __init__(self, first: StreamTap, second: StreamTap) -> None:
        self.first, self.second = first, second

    def feed(self, data: bytes) -> None:
        self.first.feed(data)
        self.second.feed(data)

    async def ended(self, completed: bool) -> None:
        try:
            await self.first.ended(completed)
        finally:
            await self.second.ended(completed)


def taps(first: StreamTap | None, second: StreamTap | None) -> StreamTap | None:
    if first is None or second is None:
        return first or second
    return BothTaps(first, second)
