"""The account stage: a request's usage row, built once from its Transaction, and where the row goes.

Every request that passed authentication ends here exactly once, however it ended: answered, failed,
cut by the client, or cancelled at shutdown. The row goes to the ledger, its real usage settles the
limits the request reserved, and its numbers go to the observers (metrics, access log, traces).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from adapters.base import Usage
from adapters.errors import APIError
from proxy.auth import bearer_secret
from proxy.cost import cost_usd
from proxy.errors import render
from proxy.pipeline.transaction import Transaction, WholeAnswer, no_bookkeeping
from proxy.records import UsageRecord
from proxy.settings import Target

if TYPE_CHECKING:
    from proxy.dispatch import Dispatch, Outcome
    from proxy.runtime import Runtime


class Accounting:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def begin(self, tx: Transaction) -> None:
        self.runtime.obs.request_started(tx.endpoint)
        self.runtime.active += 1

    def answered(self, tx: Transaction) -> WholeAnswer:
        """A whole answer, from the target that won or from the cache: its body, with who answered and
        what it cost."""
        reply = tx.outcome.reply if tx.outcome is not None else tx.cached
        assert reply is not None
        record, overhead = self._record(tx, 200, None)
        if record.cost_usd is not None:
            tx.headers["x-gateway-cost-usd"] = f"{record.cost_usd:.10f}"
        return WholeAnswer(200, tx.headers, reply.body, self._after(tx, record, overhead))

    def failed(self, tx: Transaction, error: APIError) -> WholeAnswer:
        """The client's error answer, in OpenAI's shape, with the status it names."""
        if tx.cache_state is not None:
            tx.cache_state.abandon()  # requests coalesced behind this one go upstream themselves
        record, overhead = self._record(tx, error.status, error.error_type)
        tx.headers.update(error.headers)
        body = render(error, self.runtime.config.redactor, bearer_secret(tx.authorization), tx.endpoint)
        return WholeAnswer(error.status, tx.headers, body, self._after(tx, record, overhead))

    async def durable(self, answer: WholeAnswer) -> WholeAnswer:
        """With ``[storage] durability = "strict"``: the row now, and the answer only once the row is in the
        ledger's journal on disk, so no answer a client got can lose its row to a crash."""
        if self.runtime.config.storage.durability != "strict":
            return answer
        answer.after()
        answer.after = no_bookkeeping
        # The row is in: a cancel (shutdown) while waiting must not make the pipeline write a second one.
        with contextlib.suppress(asyncio.CancelledError):
            await self.runtime.sink.durable()
        return answer

    def stream_durable(self) -> Callable[[], Awaitable[None]] | None:
        """What a stream's last event and end wait for once its row is written: under strict durability the
        ledger's journal (proxy.pipeline.stream), under batch nothing (None)."""
        return self.runtime.sink.durable if self.runtime.config.storage.durability == "strict" else None

    def cancelled(self, tx: Transaction) -> None:
        """Cancelled from outside, i.e. the shutdown grace ran out: nobody sees an answer, but an upstream
        call under way may be billed, so the row is written now (503 ``gateway_shutdown``)."""
        tx.prompt_billed = True
        if tx.cache_state is not None:
            tx.cache_state.abandon()
        record, overhead = self._record(tx, 503, "gateway_shutdown")
        self.commit(tx, record, overhead)

    def stream_ended(self, tx: Transaction, status: int, error_type: str | None) -> None:
        record, overhead = self._record(tx, status, error_type)
        self.commit(tx, record, overhead - tx.stream_waited_s)

    def _after(self, tx: Transaction, record: UsageRecord, overhead: float) -> Callable[[], None]:
        tx.headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
        return functools.partial(self.commit, tx, record, overhead)

    def _record(self, tx: Transaction, status: int, error_type: str | None) -> tuple[UsageRecord, float]:
        """The usage row and the gateway's own time so far (wall time less time waiting on upstreams)."""
        elapsed = time.perf_counter() - tx.started
        dispatch = tx.dispatch
        request = tx.request
        record = UsageRecord(
            request_id=tx.request_id, created_at=tx.created_at, key_name=tx.key.name if tx.key else None,
            model=tx.model, endpoint=tx.endpoint, stream=request.stream if request is not None else False,
            status=status, error_type=error_type, latency_ms=elapsed * 1000,
            ttft_ms=tx.ttft_s * 1000 if tx.ttft_s is not None else None,
            attempts=dispatch.attempts if dispatch is not None else 0,
            end_user=request.end_user if request is not None else None)
        if dispatch is not None:
            record.provider, record.upstream_model = describe(tx.headers, dispatch, tx.outcome, record.model)
        billed = _billed(tx)
        if billed is not None:
            _set_usage(record, *billed)
        elif tx.cached is not None:  # served from the cache: the tokens it stands for, nothing spent
            record.cache_hit = True
            _set_usage(record, None, tx.cached.usage or Usage(estimated=True))
            record.cost_saved_usd = tx.cost_saved_usd
        if tx.guardrails is not None:
            record.guardrail_actions = tx.guardrails.summary()
        return record, max(0.0, elapsed - (dispatch.waited_s if dispatch is not None else 0.0))

    def commit(self, tx: Transaction, record: UsageRecord, overhead: float) -> None:
        """The row to the ledger, its usage to the limits it reserved, its numbers to observers. Hedge
        losers that reached their upstream get rows of their own."""
        runtime = self.runtime
        losers = hedge_rows(record, tx.dispatch) if tx.dispatch is not None and tx.dispatch.hedge_losers else ()
        # A hit counts against rpm but not tpm or budget: the limits settle it as if it used nothing.
        hit = record.cache_hit and tx.ticket is not None
        spent = dataclasses.replace(record, prompt_tokens=0, completion_tokens=0) if hit else record
        runtime.limits.settle(tx.ticket, spent, losers)
        runtime.active -= 1
        runtime.sink.submit(record)
        for row in losers:
            runtime.sink.submit(row)
            runtime.obs.hedge_lost(row)
        runtime.obs.request_finished(record, max(0.0, overhead))



