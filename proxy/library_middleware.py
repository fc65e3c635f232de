"""``Gateway.add_middleware``: user objects with ``pre_request(request)`` / ``post_response(response)``
run as the pipeline's hooks stages (proxy.pipeline.hooks), so they see library and server requests alike.

``pre_request`` gets the request body as an OpenAI-format dict (Anthropic and Responses requests as the
chat request they were read as); it may change it in place or return a new dict, and refuses the
request by raising ``GatewayAPIError`` (or proxy.errors.GatewayError). ``post_response`` gets a
``ChatResponse`` (``EmbeddingsResponse`` for embeddings) over the answer before it is accounted and
sent; a changed (or returned) ``raw`` dict replaces the answer. A stream's ``post_response`` runs when
it ends, with an empty ``raw``: its bytes have already been sent. Either method may be a coroutine.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import orjson

from proxy.errors import GatewayError
from proxy.library_types import ChatResponse, EmbeddingsResponse, GatewayAPIError
from proxy.pipeline.hooks import Hooks
from proxy.pipeline.transaction import Transaction


class MiddlewareHooks:
    """The pipeline's ``Hooks``: the hooks it had before (guardrails), then each middleware in order."""

    def __init__(self, inner: Hooks, middleware: list[Any]) -> None:
        self.inner = inner
        self.middleware = middleware  # shared with the Gateway: later add_middleware calls apply at once

    async def before_request(self, tx: Transaction) -> None:
        await self.inner.before_request(tx)
        assert tx.request is not None
        for obj in self.middleware:
            method = getattr(obj, "pre_request", None)
            if method is None:
                continue
            replaced = await _call(method, tx.request.body)
            if isinstance(replaced, dict):
                tx.request.body = replaced

    async def after_response(self, tx: Transaction) -> None:
        reply = tx.outcome.reply if tx.outcome is not None and tx.outcome.reply is not None else tx.cached
        raw: dict[str, Any] = orjson.loads(reply.body) if reply is not None and not _streamed(tx) else {}
        before = orjson.dumps(raw)
        headers = dict(tx.headers)  # the cost and provider headers are set later, by accounting
        if tx.outcome is not None:
            headers["x-gateway-provider"] = tx.outcome.upstream.provider.name
        view = EmbeddingsResponse(raw, headers) if tx.endpoint == "embeddings" else ChatResponse(raw, headers)
        for obj in self.middleware:
            method = getattr(obj, "post_response", None)
            if method is not None:
                replaced = await _call(method, view)
                if isinstance(replaced, dict):
                    view.raw = replaced
        if reply is not None and raw and orjson.dumps(view.raw) != before:
            changed = dataclasses.replace(reply, body=orjson.dumps(view.raw))
            if tx.outcome is not None and tx.outcome.reply is not None:
                tx.outcome.reply = changed
            else:
                tx.cached = changed
        await self.inner.after_response(tx)


def _streamed(tx: Transaction) -> bool:
    return tx.request is not None and tx.request.stream


async def _call(method: Any, arg: Any) -> Any:
    try:
        result = method(arg)
        if inspect.isawaitable(result):
            result = await result
    except GatewayAPIError as e:  # refused in the library's own terms: answered as the server would
        error = e.body.get("error") or {}
        raise GatewayError(e.status_code, e.message, error.get("type") or "invalid_request_error", e.code,
                           e.param) from None
    return result


def install(runtime: Any, middleware: list[Any]) -> None:
    """Wraps ``runtime``'s pipeline hooks once; the list is read per request, so it may grow later."""
    pipeline = runtime.pipeline
    if not isinstance(pipeline.hooks, MiddlewareHooks):
        pipeline.hooks = MiddlewareHooks(pipeline.hooks, middleware)
