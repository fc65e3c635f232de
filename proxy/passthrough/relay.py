"""A pass-through answer whose bytes are relayed as they come (audio/speech, file content, an SSE
transcription): never held whole, and accounted once when it ends, however it ends."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from adapters.base import Reply, Usage
from proxy.passthrough.dispatch import Passed
from proxy.passthrough.usage import speech_usage
from proxy.pipeline.account import describe
from proxy.pipeline.transaction import StreamAnswer, Transaction
from proxy.upstream import TRANSPORT_ERRORS
from proxy.uvicorn_protocol import DirectBody

OnEnd = Callable[[Transaction, int, str | None], Awaitable[None]]


class UpstreamCut(ConnectionError):
    """The upstream failed mid-body: the client's response is cut (no chunked terminator), never ended
    as if it were whole."""


def open_relay(tx: Transaction, outcome: Passed, on_end: OnEnd) -> StreamAnswer:
    assert tx.dispatch is not None
    describe(tx.headers, tx.dispatch, outcome, tx.model)
    overhead = max(0.0, time.perf_counter() - tx.started - tx.dispatch.waited_s)
    tx.headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    headers = {**tx.headers, "content-type": outcome.content_type}
    if outcome.disposition is not None:
        headers["content-disposition"] = outcome.disposition
    relay = BytesRelay(tx, outcome, on_end)
    return StreamAnswer(headers, relay.chunks, relay.finish)


class BytesRelay:
    def __init__(self, tx: Transaction, outcome: Passed, on_end: OnEnd) -> None:
        self.tx = tx
        self.outcome = outcome
        self.on_end = on_end
        self.status, self.error_type = 200, None
        self.complete = False
        self.finished = False

    async def chunks(self, direct: DirectBody | None) -> AsyncGenerator[bytes, None]:
        tx, response = self.tx, self.outcome.response
        assert response is not None
        tx.ttft_s = time.perf_counter() - tx.started
        clock = time.perf_counter
        body = response.chunks
        while True:
            t0 = clock()
            try:
                data = await anext(body)
            except StopAsyncIteration:
                break
            except TRANSPORT_ERRORS as exc:
                error = self.outcome.upstream.transport_error(exc)
                self.status, self.error_type = error.status, error.error_type
                raise UpstreamCut(error.message) from None
            finally:
                tx.stream_waited_s += clock() - t0
            yield data
        self.complete = True

    async def finish(self, disconnected: bool) -> None:
        if self.finished:
            return
        self.finished = True
        tx, outcome = self.tx, self.outcome
        assert outcome.response is not None and tx.request is not None
        with contextlib.suppress(Exception):
            outcome.response.close()  # unfinished: the connection is closed, so the upstream stops sending
        if tx.endpoint == "audio.speech":
            usage = speech_usage(tx.request.body, tx.request.prompt_estimate)
        elif tx.endpoint in ("files", "batches"):
            usage = Usage()
        else:
            usage = Usage(prompt_tokens=tx.request.prompt_estimate, estimated=True)
        outcome.reply = Reply(b"", usage)
        if disconnected and not self.complete and self.error_type is None:
            self.status, self.error_type = 499, "client_disconnect"
        await self.on_end(tx, self.status, self.error_type)
