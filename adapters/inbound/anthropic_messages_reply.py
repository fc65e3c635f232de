"""The internal OpenAI chat answer -> Anthropic Messages: a whole message, or the Messages SSE events.

Stop reasons: stop -> end_turn, length -> max_tokens, tool_calls -> tool_use, content_filter -> refusal.
Usage: Anthropic's ``input_tokens`` counts only uncached input, so it is the prompt less cached
tokens, which are ``cache_read_input_tokens``. Reasoning becomes thinking blocks; ``thinking_blocks``
(signed, as the Anthropic and Gemini adapters give them) keep their signatures.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.base import StreamTranslator, Usage
from adapters.inbound.stream_bases import FromChatStream

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}

# HTTP status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_event(status: int, message: str) -> bytes:
    return sse("error", error_body(status, message))


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_id(chat_id: Any, request_id: str) -> str:
    ident = chat_id if isinstance(chat_id, str) and chat_id else request_id
    return ident if ident.startswith("msg_") else "msg_" + ident.removeprefix("chatcmpl-")


def usage_of(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    return {"input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens), "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_tokens, "output_tokens": usage.completion_tokens}


def thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = []
    for block in message.get("thinking_blocks") or ():
        if isinstance(block, dict) and block.get("type") == "thinking":
            blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                           "signature": block.get("signature") or ""})
        elif isinstance(block, dict) and block.get("type") == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
    if not blocks and isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    return blocks


def tool_input(arguments: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(chat: dict[str, Any], alias: str, usage: Usage | None, request_id: str) -> dict[str, Any]:
    """A chat completion body -> the Messages response body."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = thinking_blocks(message)
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            content.append({"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or "",
                            "input": tool_input(fn.get("arguments"))})
    return {"id": message_id(chat.get("id"), request_id), "type": "message", "role": "assistant", "model": alias,
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage_of(usage)}


class MessagesFromChat(FromChatStream):
    """Wraps a target's chat stream translator: its OpenAI chunks -> Messages events, as they come.

    Block by block: a new kind of delta (thinking, text, a tool call) closes the open block and opens
    its own. Usage arrives in the last chunk, so ``message_start`` carries zeros and ``message_delta``
    the whole usage (the SDKs take its values over message_start's).
    """

    def __init__(self, inner: StreamTranslator, alias: str, request_id: str) -> None:
        super().__init__(inner, request_id)
        self.alias = alias
        self.index = -1  # the open block's index; -1 before the first
        self.open: str | None = None  # the open block's kind: thinking, text, tool:<n>
        self.tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self.stop_reason = "end_turn"

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("error"), dict):
            return self._failed(chunk["error"])
        out = [] if self.started else [self._start(chunk)]
        for delta, finish_reason in self._deltas(chunk):
            out.extend(self._delta(delta))
            if finish_reason:
                self.stop_reason = STOP_REASONS.get(finish_reason, "end_turn")
        return b"".join(out)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message = {"id": message_id(chunk.get("id"), self.request_id), "type": "message", "role": "assistant",
                   "model": self.alias, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return sse("message_start", {"type": "message_start", "message": message}) + sse("ping", {"type": "ping"})

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = kind
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            if self.open != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._block_delta(self.index, {"type": "thinking_delta", "thinking": reasoning}))
        for block in delta.get("thinking_blocks") or ():
            out += self._thinking_block(block)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(self._block_delta(self.index, {"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out

    def _thinking_block(self, block: Any) -> list[bytes]:
        """A whole signed block at the end of its reasoning deltas (see adapters.anthropic)."""
        if not isinstance(block, dict):
            return []
        if block.get("type") == "redacted_thinking":
            redacted = {"type": "redacted_thinking", "data": block.get("data") or ""}
            return self._open("redacted", redacted) + self._close()
        out: list[bytes] = []
        if self.open != "thinking":
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            if block.get("thinking"):
                out.append(self._block_delta(self.index, {"type": "thinking_delta", "thinking": block["thinking"]}))
        if block.get("signature"):
            out.append(self._block_delta(self.index, {"type": "signature_delta", "signature": block["signature"]}))
        return out + self._close()

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        n = call.get("index", 0)
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        out: list[bytes] = []
        if n not in self.tools:
            out += self._open(f"tool:{n}", {"type": "tool_use", "id": call.get("id") or f"toolu_{n}",
                                            "name": fn.get("name") or "", "input": {}})
            self.tools[n] = self.index
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(self._block_delta(self.tools[n], {"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _finish(self) -> bytes:
        self.done = True
        out = [] if self.started else [self._start({})]
        out += self._close()
        self.usage = self.inner.usage or self.usage
        out.append(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                         "usage": usage_of(self.usage)}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _failed(self, err: dict[str, Any]) -> bytes:
        return error_event(self._upstream_failed(), str(err.get("message") or "upstream stream error"))
