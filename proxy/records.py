"""The usage record: one per authenticated request, in the shape of the `usage_log` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    created_at: float  # epoch seconds, request start
    key_name: str | None
    model: str  # the alias the client sent
    endpoint: str  # chat | embeddings
    stream: bool
    provider: str | None = None
    upstream_model: str | None = None
    status: int = 0  # HTTP status the client got; 499 for a client disconnect
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: float | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    cache_hit: bool = False
    error_type: str | None = None
    cost_saved_usd: float | None = None  # a cache hit: what the original answer cost (this one cost 0)
    # JSON: [{"guardrail", "on", "action", "count"}] for each guardrail that acted; never a matched value
    guardrail_actions: str | None = None
    end_user: str | None = None  # the key's end user (the request's `user` or x-gateway-end-user), if any


class UsageSink(Protocol):
    def submit(self, record: UsageRecord) -> None: ...

    async def durable(self) -> None:
        """Return once every row submitted so far would survive a crash ([storage] durability = "strict")."""
        ...


class NullSink:
    def submit(self, record: UsageRecord) -> None:
        pass

    async def durable(self) -> None:
        pass
