"""The sessions stage over the ledger's database (the protocol and its place: proxy.pipeline.sessions)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.base import Usage
from proxy.cache.capture import StreamCapture
from proxy.console.sessions import SessionStore
from proxy.cost import cost_usd
from proxy.errors import GatewayError, bad_request
from proxy.pipeline.stream import StreamTap
from proxy.pipeline.transaction import Transaction

log = logging.getLogger("gateway.sessions")
_NOT_STORED = ("system", "developer")  # sent with each request (the playground's system prompt), not history
MAX_CAPTURE = 16 * 1024 * 1024


@dataclass(slots=True)
class Opened:
    session_id: str
    new: list[dict[str, Any]] = field(default_factory=list)  # the request's own messages, to keep


def owner_of(tx: Transaction) -> str:
    return tx.key.name if tx.key is not None else ""


class SessionStage:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def open(self, tx: Transaction, header: str | None) -> None:
        body = tx.body
        assert body is not None
        if header is None and "session_id" not in body:
            return  # most requests: nothing more to look at
        given = body.pop("session_id", None) if "session_id" in body else header
        if given is None:
            return
        if not isinstance(given, str) or not given:
            raise bad_request("'session_id' must be a session id string", param="session_id", code="invalid_type")
        if tx.endpoint != "chat":
            raise bad_request("sessions work with /v1/chat/completions", param="session_id")
        messages = body.get("messages")
        try:
            session = await self.store.get(given, owner_of(tx))
            history = await self.store.history(session.id) if session is not None else []
        except Exception as exc:
            log.warning("sessions unavailable: %s", type(exc).__name__)
            raise GatewayError(503, "The sessions database is unavailable.", "service_unavailable_error",
                               "sessions_unavailable") from None
        if session is None:
            raise GatewayError(404, f"No session found with id '{given}'.", code="session_not_found",
                               param="session_id")
        if not isinstance(messages, list):
            return  # parse names the mistake
        system = [m for m in messages if isinstance(m, dict) and m.get("role") in _NOT_STORED]
        new = [m for m in messages if not (isinstance(m, dict) and m.get("role") in _NOT_STORED)]
        body["messages"] = system + history + new
        tx.session = Opened(session.id, new)
        tx.headers["x-gateway-session-id"] = session.id

    async def record(self, tx: Transaction) -> None:
        opened = tx.session
        if not isinstance(opened, Opened):
            return
        reply = tx.outcome.reply if tx.outcome is not None else tx.cached
        if reply is None:
            return
        answer = orjson.loads(reply.body)
        await self._keep(tx, opened, answer, reply.usage)

    def tap(self, tx: Transaction) -> StreamTap | None:
        if not isinstance(tx.session, Opened):
            return None
        return SessionTap(self, tx)

    async def _keep(self, tx: Transaction, opened: Opened, answer: dict[str, Any], usage: Usage | None) -> None:
        choices = answer.get("choices") or [{}]
        message = dict(choices[0].get("message") or {})
        message = {k: v for k, v in message.items() if v is not None and k not in ("refusal", "annotations")}
        message.setdefault("role", "assistant")
        meta: dict[str, Any] = {"request_id": tx.request_id, "model": tx.model,
                                "latency_ms": round((time.perf_counter() - tx.started) * 1000, 3)}
        if tx.ttft_s is not None:
            meta["ttft_ms"] = round(tx.ttft_s * 1000, 3)
        outcome = tx.outcome
        if outcome is not None:
            meta["provider"] = outcome.upstream.provider.name
            meta["upstream_model"] = outcome.call.target.model
        if usage is not None:
            meta["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                             "reasoning_tokens": usage.reasoning_tokens}
            if outcome is not None:
                meta["cost_usd"] = cost_usd(outcome.call.target, usage)
        if tx.cached is not None:
            meta["cache_hit"] = True
        title = _title(opened.new)
        try:
            await self.store.append(opened.session_id, [(m, None) for m in opened.new] + [(message, meta)], title)
        except Exception as exc:  # the answer is already the client's: a lost turn is logged, not raised
            log.error("session %s: could not keep the turn of %s: %s", opened.session_id, tx.request_id,
                      type(exc).__name__)


class SessionTap:
    """A stream's chunks read into the whole answer, kept once the stream completed."""

    def __init__(self, stage: SessionStage, tx: Transaction) -> None:
        self.stage, self.tx = stage, tx
        self.capture = StreamCapture(MAX_CAPTURE)

    def feed(self, data: bytes) -> None:
        self.capture.feed(data)

    async def ended(self, completed: bool) -> None:
        if not completed:
            return
        body = self.capture.completion(None)
        if body is None:
            return
        answer = orjson.loads(body)
        usage = Usage.from_openai(answer.get("usage"))
        await self.stage._keep(self.tx, self.tx.session, answer, usage)


def _title(messages: list[dict[str, Any]]) -> str | None:
    """The first words of the first user text: a session's default title."""
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if isinstance(content, str) and content.strip():
            text = " ".join(content.split())
            return text[:60] + ("…" if len(text) > 60 else "")
    return None
