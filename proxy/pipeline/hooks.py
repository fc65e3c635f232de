"""The hooks stages: code that sees each request before limits and each answer before accounting.

Guardrails and user middleware plug in here (a later issue builds them); until then ``NoHooks`` lets
every request through unchanged. A hook may change ``tx.request.body`` before the request is sent,
or refuse the request by raising ``GatewayError`` (answered to the client, and the row records it).
"""

from __future__ import annotations

from typing import Protocol

from proxy.pipeline.transaction import Transaction


class Hooks(Protocol):
    async def before_request(self, tx: Transaction) -> None:
        """After the alias is resolved, before limits: ``tx.request`` and ``tx.alias`` are set."""
        ...

    async def after_response(self, tx: Transaction) -> None:
        """Once a whole answer is in (``tx.outcome.reply``), before it is accounted and sent. Streams
        call it when they end, after the client has had every byte."""
        ...


class NoHooks:
    async def before_request(self, tx: Transaction) -> None:
        return None

    async def after_response(self, tx: Transaction) -> None:
        return None
