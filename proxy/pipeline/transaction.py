"""What one request's stages produce, and the answers the pipeline hands back to its caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adapters.base import Reply
from proxy.client_request import ClientRequest
from proxy.errors import GatewayError
from proxy.pipeline.validate import recordable_model
from proxy.settings import KeyConfig, ModelAlias

if TYPE_CHECKING:
    from proxy.dispatch import Dispatch, Outcome
    from proxy.limits import Ticket
    from proxy.uvicorn_protocol import DirectBody


class Inbound(Protocol):
    """Where a request comes from: the HTTP edge, or a program calling the gateway in-process."""

    endpoint: str  # chat | embeddings | messages | responses
    authorization: str | None  # the key's header as an Authorization value (proxy.auth.presented_key)
    client_request_id: str | None  # the client's x-request-id, if any
    # What an HTTP client may also say (None in-process unless the caller says it too):
    api_headers: dict[str, str] | None  # headers of the client's API a pass-through target needs (anthropic-beta)
    cache_control: tuple[str | None, str | None] | None  # Cache-Control and x-gateway-cache-ttl (proxy.cache)
    session_id: str | None  # x-gateway-session-id (proxy.pipeline.sessions)
    end_user: str | None  # x-gateway-end-user (proxy.end_users)
    watch: ClientWatch

    async def json(self, limit: int) -> dict[str, Any]:
        """The request body as a JSON object (413 past ``limit`` bytes, 400 if not JSON)."""
        ...


class ClientWatch:
    """Notes that the client hung up and, while a task waits on the upstream (``waiting``), cancels
    that wait: an answer nobody will read should not keep the upstream busy."""

    __slots__ = ("gone", "waiting")

    def __init__(self) -> None:
        self.gone = False
        self.waiting: asyncio.Task | None = None

    def __call__(self) -> None:
        self.gone = True
        if self.waiting is not None:
            self.waiting.cancel()


@dataclass(slots=True)
class Transaction:
    """One request as it goes through the stages: each stage sets its own field once, and accounting
    reads them all at the end to build the usage row."""

    endpoint: str
    request_id: str
    header_id: str
    key: KeyConfig | None
    started: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)
    body: dict[str, Any] | None = None  # read
    request: ClientRequest | None = None  # parsed
    alias: ModelAlias | None = None  # resolved
    ticket: Ticket | None = None  # admitted by limits
    dispatch: Dispatch | None = None  # sent to targets
    cached: Reply | None = None  # an answer the cache stage had, in place of an upstream call
    outcome: Outcome | None = None  # what the target that answered returned
    prompt_billed: bool = False  # stopped after the upstream had the request: its prompt may be billed
    ttft_s: float | None = None  # a stream's first bytes, from the start
    stream_waited_s: float = 0.0  # time a stream spent waiting on upstream chunks after its first bytes
    headers: dict[str, str] = field(default_factory=dict)  # response headers the stages add
    # The client's Authorization header, kept only while the request lives: its key is hidden in error bodies.
    authorization: str | None = None
    # The response cache: the client's (Cache-Control, x-gateway-cache-ttl) headers, the cache stage's
    # own state for the request (``abandon()`` when it fails), and what a hit saved (the original cost).
    cache_control: tuple[str | None, str | None] | None = None
    cache_state: Any = None
    cost_saved_usd: float | None = None
    # Guardrails (proxy.guardrails): this request's state (what acted, its placeholders), and what a
    # stream's events pass through on their way to the client (``feed(bytes) -> bytes``; ``blocked``).
    guardrails: Any = None
    stream_filter: Any = None
    session: Any = None  # the sessions stage's state for a request that names a session

    @property
    def model(self) -> str:
        """The alias the request is accounted to: as resolved, else as the client sent it."""
        if self.request is not None:
            return self.request.model
        return recordable_model(self.body.get("model")) if self.body is not None else ""


@dataclass(slots=True)
class WholeAnswer:
    """A whole JSON answer; ``after`` does the bookkeeping and runs once it is sent (or failed to be)."""

    status: int
    headers: dict[str, str]
    body: bytes
    after: Callable[[], None]


@dataclass(slots=True)
class StreamAnswer:
    """An SSE answer: ``chunks(direct)`` yields its bytes, ``finish(disconnected)`` runs once at its end;
    ``cut()``, if the server cuts the stream (shutdown), gives the last bytes to send (an error event)."""

    headers: dict[str, str]
    chunks: Callable[[DirectBody | None], AsyncGenerator[bytes, None]]
    finish: Callable[[bool], Awaitable[None]]
    cut: Callable[[], bytes] | None = None


Answer = WholeAnswer | StreamAnswer


def no_bookkeeping() -> None:
    """The ``after`` of an answer with nothing left to account: a 401, or a row already committed."""


class Unauthenticated(Exception):
    """Authentication failed: answered without a usage row (observers count it)."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error
