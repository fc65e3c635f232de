"""An SSE response that notices a client disconnect at once, even while waiting on the upstream."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
from starlette.types import Receive, Scope, Send

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer the stream
]


class SSEResponse:
    """Streams ``body``; ``on_close(disconnected)`` runs exactly once afterwards, however the stream
    ended (completed, failed, client gone), shielded from cancellation."""

    def __init__(self, headers: dict[str, str], body: AsyncGenerator[bytes, None],
                 on_close: Callable[[bool], Awaitable[None]]) -> None:
        self.headers = SSE_HEADERS + [(k.encode(), v.encode()) for k, v in headers.items()]
        self.body = body
        self.on_close = on_close
        self.disconnected = False
        self.completed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, receive, tg.cancel_scope)
                try:
                    async for chunk in self.body:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self.completed = True  # a hang-up after this point lost the client nothing
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    self.disconnected = True
                tg.cancel_scope.cancel()
        except OSError:
            self.disconnected = True
        finally:
            with anyio.CancelScope(shield=True):
                await self.body.aclose()
                await self.on_close(self.disconnected and not self.completed)

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return
