"""Gemini generateContent body or error -> OpenAI chat completion body, usage and UpstreamError.

Response mapping: text parts (not ``thought``) -> content, thought parts -> reasoning_content, functionCall
parts -> tool_calls (finish_reason tool_calls), inlineData parts (generated images) -> images as OpenRouter
gives them; STOP stop, MAX_TOKENS length, safety/recitation/blocklist/
prohibited/SPII/language and promptFeedback.blockReason content_filter, anything else stop. Usage: prompt =
promptTokenCount, completion = candidatesTokenCount + thoughtsTokenCount, reasoning = thoughtsTokenCount,
cached = cachedContentTokenCount. A thoughtSignature on a text part (not a function call) is dropped: Google
recommends but does not require sending those back.

Errors: Google's ``{"error":{code,message,status,details}}``. The status string decides: INVALID_ARGUMENT,
FAILED_PRECONDITION, OUT_OF_RANGE 400; PERMISSION_DENIED (the gateway's credentials refused) 502;
NOT_FOUND 404; RESOURCE_EXHAUSTED 429 with
Retry-After (the header, else RetryInfo.retryDelay); INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED and other
server-side statuses 502 (retryable). A rejected provider key (ErrorInfo reason API_KEY_INVALID, or
UNAUTHENTICATED) is a 502 too, naming the provider (adapters.base.credentials_refused).
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import orjson

from adapters.base import (
    Call,
    Reply,
    UpstreamError,
    Usage,
    bad_response,
    credentials_refused,
    int_or_zero,
    loads_object,
    upstream_status_error,
)
from adapters.gemini.call_ids import make_call_id
from adapters.targets import ProviderConfig

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}  # everything else (OTHER, MALFORMED_FUNCTION_CALL, ...) has no OpenAI equivalent: "stop"

# Google's canonical status strings -> the HTTP status the client sees (5xx become 502 downstream).
GOOGLE_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 500, "UNKNOWN": 500, "INTERNAL": 500, "DATA_LOSS": 500, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}

_TOO_LONG = re.compile(r"input token count.*exceeds the maximum", re.IGNORECASE)


def chat_reply(provider: ProviderConfig, call: Call, body: bytes) -> Reply:
    """A 200 generateContent body -> the OpenAI chat completion the client sees."""
    data = loads_object(provider, body)
    if "candidates" not in data and "promptFeedback" not in data:
        if isinstance(data.get("error"), dict):  # an error inside a 200
            raise google_error(provider, 500, data)
        raise bad_response(provider, "a response without candidates")
    candidates = data.get("candidates") or []
    choices = [choice_of(c, i) for i, c in enumerate(candidates) if isinstance(c, dict)]
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices = [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
                    "logprobs": None, "finish_reason": "content_filter"}]
    usage = usage_of(data.get("usageMetadata"))
    out: dict[str, Any] = {"id": completion_id(data), "object": "chat.completion", "created": int(time.time()),
                           "model": call.alias, "choices": choices}
    if usage is not None:
        out["usage"] = usage.to_openai()
    return Reply(orjson.dumps(out), usage)


def error_of(provider: ProviderConfig, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """A non-2xx answer -> the error the client sees."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if data is None:
        message = f"HTTP {status} with a non-JSON body" if body else f"HTTP {status}"
        return upstream_status_error(provider, status, message, None, retry_after=headers.get("retry-after"))
    return google_error(provider, status, data, headers.get("retry-after"))


def completion_id(data: dict[str, Any]) -> str:
    rid = data.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else "chatcmpl-" + os.urandom(12).hex()


def usage_of(meta: Any) -> Usage | None:
    if not isinstance(meta, dict):
        return None
    thoughts = int_or_zero(meta.get("thoughtsTokenCount"))
    return Usage(prompt_tokens=int_or_zero(meta.get("promptTokenCount")),
                 completion_tokens=int_or_zero(meta.get("candidatesTokenCount")) + thoughts,
                 cached_tokens=int_or_zero(meta.get("cachedContentTokenCount")), reasoning_tokens=thoughts)


def finish_reason(reason: Any, has_tool_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_tool_calls and mapped == "stop" else mapped


def tool_call_of(call: dict[str, Any], signature: Any) -> dict[str, Any]:
    args = call.get("args")
    gemini_id = call.get("id") if isinstance(call.get("id"), str) else None
    arguments = orjson.dumps(args if args is not None else {}).decode()
    return {"id": make_call_id(signature if isinstance(signature, str) else None, gemini_id), "type": "function",
            "function": {"name": call.get("name"), "arguments": arguments}}


def split_parts(parts: Any) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Text, thought text and function calls of a candidate's parts, in order."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            calls.append(tool_call_of(part["functionCall"], part.get("thoughtSignature")))
        elif isinstance(part.get("text"), str) and part["text"]:
            (thoughts if part.get("thought") else text).append(part["text"])
    return text, thoughts, calls


def images_of(parts: Any) -> list[dict[str, Any]]:
    """Generated images (``inlineData`` parts, not thoughts) in the shape OpenRouter gives them on a
    message or delta: ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,<data>"}}``."""
    out = []
    for part in parts if isinstance(parts, list) else ():
        inline = part.get("inlineData") if isinstance(part, dict) and not part.get("thought") else None
        if isinstance(inline, dict) and isinstance(inline.get("data"), str) and inline["data"]:
            mime = inline.get("mimeType") if isinstance(inline.get("mimeType"), str) else "image/png"
            out.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{inline['data']}"}})
    return out


def choice_of(candidate: dict[str, Any], position: int) -> dict[str, Any]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text, thoughts, calls = split_parts(parts)
    images = images_of(parts)
    finish = finish_reason(candidate.get("finishReason"), bool(calls))
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(text) if text else (None if calls or finish == "content_filter"
                                                                      else ""),
                               "refusal": None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    if images:
        message["images"] = images
    index = candidate.get("index")
    return {"index": index if isinstance(index, int) else position, "message": message, "logprobs": None,
            "finish_reason": finish}

def google_error(provider: ProviderConfig, status: int, data: Any, retry_after: str | None = None) -> UpstreamError:
    """Google's error JSON (or a list holding one, as streamGenerateContent without SSE sends) -> UpstreamError."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return upstream_status_error(provider, status, f"HTTP {status}", None, retry_after=retry_after)
    message = str(err.get("message") or f"HTTP {status}")
    google_status = err.get("status") if isinstance(err.get("status"), str) else ""
    details = err.get("details") if isinstance(err.get("details"), list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons or google_status == "UNAUTHENTICATED":
        # The gateway's own provider key was refused: a 502 naming the provider, never the client's 401.
        return credentials_refused(provider, status, message)
    code_value = err.get("code")
    fallback = code_value if isinstance(code_value, int) and 400 <= code_value < 600 else status
    mapped = GOOGLE_STATUS.get(google_status, fallback)
    if mapped == 429:
        retry_after = retry_after or retry_delay(details)
    # Only a status Google defines becomes the code: any other string is the upstream's, and may be anything.
    code = google_status.lower() if google_status in GOOGLE_STATUS and 400 <= mapped < 500 and mapped != 429 else None
    if mapped == 400 and _TOO_LONG.search(message):
        code = "context_length_exceeded"  # OpenAI's code: lets the router fall back to a larger window
    return upstream_status_error(provider, mapped, message, None, code, None, retry_after)


def retry_delay(details: list[Any]) -> str | None:
    """RetryInfo.retryDelay ("37s", "1.5s") as whole seconds for a Retry-After header."""
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            try:
                return str(max(1, math.ceil(float(str(delay).rstrip("s")))))
            except ValueError:
                return None
    return None
