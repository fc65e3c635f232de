"""A chat upstream whose streams come word by word with a pause between, after a reasoning delta: what
a browser test needs to see tokens arrive (and reasoning shown apart) in the console's playground."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

WORDS = ["Paced ", "answer ", "one ", "two ", "three ", "four ", "five ", "six"]
PAUSE_S = 0.15


def make_app() -> Starlette:
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"]) + 3
        usage = {"prompt_tokens": prompt, "completion_tokens": len(WORDS), "total_tokens": prompt + len(WORDS)}
        head = {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"]}
        if not body.get("stream"):
            return Response(orjson.dumps({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}],
                "usage": usage}), media_type="application/json")

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": "", "reasoning_content": "Thinking it over."})
            for word in WORDS:
                await asyncio.sleep(PAUSE_S)
                yield chunk({"content": word})
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
