"""OpenAI chat and embeddings requests -> Gemini (wire-format reference, sections 5.1, 5.4 and 5.5)."""

from __future__ import annotations

import copy
import json

import pytest

from adapters.base import UpstreamError
from adapters.gemini import GeminiAdapter, make_call_id, parse_call_id
from tests.adapters.helpers import KEY, call, provider, user

BASE = "https://generativelanguage.test"
PROVIDER = provider("gemini", BASE)
ADAPTER = GeminiAdapter(PROVIDER)
SKIP = "skip_thought_signature_validator"


def translate(body: dict, model: str = "gemini-2.5-flash", **kw) -> dict:
    return json.loads(ADAPTER.chat_request(call(body, model, PROVIDER, **kw)).content)


def rejected(body: dict, **kw) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        translate(body, **kw)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


@pytest.mark.parametrize(("model", "stream", "url"), [
    ("gemini-2.5-flash", False, f"{BASE}/v1beta/models/gemini-2.5-flash:generateContent"),
    ("gemini-2.5-flash", True, f"{BASE}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ("models/gemini-2.5-pro", False, f"{BASE}/v1beta/models/gemini-2.5-pro:generateContent"),
    ("tunedModels/mine-1", False, f"{BASE}/v1beta/tunedModels/mine-1:generateContent"),
])
def test_url_and_headers(model, stream, url):
    req = ADAPTER.chat_request(call(user(), model, PROVIDER, stream=stream))
    assert (req.method, req.url) == ("POST", url)
    assert req.headers["x-goog-api-key"] == KEY and req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers


def test_roles_system_instruction_and_no_default_max():
    body = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a"},
                         {"role": "assistant", "content": "b"},
                         {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                         {"role": "user", "content": [{"type": "text", "text": "c"}]}]}
    assert translate(body) == {
        "systemInstruction": {"parts": [{"text": "Be terse."}, {"text": "No emoji."}]},
        "contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "b"}]},
                     {"role": "user", "parts": [{"text": "c"}]}]}


def test_generation_config():
    body = {**user(), "max_tokens": 50, "max_completion_tokens": 100, "temperature": 0.7, "top_p": 0.95,
            "stop": "END", "n": 2, "seed": 3, "presence_penalty": 0.1, "frequency_penalty": 0.2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}
    assert translate(body)["generationConfig"] == {
        "maxOutputTokens": 100, "temperature": 0.7, "topP": 0.95, "stopSequences": ["END"], "candidateCount": 2,
        "seed": 3, "presencePenalty": 0.1, "frequencyPenalty": 0.2, "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"}}
    assert translate({**user(), "response_format": {"type": "json_object"}})["generationConfig"] == {
        "responseMimeType": "application/json"}


@pytest.mark.parametrize(("model", "effort", "config"), [
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-3-pro-preview", "medium", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
])
def test_reasoning_effort(model, effort, config):
    assert translate({**user(), "reasoning_effort": effort}, model)["generationConfig"]["thinkingConfig"] == config


def test_tools_and_tool_choice():
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": params}},
             {"type": "function", "function": {"name": "now"}}]
    out = translate({**user(), "tools": tools, "tool_choice": {"type": "function", "function": {"name": "now"}}})
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "d", "parametersJsonSchema": params}, {"name": "now"}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}}
    for choice, mode in (("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")):
        assert translate({**user(), "tools": tools, "tool_choice": choice})["toolConfig"] == {
            "functionCallingConfig": {"mode": mode}}


def test_tool_round_trip_carries_signature_and_gemini_id():
    ident = make_call_id("CiQB", "fc-1")
    body = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": ident, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_other", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": ident, "content": "18C"},
        {"role": "tool", "tool_call_id": "call_other", "content": [{"type": "text", "text": "noon"}]}]}
    contents = translate(body, "gemini-3-pro-preview")["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "fc-1"}, "thoughtSignature": "CiQB"},
        {"functionCall": {"name": "now", "args": {}}}]}
    # one user content for the run of tool results, each named after its call
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}, "id": "fc-1"}},
        {"functionResponse": {"name": "now", "response": {"output": "noon"}}}]}
    assert parse_call_id(ident) == ("CiQB", "fc-1")


def test_gemini3_history_without_signatures_gets_the_placeholder():
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}
    parts = translate(body, "gemini-3-flash")["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [SKIP, None]
    assert all("thoughtSignature" not in p for p in translate(body, "gemini-2.5-flash")["contents"][1]["parts"])


def test_tool_result_without_an_earlier_call_is_400():
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}
    assert rejected(body).param == "messages[1].tool_call_id"


def test_media_parts():
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/path/a.JPG?sig=1"}},
               {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
               {"type": "file", "file": {"filename": "a.pdf", "file_data": "JVBER"}},
               {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}]
    parts = translate({"messages": [{"role": "user", "content": content}]})["contents"][0]["parts"]
    assert parts == [{"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                     {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/path/a.JPG?sig=1"}},
                     {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
                     {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
                     {"inlineData": {"mimeType": "text/plain", "data": "aGk="}}]


def test_an_image_url_without_a_known_extension_is_400_unless_dropped():
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://example.com/img"}}]}]}
    assert rejected(body).param == "messages[0].content[1].image_url.url"
    assert translate(body, drop_unsupported=True)["contents"][0]["parts"] == [{"text": "x"}]


@pytest.mark.parametrize("field", ["logit_bias", "audio", "prediction", "web_search_options"])
def test_unsupported_fields(field):
    body = {**user(), field: {"x": 1}}
    assert (rejected(body).param, rejected(body).code) == (field, "unsupported_parameter")
    translate(body, drop_unsupported=True)


def test_the_client_body_is_not_mutated():
    body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "r"}], "stop": "x"}
    before = copy.deepcopy(body)
    translate(body, "gemini-3-pro")
    assert body == before


def test_embeddings_request():
    body = {"model": "e", "input": ["first", "second"], "dimensions": 256}
    req = ADAPTER.embeddings_request(call(body, "gemini-embedding-001", PROVIDER))
    assert req.url == f"{BASE}/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert json.loads(req.content) == {"requests": [
        {"model": "models/gemini-embedding-001", "outputDimensionality": 256, "content": {"parts": [{"text": t}]}}
        for t in ("first", "second")]}


@pytest.mark.parametrize(("inputs", "param"), [([1, 2], "input"), (["a", [1]], "input[1]"),
                                               (["x"] * 101, "input")])
def test_embeddings_inputs_gemini_cannot_take(inputs, param):
    with pytest.raises(UpstreamError) as info:
        ADAPTER.embeddings_request(call({"input": inputs}, "gemini-embedding-001", PROVIDER))
    assert (info.value.status, info.value.param) == (400, param)
