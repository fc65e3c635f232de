"""An SSE response that notices a client disconnect at once, even while waiting on the upstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from starlette.types import Receive, Scope, Send

from proxy.uvicorn_protocol import DirectBody, direct_body, on_disconnect, start_chunked

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # tell nginx-style proxies not to buffer the stream
}


class SSEResponse:
    """Streams what ``body(direct)`` yields; ``direct`` is a ``DirectBody`` when the server allows
    writing body bytes outside ``send`` (the ``gateway.direct_write`` extension; else None), for a
    body that can push some of its bytes itself between yields. ``on_close(disconnected)`` runs
    exactly once afterwards, however the stream ended (completed, failed, client gone), and runs to
    its end even if the request is cancelled.

    A hang-up is noticed at once, even while waiting on the upstream: through the server's
    ``gateway.on_disconnect`` extension where there is one, since a hook costs nothing per stream;
    otherwise by a task that waits on ``receive()``."""

    def __init__(self, headers: dict[str, str], body: Callable[[DirectBody | None], AsyncGenerator[bytes, None]],
                 on_close: Callable[[bool], Awaitable[None]], on_cut: Callable[[], bytes] | None = None) -> None:
        self.headers = {**SSE_HEADERS, **headers}
        self.make_body = body
        self.body: AsyncGenerator[bytes, None] | None = None
        self.on_close = on_close
        self.on_cut = on_cut  # cancelled from outside mid-stream: the last bytes to send (an error event)
        self.started = False  # the response head is sent (or queued to be)
        self.disconnected = False
        self.completed = False
        self.streaming = False  # while True, a client hang-up cancels the relaying task
        self.task: asyncio.Task | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.task = task = asyncio.current_task()
        assert task is not None
        direct = direct_body(scope)
        self.body = body = self.make_body(direct)
        watcher = None
        if not on_disconnect(scope, self._client_left):  # no hook from the server: a task watches instead
            watcher = asyncio.ensure_future(self._watch(receive, task))
        self.streaming = True
        try:
            if self.disconnected:
                return  # gone before the first byte: nothing to send, only to close and account
            if not start_chunked(scope, 200, self.headers):  # the head without uvicorn's per-header work
                raw = [(k.encode(), v.encode()) for k, v in self.headers.items()]
                await send({"type": "http.response.start", "status": 200, "headers": raw})
            self.started = True
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.completed = True  # a hang-up after this point lost the client nothing
            self.streaming = False
            if direct is None or not direct.cycle.response_complete:  # not already ended by direct.end
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.disconnected = True
        except asyncio.CancelledError:
            if not (self.streaming and self.disconnected):
                await self._cut(send, direct)
                raise  # cancelled from outside (server shutdown): not ours to swallow
            task.uncancel()  # our own cancel, from _client_left or _watch: the client is gone
        finally:
            self.streaming = False
            if watcher is not None:
                watcher.cancel()
            # Shielded: a cancelled request still closes the upstream and writes its usage row.
            await asyncio.shield(asyncio.ensure_future(self._close(scope)))

    async def _cut(self, send: Send, direct: DirectBody | None) -> None:
        """Cancelled from outside (the shutdown grace ran out) mid-stream: end the response with the body's
        last words, an error event, so the client does not take a cut answer for a finished one."""
        if self.on_cut is None or not self.started or self.completed or self.disconnected:
            return
        event = self.on_cut()
        with contextlib.suppress(Exception):
            if direct is not None:
                if not direct.cycle.response_complete:
                    direct.end(event)  # written now, in this step: the server is about to close the connection
            elif event:
                async with asyncio.timeout(1):
                    await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _close(self, scope: Scope) -> None:
        if self.body is not None:
            await self.body.aclose()
        await self.on_close(self.disconnected and not self.completed)
        on_disconnect(scope, None)  # the scope would hold this response, and the body's DirectBody the scope

    def _client_left(self) -> None:
        self.disconnected = True
        if self.streaming:
            self.task.cancel()  # stop waiting on the upstream now, not at the next chunk

    async def _watch(self, receive: Receive, task: asyncio.Task) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self.streaming:
                    task.cancel()  # stop waiting on the upstream now, not at the next chunk
                return
