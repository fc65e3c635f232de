"""The OpenAI-compatible endpoints: chat completions, embeddings and models."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from adapters.base import StreamTranslator, UpstreamError, Usage
from proxy.client_request import ClientRequest
from proxy.cost import cost_usd
from proxy.dispatch import Dispatch, Outcome, stop
from proxy.errors import GatewayError, error_event
from proxy.limits import Plan, Ticket
from proxy.records import UsageRecord
from proxy.requests import (
    check_chat,
    check_embeddings,
    estimate_prompt_tokens,
    include_usage,
    read_json,
    request_ids,
    requested_max_tokens,
    require_model,
)
from proxy.runtime import Runtime
from proxy.settings import Target
from proxy.sse_response import SSEResponse
from proxy.upstream import TRANSPORT_ERRORS
from proxy.uvicorn_protocol import DirectBody, on_disconnect, write_whole

JSON = "application/json"
log = logging.getLogger("gateway")


async def chat_completions(request: Request) -> Response | SSEResponse:
    return await _proxy(request, "chat")


async def embeddings(request: Request) -> Response | SSEResponse:
    return await _proxy(request, "embeddings")


async def _proxy(request: Request, endpoint: str) -> Response | SSEResponse:
    started = time.perf_counter()
    rt: Runtime = request.app.state.runtime
    header_id, rid = request_ids(request)
    headers = {"x-request-id": header_id}
    try:
        key = rt.authenticate(request.headers.get("authorization"))
    except GatewayError as e:
        rt.obs.auth_failed(e.code or "invalid_api_key")  # no usage row: counted here only
        return e.response(headers)

    watch = ClientWatch()
    on_disconnect(request.scope, watch)  # the serving protocol calls it on a hang-up, if it can
    record = UsageRecord(request_id=rid, created_at=time.time(), key_name=key.name if key else None,
                         model="", endpoint=endpoint, stream=False)
    rt.obs.request_started(endpoint)
    rt.active += 1
    dispatch: Dispatch | None = None
    ticket: Ticket | None = None
    verdict: asyncio.Future[Ticket | None] | None = None  # a limits verdict still on its way
    try:
        body = await read_json(request, rt.config.server.max_body_bytes)
        record.model = require_model(body)
        if endpoint == "chat":
            check_chat(body)
        else:
            check_embeddings(body)
        stream = endpoint == "chat" and body.get("stream") is True
        record.stream = stream
        alias = rt.resolve(record.model, key)
        if alias.name != record.model and not alias.is_glob:  # a fuzzy match: say so, account to the alias
            headers["x-gateway-model-resolved"] = alias.name
            record.model = alias.name
        request = ClientRequest(endpoint, record.model, body, rid, header_id, stream, include_usage(body),
                                estimate_prompt_tokens(body), requested_max_tokens(body))
        dispatch = Dispatch(rt.router, rt.upstreams, rt.obs, alias, request)
        plan = rt.limits.plan(key, alias, request)
        run: asyncio.Future[Outcome] | None = None
        ended: asyncio.Future[None] | None = None
        if plan is not None:
            ticket = rt.limits.admit_here(plan)  # from this replica's leases: no round trip
            if ticket is not None:
                ticket.headers(headers)
        if plan is not None and ticket is None:
            # With ample room at the last verdict, the store's round trip hides behind the upstream's: a
            # whole-body request makes its call in this task while the verdict is on its way (a refusal
            # stops the call through the watch); a stream's call runs in its own task as usual.
            if plan.overlap and not stream:
                verdict = rt.limits.admit_soon(plan, watch.refuse)
            elif plan.overlap:
                run, ended = _start(dispatch)
            if verdict is None:
                try:
                    if run is not None:  # let the dispatch task run first: the upstream request leaves before
                        await asyncio.sleep(0)  # the limits call is built (~25 us at c=1, on the first byte's path)
                    ticket = await rt.limits.admit(plan)
                except BaseException:
                    if run is not None:
                        await _abandon(run, record, body)
                        rt.limits.charge(plan, record)
                    raise
                if ticket is not None:
                    ticket.headers(headers)
        if stream:
            return await _stream(rt, dispatch, record, started, headers, ticket, run, ended)
        if verdict is None:
            outcome = await _unless_client_leaves(watch, record, dispatch)
        else:
            assert plan is not None
            result, ticket = await _called_while_checked(rt, watch, record, dispatch, plan, verdict)
            if ticket is not None:
                ticket.headers(headers)
            if isinstance(result, Exception):
                raise result
            outcome = result
    except (GatewayError, UpstreamError) as e:
        return _fail(rt, record, started, e, headers, dispatch, ticket)
    except asyncio.CancelledError:
        if verdict is not None:
            _forget(verdict)
        _cancelled(rt, record, started, dispatch, ticket)
        raise
    except Exception:  # a bug must still answer in OpenAI shape and leave its usage row
        log.exception("unhandled error in %s request %s", endpoint, rid)
        error = GatewayError(500, "The gateway hit an internal error.", "server_error", "internal_error")
        return _fail(rt, record, started, error, headers, dispatch, ticket)

    _describe(record, headers, dispatch, outcome)
    reply = outcome.reply
    assert reply is not None
    _settle(record, outcome.call.target, reply.usage, body, 0)
    if record.cost_usd is not None:
        headers["x-gateway-cost-usd"] = f"{record.cost_usd:.10f}"
    record.status = 200
    done = _finish(rt, record, started, dispatch, ticket, headers)
    return AccountedResponse(done, reply.body, 200, headers)


class ClientWatch:
    """The ``on_disconnect`` callback of one whole-body request: notes a hang-up at any point, and while a
    task waits on the upstream (``waiting``), cancels that wait. ``refuse`` does the same for a limits
    verdict that refuses the request while its upstream call runs."""

    __slots__ = ("gone", "refused", "waiting")

    def __init__(self) -> None:
        self.gone = False
        self.refused = False
        self.waiting: asyncio.Task | None = None

    def __call__(self) -> None:
        self.gone = True
        if self.waiting is not None:
            self.waiting.cancel()

    def refuse(self) -> None:
        self.refused = True
        if self.waiting is not None:
            self.waiting.cancel()


class _Refused(Exception):
    """A limits verdict refused the request while its upstream call ran, and stopped the call."""


async def _unless_client_leaves(watch: ClientWatch, record: UsageRecord, dispatch: Dispatch) -> Outcome:
    """Wait for the upstream's answer, unless the client hangs up first (or already did, while the body
    was read or the limits checked): then stop the upstream call (it would be billed for nothing) and
    fail with 499, so the row says what happened."""
    if watch.gone:
        raise _gone()
    task = asyncio.current_task()
    assert task is not None
    watch.waiting = task
    try:
        return await dispatch.run()
    except asyncio.CancelledError:
        if not (watch.gone or watch.refused):
            raise  # cancelled from outside (server shutdown)
        task.uncancel()
        if watch.refused:
            raise _Refused from None
        _bill_prompt(record, dispatch)
        raise _gone() from None
    finally:
        watch.waiting = None


def _gone() -> GatewayError:
    return GatewayError(499, "The client closed the connection before the answer was ready.", "client_error",
                        "client_disconnect")


async def _called_while_checked(rt: Runtime, watch: ClientWatch, record: UsageRecord, dispatch: Dispatch,
                                plan: Plan, verdict: asyncio.Future[Ticket | None]
                                ) -> tuple[Outcome | Exception, Ticket | None]:
    """The upstream call of a whole-body request whose limits verdict is still on its way, then the
    verdict: (the outcome, or the failure to raise once the ticket is known; the ticket). The verdict
    decides first: a refused request answers 429 (503 if the store is down under "deny") whatever its
    call did, and what an answered call spent goes into its row and counts against the key."""
    result: Outcome | Exception
    try:
        result = await _unless_client_leaves(watch, record, dispatch)
    except Exception as e:  # reported once the verdict is in: a refusal comes first
        result = e
    try:
        ticket = await verdict
    except GatewayError:
        if isinstance(result, Outcome):
            _settle_outcome(record, result.call.target, result, dispatch.body)
        rt.limits.charge(plan, record)
        raise
    return result, ticket


class AccountedResponse(Response):
    """A whole JSON answer that runs its bookkeeping (in the event loop) after sending, and even if
    sending fails (the client is gone): a usage row is never lost to a broken connection.

    Where the server offers the ``gateway.direct_write`` extension, head and body are written by
    ``write_whole`` straight from the header dict; Starlette's raw headers are only built otherwise."""

    def __init__(self, after: Callable[[], None], body: bytes, status: int, headers: dict[str, str]) -> None:
        # Not Response.__init__: its init_headers work is done by write_whole or, failing that, in __call__.
        self.after = after
        self.body = body
        self.status_code = status
        self.media_type = JSON
        self.background = None
        self.fields = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if not write_whole(scope, self.status_code, self.fields, JSON, self.body):
                self.init_headers(self.fields)
                await super().__call__(scope, receive, send)
        finally:
            self.after()


