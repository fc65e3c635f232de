"""Gemini streamGenerateContent SSE -> OpenAI ``chat.completion.chunk`` SSE."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from adapters.base import StreamTranslator, UpstreamError, Usage, bad_response
from adapters.gemini.response import completion_id, finish_reason, google_error, images_of, split_parts, usage_of
from adapters.sse_decoder import SSEDecoder
from adapters.targets import ProviderConfig

_BARE_JSON_AT_START = re.compile(rb"[ \t]*[\[{]")
_BARE_JSON_AFTER_NL = re.compile(rb"\n[ \t]*[\[{]")


class _Choice:
    __slots__ = ("started", "tools", "finished")

    def __init__(self) -> None:
        self.started = False
        self.tools = 0  # tool calls so far: the OpenAI index of the next one
        self.finished = False


class GeminiStream(StreamTranslator):
    """Gemini SSE (``data: <GenerateContentResponse>``, no [DONE]) -> OpenAI chat.completion.chunk events.

    Every Gemini event is parsed (each is one small JSON object); each becomes at most two chunks per
    candidate: one delta (role on the first, reasoning_content, content, whole tool calls) and one
    finish chunk. The stream is complete only when the upstream closes after a finishReason: ``end``
    then adds the usage chunk (if asked for) and [DONE]. Errors may arrive as ``data: {"error":...}`` or
    as bare (often pretty-printed) JSON lines outside SSE framing; both become an OpenAI error event.
    """

    def __init__(self, provider: ProviderConfig, alias: str, include_usage: bool) -> None:
        self.provider = provider
        self.alias = alias
        self.include_usage = include_usage
        self.decoder = SSEDecoder()
        self.created = int(time.time())
        self.head = b""  # the chunk prefix up to "choices": fixed by the first event (it carries the id)
        self.tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self.choices: dict[int, _Choice] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.chars = 0
        self.line_start = True
        self.bare: bytearray | None = None  # bytes of a JSON value sent outside SSE framing

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        for _, payload in self.decoder.feed(data):
            self.event(payload, out)
            if self.done:
                return b"".join(out)
        self.collect_bare(data, out)
        self.line_start = data.endswith(b"\n")
        return b"".join(out)

    def end(self) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        for _, payload in self.decoder.flush():
            self.event(payload, out)
            if self.done:
                return b"".join(out)
        if self.bare is not None:
            raise bad_response(self.provider, "a stream with a malformed JSON body")
        finished = [c for c in self.choices.values() if c.finished]
        if not finished or len(finished) != len(self.choices):
            raise UpstreamError(502, f"upstream {self.provider.name} stream ended before a finishReason",
                                "bad_response", "upstream_error", "stream_truncated")
        if self.include_usage and self.usage is not None:
            out.append(self.head + b'[],"usage":' + orjson.dumps(self.usage.to_openai()) + b"}\n\n")
        out.append(b"data: [DONE]\n\n")
        self.done = True
        return b"".join(out)

    def estimated_completion_tokens(self) -> int:
        return (self.chars + 3) // 4

    # events -----------------------------------------------------------------------------------------

    def event(self, payload: bytes, out: list[bytes]) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise bad_response(self.provider, "a stream event that is not JSON") from None
        if isinstance(event, list) and len(event) == 1:
            event = event[0]
        if not isinstance(event, dict):
            raise bad_response(self.provider, "a stream event that is not a JSON object")
        if "error" in event and "candidates" not in event:
            self.fail(event, out)
            return
        if not self.head:
            self.head = (b'data: {"id":' + orjson.dumps(completion_id(event)) + b',"object":"chat.completion.chunk",'
                         b'"created":' + str(self.created).encode() + b',"model":' + orjson.dumps(self.alias)
                         + b',"choices":')
        if "usageMetadata" in event:
            self.usage = usage_of(event["usageMetadata"])
        candidates = event.get("candidates")
        if isinstance(candidates, list) and candidates:
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    self.candidate(candidate, position, out)
        elif isinstance(event.get("promptFeedback"), dict) and event["promptFeedback"].get("blockReason"):
            state = self.choices.setdefault(0, _Choice())
            self.delta(0, state, [], [], [], out)
            self.finish(0, state, "content_filter", out)

    def candidate(self, candidate: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = candidate.get("index")
        index = index if isinstance(index, int) else position
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = _Choice()
        if state.finished:
            return
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        text, thoughts, calls = split_parts(parts)
        self.delta(index, state, text, thoughts, calls, out)
        images = images_of(parts)
        if images:  # after the delta that opened the message (role), in OpenRouter's delta shape
            self.chunk(index, {"images": images}, None, out)
        reason = candidate.get("finishReason")
        if reason:
            self.finish(index, state, finish_reason(reason, state.tools > 0), out)

    def delta(self, index: int, state: _Choice, text: list[str], thoughts: list[str], calls: list[dict[str, Any]],
              out: list[bytes]) -> None:
        delta: dict[str, Any] = {}
        if not state.started:
            state.started = True
            delta["role"] = "assistant"
            if not text:
                delta["content"] = None if calls else ""
        if thoughts:
            delta["reasoning_content"] = "".join(thoughts)
            self.chars += len(delta["reasoning_content"])
        if text:
            delta["content"] = "".join(text)
            self.chars += len(delta["content"])
        if calls:
            indexed = []
            for call in calls:
                indexed.append({"index": state.tools, **call})
                state.tools += 1
                self.chars += len(call["function"]["arguments"])
            delta["tool_calls"] = indexed
        if delta:
            self.chunk(index, delta, None, out)

    def finish(self, index: int, state: _Choice, reason: str, out: list[bytes]) -> None:
        state.finished = True
        self.chunk(index, {}, reason, out)

    def chunk(self, index: int, delta: dict[str, Any], finish: str | None, out: list[bytes]) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(self.head + orjson.dumps([choice]) + self.tail)

    def fail(self, event: Any, out: list[bytes]) -> None:
        err = event.get("error") if isinstance(event, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        self.error = google_error(self.provider, code if isinstance(code, int) else 500, event)
        out.append(b"data: " + orjson.dumps(self.error.body()) + b"\n\n")
        self.done = True

    def collect_bare(self, data: bytes, out: list[bytes]) -> None:
        """Gather a JSON value sent without ``data:`` (Google's error body inside a 200 stream)."""
        if self.bare is None:
            if self.line_start and _BARE_JSON_AT_START.match(data):
                start = 0
            else:
                m = _BARE_JSON_AFTER_NL.search(data)
                if m is None:
                    return
                start = m.start() + 1
            self.bare = bytearray(data[start:])
        else:
            self.bare += data
        try:
            value = orjson.loads(self.bare)
        except orjson.JSONDecodeError:
            return  # not complete yet
        self.bare = None
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, dict) and "error" in value:
            self.fail(value, out)
        else:
            raise bad_response(self.provider, "a stream with JSON outside its events")
