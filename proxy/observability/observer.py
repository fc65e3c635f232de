"""Observation hooks for metrics, access logs and traces.

The request path calls these at fixed points; this base class does nothing, so a gateway without
observability pays one no-op method call per hook. Implementations subclass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.base import Call, UpstreamError, UpstreamRequest
    from proxy.records import UsageRecord
    from proxy.router import TargetState


class Observer:
    def request_started(self, endpoint: str) -> None:
        """An authenticated request begins (in-flight gauge up)."""

    def attempt_started(self, state: TargetState, call: Call, request: UpstreamRequest) -> None:
        """An upstream attempt is about to be sent. ``request.headers`` is shared by every request to
        the provider: to add a header (e.g. traceparent), assign a new dict, never mutate it."""

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        """One upstream attempt ended: success (error None) or the failure it met."""

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        """The request is over (its usage row is final). ``overhead_s`` is the gateway's own time:
        the request's wall time minus the time spent waiting on upstreams (and retry backoff)."""

    def limits_store_error(self) -> None:
        """A rate-limit check or settlement could not reach the limits store (Redis)."""

    def auth_failed(self, code: str) -> None:
        """A request was refused with 401 (``code``: invalid_api_key or expired_api_key)."""

    def ratelimited(self, scope: str) -> None:
        """A request was refused by a rate limit or budget of ``scope`` (key, model, global, budget)."""
