"""OpenAI chat request -> Anthropic Messages request (wire-format reference, sections 4.1 and 4.5)."""

from __future__ import annotations

import copy
import json

import pytest

from adapters.anthropic import AnthropicAdapter
from adapters.base import UpstreamError
from tests.adapters.helpers import KEY, call, provider, user

BASE = "https://api.anthropic.test"
PROVIDER = provider("anthropic", BASE)
ADAPTER = AnthropicAdapter(PROVIDER)


def translate(body: dict, **kw) -> dict:
    req = ADAPTER.chat_request(call(body, "claude-x", PROVIDER, **kw))
    return json.loads(req.content)


def rejected(body: dict, **kw) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        translate(body, **kw)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def test_url_headers_and_minimal_body():
    req = ADAPTER.chat_request(call(user("Hello"), "claude-x", PROVIDER))
    assert (req.method, req.url) == ("POST", f"{BASE}/v1/messages")
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers and "anthropic-beta" not in req.headers
    # max_tokens is required by Anthropic: the target's default when the client sets none
    assert json.loads(req.content) == {"model": "claude-x", "max_tokens": 4096,
                                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}


def test_beta_and_extra_headers():
    prov = provider("anthropic", BASE, anthropic_beta="files-api-2025-04-14", headers={"x-extra": "1"})
    req = AnthropicAdapter(prov).chat_request(call(user(), "claude-x", prov))
    assert req.headers["anthropic-beta"] == "files-api-2025-04-14" and req.headers["x-extra"] == "1"


def test_system_and_developer_messages_are_hoisted_in_order():
    body = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a"},
                         {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                         {"role": "user", "content": "b"}]}
    out = translate(body)
    assert out["system"] == [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "No emoji."}]
    # the two user turns, now adjacent, are merged: Anthropic wants alternating roles
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"max_completion_tokens": 100, "max_tokens": 50}, 100),
    ({"max_tokens": 50}, 50),
    ({}, 777),
])
def test_max_tokens_precedence(fields, expected):
    assert translate({**user(), **fields}, default_max_tokens=777)["max_tokens"] == expected


def test_sampling_fields():
    out = translate({**user(), "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "u-1"})
    assert out["temperature"] == 1.0  # OpenAI's 0..2 clamped to Anthropic's 0..1
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert translate({**user(), "stop": ["A", "B"]})["stop_sequences"] == ["A", "B"]


def test_tools_and_tool_choice():
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": params}},
             {"type": "function", "function": {"name": "now"}}]
    out = translate({**user(), "tools": tools, "tool_choice": "required", "parallel_tool_calls": False})
    assert out["tools"] == [{"name": "get_weather", "description": "d", "input_schema": params},
                            {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_mapping(choice, expected):
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    assert translate({**user(), "tools": tools, "tool_choice": choice})["tool_choice"] == expected


def test_tool_round_trip_and_tool_results_open_the_user_turn():
    body = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "user", "content": "and?"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12C"}]},
    ]}
    messages = translate(body)["messages"]
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "12C"}]},
        {"type": "text", "text": "and?"}]}
    assert len(messages) == 3


def test_tool_arguments_must_be_an_object():
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}
    assert rejected(body).param == "messages[0].tool_calls[0].function.arguments"


def test_images_and_pdf():
    content = [{"type": "text", "text": "Look"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
               {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBER"}}]
    blocks = translate({"messages": [{"role": "user", "content": content}]})["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "Look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
         "title": "a.pdf"}]


def test_image_type_anthropic_does_not_take_is_400():
    content = [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0"}}]
    assert rejected({"messages": [{"role": "user", "content": content}]}).param == "messages[0].content[0].image_url"


def test_audio_input_is_400_naming_the_part():
    content = [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]
    err = rejected({"messages": [{"role": "user", "content": content}]})
    assert (err.param, err.code) == ("messages[0].content[0]", "unsupported_parameter")


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("logprobs", True), ("logit_bias", {"1": 2}),
                                              ("frequency_penalty", 0.5), ("presence_penalty", 0.5)])
def test_unsupported_fields_are_400_or_dropped(field, value):
    body = {**user(), field: value}
    err = rejected(body)
    assert (err.param, err.code) == (field, "unsupported_parameter")
    assert field not in translate(body, drop_unsupported=True)


@pytest.mark.parametrize(("effort", "budget"), [("low", 2048), ("medium", 8192), ("high", 16384)])
def test_reasoning_effort_without_a_limit_adds_the_budget_to_the_default(effort, budget):
    out = translate({**user(), "reasoning_effort": effort}, default_max_tokens=1000)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == budget + 1000


def test_reasoning_budget_fits_inside_the_clients_limit():
    out = translate({**user(), "reasoning_effort": "high", "max_completion_tokens": 5000})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 4999} and out["max_tokens"] == 5000
    err = rejected({**user(), "reasoning_effort": "low", "max_tokens": 1024})  # leaves less than 1024 to think
    assert err.param == "reasoning_effort"
    assert "thinking" not in translate({**user(), "reasoning_effort": "none"})


def test_temperature_other_than_1_with_thinking_is_400():
    assert rejected({**user(), "reasoning_effort": "low", "temperature": 0.2}).param == "temperature"


def test_native_thinking_wins_and_thinking_blocks_go_back_first():
    block = {"type": "thinking", "thinking": "hmm", "signature": "EqQ"}
    body = {"thinking": {"type": "enabled", "budget_tokens": 2048}, "reasoning_effort": "high", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking_blocks": [block]},
        {"role": "user", "content": "q2"}]}
    out = translate(body)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert out["messages"][1]["content"] == [block, {"type": "text", "text": "a"}]
    body.pop("thinking"), body.pop("reasoning_effort")
    assert translate(body)["messages"][1]["content"] == [{"type": "text", "text": "a"}]  # thinking off: not sent


def test_json_schema_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert translate({**user(), "response_format": fmt})["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}}
    assert rejected({**user(), "response_format": {"type": "json_object"}}).param == "response_format"


def test_prefill_loses_trailing_whitespace_and_stream_flag():
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is "}]}
    out = translate(body, stream=True)
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]}
    assert out["stream"] is True


def test_the_client_body_is_not_mutated():
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a "}], "tools": [{"type": "function",
                                                                             "function": {"name": "f"}}]}
    before = copy.deepcopy(body)
    translate(body)
    assert body == before
