"""Anthropic Messages response and errors -> OpenAI (wire-format reference, sections 4.2, 4.4 and 4.5)."""

from __future__ import annotations

import json

import pytest

from adapters.anthropic import AnthropicAdapter
from adapters.base import UpstreamError
from tests.adapters.helpers import KEY, call, provider, user

PROVIDER = provider("anthropic", "https://api.anthropic.test")
ADAPTER = AnthropicAdapter(PROVIDER)
CALL = call(user(), "claude-x", PROVIDER, alias="my-claude")

MESSAGE = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
           "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "EqQ"},
                       {"type": "text", "text": "Checking."},
                       {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
           "stop_reason": "tool_use", "stop_sequence": None,
           "usage": {"input_tokens": 50, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 1800,
                     "output_tokens": 120}}


def reply(message: dict) -> tuple[dict, object]:
    r = ADAPTER.chat_response(CALL, json.dumps(message).encode())
    return json.loads(r.body), r.usage


def test_the_reference_message():
    body, usage = reply(MESSAGE)
    assert body["id"] == "chatcmpl-msg_01"
    assert body["object"] == "chat.completion" and body["model"] == "my-claude"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] == "Checking."
    assert message["reasoning_content"] == "Hmm."
    assert message["thinking_blocks"] == [{"type": "thinking", "thinking": "Hmm.", "signature": "EqQ"}]
    (tc,) = message["tool_calls"]
    assert (tc["id"], tc["type"], tc["function"]["name"]) == ("toolu_01", "function", "get_weather")
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris"}
    # prompt = input + cache reads + cache writes; cached = cache reads
    prompt = 50 + 1800 + 7
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 120, "total_tokens": prompt + 120,
                             "prompt_tokens_details": {"cached_tokens": 1800},
                             "completion_tokens_details": {"reasoning_tokens": 0}}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (prompt, 120, 1800)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("something_new", "stop"),
])
def test_finish_reasons(stop_reason, finish):
    body, _ = reply({**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason})
    assert body["choices"][0]["finish_reason"] == finish


def test_text_blocks_join_and_no_text_is_null():
    body, _ = reply({**MESSAGE, "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    assert body["choices"][0]["message"]["content"] == "ab"
    body, _ = reply({**MESSAGE, "content": [{"type": "redacted_thinking", "data": "xyz"}]})
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["thinking_blocks"] == [{"type": "redacted_thinking", "data": "xyz"}]


def test_a_body_without_content_is_a_bad_response():
    with pytest.raises(UpstreamError) as info:
        ADAPTER.chat_response(CALL, b'{"type":"message"}')
    assert (info.value.status, info.value.reason) == (502, "bad_response")
    with pytest.raises(UpstreamError) as info:
        ADAPTER.chat_response(CALL, b"<html>")
    assert info.value.reason == "bad_response"


def error_body(type_: str, message: str = "m") -> bytes:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}).encode()


@pytest.mark.parametrize(("status", "type_", "client_status", "client_type", "code"), [
    (400, "invalid_request_error", 400, "invalid_request_error", None),
    # The provider refusing the gateway's key is a 502 naming it, never the client's own 401/403.
    (401, "authentication_error", 502, "upstream_error", "upstream_auth_failed"),
    (403, "permission_error", 502, "upstream_error", "upstream_auth_failed"),
    (404, "not_found_error", 404, "not_found_error", None),
    (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
    (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
    (500, "api_error", 502, "upstream_error", "upstream_error"),
    (529, "overloaded_error", 503, "service_unavailable_error", "server_is_overloaded"),
])
def test_error_statuses(status, type_, client_status, client_type, code):
    err = ADAPTER.error(status, error_body(type_), {"retry-after": "11"})
    assert (err.status, err.type, err.code, err.upstream_status) == (client_status, client_type, code, status)
    if status in (429, 529):
        assert err.retry_after == "11"


def test_an_error_in_a_200_takes_its_types_status():
    with pytest.raises(UpstreamError) as info:
        ADAPTER.chat_response(CALL, error_body("overloaded_error", "Overloaded"))
    assert (info.value.status, info.value.code) == (503, "server_is_overloaded")


def test_non_json_error_and_key_scrubbing():
    assert ADAPTER.error(502, b"<html>", {}).message == "upstream anthropic returned 502: HTTP 502 with a non-JSON body"
    err = ADAPTER.error(401, error_body("authentication_error", f"invalid x-api-key {KEY}"), {})
    assert KEY not in err.message and "***" in err.message