def _finish(rt: Runtime, record: UsageRecord, started: float, dispatch: Dispatch | None, ticket: Ticket | None,
            headers: dict[str, str]) -> Callable[[], None]:
    """The one place a whole-body request ends: timings now (the overhead is a response header), the
    bookkeeping once the response is sent, so the client does not wait for it."""
    elapsed = time.perf_counter() - started
    record.latency_ms = elapsed * 1000
    overhead = max(0.0, elapsed - (dispatch.waited_s if dispatch else 0.0))
    headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    return functools.partial(_account, rt, record, ticket, overhead, dispatch)


def _account(rt: Runtime, record: UsageRecord, ticket: Ticket | None, overhead: float,
             dispatch: Dispatch | None) -> None:
    """The usage row goes to the ledger, the real usage settles the limits the request reserved,
    and its numbers go to observers. Hedge losers that reached their upstream get rows of their own."""
    losers = _hedge_rows(record, dispatch) if dispatch is not None and dispatch.hedge_losers else ()
    rt.limits.settle(ticket, record, losers)
    rt.active -= 1
    rt.sink.submit(record)
    for row in losers:
        rt.sink.submit(row)
        rt.obs.hedge_lost(row)
    rt.obs.request_finished(record, overhead)


def _hedge_rows(record: UsageRecord, dispatch: Dispatch) -> list[UsageRecord]:
    """The request that lost a hedge race was sent upstream, so it may have been billed: its row has
    the request's id plus ``-hedge``, status 499 (cancelled by the gateway), error_type ``hedge_lost``,
    and its usage if it had finished, else its estimated prompt tokens."""
    rows = []
    for n, (call, seconds, outcome) in enumerate(dispatch.hedge_losers):
        row = UsageRecord(request_id=f"{record.request_id}-hedge" + (f"{n + 1}" if n else ""),
                          created_at=record.created_at, key_name=record.key_name, model=record.model,
                          endpoint=record.endpoint, stream=record.stream, provider=call.target.provider,
                          upstream_model=call.target.model, status=499, latency_ms=seconds * 1000, attempts=1,
                          error_type="hedge_lost")
        _settle_outcome(row, call.target, outcome, dispatch.body)
        rows.append(row)
    return rows


