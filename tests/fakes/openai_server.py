"""A fake OpenAI-compatible upstream. The upstream model name picks the behaviour:

ok (anything else)  normal answer: "Hello <last user text>" word by word when streaming
fail-400/401/404    OpenAI error body with that status
fail-429            429 with Retry-After: 7
fail-500/503        5xx with an OpenAI error body
not-json            200 with an HTML body
slow                sleeps 3 s before answering
tools               a tool call (get_weather) whose arguments arrive in fragments
cut-stream          stream that stops mid-way without [DONE]
error-stream        stream that sends an in-band error event, then ends
split-stream        events split across writes in the middle of lines
comment-stream      interleaves ": OPENROUTER PROCESSING" comment lines
chars-<n>           stream: the answer in pieces of <n> characters (split inside words and placeholders)
slow-stream         one chunk every 50 ms, 400 chunks; records whether the client went away
leak-key            error message that echoes the provider key it was sent
delay-<ms>          answers after <ms> milliseconds (stream: before the response head)
hang-<ms>           answers after <ms> milliseconds unless the client leaves first; records which
flaky-<n>-<tag>     500 for the first <n> requests with this exact model name, then normal answers
alternate-<tag>     500 for every other request with this exact model name (the 1st, 3rd, ...)
floats-always       embeddings: float arrays even when asked for base64 (as Ollama, LM Studio, Infinity do)
ctx-limit           400 context_length_exceeded, as OpenAI reports a prompt over the context window
fail-429x           429 without Retry-After
stall-<ms>          stream: response head at once, first chunk after <ms> ms; records client_gone
late-<st>-<ms>      fails with status <st> after <ms> milliseconds
drop-stream         stream: three chunks 50 ms apart, then the connection drops mid-body (no terminator)
big-stream-<n>      stream: <n> chunks of 1,000 characters ("<i>:" then dots) back to back; records
                    "completed" once the last is handed to the server (for back-pressure tests)
leakall-<status>    that status (429: with the key as Retry-After) whose error body echoes every credential
                    header it was sent, and the last user text, in message, type, code, param, nested and
                    unknown members (a member name too), percent-encoded and base64-encoded
leakall-stream      stream: one chunk, then that error in-band (``data: {"id":..., "error": ...}``)

``POST /v1/responses`` is in tests/fakes/openai_responses.py.

POST /v1/completions (legacy text completions) answers "Hello <prompt>"; fail-<status> fails as above.
Every request is recorded (path, headers, body) in ``state.requests``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import openai_responses

UPSTREAM_SUFFIX = "-2024-07-18"  # the fake reports a dated model name; the gateway must hide it


class State:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.stream_outcomes: list[str] = []  # "completed" or "client_gone", for slow-stream
        self.call_outcomes: list[str] = []  # the same, for hang-<ms> (not streamed)
        self.counts: dict[str, int] = {}  # requests seen per model name

    def count(self, model: str) -> int:
        return sum(1 for r in self.requests if r["body"].get("model") == model)

    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _error(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def leaked_error(headers: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """An error object that repeats every credential the request carried, in every member it can."""
    sent = {k: v for k, v in headers.items() if any(w in k for w in ("auth", "key", "token"))}
    keys = [v.removeprefix("Bearer ") for v in sent.values()]
    echo = " ".join([*keys, last_user_text(messages)])
    return {"message": f"Incorrect API key provided: {echo}", "type": keys[0], "code": keys[0],
            "param": "; ".join(f"{k}: {v}" for k, v in sent.items()),
            "details": {"sent": sent, "nested": [echo, {"deeper": keys}], keys[0]: "a key as a member name"},
            "encoded": {"url": quote(echo, safe=""), "base64": base64.b64encode(keys[0].encode()).decode()}}


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text")
    return ""


def words_of(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def usage_for(messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages) + 3
    completion = len(words_of(text))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 1, "audio_tokens": 0}}


TOOL_ARGS = '{"city": "Paris", "unit": "celsius", "note": "says \\"hi\\""}'


def make_app() -> Starlette:
    state = State()

    async def chat(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw)
        state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        model = body["model"]
        state.counts[model] = state.counts.get(model, 0) + 1
        if model.startswith("flaky-"):
            failures = int(model.split("-")[1])
            if state.counts[model] <= failures:
                return _error(500, "flaky failure", "server_error")
        if model.startswith("alternate-") and state.counts[model] % 2:
            return _error(500, "every other request fails", "server_error")
        if model == "ctx-limit":
            return _error(400, "This model's maximum context length is 1000 tokens. However, your messages "
                          "resulted in 5000 tokens.", "invalid_request_error", "context_length_exceeded")
        if model == "fail-429x":
            return _error(429, "Rate limit reached", "requests", "rate_limit_exceeded")
        if model.startswith("delay-"):
            await asyncio.sleep(int(model[6:]) / 1000)
        if model.startswith("late-"):  # late-<status>-<ms>: fails with <status> after <ms>
            _, status, ms = model.split("-")
            await asyncio.sleep(int(ms) / 1000)
            return _error(int(status), f"late failure {status}", "server_error")
        if model.startswith("hang-"):  # a slow whole-body answer that notices its client leaving
            deadline = time.monotonic() + int(model[5:]) / 1000
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    state.call_outcomes.append("client_gone")
                    return Response(b"", 499)
                await asyncio.sleep(0.02)
            state.call_outcomes.append("completed")
        if model.startswith("fail-"):
            status = int(model[5:])
            if status == 429:
                return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                              {"retry-after": "7"})
            return _error(status, f"fake failure {status}", "invalid_request_error" if status < 500 else "server_error")
        if model == "leak-key":
            auth = request.headers.get("authorization", "")
            return _error(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}", "invalid_request_error",
                          "invalid_api_key")
        if model.startswith("leakall-") and model[8:].isdigit():
            err = leaked_error(request.headers, body["messages"])
            status = int(model[8:])
            return Response(orjson.dumps({"error": err, "sent": err["details"]["sent"]}), status,
                            {"retry-after": err["code"]} if status == 429 else None, media_type="application/json")
        if model == "not-json":
            return Response(b"<html>502 Bad Gateway</html>", 200, media_type="text/html")
        if model == "slow":
            await asyncio.sleep(3)
        text = "Hello " + last_user_text(body["messages"])
        usage = usage_for(body["messages"], text)
        ident, created, upstream_model = "chatcmpl-fake123", int(time.time()), model + UPSTREAM_SUFFIX
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            finish = "stop"
            if model == "tools":
                call = {"id": "call_abc", "type": "function",
                        "function": {"name": "get_weather", "arguments": TOOL_ARGS}}
                message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
                finish = "tool_calls"
            return Response(orjson.dumps({
                "id": ident, "object": "chat.completion", "created": created, "model": upstream_model,
                "system_fingerprint": "fp_fake", "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage}), media_type="application/json")
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        if model == "leakall-stream":
            return StreamingResponse(_leak_stream(ident, created, upstream_model,
                                                  leaked_error(request.headers, body["messages"])),
                                     media_type="text/event-stream")
        return StreamingResponse(_stream(state, model, upstream_model, ident, created, text, usage, include_usage),
                                 media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = orjson.loads(await request.body())
        state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if body["model"].startswith("fail-"):
            return _error(int(body["model"][5:]), "fake failure", "server_error")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or 8
        data = []
        for i, text in enumerate(inputs):
            vec = [round((len(str(text)) + j) / 100, 4) for j in range(dims)]
            emb: Any = vec
            if body.get("encoding_format") == "base64" and body["model"] != "floats-always":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(len(str(t).split()) for t in inputs)
        return Response(orjson.dumps({"object": "list", "data": data, "model": body["model"] + UPSTREAM_SUFFIX,
                                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
                        media_type="application/json")

    async def completions(request: Request) -> Response:
        """Legacy text completions: "Hello <prompt>"; fail-<status> as for chat."""
        body = orjson.loads(await request.body())
        state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        model = body["model"]
        if model.startswith("fail-"):
            return _error(int(model[5:]), f"fake failure {model[5:]}", "server_error")
        text = "Hello " + str(body["prompt"])
        prompt = len(str(body["prompt"]).split())
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words_of(text)),
                 "total_tokens": prompt + len(words_of(text))}
        head = {"id": "cmpl-fake123", "object": "text_completion", "created": int(time.time()),
                "model": model + UPSTREAM_SUFFIX}
        if not body.get("stream"):
            return Response(orjson.dumps({**head, "choices": [
                {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}], "usage": usage}),
                media_type="application/json")
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True

        async def events() -> AsyncIterator[bytes]:
            for word in words_of(text):
                choice = {"text": word, "index": 0, "logprobs": None, "finish_reason": None}
                yield b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
            choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
            yield b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
            if include_usage:
                yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def responses(request: Request) -> Response:
        return await openai_responses.responses(request, state)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/v1/responses", responses, methods=["POST"])])
    app.state.fake = state
    return app


def _chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None,
    }) + b"\n\n"


async def _leak_stream(ident: str, created: int, model: str, err: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _chunk(ident, created, model, {"role": "assistant", "content": ""})
    yield _chunk(ident, created, model, {"content": "Hello"})
    await asyncio.sleep(0.05)  # after the first chunks have been relayed: truly mid-stream
    yield b"data: " + orjson.dumps({"id": ident, "object": "error", "error": err}) + b"\n\n"


async def _stream(state: State, kind: str, model: str, ident: str, created: int, text: str,
                  usage: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    if not kind.startswith("stall-") and kind != "burst-stream":
        yield _chunk(ident, created, model, {"role": "assistant", "content": ""})
    if kind == "tools":
        yield _chunk(ident, created, model, {"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                                             "function": {"name": "get_weather", "arguments": ""}}]})
        for i in range(0, len(TOOL_ARGS), 7):
            yield _chunk(ident, created, model, {"tool_calls": [{"index": 0, "function": {
                "arguments": TOOL_ARGS[i:i + 7]}}]})
        yield _chunk(ident, created, model, {}, "tool_calls")
    elif kind.startswith("stall-"):
        try:
            await asyncio.sleep(int(kind[6:]) / 1000)
            yield _chunk(ident, created, model, {"role": "assistant", "content": ""})
            for word in words_of(text):
                yield _chunk(ident, created, model, {"content": word})
            yield _chunk(ident, created, model, {}, "stop")
            state.stream_outcomes.append("completed")
        except BaseException:
            state.stream_outcomes.append("client_gone")
            raise
    elif kind == "drop-stream":
        for i in range(3):
            yield _chunk(ident, created, model, {"content": f"w{i} "})
            await asyncio.sleep(0.05)
        raise ConnectionAbortedError("the fake drops the connection")  # the server closes it, body unfinished
    elif kind.startswith("big-stream-"):
        for i in range(int(kind[11:])):
            yield _chunk(ident, created, model, {"content": f"{i}:".ljust(1000, ".")})
        state.stream_outcomes.append("completed")
        yield _chunk(ident, created, model, {}, "stop")
    elif kind == "burst-stream":  # all the events but the usage and [DONE] in one write: a fast upstream's burst
        yield b"".join([_chunk(ident, created, model, {"role": "assistant", "content": ""})]
                       + [_chunk(ident, created, model, {"content": word}) for word in words_of(text)]
                       + [_chunk(ident, created, model, {}, "stop")])
    elif kind == "slow-stream":
        try:
            for i in range(400):
                yield _chunk(ident, created, model, {"content": f"w{i} "})
                await asyncio.sleep(0.05)
            state.stream_outcomes.append("completed")
        except BaseException:
            state.stream_outcomes.append("client_gone")
            raise
        return
    else:
        n = int(kind[6:]) if kind.startswith("chars-") and kind[6:].isdigit() else 0
        words = [text[i:i + n] for i in range(0, len(text), n)] if n else words_of(text)
        for i, word in enumerate(words):
            event = _chunk(ident, created, model, {"content": word})
            if kind == "cut-stream" and i == len(words) // 2:
                yield event[: len(event) // 2]
                return
            if kind == "error-stream" and i == 1:
                yield b'data: {"error": {"message": "upstream overloaded mid-stream", "type": "server_error", ' \
                      b'"param": null, "code": null}}\n\n'
                return
            if kind == "split-stream":
                yield event[:9]
                await asyncio.sleep(0.005)
                yield event[9:-1]
                await asyncio.sleep(0.005)
                yield event[-1:]
                continue
            if kind == "comment-stream":
                yield b": OPENROUTER PROCESSING\n\n"
            yield event
        yield _chunk(ident, created, model, {}, "stop")
    if include_usage:
        yield b"data: " + orjson.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                        "model": model, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"
