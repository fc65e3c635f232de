"""The fake OpenAI server's ``POST /v1/responses`` (Responses API), in its real wire format.

The model picks the behaviour: ``ok`` (anything else) answers "Hello <input text>" (word by word when
streamed, with every typed event OpenAI sends); ``tools`` calls get_weather; ``fail-400`` is an OpenAI
400; ``fail-stream`` streams one delta and then ``response.failed``. Requests are recorded with the
chat ones in ``state.requests``. The usage: input = words of the input + 3 (2 of them cached).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

UPSTREAM_SUFFIX = "-2025-04-14"


def input_text(body: dict[str, Any]) -> str:
    given = body.get("input")
    if isinstance(given, str):
        return given
    texts = []
    for item in given or ():
        content = item.get("content")
        if item.get("role") == "user" and isinstance(content, str):
            texts.append(content)
        elif item.get("role") == "user" and isinstance(content, list):
            texts += [p.get("text", "") for p in content if p.get("type") == "input_text"]
    return texts[-1] if texts else ""


def response(body: dict[str, Any], output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    words = len(input_text(body).split()) + 3
    out_words = sum(len(json.dumps(i).split()) for i in output)
    return {"id": "resp_fake1", "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": body["model"] + UPSTREAM_SUFFIX,
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [{"strict": True, "description": None, **t} for t in body.get("tools") or []
                      if t.get("type") == "function"],
            "top_p": 1.0, "truncation": "disabled", "metadata": {},
            "usage": {"input_tokens": words, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                      "output_tokens": out_words, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": words + out_words}}


def output_for(body: dict[str, Any]) -> list[dict[str, Any]]:
    if body["model"] == "tools":
        return [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                 "arguments": '{"city":"Paris"}', "status": "completed"}]
    text = "Hello " + input_text(body)
    return [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}]


def event(seq: list[int], kind: str, **fields: Any) -> bytes:
    data = {"type": kind, "sequence_number": seq[0], **fields}
    seq[0] += 1
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(body: dict[str, Any]) -> AsyncIterator[bytes]:
    seq = [0]
    output = output_for(body)
    start = response(body, [], "in_progress")
    del start["usage"]
    yield event(seq, "response.created", response=start)
    yield event(seq, "response.in_progress", response=start)
    for index, item in enumerate(output):
        if item["type"] == "function_call":
            yield event(seq, "response.output_item.added", output_index=index, item={**item, "arguments": ""})
            yield event(seq, "response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=item["arguments"])
            yield event(seq, "response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"])
        else:
            text = item["content"][0]["text"]
            yield event(seq, "response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            at = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event(seq, "response.content_part.added", **at, part=part)
            for word in re.findall(r"\S+\s*", text):
                yield event(seq, "response.output_text.delta", **at, delta=word, logprobs=[])
                if body["model"] == "fail-stream":
                    failed = response(body, [], "failed") | {"error": {"code": "server_error",
                                                                       "message": "The model failed."}}
                    yield event(seq, "response.failed", response=failed)
                    return
            yield event(seq, "response.output_text.done", **at, text=text, logprobs=[])
            yield event(seq, "response.content_part.done", **at, part={**part, "text": text})
        yield event(seq, "response.output_item.done", output_index=index, item=item)
    yield event(seq, "response.completed", response=response(body, output))


async def responses(request: Request, state: Any) -> Response:
    body = json.loads(await request.body())
    state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
    if body["model"] == "fail-400":
        return Response(json.dumps({"error": {"message": "fake failure 400", "type": "invalid_request_error",
                                              "param": "input", "code": None}}), 400, media_type="application/json")
    if body.get("stream"):
        return StreamingResponse(stream(body), media_type="text/event-stream")
    return Response(json.dumps(response(body, output_for(body))), media_type="application/json")