def _describe(record: UsageRecord, headers: dict[str, str], dispatch: Dispatch, outcome: Outcome | None) -> None:
    """Who answered (or was tried last), in the record and the response headers."""
    record.attempts = dispatch.attempts
    headers["x-gateway-attempts"] = str(dispatch.attempts)
    if outcome is not None:
        record.provider = outcome.upstream.provider.name
        record.upstream_model = outcome.call.target.model
    elif dispatch.last is not None:
        record.provider = dispatch.last.target.provider
        record.upstream_model = dispatch.last.target.model or record.model
    if record.provider:
        headers["x-gateway-provider"] = record.provider
        headers["x-gateway-upstream-model"] = record.upstream_model or ""




def _fail(rt: Runtime, record: UsageRecord, started: float, e: GatewayError | UpstreamError,
          headers: dict[str, str], dispatch: Dispatch | None, ticket: Ticket | None) -> Response:
    if dispatch is not None:
        _describe(record, headers, dispatch, None)
    record.status = e.status
    record.error_type = e.reason if isinstance(e, UpstreamError) else (e.code or e.type)
    done = _finish(rt, record, started, dispatch, ticket, headers)
    if isinstance(e, GatewayError):
        headers.update(e.headers)
    elif e.retry_after:
        headers["retry-after"] = e.retry_after
    return AccountedResponse(done, orjson.dumps(e.body()), e.status, headers)


