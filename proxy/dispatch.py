"""One client request across an alias's targets: retries with backoff, fallbacks, hedging.

Failure categories decide what happens next:
  rate_limit, timeout, server_error, connection  retry the same target (per `retry_on`, `max_retries`),
                                                 then move on to the next target if `fallback_on` allows;
                                                 a request that never reached the upstream is retried
                                                 whatever `retry_on` says (see retry_allowed)
  context_window                                 move on to a target with a larger `context_window`
  client                                         the client's own error: returned as is, never retried
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.base import Call, Reply, StreamTranslator, UpstreamError, UpstreamRequest
from adapters.sse_decoder import first_event_end
from proxy.capabilities import capable
from proxy.client_request import ClientRequest
from proxy.cost import estimated_cost
from proxy.errors import GatewayError
from proxy.observability.observer import Observer
from proxy.router import Router, TargetState
from proxy.settings import ModelAlias
from proxy.upstream import UnreachedError, Upstream, UpstreamStream, is_transport_error

_CONTEXT_WINDOW = re.compile(r"context[ _]length|context[ _]window|maximum context|prompt is too long|too many tokens",
                             re.IGNORECASE)
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0


def category(e: UpstreamError) -> str:
    if e.reason == "status_429":
        return "rate_limit"
    if e.reason == "timeout":
        return "timeout"
    if e.reason == "connection":
        return "connection"
    if e.reason in ("status_5xx", "bad_response", "auth_refused"):  # auth_refused: the provider's credentials
        return "server_error"
    if e.status == 400 and (e.code == "context_length_exceeded" or _CONTEXT_WINDOW.search(e.message)):
        return "context_window"
    return "client"


def retry_allowed(e: UpstreamError, retry_on: tuple[int | str, ...]) -> bool:
    """A request that never reached the upstream is always safe to send again; one that may have been
    (the connection dropped or timed out after it was sent: maybe billed) only as ``retry_on`` says."""
    if isinstance(e, UnreachedError):
        return True
    if e.code == "upstream_response_too_large":  # it was answered (and billed); the next answer would be as big
        return False
    if e.reason in ("timeout", "connection"):
        return e.reason in retry_on
    status = e.upstream_status or (502 if e.reason == "bad_response" else e.status)
    return status in retry_on


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(retry: int, e: UpstreamError, cap_s: float) -> float | None:
    """Full-jitter exponential backoff; an upstream Retry-After is honoured when it is at most the cap,
    and a longer one means: do not wait here, move on to the next target."""
    told = retry_after_seconds(e.retry_after)
    if told is not None:
        return told if told <= cap_s else None
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**retry))


@dataclass(slots=True)
class StreamStart:
    """A stream that has produced its first bytes for the client; the rest is relayed from ``rest``
    (upstream bytes already read, not yet translated), then from ``chunks``."""

    response: UpstreamStream
    chunks: AsyncIterator[bytes]
    translator: StreamTranslator
    first: bytes
    rest: bytes = b""

    async def aclose(self) -> None:
        if self.rest:  # read from the upstream but never relayed (the client left first): its usage counts
            rest, self.rest = self.rest, b""
            with contextlib.suppress(UpstreamError):
                self.translator.feed(rest)
        await self.response.aclose(finished=self.translator.done and self.translator.error is None)


@dataclass(slots=True)
class Outcome:
    state: TargetState
    upstream: Upstream
    call: Call
    reply: Reply | None = None
    stream: StreamStart | None = None


class Dispatch:
    """The dispatch stage of one request: its alias's targets tried in the router's order until one answers."""

    def __init__(self, router: Router, upstreams: dict[str, Upstream], obs: Observer, alias: ModelAlias,
                 request: ClientRequest) -> None:
        self.router = router
        self.upstreams = upstreams
        self.obs = obs
        self.alias = alias
        self.request = request
        self.attempts = 0
        self.last: TargetState | None = None  # the target of the latest attempt
        self.sent: set[int] = set()  # id() of each TargetState an attempt was sent to
        # Hedge losers whose request had gone upstream (maybe billed): (call, seconds it ran, outcome if it
        # finished first). Accounting writes a usage row for each.
        self.hedge_losers: list[tuple[Call, float, Outcome | None]] = []
        self.waited_s = 0.0  # wall time spent in run(): upstream waits and retry backoff, not our own work

    # planning ---------------------------------------------------------------------------------------

    def plan(self) -> list[TargetState]:
        max_tokens = self.request.completion_allowance(self.alias.targets[0].default_max_tokens)
        prompt = self.request.prompt_estimate
        plan = self.router.plan(self.alias, prompt, max_tokens)
        if self.alias.strategy == "capability":  # the targets that can serve it (400 if none), cheapest first
            plan = capable(self.alias, self.request, plan, prompt, max_tokens)
        if not plan:
            raise GatewayError(503, f"No target of `{self.alias.name}` is available right now (circuit open).",
                               "service_unavailable_error", "no_healthy_upstream",
                               headers={"retry-after": "1"})
        cap = self.alias.max_cost_per_request
        if cap is not None:
            plan = [s for s in plan if (estimated_cost(s.target, prompt, max_tokens) or 0.0) <= cap]
            if not plan:
                raise GatewayError(400, f"Every target of `{self.alias.name}` would cost more than the alias's "
                                   f"max_cost_per_request of ${cap} for this request (prompt plus max_tokens).",
                                   code="cost_limit_exceeded")
        return plan

    # running ----------------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        plan = self.plan()
        started = time.perf_counter()
        try:
            if self.alias.hedge_after_ms is not None and len(plan) >= 2:
                outcome, plan = await self._hedged(plan)
                if outcome is not None:
                    return outcome
            return await self._sequential(plan)
        finally:
            self.waited_s += time.perf_counter() - started

    async def _sequential(self, plan: list[TargetState], last: UpstreamError | None = None,
                          need_window: int | None = None) -> Outcome:
        for state in plan:
            if need_window is not None and (state.target.context_window or 0) <= need_window:
                continue
            try:
                return await self._try_target(state)
            except UpstreamError as e:
                last = e
                kind = category(e)
                if kind == "client" or kind not in self.alias.fallback_on:
                    raise
                if kind == "context_window":
                    need_window = state.target.context_window or 0
        assert last is not None
        raise last

    async def _hedged(self, plan: list[TargetState]) -> tuple[Outcome | None, list[TargetState]]:
        """Start the first target; if it has not produced a first byte in hedge_after_ms, start the
        second too. The first to answer wins and the other is cancelled."""
        assert self.alias.hedge_after_ms is not None
        tasks = [asyncio.ensure_future(self._try_target(plan[0]))]
        begun = [time.perf_counter()]
        done, _ = await asyncio.wait(tasks, timeout=self.alias.hedge_after_ms / 1000)
        if not done:
            tasks.append(asyncio.ensure_future(self._try_target(plan[1])))
            begun.append(time.perf_counter())
        last: UpstreamError | None = None
        winner: asyncio.Future[Outcome] | None = None
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        winner = task
                        return task.result(), []
                    exc = task.exception()
                    if not isinstance(exc, UpstreamError):
                        raise exc
                    last = exc
                    kind = category(exc)
                    if kind == "client" or kind not in self.alias.fallback_on:
                        raise exc
        finally:
            for i, task in enumerate(tasks):
                if task is winner:
                    continue
                failed = task.done() and not task.cancelled() and task.exception() is not None
                outcome = await stop(task)
                if winner is not None and id(plan[i]) in self.sent and not failed:  # lost the race, not failed
                    self.hedge_losers.append((self._call(plan[i])[1], time.perf_counter() - begun[i], outcome))
        rest = plan[len(tasks):]
        if not rest:
            assert last is not None
            raise last
        return await self._sequential(rest, last), []

    async def _try_target(self, state: TargetState) -> Outcome:
        target = state.target
        for retry in range(target.max_retries + 1):
            self.attempts += 1
            self.last = state
            state.begin(time.monotonic())
            started = time.perf_counter()
            keep_inflight = False
            try:
                outcome = await self._attempt(state)
                elapsed = time.perf_counter() - started
                state.succeeded(elapsed)
                self.obs.attempt_finished(state, outcome.call, elapsed, None)
                keep_inflight = outcome.stream is not None  # a stream's relay ends it
                return outcome
            except UpstreamError as e:
                self.obs.attempt_finished(state, self._call(state)[1], time.perf_counter() - started, e)
                if category(e) in ("client", "context_window"):
                    state.abandoned()  # the request's fault, not the target's
                    raise
                state.failed()
                if retry == target.max_retries or not retry_allowed(e, target.retry_on):
                    raise
                delay = retry_delay(retry, e, self.alias.retry_after_cap_s)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            except BaseException:
                state.abandoned()
                raise
            finally:
                if not keep_inflight:
                    state.end()
        raise AssertionError("unreachable")

    def _started(self, state: TargetState, call: Call, req: UpstreamRequest) -> UpstreamRequest:
        """Observers see each attempt before it is sent (tracing injects traceparent here)."""
        self.sent.add(id(state))
        self.obs.attempt_started(state, call, req)
        return req

    def _call(self, state: TargetState) -> tuple[Upstream, Call]:
        target = state.target
        if not target.model:  # glob alias: forward the name the client asked for
            target = dataclasses.replace(target, model=self.request.model)
        upstream = self.upstreams[target.provider]
        request = self.request
        call = Call(request.model if self.alias.is_glob else self.alias.name, target, upstream.provider,
                    request.body, request.stream, request.include_usage, request.request_id)
        return upstream, call

    async def _attempt(self, state: TargetState) -> Outcome:
        upstream, call = self._call(state)
        adapter = upstream.adapter
        target = call.target
        if self.request.stream:
            start = await self._open_stream(upstream, call, state)
            return Outcome(state, upstream, call, stream=start)
        if self.request.endpoint == "completions":
            req = self._started(state, call, adapter.completions_request(call))
            raw = await upstream.fetch(req, target.connect_timeout_s, target.timeout_s, target.head_timeout_s)
            return Outcome(state, upstream, call, reply=adapter.completions_response(call, raw))
        if self.request.endpoint != "embeddings":  # chat, or another client API through its frontend
            frontend = self.request.frontend
            req = self._started(state, call, frontend.request(adapter, call))
            raw = await upstream.fetch(req, target.connect_timeout_s, target.timeout_s, target.head_timeout_s)
            return Outcome(state, upstream, call, reply=frontend.reply(adapter, call, raw))
        req = self._started(state, call, adapter.embeddings_request(call))
        raw = await upstream.fetch(req, target.connect_timeout_s, target.timeout_s, target.head_timeout_s)
        return Outcome(state, upstream, call, reply=adapter.embeddings_response(call, raw))

    async def _open_stream(self, upstream: Upstream, call: Call, state: TargetState) -> StreamStart:
        """Open the upstream stream and read until there is something to send the client: until
        then a failure is still an attempt that can be retried or fall back."""
        if self.request.endpoint == "completions":
            req = self._started(state, call, upstream.adapter.completions_request(call))
            translator = upstream.adapter.completions_stream(call)
        else:
            frontend = self.request.frontend
            req = self._started(state, call, frontend.request(upstream.adapter, call))
            translator = frontend.stream(upstream.adapter, call)
        response: UpstreamStream | None = None
        try:
            async with asyncio.timeout(call.target.first_byte_timeout_s):
                response = await upstream.open_stream(req, call.target.connect_timeout_s,
                                                      call.target.stream_idle_timeout_s)
                chunks = response.chunks
                first = rest = b""
                while not first:
                    if not rest:
                        try:
                            rest = await anext(chunks)
                        except StopAsyncIteration:
                            first = translator.end()  # raises if the stream ended early
                            break
                    # One event at a time until one gives the client something: when a read holds a
                    # burst of events, the first token goes out before the burst is translated.
                    cut = first_event_end(rest)
                    first = translator.feed(rest[:cut])
                    rest = rest[cut:]
                if translator.error is not None:
                    raise translator.error
                response.relaying()
                return StreamStart(response, chunks, translator, first, rest)
        except TimeoutError:
            await _close(response)
            message = f"upstream {upstream.provider.name} sent no first byte in {call.target.first_byte_timeout_s}s"
            raise UpstreamError(504, message, "timeout", "timeout", "upstream_timeout") from None
        except UpstreamError:
            await _close(response)
            raise
        except BaseException as exc:
            await _close(response)
            if isinstance(exc, Exception) and is_transport_error(exc):
                raise upstream.transport_error(exc) from None
            raise


async def _close(response: UpstreamStream | None) -> None:
    if response is not None:
        with contextlib.suppress(Exception):
            await response.aclose()


async def stop(task: asyncio.Future[Outcome]) -> Outcome | None:
    """Stop a run no one will use (a hedge race's loser); its outcome if it had finished meanwhile,
    with an opened stream closed. A cancel of the caller itself still propagates."""
    task.cancel()
    await asyncio.wait((task,))
    if task.cancelled() or task.exception() is not None:
        return None
    # A loser that finished a stream opening in the meantime must not leak its connection or in-flight count.
    outcome = task.result()
    if outcome.stream is not None:
        await outcome.stream.aclose()
        outcome.state.end()
    return outcome
