"""The access log: one JSON line per request on stdout, written with one ``write`` call.

A line holds what the usage record holds (who, which alias and upstream, status, tokens, cost,
timings, attempts, error type) and never a secret: the record carries key *names*, not keys, and
no provider key ever reaches it. Prompt text appears only with ``[observability] log_bodies = true``,
as ``request_body``. Lines shorter than PIPE_BUF (4 KiB) are written atomically, so the lines of
several workers sharing stdout never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

from proxy.observability.observer import Observer
from proxy.records import UsageRecord

if TYPE_CHECKING:
    from adapters.base import Call, UpstreamError
    from proxy.router import TargetState

MAX_MODEL_CHARS = 200  # the alias is client text until resolved: keep a hostile one from bloating lines
FLUSH_S = 0.05  # lines reach stdout within this long
BATCH_BYTES = 4096  # PIPE_BUF: a write this size or smaller is atomic, so workers never interleave

# log_bodies: the request body, handed from the attempt (possibly in a dispatch task) to the request's end.
_BODY: ContextVar[list[Any] | None] = ContextVar("gateway_log_body", default=None)


class AccessLog(Observer):
    """Lines are gathered for up to FLUSH_S and written together (one syscall for many requests),
    never more than BATCH_BYTES per write unless a single line is longer."""

    def __init__(self, fd: int = 1, log_bodies: bool = False) -> None:
        self.fd = fd
        self.log_bodies = log_bodies
        self.dropped = 0  # lines lost to a broken or full stdout
        self._second = -1
        self._prefix = ""
        self._batch: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    # --- hooks ---------------------------------------------------------------------------------------

    def request_started(self, endpoint: str) -> None:
        if self.log_bodies:
            _BODY.set([None])

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        if self.log_bodies:
            holder = _BODY.get()
            if holder is not None:
                holder[0] = call.body  # parsed after request_started: an attempt is where it is known

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        holder = _BODY.get() if self.log_bodies else None
        self.write(record, overhead_s, holder[0] if holder else None)

    async def aclose(self) -> None:
        self.flush()

    # --- lines ---------------------------------------------------------------------------------------

    def line(self, r: UsageRecord, overhead_s: float, body: Any = None) -> bytes:
        ttft = r.ttft_ms
        entry: dict[str, Any] = {
            "time": self._time(time.time()),
            "request_id": r.request_id,
            "key": r.key_name,
            "endpoint": r.endpoint,
            "model": r.model if len(r.model) <= MAX_MODEL_CHARS else r.model[:MAX_MODEL_CHARS],
            "provider": r.provider,
            "upstream_model": r.upstream_model,
            "stream": r.stream,
            "status": r.status,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cached_tokens": r.cached_tokens,
            "reasoning_tokens": r.reasoning_tokens,
            "usage_estimated": r.usage_estimated,
            "cost_usd": r.cost_usd,
            "latency_ms": round(r.latency_ms * 1000) / 1000,  # 3 decimals; faster than round(x, 3)
            "ttft_ms": None if ttft is None else round(ttft * 1000) / 1000,
            "overhead_ms": round(overhead_s * 1_000_000) / 1000,
            "attempts": r.attempts,
            "error_type": r.error_type,
        }
        if r.guardrail_actions is not None:  # names and counts only (proxy.guardrails)
            entry["guardrails"] = orjson.Fragment(r.guardrail_actions)
        if body is not None:
            entry["request_body"] = body
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)

    def write(self, r: UsageRecord, overhead_s: float, body: Any = None) -> None:
        data = self.line(r, overhead_s, body)
        if self._size + len(data) > BATCH_BYTES:
            self.flush()
        self._batch.append(data)
        self._size += len(data)
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no event loop (a synchronous caller): write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch, self._size = [], 0
        try:
            written = os.write(self.fd, data)
            while written < len(data):  # only for lines past PIPE_BUF on a busy pipe
                written += os.write(self.fd, data[written:])
        except OSError:  # a closed or non-blocking full stdout must not fail the request
            self.dropped += 1

    def _time(self, now: float) -> str:
        """RFC 3339 UTC with milliseconds; the formatted second is reused within the second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"