def _cancelled(rt: Runtime, record: UsageRecord, started: float, dispatch: Dispatch | None,
               ticket: Ticket | None) -> None:
    """Cancelled from outside, which is the server's shutdown grace period running out: nobody will
    see an answer, but an upstream call under way may be billed, so the request still leaves its row
    (503 ``gateway_shutdown``, the prompt estimated) before the cancel goes on."""
    record.status, record.error_type = 503, "gateway_shutdown"
    if dispatch is not None:
        _describe(record, {}, dispatch, None)
        _bill_prompt(record, dispatch)
    _finish(rt, record, started, dispatch, ticket, {})()


def _forget(verdict: asyncio.Future[Ticket | None]) -> None:
    """A limits verdict nobody will read: cancelled if still on its way, its refusal marked as seen."""
    if not verdict.cancel() and not verdict.cancelled():
        verdict.exception()


def _bill_prompt(record: UsageRecord, dispatch: Dispatch) -> None:
    """A call stopped before its answer: if the upstream had the request, its prompt may be billed."""
    if dispatch.last is not None:
        _settle(record, dispatch.last.target, None, dispatch.body, 0)


async def _abandon(run: asyncio.Future[Outcome], record: UsageRecord, body: dict) -> None:
    """Stop an upstream call started ahead of the limits verdict that then refused the request. If
    the call had already got an answer, its usage goes into the refused request's row: it was spent."""
    outcome = await stop(run)
    if outcome is not None:
        _settle_outcome(record, outcome.call.target, outcome, body)


def _settle_outcome(record: UsageRecord, target: Target, outcome: Outcome | None, body: dict) -> None:
    """_settle from whatever the outcome holds: a reply's usage, a stream's usage or estimate so far,
    or (no outcome) the prompt estimate."""
    if outcome is not None and outcome.reply is not None:
        _settle(record, target, outcome.reply.usage, body, 0)
    elif outcome is not None and outcome.stream is not None:
        tr = outcome.stream.translator
        _settle(record, target, tr.usage, body, tr.estimated_completion_tokens())
    else:
        _settle(record, target, None, body, 0)


def _settle(record: UsageRecord, target: Target, usage: Usage | None, body: dict, estimated_completion: int) -> None:
    """Copy the upstream's usage and its cost into the record; estimate when the upstream sent none."""
    if usage is None:
        usage = Usage(prompt_tokens=estimate_prompt_tokens(body), completion_tokens=estimated_completion,
                      estimated=True)
    record.usage_estimated = usage.estimated
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.cached_tokens = usage.cached_tokens
    record.reasoning_tokens = usage.reasoning_tokens
    record.cost_usd = cost_usd(target, usage)


