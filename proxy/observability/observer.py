"""The observer protocol: every point at which the gateway reports to metrics, logs and traces.

The base class does nothing, so a gateway without observability pays one no-op call per hook.
Metrics, the access log and tracing each subclass it; ``Observers`` hands every hook to each of them.
The hooks run on the event loop and must not block or raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.base import Call, UpstreamError, UpstreamRequest
    from proxy.records import UsageRecord
    from proxy.router import TargetState
    from proxy.runtime import Runtime


class Observer:
    # --- lifecycle: called by the app and by Runtime -------------------------------------------------

    def attach(self, runtime: Runtime) -> None:
        """A Runtime was built from the loaded (or reloaded) config and serves from now on."""

    async def start(self) -> None:
        """The app starts, inside its event loop: begin background work (exporters, publishers, servers)."""

    async def aclose(self) -> None:
        """The app shuts down: flush what is buffered and stop; never raises, so shutdown goes on."""

    # --- the request path ------------------------------------------------------------------------------

    def request_started(self, endpoint: str) -> None:
        """An authenticated request to ``endpoint`` (chat or embeddings) begins."""

    def attempt_started(self, state: TargetState, call: Call, request: UpstreamRequest) -> None:
        """An upstream attempt is about to be sent. ``request.headers`` is shared by every request to
        the provider: to add a header (e.g. traceparent), assign a new dict, never mutate it."""

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        """One upstream attempt ended: success (error None) or the failure it met."""

    def hedge_lost(self, record: UsageRecord) -> None:
        """A hedged attempt that reached its upstream lost the race: its row's tokens and cost were
        spent, but it is not a request of its own."""

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        """The request is over (its usage row is final). ``overhead_s`` is the gateway's own time:
        the request's wall time minus the time spent waiting on upstreams (and retry backoff)."""

    def auth_failed(self, code: str) -> None:
        """A request was refused with 401 (``code``: invalid_api_key or expired_api_key)."""

    def ratelimited(self, scope: str) -> None:
        """A request was refused by a rate limit or budget of ``scope`` (key, model, global, parallel, budget)."""

    def limits_store_error(self) -> None:
        """A rate-limit check or settlement could not reach the limits store (Redis)."""

    def cache_result(self, alias: str, result: str) -> None:
        """The response cache's verdict for one request: hit, semantic_hit, miss, bypass or error."""

    def guardrail_ran(self, name: str, on: str, seconds: float) -> None:
        """A guardrail checked a request (``on`` = input) or a whole answer (output); what it did is in the
        usage row's ``guardrail_actions``."""


class Observers(Observer):
    """Several observers seen as one: each hook is passed to every part, in order."""

    def __init__(self, parts: Iterable[Observer]) -> None:
        self.parts = tuple(parts)

    def attach(self, runtime: Runtime) -> None:
        for part in self.parts:
            part.attach(runtime)

    async def start(self) -> None:
        for part in self.parts:
            await part.start()

    async def aclose(self) -> None:
        for part in self.parts:
            await part.aclose()

    def request_started(self, endpoint: str) -> None:
        for part in self.parts:
            part.request_started(endpoint)

    def attempt_started(self, state: TargetState, call: Call, request: UpstreamRequest) -> None:
        for part in self.parts:
            part.attempt_started(state, call, request)

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        for part in self.parts:
            part.attempt_finished(state, call, seconds, error)

    def hedge_lost(self, record: UsageRecord) -> None:
        for part in self.parts:
            part.hedge_lost(record)

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        for part in self.parts:
            part.request_finished(record, overhead_s)

    def auth_failed(self, code: str) -> None:
        for part in self.parts:
            part.auth_failed(code)

    def ratelimited(self, scope: str) -> None:
        for part in self.parts:
            part.ratelimited(scope)

    def limits_store_error(self) -> None:
        for part in self.parts:
            part.limits_store_error()

    def cache_result(self, alias: str, result: str) -> None:
        for part in self.parts:
            part.cache_result(alias, result)

    def guardrail_ran(self, name: str, on: str, seconds: float) -> None:
        for part in self.parts:
            part.guardrail_ran(name, on, seconds)
