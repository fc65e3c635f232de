"""The dispatch stage for streams: wait for the first bytes, then relay the rest to the client.

Until the first bytes are ready, a failure can still be retried elsewhere and answered with a real
HTTP status. If that takes longer than the alias's keepalive_s, the response starts with SSE comments
so that proxies in between do not cut an idle connection; a final failure is then an error event.
Under ``[storage] durability = "strict"`` the stream's last event and the response's end wait until
its usage row is in the ledger's journal; every byte before them is relayed as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from adapters.base import StreamTranslator, UpstreamError
from adapters.errors import APIError
from proxy.dispatch import Dispatch, Outcome
from proxy.errors import GatewayError, client_gone, error_event, internal_error
from proxy.pipeline.account import describe
from proxy.pipeline.transaction import ClientWatch, StreamAnswer, Transaction
from proxy.upstream import TRANSPORT_ERRORS
from proxy.uvicorn_protocol import DirectBody

log = logging.getLogger("gateway")

Durable = Callable[[], Awaitable[None]]  # returns once every usage row submitted so far is on disk


class StreamTap(Protocol):
    """Sees every piece of a stream as it is relayed (the response cache keeps what a stream said)."""

    def feed(self, data: bytes) -> None: ...

    async def ended(self, completed: bool) -> None:
        """Once, at the stream's end: ``completed`` if it finished cleanly and the client had it all."""
        ...


async def open_stream(tx: Transaction, on_end: Callable[[Transaction, int, str | None], Awaitable[None]],
                      watch: ClientWatch | None = None, tap: StreamTap | None = None,
                      durable: Durable | None = None) -> StreamAnswer:
    """Start the dispatch and wait for its first bytes, at most keepalive_s; failures before that raise.
    ``on_end(tx, status, error_type)`` runs once when the stream is over. A client that hangs up during
    that wait (``watch``) stops the upstream call at once: 499, not noticed only at the first bytes.
    With ``durable`` (strict durability), the stream's last bytes wait for ``on_end`` and then ``durable()``."""
    dispatch = tx.dispatch
    assert dispatch is not None
    if watch is not None and watch.gone:
        raise client_gone()
    task, ended = _start(dispatch)
    if not ended.done():
        timer = asyncio.get_running_loop().call_later(dispatch.alias.keepalive_s, _resolve, ended)
        waiter = asyncio.current_task()
        if watch is not None:
            watch.waiting = waiter
        try:
            await ended
        except asyncio.CancelledError:
            task.cancel()
            if watch is None or not watch.gone or waiter is None:
                raise  # cancelled from outside: the server is shutting down
            waiter.uncancel()
            with contextlib.suppress(BaseException):
                await task  # the upstream connection is closed before the row is written
            tx.prompt_billed = True
            raise client_gone() from None
        finally:
            timer.cancel()
            if watch is not None:
                watch.waiting = None
    if task.done():
        tx.outcome = task.result()  # raises what the dispatch raised
        describe(tx.headers, dispatch, tx.outcome, tx.model)
    overhead = max(0.0, time.perf_counter() - tx.started - dispatch.waited_s)
    tx.headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    relay = StreamRelay(tx, task, on_end, tap, durable)
    return StreamAnswer(tx.headers, relay.chunks, relay.finish, relay.cut)


def _start(dispatch: Dispatch) -> tuple[asyncio.Task[Outcome], asyncio.Future[None]]:
    """The dispatch in a task of its own, and a future that the task resolves itself as it ends: a
    request waiting on that future resumes one loop step after the outcome is in, where waiting on
    the task itself through ``asyncio.wait`` takes two."""
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


