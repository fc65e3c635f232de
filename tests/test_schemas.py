"""Every answer the gateway writes, as bytes on the wire, valid against the provider's published schema:
OpenAI's OpenAPI document for chat (whole and every stream chunk), legacy completions, embeddings (float
and base64), models and error bodies, on each provider kind behind them; Anthropic's Messages answers,
stream events and error bodies against Anthropic's SDK types (tests/schemas.py). The Responses API's
answers and events are checked the same way in tests/test_responses.py and tests/test_node_sdk.py."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, start_gateway
from tests.fakes.anthropic_server import make_app as make_fake_anthropic
from tests.fakes.gemini_server import make_app as make_fake_gemini
from tests.schemas import assert_anthropic_event, assert_anthropic_message, assert_valid
from tests.servers import ServerThread

ANTHROPIC_KEY = "sk-ant-provider-secret-schema"
GEMINI_KEY = "gemini-provider-secret-schema"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
HI = [{"role": "user", "content": "tell me about Paris"}]
OPENAI_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather for a city",
                  "input_schema": OPENAI_TOOL["function"]["parameters"]}
# alias -> (provider, upstream model)
ALIASES = {"gpt": ("fake", "ok"), "gpt-tools": ("fake", "tools"), "gpt-400": ("fake", "fail-400"),
           "claude": ("claude", "claude-ok"), "claude-tools": ("claude", "claude-tools"),
           "claude-cache": ("claude", "claude-cache"), "claude-400": ("claude", "fail-400"),
           "claude-error-stream": ("claude", "error-stream"),
           "gemini": ("gem", "gemini-2.5-flash"), "gemini-tools": ("gem", "gemini-2.5-tools"),
           "gemini-think": ("gem", "gemini-2.5-think"), "echo": ("local", "echo-1")}
KINDS = ["gpt", "claude", "gemini", "echo"]
TOOL_KINDS = ["gpt-tools", "claude-tools", "gemini-tools"]


def config(anthropic_url: str, openai_url: str, gemini_url: str, db: Path) -> str:
    models = "\n".join(f'[[models]]\nname = "{alias}"\ntargets = [{{ provider = "{p}", model = "{m}" }}]\n'
                       for alias, (p, m) in ALIASES.items())
    return f"""
[storage]
database_url = "sqlite:///{db}"
spill_dir = "{db.parent / "spill"}"

[providers.claude]
kind = "anthropic"
base_url = "{anthropic_url}"
api_key = "{ANTHROPIC_KEY}"
timeout_s = 5

[providers.fake]
kind = "openai"
base_url = "{openai_url}/v1"
api_key = "{PROVIDER_KEY}"
timeout_s = 5

[providers.gem]
kind = "gemini"
base_url = "{gemini_url}"
api_key = "{GEMINI_KEY}"

[providers.local]
kind = "echo"

{models}

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