def _start(dispatch: Dispatch) -> tuple[asyncio.Task[Outcome], asyncio.Future[None]]:
    """The dispatch in a task of its own, and a future that the task resolves itself as it ends: a
    request waiting on that future resumes one loop step after the outcome is in, where waiting on
    the task through ``asyncio.wait`` takes two (and its sets, callbacks and timer handle)."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return asyncio.ensure_future(_run_then_wake(dispatch, ended)), ended


async def _run_then_wake(dispatch: Dispatch, ended: asyncio.Future[None]) -> Outcome:
    try:
        return await dispatch.run()
    finally:  # the task's result is set in this same step, before anyone woken here runs
        _resolve(ended)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _stream(rt: Runtime, dispatch: Dispatch, record: UsageRecord, started: float,
                  headers: dict[str, str], ticket: Ticket | None,
                  run: asyncio.Future[Outcome] | None, ended: asyncio.Future[None] | None) -> Response | SSEResponse:
    # Until the first bytes are ready, failures can still be retried elsewhere and answered with a
    # real HTTP status. If that takes longer than keepalive_s, the response starts with SSE comments
    # so proxies in between do not cut an idle connection; a final failure is then an error event.
    task, ended = (run, ended) if run is not None and ended is not None else _start(dispatch)
    if not ended.done():
        timer = asyncio.get_running_loop().call_later(dispatch.alias.keepalive_s, _resolve, ended)
        try:
            await ended
        finally:
            timer.cancel()
    done = task.done()
    if done and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, GatewayError | UpstreamError):
            return _fail(rt, record, started, exc, headers, dispatch, ticket)
        raise exc  # type: ignore[misc]
    outcome = task.result() if done else None
    if outcome is not None:
        _describe(record, headers, dispatch, outcome)
    headers["x-gateway-overhead-ms"] = f"{max(0.0, time.perf_counter() - started - dispatch.waited_s) * 1000:.3f}"
    relay = StreamRelay(rt, dispatch, task, record, started, ticket)
    return SSEResponse(headers, relay.chunks, relay.finish)


class StreamRelay:
    """Relays one stream to the client and finishes its accounting exactly once, however it ends:
    completed, failed, or abandoned by the client (even before the first chunk was asked for)."""

    def __init__(self, rt: Runtime, dispatch: Dispatch, task: asyncio.Future[Outcome], record: UsageRecord,
                 started: float, ticket: Ticket | None) -> None:
        self.rt = rt
        self.dispatch = dispatch
        self.task = task
        self.record = record
        self.started = started
        self.ticket = ticket
        self.status, self.error_type = 200, None
        self.outcome: Outcome | None = None
        self.waited = 0.0  # time spent waiting on upstream chunks
        self.finished = False
        self.direct: DirectBody | None = None
        self.translator: StreamTranslator | None = None
        self.pushing_s = 0.0  # time spent in _push during one push

    def _failed(self, e: GatewayError | UpstreamError) -> bytes:
        self.status = e.status
        self.error_type = e.reason if isinstance(e, UpstreamError) else (e.code or e.type)
        return error_event(GatewayError(e.status, e.message, e.type, e.code))

    async def chunks(self, direct: DirectBody | None) -> AsyncGenerator[bytes, None]:
        """The stream's bytes for the client. With ``direct`` and an upstream that can push, the steady
        state skips this generator: each read from the upstream is translated and written to the
        client in the upstream connection's data callback (``_push``), which saves a task switch,
        a future and four coroutine steps per read. A client that cannot keep up, the stream's end,
        and failures come back here, to the plain loop."""
        task, keepalive = self.task, self.dispatch.alias.keepalive_s
        while not task.done():
            await asyncio.wait((task,), timeout=keepalive)
            if not task.done():
                yield b": keep-alive\n\n"
        try:
            self.outcome = outcome = task.result()
        except (GatewayError, UpstreamError) as e:
            yield self._failed(e)
            return
        except Exception:  # a bug: still an OpenAI error event for the client and an honest row
            log.exception("unhandled error in stream request %s", self.record.request_id)
            yield self._failed(GatewayError(500, "The gateway hit an internal error.", "server_error",
                                            "internal_error"))
            return
        start = outcome.stream
        assert start is not None
        tr = start.translator
        self.record.ttft_ms = (time.perf_counter() - self.started) * 1000
        clock = time.perf_counter
        push = start.response.push if direct is not None else None
        self.direct, self.translator = direct, tr
        try:
            yield start.first
            if start.rest and not tr.done:  # the rest of the read the first event came in
                rest, start.rest = start.rest, b""
                out = tr.feed(rest)
                if not self._ended_with(out) and out:  # a short answer in one read: rest and end in one write
                    yield out
            while not tr.done:
                if push is not None and direct is not None and direct.ready():
                    t0, self.pushing_s = clock(), 0.0
                    await push(self._push)
                    self.waited += clock() - t0 - self.pushing_s
                    if tr.done:
                        break
                t0 = clock()
                try:
                    data = await anext(start.chunks)
                except StopAsyncIteration:
                    self.waited += clock() - t0
                    tail = tr.end()
                    if tail:
                        yield tail
                    break
                self.waited += clock() - t0
                out = tr.feed(data)
                if not self._ended_with(out) and out:
                    yield out
            if tr.error is not None:
                self.status, self.error_type = tr.error.status, tr.error.reason
        except UpstreamError as e:
            yield self._failed(e)
        except TRANSPORT_ERRORS as exc:
            yield self._failed(outcome.upstream.transport_error(exc))

    def _push(self, data: bytes) -> bool:
        """The push sink: translate one read and write it to the client; whether to go on pushing."""
        t0 = time.perf_counter()
        tr, direct = self.translator, self.direct
        assert tr is not None and direct is not None
        out = tr.feed(data)
        more = not self._ended_with(out) and (direct.write(out) if out else True) and not tr.done
        self.pushing_s += time.perf_counter() - t0
        return more

    def _ended_with(self, out: bytes) -> bool:
        """If the translator has seen the stream's end and the client can take bytes now, write this
        last piece together with the response's end (one write, not two) and say so."""
        direct = self.direct
        if self.translator is not None and self.translator.done and direct is not None and direct.ready():
            direct.end(out)
            return True
        return False

    async def finish(self, disconnected: bool) -> None:
        if self.finished:
            return
        self.finished = True
        task, record = self.task, self.record
        if not task.done():
            task.cancel()  # the client left while we were still waiting on the upstream
            with contextlib.suppress(BaseException):
                await task
        if self.outcome is None and task.done() and not task.cancelled() and task.exception() is None:
            self.outcome = task.result()  # answered just as the client left: still close and count it
        outcome = self.outcome
        if outcome is not None and outcome.stream is not None:
            await outcome.stream.aclose()
            outcome.state.end()
        if disconnected and not (outcome and outcome.stream and outcome.stream.translator.done):
            self.status, self.error_type = 499, "client_disconnect"
        _describe(record, {}, self.dispatch, outcome)
        record.status = self.status
        record.error_type = self.error_type
        if outcome is not None and outcome.stream is not None:
            _settle_outcome(record, outcome.call.target, outcome, self.dispatch.body)
        elapsed = time.perf_counter() - self.started
        record.latency_ms = elapsed * 1000
        _account(self.rt, record, self.ticket, max(0.0, elapsed - self.dispatch.waited_s - self.waited),
                 self.dispatch)


# models ---------------------------------------------------------------------------------------------


def _model_object(rt: Runtime, name: str) -> dict:
    alias = rt.config.models[name]
    return {"id": name, "object": "model", "created": rt.created, "owned_by": alias.targets[0].provider}


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        key = rt.authenticate(request.headers.get("authorization"))
    except GatewayError as e:
        rt.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    data = [_model_object(rt, m.name) for m in rt.allowed_models(key)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def get_model(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        key = rt.authenticate(request.headers.get("authorization"))
        alias = rt.resolve(request.path_params["model_id"], key)
    except GatewayError as e:
        if e.status == 401:
            rt.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    return Response(orjson.dumps(_model_object(rt, alias.name)), media_type=JSON)
