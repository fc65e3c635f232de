"""Gemini generateContent / batchEmbedContents answers and errors -> OpenAI (reference sections 5.2-5.5)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from adapters.base import UpstreamError
from adapters.gemini import GeminiAdapter, parse_call_id
from tests.adapters.helpers import KEY, call, provider, user

PROVIDER = provider("gemini", "https://generativelanguage.test")
ADAPTER = GeminiAdapter(PROVIDER)
CALL = call(user(), "gemini-2.5-flash", PROVIDER, alias="my-gemini")

# Section 5.2's response.
REFERENCE = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
    {"text": "(thought summary)", "thought": True}, {"text": "It is 18C."}]}, "safetyRatings": []}],
    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7, "thoughtsTokenCount": 40,
                      "cachedContentTokenCount": 3, "totalTokenCount": 59},
    "modelVersion": "gemini-2.5-flash", "responseId": "abc123"}


def reply(data: dict) -> tuple[dict, object]:
    r = ADAPTER.chat_response(CALL, json.dumps(data).encode())
    return json.loads(r.body), r.usage


def candidate(parts: list, finish: str | None = "STOP", index: int = 0) -> dict:
    c = {"index": index, "content": {"role": "model", "parts": parts}}
    if finish:
        c["finishReason"] = finish
    return c


def test_the_reference_response():
    body, usage = reply(REFERENCE)
    assert body["id"] == "chatcmpl-abc123" and body["model"] == "my-gemini"
    assert body["object"] == "chat.completion" and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "It is 18C.", "refusal": None, "reasoning_content": "(thought summary)"}}]
    # completion = candidates + thoughts; reasoning = thoughts; cached = cachedContentTokenCount
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 47, "total_tokens": 59,
                             "prompt_tokens_details": {"cached_tokens": 3},
                             "completion_tokens_details": {"reasoning_tokens": 40}}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (12, 47, 40)


def test_function_calls_become_tool_calls_with_the_signature_in_the_id():
    parts = [{"functionCall": {"id": "fc-1", "name": "get_weather", "args": {"city": "Paris"}},
              "thoughtSignature": "CiQB"},
             {"functionCall": {"name": "now"}}]
    body, _ = reply({"candidates": [candidate(parts)], "responseId": "r"})
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert first["type"] == "function" and first["function"]["name"] == "get_weather"
    assert json.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert parse_call_id(first["id"]) == ("CiQB", "fc-1")
    assert json.loads(second["function"]["arguments"]) == {} and parse_call_id(second["id"]) == (None, None)
    assert second["id"].startswith("call_") and first["id"] != second["id"]


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("LANGUAGE", "content_filter"), ("OTHER", "stop"), ("MALFORMED_FUNCTION_CALL", "stop"),
])
def test_finish_reasons(reason, finish):
    body, _ = reply({"candidates": [candidate([{"text": "x"}], reason)]})
    assert body["choices"][0]["finish_reason"] == finish


def test_n_candidates_and_a_blocked_prompt():
    body, _ = reply({"candidates": [candidate([{"text": "a"}], index=0), candidate([{"text": "b"}], index=1)]})
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [(0, "a"), (1, "b")]
    body, usage = reply({"promptFeedback": {"blockReason": "SAFETY"}})
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
                                "logprobs": None, "finish_reason": "content_filter"}]
    assert usage is None and "usage" not in body
    assert body["id"].startswith("chatcmpl-")


def google(code: int, status: str, message: str = "m", details: list | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status,
                                 "details": details or []}}).encode()


@pytest.mark.parametrize(("status", "google_status", "client_status", "code"), [
    (400, "INVALID_ARGUMENT", 400, "invalid_argument"),
    (400, "FAILED_PRECONDITION", 400, "failed_precondition"),
    (403, "PERMISSION_DENIED", 502, "upstream_auth_failed"),
    (404, "NOT_FOUND", 404, "not_found"),
    (500, "INTERNAL", 502, "upstream_error"),
    (503, "UNAVAILABLE", 502, "upstream_error"),
    (504, "DEADLINE_EXCEEDED", 502, "upstream_error"),
])
def test_error_statuses(status, google_status, client_status, code):
    err = ADAPTER.error(status, google(status, google_status), {})
    assert (err.status, err.code, err.upstream_status) == (client_status, code, status)


def test_a_rejected_provider_key_is_a_502_naming_the_provider_and_never_echoed():
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    err = ADAPTER.error(400, google(400, "INVALID_ARGUMENT", f"API key not valid: {KEY}", details), {})
    assert (err.status, err.code, err.reason) == (502, "upstream_auth_failed", "auth_refused")
    assert "refused the gateway's credentials" in err.message
    assert KEY not in err.message


@pytest.mark.parametrize(("headers", "retry_after"), [({}, "7"), ({"retry-after": "11"}, "11")])
def test_resource_exhausted_keeps_a_retry_after(headers, retry_after):
    """The header wins; else RetryInfo.retryDelay, rounded up to whole seconds."""
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "6.2s"}]
    err = ADAPTER.error(429, google(429, "RESOURCE_EXHAUSTED", details=details), headers)
    assert (err.status, err.retry_after, err.code) == (429, retry_after, "rate_limit_exceeded")


def test_a_prompt_over_the_window_is_marked_for_fallback():
    message = "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
    assert ADAPTER.error(400, google(400, "INVALID_ARGUMENT", message), {}).code == "context_length_exceeded"


def test_errors_in_a_200_and_non_json_bodies():
    with pytest.raises(UpstreamError) as info:
        ADAPTER.chat_response(CALL, google(503, "UNAVAILABLE"))
    assert info.value.status == 502
    with pytest.raises(UpstreamError) as info:
        ADAPTER.chat_response(CALL, b'{"something": "else"}')
    assert info.value.reason == "bad_response"
    assert ADAPTER.error(502, b"<html>", {}).message == "upstream gemini returned 502: HTTP 502 with a non-JSON body"


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_response(encoding):
    texts = ["first", "second input"]
    body = {"input": texts, "encoding_format": encoding}
    values = [[0.5, -0.25, 1.0], [0.125, 2.0, -3.5]]  # exactly representable in float32
    raw = json.dumps({"embeddings": [{"values": v} for v in values]}).encode()
    r = ADAPTER.embeddings_response(call(body, "gemini-embedding-001", PROVIDER, alias="emb"), raw)
    out = json.loads(r.body)
    assert out["object"] == "list" and out["model"] == "emb"
    got = [d["embedding"] for d in out["data"]]
    if encoding == "base64":  # little-endian float32, as openai-python decodes it
        got = [list(struct.unpack(f"<{len(v)}f", base64.b64decode(g))) for g, v in zip(got, values, strict=True)]
    assert got == values and [d["index"] for d in out["data"]] == [0, 1]
    tokens = sum(-(-len(t) // 4) for t in texts)  # estimated: ceil(characters / 4) per input
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens} and r.usage.prompt_tokens == tokens


def test_embeddings_count_must_match():
    with pytest.raises(UpstreamError) as info:
        ADAPTER.embeddings_response(call({"input": ["a", "b"]}, "e", PROVIDER), b'{"embeddings": [{"values": [1]}]}')
    assert info.value.reason == "bad_response"
