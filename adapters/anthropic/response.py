"""Anthropic Messages response body or error -> OpenAI chat completion body, usage and UpstreamError."""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.base import (
    Call,
    Reply,
    UpstreamError,
    Usage,
    bad_response,
    int_or_zero,
    loads_object,
    upstream_status_error,
    web_searches_of,
)
from adapters.targets import ProviderConfig

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> (OpenAI type, code) for 4xx; 5xx types go through the shared 502 policy.
ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("not_found_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
}
# The status an error type arrives with, for errors that come without one (in-band, or in a 200 body).
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def chat_reply(provider: ProviderConfig, call: Call, body: bytes) -> Reply:
    """A 200 Messages body -> the OpenAI chat completion the client sees."""
    data = loads_object(provider, body)
    if data.get("type") == "error":
        raise error_of(provider, 200, body, {})
    if not isinstance(data.get("content"), list):
        raise bad_response(provider, "a message without content")
    message, finish = openai_message(data["content"]), FINISH_REASONS.get(data.get("stop_reason"), "stop")
    usage = usage_from(data.get("usage") or {})
    out = {
        "id": openai_id(data.get("id"), call.request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.alias,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage.to_openai(),
    }
    return Reply(orjson.dumps(out), usage)


def error_of(provider: ProviderConfig, status: int, body: bytes, headers: Any) -> UpstreamError:
    """A non-2xx answer, or an error inside a 200 body -> the error the client sees."""
    err_type, message = None, f"HTTP {status}"
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
        if body:
            message = f"HTTP {status} with a non-JSON body"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or message)
    if status < 300:  # an error in a 200 body: take the status its type stands for
        status = ERROR_STATUS.get(err_type or "", 500)
    return anthropic_error(provider, status, err_type, message, headers.get("retry-after"))


def anthropic_error(provider: ProviderConfig, status: int, err_type: str | None, message: str,
                    retry_after: str | None) -> UpstreamError:
    if status == 529 or err_type == "overloaded_error":
        # Anthropic's "try again shortly": a retryable 503 rather than the generic 502.
        return UpstreamError(503, f"upstream {provider.name} is overloaded: {message}", "status_5xx",
                             "service_unavailable_error", "server_is_overloaded", retry_after=retry_after,
                             upstream_status=status, redactor=provider.redactor)
    type_, code = ERROR_TYPES.get(err_type or "", (None, None))
    return upstream_status_error(provider, status, message, type_, code, None, retry_after)


def openai_id(message_id: Any, request_id: str) -> str:
    return f"chatcmpl-{message_id if isinstance(message_id, str) and message_id else request_id}"


def usage_from(raw: dict[str, Any]) -> Usage:
    """Anthropic counts uncached input apart from cache reads and writes; OpenAI's prompt_tokens is all of it."""
    cache_read = int_or_zero(raw.get("cache_read_input_tokens"))
    prompt = int_or_zero(raw.get("input_tokens")) + cache_read + int_or_zero(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    reasoning = int_or_zero(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return Usage(prompt_tokens=prompt, completion_tokens=int_or_zero(raw.get("output_tokens")),
                 cached_tokens=cache_read, reasoning_tokens=reasoning, web_searches=web_searches_of(raw))


def openai_message(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                    "signature": block.get("signature") or ""})
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") if isinstance(block.get("input"), dict) else {}).decode()
            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"), "arguments": arguments}})
    # Consecutive text blocks are joined as a stream would show them, without separators.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking_blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = thinking_blocks
    return message