@pytest.fixture(scope="module")
def gw(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    claude_app, gemini_app = make_fake_anthropic(ANTHROPIC_KEY), make_fake_gemini(GEMINI_KEY)
    claude, gemini = ServerThread(claude_app).start(), ServerThread(gemini_app).start()
    db = tmp_path_factory.mktemp("schemas") / "gw.db"
    running = start_gateway(config(claude.url, fake_openai.url, gemini.url, db))
    yield running
    running.server.stop()
    claude.stop()
    gemini.stop()


def post(gw: Running, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers=headers or AUTH, timeout=15)


def sse(gw: Running, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> list[tuple[str | None, Any]]:
    """(event name, data) of each event of a streamed answer, ``[DONE]`` as the string."""
    with httpx.stream("POST", gw.url + path, json={**body, "stream": True}, headers=headers or AUTH,
                      timeout=15) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


# --- OpenAI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", KINDS + TOOL_KINDS + ["gemini-think"])
def test_chat_answers_and_chunks(gw: Running, alias: str) -> None:
    body: dict[str, Any] = {"model": alias, "messages": HI}
    if alias in TOOL_KINDS:
        body["tools"] = [OPENAI_TOOL]
    r = post(gw, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert_valid("CreateChatCompletionResponse", answer)
    assert answer["model"] == alias
    if alias in TOOL_KINDS:
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
    events = sse(gw, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == (None, "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert chunks and chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_completions(gw: Running) -> None:
    r = post(gw, "/v1/completions", {"model": "gpt", "prompt": "say hi", "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert_valid("CreateCompletionResponse", r.json())
    events = sse(gw, "/v1/completions", {"model": "gpt", "prompt": "say hi", "stream_options":
                                         {"include_usage": True}})
    assert events[-1] == (None, "[DONE]")
    chunks = [chunk for _, chunk in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    for chunk in chunks[:-1]:
        # OpenAI documents the chunks as this schema, written for the whole answer: its finish_reason is
        # null until the last choice chunk, and the usage chunk has no choices.
        assert chunk["choices"][0]["finish_reason"] in (None, "stop")
        whole = {**chunk, "choices": [{**c, "finish_reason": "stop"} for c in chunk["choices"]]}
        assert_valid("CreateCompletionResponse", whole)


@pytest.mark.parametrize("alias", ["gpt", "gemini", "echo"])
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(gw: Running, alias: str, encoding: str) -> None:
    r = post(gw, "/v1/embeddings", {"model": alias, "input": ["one two", "three"], "encoding_format": encoding})
    assert r.status_code == 200, r.text
    answer = r.json()
    kind = str if encoding == "base64" else list
    assert [type(d["embedding"]) for d in answer["data"]] == [kind, kind]
    if encoding == "base64":  # OpenAI's schema describes the floats; base64 packs them as little-endian float32
        for d in answer["data"]:
            packed = base64.b64decode(d["embedding"], validate=True)
            assert len(packed) % 4 == 0 and packed
            d["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert_valid("CreateEmbeddingResponse", answer)


def test_models(gw: Running) -> None:
    listed = httpx.get(gw.url + "/v1/models", headers=AUTH, timeout=10).json()
    assert_valid("ListModelsResponse", listed)
    assert {m["id"] for m in listed["data"]} == set(ALIASES)
    one = httpx.get(gw.url + "/v1/models/claude", headers=AUTH, timeout=10).json()
    assert_valid("Model", one)


@pytest.mark.parametrize(("path", "body", "headers", "status"), [
    ("/v1/chat/completions", {"model": "gpt", "messages": HI}, {"authorization": "Bearer sk-wrong"}, 401),
    ("/v1/chat/completions", {"model": "nope", "messages": HI}, None, 404),
    ("/v1/chat/completions", {"model": "gpt", "messages": "hi"}, None, 400),
    ("/v1/chat/completions", {"model": "gpt-400", "messages": HI}, None, 400),
    ("/v1/embeddings", {"model": "gpt"}, None, 400),
    ("/v1/completions", {"model": "claude", "prompt": "hi"}, None, 400),
    ("/v1/responses", {"model": "claude", "input": "hi", "previous_response_id": "resp_x"}, None, 400),
])
def test_openai_errors(gw: Running, path: str, body: dict[str, Any], headers: dict[str, str] | None,
                       status: int) -> None:
    r = post(gw, path, body, headers)
    assert r.status_code == status, r.text
    assert_valid("ErrorResponse", r.json())


# --- Anthropic ------------------------------------------------------------------------------------

ANTHROPIC_HEADERS = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("alias", KINDS + TOOL_KINDS + ["claude-cache", "gemini-think"])
def test_messages_answers_and_events(gw: Running, alias: str) -> None:
    body: dict[str, Any] = {"model": alias, "max_tokens": 2000, "messages": HI, "system": "be brief"}
    if alias in TOOL_KINDS:
        body["tools"] = [ANTHROPIC_TOOL]
    if alias == "gemini-think":
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    r = post(gw, "/v1/messages", body, ANTHROPIC_HEADERS)
    assert r.status_code == 200, r.text
    message = r.json()
    assert_anthropic_message(message)
    assert message["model"] == alias
    if alias in TOOL_KINDS:
        assert message["stop_reason"] == "tool_use"
    events = sse(gw, "/v1/messages", body, ANTHROPIC_HEADERS)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    for name, event in events:
        assert name == event["type"]
        assert_anthropic_event(event)
    blocks = [e for _, e in events if e["type"] == "content_block_start"]
    assert [e["index"] for e in blocks] == list(range(len(blocks)))
    assert len(blocks) == len(message["content"])


def test_messages_error_event(gw: Running) -> None:
    events = sse(gw, "/v1/messages", {"model": "claude-error-stream", "max_tokens": 100, "messages": HI},
                 ANTHROPIC_HEADERS)
    assert events[-1][0] == "error"
    for _, event in events:
        assert_anthropic_event(event)


@pytest.mark.parametrize(("body", "headers", "status"), [
    ({"model": "claude", "max_tokens": 10, "messages": HI}, {"x-api-key": "sk-wrong"}, 401),
    ({"model": "nope", "max_tokens": 10, "messages": HI}, None, 404),
    ({"model": "claude", "messages": HI}, None, 400),
    ({"model": "claude-400", "max_tokens": 10, "messages": HI}, None, 400),
    ({"model": "gpt-400", "max_tokens": 10, "messages": HI}, None, 400),
])
def test_messages_errors(gw: Running, body: dict[str, Any], headers: dict[str, str] | None, status: int) -> None:
    r = post(gw, "/v1/messages", body, headers or ANTHROPIC_HEADERS)
    assert r.status_code == status, r.text
    error = r.json()
    assert set(error) == {"type", "error"} and error["type"] == "error", error
    assert set(error["error"]) == {"type", "message"}, error
    assert error["error"]["type"] in {"invalid_request_error", "authentication_error", "permission_error",
                                      "not_found_error", "request_too_large", "rate_limit_error", "api_error",
                                      "overloaded_error", "billing_error", "timeout_error"}, error