class StreamRelay:
    """Relays one stream to the client and ends it exactly once, however it ends: completed, failed,
    or abandoned by the client (even before the first chunk was asked for)."""

    def __init__(self, tx: Transaction, task: asyncio.Task[Outcome],
                 on_end: Callable[[Transaction, int, str | None], Awaitable[None]],
                 tap: StreamTap | None = None, durable: Durable | None = None) -> None:
        self.tx = tx
        self.durable = durable
        self.held = b""  # strict durability: the stream's end, sent once its row is on disk (``_last``)
        self.tap = tap
        self.filter = tx.stream_filter  # output guardrails (proxy.guardrails.stream); None: bytes pass as they are
        self.task = task
        self.on_end = on_end
        self.status, self.error_type = 200, None
        self.finished = False
        self.direct: DirectBody | None = None
        self.translator: StreamTranslator | None = None
        self.pushing_s = 0.0  # time spent in _push during one push

    def _failed(self, e: APIError) -> bytes:
        self.status, self.error_type = e.status, e.error_type
        # param is not relayed mid-stream
        return error_event(GatewayError(e.status, e.message, e.type, e.code), self.tx.endpoint)

    async def chunks(self, direct: DirectBody | None) -> AsyncGenerator[bytes, None]:
        """The stream's bytes for the client. With ``direct`` and an upstream that can push, the steady
        state skips this generator: each read from the upstream is translated and written to the client
        in the upstream connection's data callback (``_push``), which saves a task switch per read. A
        client that cannot keep up, the stream's end, and failures come back here, to the plain loop."""
        task, tx = self.task, self.tx
        assert tx.dispatch is not None
        keepalive = tx.dispatch.alias.keepalive_s
        while not task.done():
            await asyncio.wait((task,), timeout=keepalive)
            if not task.done():
                yield b": keep-alive\n\n"
        try:
            tx.outcome = outcome = task.result()
        except APIError as e:
            async for piece in self._last(self._failed(e)):
                yield piece
            return
        except Exception:  # a bug: still an OpenAI error event for the client and an honest row
            log.exception("unhandled error in stream request %s", tx.request_id)
            async for piece in self._last(self._failed(internal_error())):
                yield piece
            return
        start = outcome.stream
        assert start is not None
        tr = start.translator
        tx.ttft_s = time.perf_counter() - tx.started
        clock = time.perf_counter
        push = start.response.push if direct is not None else None
        self.direct, self.translator = direct, tr
        tap, seen = self.tap, self._seen
        try:
            first = seen(start.first) if tap is not None or self.filter is not None else start.first
            if not (tr.done and self._hold(first)):
                yield first
            if start.rest and not tr.done and not self._blocked():  # the rest of the read the first event came in
                rest, start.rest = start.rest, b""
                out = tr.feed(rest)
                if tap is not None or self.filter is not None:
                    out = seen(out)
                if not self._ended_with(out) and out:  # a short answer in one read: rest and end in one write
                    yield out
            while not tr.done and not self._blocked():
                if push is not None and direct is not None and direct.ready():
                    t0, self.pushing_s = clock(), 0.0
                    await push(self._push)
                    tx.stream_waited_s += clock() - t0 - self.pushing_s
                    if tr.done or self._blocked():
                        break
                t0 = clock()
                try:
                    data = await anext(start.chunks)
                except StopAsyncIteration:
                    tx.stream_waited_s += clock() - t0
                    tail = tr.end()
                    if tap is not None or self.filter is not None:
                        tail = seen(tail)
                    if tail and not self._hold(tail):
                        yield tail
                    break
                tx.stream_waited_s += clock() - t0
                out = tr.feed(data)
                if tap is not None or self.filter is not None:
                    out = seen(out)
                if not self._ended_with(out) and out:
                    yield out
            if tr.error is not None:
                self.status, self.error_type = tr.error.status, tr.error.reason
        except UpstreamError as e:
            event = self._failed(e)
            if not self._hold(event):
                yield event
        except TRANSPORT_ERRORS as exc:
            event = self._failed(outcome.upstream.transport_error(exc))
            if not self._hold(event):
                yield event
        if self.durable is not None:
            async for piece in self._last(self.held):
                yield piece

    def _hold(self, data: bytes) -> bool:
        """Under strict durability, keep the stream's last bytes back for ``_last``; whether they were kept."""
        if self.durable is None:
            return False
        self.held += data
        return True

    async def _last(self, data: bytes) -> AsyncGenerator[bytes, None]:
        """The stream's last bytes. Under strict durability the row is written first (``finish``) and the
        last event and the response's end go out only once it is on disk; any events before that last
        one in ``data`` go out at once."""
        if self.durable is None:
            yield data
            return
        before, self.held = split_last_event(data)
        if before:
            yield before
        await _shielded(self.finish(False))
        await self.durable()
        data, self.held = self.held, b""
        direct = self.direct
        if direct is not None and direct.ready():
            direct.end(data)  # the last event and the chunked terminator in one write
        elif data:
            yield data

    def _push(self, data: bytes) -> bool:
        """The push sink: translate one read and write it to the client; whether to go on pushing."""
        t0 = time.perf_counter()
        tr, direct = self.translator, self.direct
        assert tr is not None and direct is not None
        out = tr.feed(data)
        if self.tap is not None or self.filter is not None:
            out = self._seen(out)
        more = (not self._ended_with(out) and (direct.write(out) if out else True) and not tr.done
                and not self._blocked())
        self.pushing_s += time.perf_counter() - t0
        return more

    def _seen(self, out: bytes) -> bytes:
        """A piece on its way to the client through the output guardrails, then seen by the cache's tap."""
        if self.filter is not None:
            out = self.filter.feed(out)
        if self.tap is not None:
            self.tap.feed(out)
        return out

    def _blocked(self) -> bool:
        """An output guardrail ended the stream (its last bytes said so): nothing more is relayed."""
        f = self.filter
        if f is None or not f.blocked:
            return False
        self.status, self.error_type = f.error.status, f.error.error_type
        return True

    def _ended_with(self, out: bytes) -> bool:
        """If the translator has seen the stream's end and the client can take bytes now, write this
        last piece together with the response's end (one write, not two) and say so. Under strict
        durability the piece is held back instead (``_last`` sends it)."""
        if self.translator is None or not self.translator.done:
            return False
        if self.durable is not None:
            return self._hold(out)
        direct = self.direct
        if direct is not None and direct.ready():
            direct.end(out)
            return True
        return False

    def cut(self) -> bytes:
        """Cut by the server (its shutdown grace ran out): the row says 503 ``gateway_shutdown`` and the
        client gets an error event to tell it from a finished answer (nothing if it had finished)."""
        if self.finished:  # strict durability: the row is written, its end was waiting on the journal
            return self.held
        if self.translator is not None and self.translator.done:
            return b""
        self.status, self.error_type = 503, "gateway_shutdown"
        self.tx.prompt_billed = True  # the upstream had the request: its prompt may be billed
        return error_event(GatewayError(503, "The gateway is shutting down; this answer was cut short.",
                                        "service_unavailable_error", "gateway_shutdown"), self.tx.endpoint)

    async def finish(self, disconnected: bool) -> None:
        if self.finished:
            return
        self.finished = True
        task, tx = self.task, self.tx
        if not task.done():
            task.cancel()  # the client left while we were still waiting on the upstream
            with contextlib.suppress(BaseException):
                await task
        if tx.outcome is None and task.done() and not task.cancelled() and task.exception() is None:
            tx.outcome = task.result()  # answered just as the client left: still close and count it
        outcome = tx.outcome
        if outcome is not None and outcome.stream is not None:
            await outcome.stream.aclose()
            outcome.state.end()
        if disconnected and not (outcome and outcome.stream and outcome.stream.translator.done):
            self.status, self.error_type = 499, "client_disconnect"
        self._blocked()
        if self.tap is not None:
            done = self.status == 200 and self.translator is not None and self.translator.done
            await self.tap.ended(done and self.translator is not None and self.translator.error is None)
        await self.on_end(tx, self.status, self.error_type)