def describe(headers: dict[str, str], dispatch: Dispatch, outcome: Outcome | None,
             model: str) -> tuple[str | None, str | None]:
    """Who answered (or was tried last), as (provider, upstream model), also told in the response headers."""
    headers["x-gateway-attempts"] = str(dispatch.attempts)
    if outcome is not None:
        provider, upstream_model = outcome.upstream.provider.name, outcome.call.target.model
    elif dispatch.last is not None:
        provider, upstream_model = dispatch.last.target.provider, dispatch.last.target.model or model
    else:
        return None, None
    headers["x-gateway-provider"] = provider
    headers["x-gateway-upstream-model"] = upstream_model or ""
    return provider, upstream_model


def _billed(tx: Transaction) -> tuple[Target, Usage] | None:
    """The target whose upstream may bill this request and the usage to count: as reported, else estimated."""
    prompt = tx.request.prompt_estimate if tx.request is not None else 0
    if tx.outcome is not None:
        return outcome_usage(tx.outcome, prompt)
    if tx.prompt_billed and tx.dispatch is not None and tx.dispatch.last is not None:
        return tx.dispatch.last.target, Usage(prompt_tokens=prompt, estimated=True)
    return None


def outcome_usage(outcome: Outcome, prompt_estimate: int) -> tuple[Target, Usage] | None:
    """A finished call's usage: the reply's or the stream's so far, else estimated from the prompt."""
    if outcome.reply is not None:
        usage, completion = outcome.reply.usage, 0
    elif outcome.stream is not None:
        usage, completion = outcome.stream.translator.usage, outcome.stream.translator.estimated_completion_tokens()
    else:
        return None
    if usage is None:
        usage = Usage(prompt_tokens=prompt_estimate, completion_tokens=completion, estimated=True)
    return outcome.call.target, usage


def _set_usage(record: UsageRecord, target: Target | None, usage: Usage) -> None:
    record.usage_estimated = usage.estimated
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.cached_tokens = usage.cached_tokens
    record.reasoning_tokens = usage.reasoning_tokens
    record.cost_usd = cost_usd(target, usage) if target is not None else 0.0


def hedge_rows(record: UsageRecord, dispatch: Dispatch) -> list[UsageRecord]:
    """The request that lost a hedge race was sent upstream, so it may have been billed: its row has
    the request's id plus ``-hedge``, status 499 (cancelled by the gateway), error_type ``hedge_lost``,
    and its usage if it had finished, else its estimated prompt tokens."""
    rows = []
    prompt = dispatch.request.prompt_estimate
    for n, (call, seconds, outcome) in enumerate(dispatch.hedge_losers):
        row = UsageRecord(request_id=f"{record.request_id}-hedge" + (f"{n + 1}" if n else ""),
                          created_at=record.created_at, key_name=record.key_name, model=record.model,
                          endpoint=record.endpoint, stream=record.stream, provider=call.target.provider,
                          upstream_model=call.target.model, status=499, latency_ms=seconds * 1000, attempts=1,
                          error_type="hedge_lost", end_user=record.end_user)
        billed = outcome_usage(outcome, prompt) if outcome is not None else None
        _set_usage(row, *(billed or (call.target, Usage(prompt_tokens=prompt, estimated=True))))
        rows.append(row)
    return rows
