"""Library mode's side of the pipeline: a request from the program (``Inbound``) and its ``Answer`` read
back as dicts, as the HTTP edge (proxy.endpoints, proxy.sse_response) would have sent them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from proxy.library_types import error_for
from proxy.pipeline.transaction import Answer, ClientWatch, StreamAnswer, WholeAnswer

# A stream's relay runs ahead of its reader by at most this many chunks (the rest waits upstream).
READ_AHEAD = 64


class LibraryInbound:
    """One in-process request: its body is already a dict, its key the Gateway's ``api_key``."""

    __slots__ = ("endpoint", "authorization", "client_request_id", "watch", "body", "cache_control", "end_user")
    api_headers = session_id = None  # no client API headers, no sessions in-process

    def __init__(self, endpoint: str, body: dict[str, Any], api_key: str | None) -> None:
        self.endpoint = endpoint
        self.authorization = f"Bearer {api_key}" if api_key else None
        self.client_request_id: str | None = None
        self.cache_control: tuple[str | None, str | None] | None = None
        self.end_user: str | None = None  # library calls say their end user with `user=`
        self.watch = ClientWatch()
        self.body = body

    async def json(self, limit: int) -> dict[str, Any]:
        return self.body  # a copy is not needed: the pipeline reads the body, the caller built it for us


def answer_json(answer: Answer) -> tuple[dict[str, Any], dict[str, str]]:
    """A whole answer's JSON and headers, its bookkeeping run; an error answer raised as its typed error."""
    if not isinstance(answer, WholeAnswer):  # only a stream request gets a stream
        raise TypeError("expected a whole answer")
    try:
        if answer.status >= 400:
            raise error_for(answer.status, answer.body, answer.headers)
        return orjson.loads(answer.body), answer.headers
    finally:
        answer.after()  # what the HTTP edge runs once the answer is sent: the usage row, metrics


class StreamRelay:
    """Relays one stream answer in one task on the gateway's loop, as SSEResponse does for HTTP (its
    timeouts and cancellation belong to one task), into a queue its reader takes chunks from."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.queue: asyncio.Queue[Any] = asyncio.Queue(READ_AHEAD)
        self.task: asyncio.Task[None] | None = None
        self.reading = True

    def start(self) -> StreamRelay:
        if isinstance(self.answer, StreamAnswer):
            self.task = asyncio.ensure_future(self._relay(self.answer))
        return self

    async def next(self) -> dict[str, Any] | None:
        """The next chunk's JSON; None at the end; a typed error for an error event."""
        answer = self.answer
        if isinstance(answer, WholeAnswer):  # refused before the stream started: an error (or a cached JSON)
            self.answer = _DONE
            answer_json(answer)  # raises its typed error
            return None
        if answer is _DONE:
            return None
        item = await self.queue.get()
        if item is _DONE:
            self.answer = _DONE
            if self.task is not None:
                await asyncio.shield(self.task)  # its row is accounted before the reader hears the end
            return None
        if isinstance(item, BaseException):
            self.answer = _DONE
            raise item
        return item

    async def close(self) -> None:
        """The reader is done (or gave up): an unfinished stream stops upstream and its row says 499."""
        self.reading = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @property
    def headers(self) -> dict[str, str]:
        return self.answer.headers if isinstance(self.answer, StreamAnswer | WholeAnswer) else {}

    async def _relay(self, answer: StreamAnswer) -> None:
        body = answer.chunks(None)
        completed = False
        try:
            buffer = b""
            async for data in body:
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    await self._event(event)
            completed = True
            await self.queue.put(_DONE)
        except asyncio.CancelledError:
            pass  # the reader left: the upstream call is closed below, as for a client that hangs up
        finally:
            # Shielded: a cancelled relay still closes the upstream and writes its usage row.
            await asyncio.shield(asyncio.ensure_future(self._close(body, answer, completed)))

    async def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            raw = orjson.loads(payload)
            if isinstance(raw, dict) and "error" in raw and "choices" not in raw:
                code = raw["error"].get("code") if isinstance(raw["error"], dict) else None
                await self.queue.put(error_for(_STREAM_ERROR_STATUS.get(code, 502), raw))
            else:
                await self.queue.put(raw)

    async def _close(self, body: Any, answer: StreamAnswer, completed: bool) -> None:
        await body.aclose()
        await answer.finish(not completed)


_DONE: Any = object()
# An error event carries no status: the status its code stands for where the gateway has one, else 502.
_STREAM_ERROR_STATUS = {"gateway_shutdown": 503, "timeout": 504, "stream_timeout": 504}