def held_to_the_end(answer: StreamAnswer, durable: Durable | None) -> StreamAnswer:
    """A stream whose bytes are all ready (a cache hit's replay) ended as a relayed one is: under strict
    durability its row first, then its last event and the response's end once the row is on disk."""
    if durable is None:
        return answer

    async def chunks(direct: DirectBody | None) -> AsyncGenerator[bytes, None]:
        before, last = split_last_event(b"".join([piece async for piece in answer.chunks(None)]))
        if before:
            yield before
        await _shielded(answer.finish(False))
        await durable()
        yield last

    return StreamAnswer(answer.headers, chunks, answer.finish, answer.cut)


async def _shielded(finish: Awaitable[None]) -> None:
    """A stream's ``finish`` run from its body: a client leaving meanwhile (a cancel) must not stop it half
    way, since the response's own close then finds it begun and would not write the row."""
    await asyncio.shield(asyncio.ensure_future(finish))


def split_last_event(data: bytes) -> tuple[bytes, bytes]:
    """``data`` cut before its last SSE event (events end with a blank line): (the events before, the last)."""
    end = len(data.rstrip(b"\r\n"))
    lf, crlf = data.rfind(b"\n\n", 0, end), data.rfind(b"\n\r\n", 0, end)
    cut = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
    return data[:cut], data[cut:]
