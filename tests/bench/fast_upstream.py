"""A zero-delay fake OpenAI upstream for `make bench`: as cheap as possible, so its CPU is a stable baseline.

Raw ASGI on uvicorn (uvloop + httptools), every answer prebuilt as bytes once per model name:

POST /v1/chat/completions  non-stream: a tiny chat.completion
                           "stream": true: N content chunks, a finish chunk, a usage chunk when
                           stream_options.include_usage is true, then [DONE]; N is the number the
                           model name ends with ("fast-200" -> 200), else 5. One write per event,
                           as a real provider flushes each token. A name ending in "-paced"
                           ("fast-50-paced") spaces the events PACE_S apart, so each one reaches
                           the reader on its own, as tokens from a real model do.
POST /v1/embeddings        one 8-dimension embedding
GET  /stats                {"requests": <POSTs answered so far>}, for the driver's bookkeeping

Run: python tests/bench/fast_upstream.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CREATED = 1_700_000_000
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
DEFAULT_CHUNKS = 5
PACE_S = 0.002  # between the events of a "-paced" stream


def chat_body(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    })


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(model: str, delta: dict[str, Any], finish: str | None, usage: Any = None, choices: bool = True) -> bytes:
    return _event({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
        "usage": usage,
    })


def stream_events(model: str, n: int) -> tuple[list[bytes], bytes]:
    """The events of an n-chunk stream, and the usage event sent only when include_usage is asked."""
    # Distinct contents: LiteLLM ends a stream that repeats one chunk 100 times as a "repeating model".
    events = [_chunk(model, {"role": "assistant", "content": "t0 "}, None)]
    events += [_chunk(model, {"content": f"t{i} "}, None) for i in range(1, n)]
    events.append(_chunk(model, {}, "stop"))
    usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
    return events, _chunk(model, {}, None, usage=usage, choices=False)


def chunks_for(model: str) -> int:
    tail = model.removesuffix("-paced").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() and 0 < int(tail) <= 10_000 else DEFAULT_CHUNKS


def embeddings_body(model: str) -> bytes:
    return orjson.dumps({
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.01 * i for i in range(8)]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    })


def error_body(status: int, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                           "code": None}})


class FastUpstream:
    def __init__(self) -> None:
        self.requests = 0
        self._chat: dict[str, bytes] = {}
        self._streams: dict[str, tuple[list[bytes], bytes]] = {}
        self._embeddings: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else is served
        path = scope["path"]
        if scope["method"] == "GET" and path == "/stats":
            await self._reply(send, 200, orjson.dumps({"requests": self.requests}))
            return
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/embeddings"):
            await self._reply(send, *error_body(404, f"Unknown path {path}"))
            return
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
            model = body["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self._reply(send, *error_body(400, "We could not parse the JSON body of your request."))
            return
        self.requests += 1
        if path == "/v1/embeddings":
            await self._reply(send, 200, self._cached(self._embeddings, model, embeddings_body))
        elif "messages" not in body:
            await self._reply(send, *error_body(400, "Missing required parameter: 'messages'."))
        elif body.get("stream") is True:
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True
            await self._stream(send, model, include_usage)
        else:
            await self._reply(send, 200, self._cached(self._chat, model, chat_body))

    @staticmethod
    def _cached(cache: dict[str, bytes], model: str, build: Callable[[str], bytes]) -> bytes:
        body = cache.get(model)
        if body is None:
            body = cache[model] = build(model)
        return body

    async def _reply(self, send: Send, status: int, body: bytes) -> None:
        headers = JSON_HEADERS + [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, send: Send, model: str, include_usage: bool) -> None:
        prepared = self._streams.get(model)
        if prepared is None:
            prepared = self._streams[model] = stream_events(model, chunks_for(model))
        events, usage = prepared
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        pace = PACE_S if model.endswith("-paced") else 0.0
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if pace:
                await asyncio.sleep(pace)
        if include_usage:
            await send({"type": "http.response.body", "body": usage, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(FastUpstream(), host=args.host, port=args.port, loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
