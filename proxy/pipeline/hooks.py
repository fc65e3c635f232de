"""The hooks stages: code that sees each request before limits and each answer before accounting.

Guardrails (proxy.guardrails, configured as [[guardrails]]) and user middleware plug in here; without
any, ``NoHooks`` lets every request through unchanged at no cost. A hook may change ``tx.request.body``
before the request is sent, change ``tx.outcome.reply.body`` (a whole answer, OpenAI JSON) before it is
sent, set ``tx.stream_filter`` to see a stream's bytes on their way out, or refuse the request by raising
``GatewayError`` (answered to the client, and the row records it). ``HookChain`` runs several in order.
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


class HookChain:
    """Several hooks as one: ``before_request`` in the order given, ``after_response`` in the same order."""

    def __init__(self, *hooks: Hooks) -> None:
        self.hooks = hooks

    async def before_request(self, tx: Transaction) -> None:
        for hook in self.hooks:
            await hook.before_request(tx)

    async def after_response(self, tx: Transaction) -> None:
        for hook in self.hooks:
            await hook.after_response(tx)
