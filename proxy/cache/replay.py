"""A stored whole answer replayed as a chat.completion.chunk stream, as the upstream would have sent it."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from proxy.pipeline.transaction import StreamAnswer, Transaction
from proxy.uvicorn_protocol import DirectBody

DONE = b"data: [DONE]\n\n"


def chunks_of(body: dict[str, Any], include_usage: bool) -> list[bytes]:
    """The SSE events of one completion: per choice its role, its content and tool calls, its finish
    reason; then the usage chunk when the client asked for it, and [DONE]."""
    base = {"id": body.get("id", ""), "object": "chat.completion.chunk", "created": body.get("created", 0),
            "model": body.get("model", "")}
    if body.get("system_fingerprint") is not None:
        base["system_fingerprint"] = body["system_fingerprint"]
    events = []
    for n, choice in enumerate(body.get("choices") or ()):
        index = choice.get("index", n)
        message = choice.get("message") or {}
        deltas: list[dict[str, Any]] = [{"role": message.get("role", "assistant"), "content": ""}]
        if message.get("reasoning_content"):
            deltas.append({"reasoning_content": message["reasoning_content"]})
        if message.get("content"):
            deltas.append({"content": message["content"]})
        if message.get("refusal"):
            deltas.append({"refusal": message["refusal"]})
        for i, call in enumerate(message.get("tool_calls") or ()):
            deltas.append({"tool_calls": [{"index": i, "id": call.get("id"), "type": call.get("type", "function"),
                                           "function": call.get("function") or {}}]})
        for delta in deltas:
            events.append({**base, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                "finish_reason": None}]})
        events.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    if include_usage and body.get("usage") is not None:
        events.append({**base, "choices": [], "usage": body["usage"]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [DONE]


def replay_answer(tx: Transaction, on_end: Callable[[Transaction, int, str | None], Awaitable[None]]) -> StreamAnswer:
    """The stream answer for a hit: all its events in one write (they are ready), then its usage row."""
    assert tx.cached is not None and tx.request is not None
    data = b"".join(chunks_of(orjson.loads(tx.cached.body), tx.request.include_usage))
    state = {"sent": False, "ended": False}

    async def chunks(direct: DirectBody | None) -> AsyncGenerator[bytes, None]:
        yield data
        state["sent"] = True

    async def finish(disconnected: bool) -> None:
        if state["ended"]:
            return
        state["ended"] = True
        gone = disconnected and not state["sent"]
        await on_end(tx, 499 if gone else 200, "client_disconnect" if gone else None)

    tx.ttft_s = time.perf_counter() - tx.started  # every byte is ready: the first goes out now
    tx.headers["x-gateway-overhead-ms"] = f"{tx.ttft_s * 1000:.3f}"
    return StreamAnswer(tx.headers, chunks, finish)
