"""Anthropic Messages SSE -> OpenAI ``chat.completion.chunk`` SSE."""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.anthropic.response import ERROR_STATUS, FINISH_REASONS, anthropic_error, openai_id, usage_from
from adapters.base import StreamTranslator, UpstreamError, Usage, bad_response
from adapters.sse_decoder import SSEDecoder
from adapters.targets import ProviderConfig


class AnthropicStream(StreamTranslator):
    """Anthropic's named SSE events -> OpenAI ``chat.completion.chunk``s, each as it arrives.

    Each event is parsed once; chunks are assembled from a prebuilt prefix and suffix, so only the
    delta itself is serialized per event.
    """

    def __init__(self, provider: ProviderConfig, alias: str, include_usage: bool, request_id: str) -> None:
        self.provider = provider
        self.alias = alias
        self.include_usage = include_usage
        self.created = int(time.time())
        self.decoder = SSEDecoder()
        self.tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._set_id(openai_id(None, request_id))
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.tool_args: dict[int, bool] = {}  # content block index -> any argument fragment sent
        self.thinking: dict[int, list[str]] = {}  # content block index -> thinking text so far
        self.signatures: dict[int, str] = {}
        self.raw_usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.deltas = 0

    def _set_id(self, ident: str) -> None:
        self.id = ident
        self.head = (b'data: {"id":' + orjson.dumps(ident) + b',"object":"chat.completion.chunk","created":'
                     + str(self.created).encode() + b',"model":' + orjson.dumps(self.alias)
                     + b',"choices":[{"index":0,"delta":')

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (self.head + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":' + orjson.dumps(finish)
                + self.tail)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        return self._events(self.decoder.feed(data))

    def end(self) -> bytes:
        out = b""
        if not self.done:
            try:
                out = self._events(self.decoder.flush())
            except UpstreamError:
                out = b""  # an event cut off by the EOF: the stream was truncated, reported below
        if not self.done:
            self._settle_partial()
            raise UpstreamError(502, f"upstream {self.provider.name} stream ended before message_stop",
                                "bad_response", "upstream_error", "stream_truncated")
        return out

    def estimated_completion_tokens(self) -> int:
        return self.deltas

    def _events(self, events: list[tuple[str, bytes]]) -> bytes:
        out: list[bytes] = []
        for name, data in events:
            if name == "ping":
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise bad_response(self.provider, f"a stream event that is not JSON ({name})") from None
            if not isinstance(event, dict):
                raise bad_response(self.provider, f"a stream event that is not an object ({name})")
            chunk = self._event(event.get("type") or name, event)
            if chunk:
                out.append(chunk)
            if self.done:
                break
        return b"".join(out)

    def _event(self, kind: str, event: dict[str, Any]) -> bytes:
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_stop":
            return self._block_stop(event)
        if kind == "message_start":
            return self._message_start(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            return self._message_stop()
        if kind == "error":
            return self._error(event)
        return b""  # ping and event types newer than this code

    def _message_start(self, event: dict[str, Any]) -> bytes:
        message = event.get("message") or {}
        if isinstance(message.get("id"), str):
            self._set_id(openai_id(message["id"], ""))
        self._update_usage(message.get("usage"))
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, event: dict[str, Any]) -> bytes:
        index, block = event.get("index"), event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            n = self.tool_index[index] = len(self.tool_index)
            self.tool_args[index] = False
            return self._chunk({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                                "function": {"name": block.get("name"), "arguments": ""}}]})
        if kind == "text":
            return self._chunk({"content": block["text"]}) if block.get("text") else b""
        if kind == "thinking":
            text = block.get("thinking") or ""
            self.thinking[index] = [text]
            return self._chunk({"reasoning_content": text}) if text else b""
        if kind == "redacted_thinking":
            return self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data")}]})
        return b""  # server tools and their results have no OpenAI form

    def _block_delta(self, event: dict[str, Any]) -> bytes:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        index = event.get("index")
        if kind == "text_delta":
            self.deltas += 1
            return self._chunk({"content": delta.get("text") or ""})
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if not fragment or index not in self.tool_index:
                return b""
            self.deltas += 1
            self.tool_args[index] = True
            return self._chunk({"tool_calls": [{"index": self.tool_index[index], "function": {"arguments": fragment}}]})
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            self.deltas += 1
            self.thinking.setdefault(index, []).append(text)
            return self._chunk({"reasoning_content": text})
        if kind == "signature_delta":
            self.signatures[index] = self.signatures.get(index, "") + (delta.get("signature") or "")
        return b""

    def _block_stop(self, event: dict[str, Any]) -> bytes:
        index = event.get("index")
        if index in self.thinking:
            block = {"type": "thinking", "thinking": "".join(self.thinking.pop(index)),
                     "signature": self.signatures.pop(index, "")}
            return self._chunk({"thinking_blocks": [block]})
        if self.tool_args.get(index) is False:  # a call without arguments: still valid JSON for the client
            self.tool_args[index] = True
            return self._chunk({"tool_calls": [{"index": self.tool_index[index], "function": {"arguments": "{}"}}]})
        return b""

    def _message_delta(self, event: dict[str, Any]) -> bytes:
        self._update_usage(event.get("usage"))
        reason = (event.get("delta") or {}).get("stop_reason")
        if reason is None:
            return b""
        return self._chunk({}, FINISH_REASONS.get(reason, "stop"))

    def _message_stop(self) -> bytes:
        self.done = True
        if self.usage is None:
            self.usage = usage_from(self.raw_usage)
        out = b""
        if self.include_usage:
            out = b"data: " + orjson.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                            "model": self.alias, "choices": [],
                                            "usage": self.usage.to_openai()}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def _error(self, event: dict[str, Any]) -> bytes:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or "upstream stream error")
        self.error = anthropic_error(self.provider, ERROR_STATUS.get(err_type or "", 500), err_type, message, None)
        self.done = True
        self._settle_partial()
        return b"data: " + orjson.dumps(self.error.body()) + b"\n\n"

    def _update_usage(self, raw: Any) -> None:
        """Anthropic's usage numbers are cumulative: the latest value of each field is the total."""
        if not isinstance(raw, dict):
            return
        for key, value in raw.items():
            if value is not None:
                self.raw_usage[key] = value
        if "output_tokens" in raw and self.raw_usage:
            self.usage = usage_from(self.raw_usage)

    def _settle_partial(self) -> None:
        """A stream cut short still bills the prompt it read and at least the deltas it sent."""
        if not self.raw_usage:
            return
        usage = usage_from(self.raw_usage)
        usage.completion_tokens = max(usage.completion_tokens, self.deltas)
        self.usage = usage
