"""POST /v1/messages: the Anthropic SDK and LangChain's ChatAnthropic through the gateway, passed through
to a fake Anthropic API and translated for OpenAI-kind, Gemini and echo targets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, PROVIDER_KEY, Running, ledger_rows, start_gateway
from tests.fakes.anthropic_server import make_app as make_fake_anthropic
from tests.fakes.gemini_server import make_app as make_fake_gemini
from tests.servers import ServerThread

ANTHROPIC_KEY = "sk-ant-provider-secret-789"
GEMINI_KEY = "gemini-provider-secret-321"
HI = [{"role": "user", "content": "tell me about Paris"}]
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def config(anthropic_url: str, openai_url: str, gemini_url: str, db: Path) -> str:
    claude = "\n".join(f'[[models]]\nname = "{name}"\ntargets = [{{ provider = "claude", model = "{model}" }}]\n'
                       for name, model in [("claude", "claude-ok"), ("claude-tools", "claude-tools"),
                                           ("claude-cache", "claude-cache"), ("claude-529", "fail-529"),
                                           ("claude-400", "fail-400"), ("claude-error-stream", "error-stream"),
                                           ("claude-cut", "cut-stream"), ("claude-leak", "leak-key"),
                                           ("claude-split", "split-stream")])
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

{claude}

[[models]]
name = "gpt"
targets = [{{ provider = "fake", model = "ok", input_per_mtok = 1.0, output_per_mtok = 2.0 }}]

[[models]]
name = "gpt-tools"
targets = [{{ provider = "fake", model = "tools" }}]

[[models]]
name = "gpt-500"
targets = [{{ provider = "fake", model = "fail-500" }}]

[[models]]
name = "gpt-error-stream"
targets = [{{ provider = "fake", model = "error-stream" }}]

[[models]]
name = "gemini"
targets = [{{ provider = "gem", model = "gemini-2.5-flash" }}]

[[models]]
name = "gemini-think"
targets = [{{ provider = "gem", model = "gemini-2.5-think" }}]

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["echo"]
"""


@pytest.fixture(scope="module")
def fakes(fake_openai: Running) -> Iterator[dict[str, Running]]:
    claude_app, gemini_app = make_fake_anthropic(ANTHROPIC_KEY), make_fake_gemini(GEMINI_KEY)
    claude, gemini = ServerThread(claude_app).start(), ServerThread(gemini_app).start()
    yield {"claude": Running(claude, claude_app), "openai": fake_openai, "gemini": Running(gemini, gemini_app)}
    claude.stop()
    gemini.stop()


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, Running], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    db = tmp_path_factory.mktemp("messages") / "gw.db"
    running = start_gateway(config(fakes["claude"].url, fakes["openai"].url, fakes["gemini"].url, db))
    running.db = db  # type: ignore[attr-defined]
    yield running
    running.server.stop()


@pytest.fixture
def client(gateway: Running) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0)


def claude_requests(fakes: dict[str, Running]) -> list[dict[str, Any]]:
    return fakes["claude"].app.state.fake.requests


def raw_events(gateway: Running, body: dict[str, Any], key: str = GATEWAY_KEY) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a streamed /v1/messages answer, as sent on the wire."""
    with httpx.stream("POST", gateway.url + "/v1/messages", json={**body, "stream": True}, timeout=10,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if lines:
            assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
            events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def assert_event_grammar(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's documented order: message_start, then blocks (start, deltas, stop) by rising index,
    message_delta with usage, message_stop; ping anywhere; each data.type repeats the event name."""
    names = [n for n, _ in events if n != "ping"]
    assert all(d["type"] == n for n, d in events)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index, next_index = None, 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] and set(delta["usage"]) >= {"output_tokens"}
    start = events[0][1]["message"]
    assert set(start) >= {"id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage"}


def assert_message_shape(message: dict[str, Any], alias: str) -> None:
    assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == alias
    assert message["id"].startswith("msg_") and message["stop_reason"] and "stop_sequence" in message
    assert set(message["usage"]) >= {"input_tokens", "output_tokens"}
    for block in message["content"]:
        assert block["type"] in ("text", "thinking", "redacted_thinking", "tool_use")


# every kind: non-stream and stream agree --------------------------------------------------------------


@pytest.mark.parametrize(("alias", "text"), [("claude", "Hello tell me about Paris"),
                                             ("claude-split", "Hello tell me about Paris"),
                                             ("gpt", "Hello tell me about Paris"),
                                             ("gemini", "Hello tell me about Paris"),
                                             ("echo", "Echo: tell me about Paris")])
def test_create_and_stream_on_every_kind(client: anthropic.Anthropic, gateway: Running, alias: str, text: str
                                         ) -> None:
    message = client.messages.create(model=alias, max_tokens=200, messages=HI)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == text
    assert message.model == alias and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with client.messages.stream(model=alias, max_tokens=200, messages=HI) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.input_tokens == message.usage.input_tokens
    raw = httpx.post(gateway.url + "/v1/messages", json={"model": alias, "max_tokens": 200, "messages": HI},
                     headers={"x-api-key": GATEWAY_KEY}, timeout=10)
    assert_message_shape(raw.json(), alias)
    assert_event_grammar(raw_events(gateway, {"model": alias, "max_tokens": 200, "messages": HI}))


def test_usage_rows_say_messages(client: anthropic.Anthropic, gateway: Running) -> None:
    message = client.messages.create(model="gpt", max_tokens=50, messages=HI,
                                     extra_headers={"x-request-id": "msg-row-1"})
    with client.messages.stream(model="claude-cache", max_tokens=50, messages=HI,
                                extra_headers={"x-request-id": "msg-row-2"}) as stream:
        final = stream.get_final_message()
    rows = ledger_rows(gateway.db, "SELECT request_id, endpoint, model, stream, status, prompt_tokens, "  # type: ignore[attr-defined]
                       "completion_tokens, cached_tokens, cost_usd FROM usage_log WHERE request_id LIKE 'msg-row-%' "
                       "ORDER BY request_id", (), at_least=2)
    assert [r[1:5] for r in rows] == [("messages", "gpt", 0, 200), ("messages", "claude-cache", 1, 200)]
    assert rows[0][5:8] == (message.usage.input_tokens + message.usage.cache_read_input_tokens,
                            message.usage.output_tokens, message.usage.cache_read_input_tokens)
    assert rows[0][8] is not None and rows[0][8] > 0
    # Anthropic's input_tokens counts uncached input only; the row's prompt_tokens is all of it.
    assert final.usage.cache_read_input_tokens == 100 and final.usage.cache_creation_input_tokens == 20
    assert rows[1][5] == final.usage.input_tokens + 120 and rows[1][7] == 100
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'endpoint="messages"' in metrics


# pass-through to Anthropic ----------------------------------------------------------------------------


def test_passthrough_forwards_the_body_with_only_the_model_and_key_changed(client: anthropic.Anthropic,
                                                                           fakes: dict[str, Running]) -> None:
    body = {"model": "claude", "max_tokens": 77, "system": [{"type": "text", "text": "be brief",
                                                             "cache_control": {"type": "ephemeral"}}],
            "messages": HI, "temperature": 0.3, "top_k": 5, "metadata": {"user_id": "u-1"},
            "stop_sequences": ["END"]}
    sampling = {k: body.pop(k) for k in ("temperature", "top_k")}  # not create() arguments in every SDK version
    client.messages.create(**body, extra_body=sampling, extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    body.update(sampling)
    sent = claude_requests(fakes)[-1]
    assert sent["body"] == {**body, "model": "claude-ok"}
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert GATEWAY_KEY not in json.dumps(sent["headers"])


@pytest.mark.parametrize("stream", [False, True])
def test_passthrough_thinking_keeps_signatures_for_the_next_turn(client: anthropic.Anthropic, stream: bool) -> None:
    """The fake checks that thinking blocks come back unchanged, signature included."""
    args: dict[str, Any] = {"model": "claude-tools", "max_tokens": 4000, "tools": [WEATHER],
                            "thinking": {"type": "enabled", "budget_tokens": 2000}, "messages": HI}
    if stream:
        with client.messages.stream(**args) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(**args)
    kinds = [b.type for b in first.content]
    assert kinds[:2] == ["thinking", "redacted_thinking"] and "tool_use" in kinds
    assert first.content[0].signature and first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": c.id, "content": f"sunny in {c.input['city']}"} for c in calls]
    second = client.messages.create(**{**args, "messages": [*HI, {"role": "assistant", "content": first.content},
                                                             {"role": "user", "content": results}]})
    assert second.content[-1].text == "It is sunny in Paris and sunny in London"


def test_passthrough_errors_are_anthropic_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-400", max_tokens=10, messages=HI)
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        client.messages.create(model="claude-529", max_tokens=10, messages=HI)
    assert overloaded.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.APIStatusError) as leak:
        client.messages.create(model="claude-leak", max_tokens=10, messages=HI)
    assert ANTHROPIC_KEY not in json.dumps(leak.value.body)


@pytest.mark.parametrize("alias", ["claude-error-stream", "gpt-error-stream"])
def test_midstream_error_is_an_error_event(client: anthropic.Anthropic, gateway: Running, alias: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(model=alias, max_tokens=50, messages=HI) as s:
            for _ in s.text_stream:
                pass
    assert err.value.body["type"] == "error"
    events = []
    with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                      json={"model": alias, "max_tokens": 50, "messages": HI, "stream": True}) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: error"


def test_cut_stream_ends_with_an_error_event(gateway: Running) -> None:
    with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": GATEWAY_KEY}, timeout=10,
                      json={"model": "claude-cut", "max_tokens": 50, "messages": HI, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-2] == "event: error"
    assert json.loads(lines[-1][6:])["error"]["type"] == "api_error"


# translation: tools, images, thinking ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_tools_translated_for_openai_kind(client: anthropic.Anthropic, fake_openai: Running, stream: bool) -> None:
    args: dict[str, Any] = {"model": "gpt-tools", "max_tokens": 100, "messages": HI, "tools": [WEATHER],
                            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}}
    if stream:
        with client.messages.stream(**args) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**args)
    sent = fake_openai.app.state.fake.requests[-1]["body"]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER["input_schema"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert message.stop_reason == "tool_use"
    call = next(b for b in message.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.input
    follow = client.messages.create(model="gpt-tools", max_tokens=100, tools=[WEATHER], messages=[
        *HI, {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                                     {"type": "text", "text": "and tomorrow?"}]}])
    assert follow.model == "gpt-tools"
    sent = fake_openai.app.state.fake.requests[-1]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather",
                                                         "arguments": json.dumps(call.input, separators=(",", ":"))}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    assert sent[3] == {"role": "user", "content": "and tomorrow?"}


def test_system_images_and_sampling_translated(client: anthropic.Anthropic, fake_openai: Running) -> None:
    client.messages.create(model="gpt", max_tokens=33, system="be brief", extra_body={"temperature": 0.5},
                           stop_sequences=["X"],
                           metadata={"user_id": "u-9"}, messages=[{"role": "user", "content": [
                               {"type": "text", "text": "what is this?"},
                               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                            "data": PNG_1PX}},
                               {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    sent = fake_openai.app.state.fake.requests[-1]["body"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    assert (sent["max_completion_tokens"], sent["temperature"], sent["stop"], sent["user"]) == (33, 0.5, ["X"], "u-9")


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_thoughts_become_thinking_blocks(client: anthropic.Anthropic, stream: bool) -> None:
    args: dict[str, Any] = {"model": "gemini-think", "max_tokens": 3000, "messages": HI,
                            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if stream:
        with client.messages.stream(**args) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**args)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking and message.content[1].text
    assert message.usage.cache_read_input_tokens == 4 and message.usage.input_tokens == 7


# the gateway's own refusals, in Anthropic's format ------------------------------------------------------


def test_auth_errors_are_anthropic_errors(gateway: Running) -> None:
    with pytest.raises(anthropic.AuthenticationError) as none:
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="echo", max_tokens=10, messages=HI)
    assert none.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": "Incorrect API key provided."}}
    r = httpx.post(gateway.url + "/v1/messages", json={"model": "echo", "max_tokens": 10, "messages": HI}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.json()["error"]["message"].startswith("Missing API key")
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        anthropic.Anthropic(base_url=gateway.url, api_key=LIMITED_KEY, max_retries=0).messages.create(
            model="gpt", max_tokens=10, messages=HI)
    assert denied.value.body["error"]["type"] == "permission_error"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "echo", "messages": HI}, "max_tokens"),
    ({"model": "echo", "max_tokens": 10}, "messages"),
    ({"max_tokens": 10, "messages": HI}, "model"),
    ({"model": "echo", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"model": "echo", "max_tokens": 10, "messages": HI, "tools": [{"type": "web_search_20250305",
                                                                   "name": "web_search"}]}, "tools.0"),
])
def test_bad_requests_name_the_field(gateway: Running, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": GATEWAY_KEY}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith(param + ":")


def test_unknown_model_and_upstream_failure(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=10, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="gpt-500", max_tokens=10, messages=HI)
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"
    assert PROVIDER_KEY not in json.dumps(failed.value.body)


def test_count_tokens(client: anthropic.Anthropic, gateway: Running, fakes: dict[str, Running]) -> None:
    counted = client.messages.count_tokens(model="claude", system="be brief", messages=HI)
    assert counted.input_tokens == 4 + 2 + 3  # the fake's words + overhead: Anthropic's own count
    sent = claude_requests(fakes)[-1]
    assert sent["path"] == "/v1/messages/count_tokens" and sent["body"]["model"] == "claude-ok"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    short = client.messages.count_tokens(model="gpt", messages=HI)
    longer = client.messages.count_tokens(model="gpt", system="you are a helpful assistant", messages=HI)
    assert 0 < short.input_tokens < longer.input_tokens  # the gateway's estimate
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=HI)
    r = httpx.post(gateway.url + "/v1/messages/count_tokens", json={"model": "echo", "messages": HI}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


# LangChain -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["claude", "gpt", "echo"])
def test_langchain_chat_anthropic(gateway: Running, alias: str) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model=alias, base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0, max_tokens=100)
    reply = llm.invoke("tell me about Paris")
    assert "tell me about Paris" in reply.content
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("tell me about Paris"))
    text = "".join(c.content if isinstance(c.content, str) else "".join(
        p.get("text", "") for p in c.content if isinstance(p, dict)) for c in chunks)
    assert "tell me about Paris" in text
    tooled = ChatAnthropic(model="claude-tools" if alias == "claude" else "gpt-tools", base_url=gateway.url,
                           api_key=GATEWAY_KEY, max_retries=0, max_tokens=100).bind_tools([WEATHER])
    if alias != "echo":
        calls = tooled.invoke("weather in Paris?").tool_calls
        assert calls and calls[0]["name"] == "get_weather" and isinstance(calls[0]["args"], dict)


def test_limits_apply_and_refuse_in_anthropic_format(make_gateway: Any, tmp_path: Path) -> None:
    """A key's rpm counts messages like chat requests; the 429 is Anthropic's rate_limit_error."""
    gw = make_gateway(f"""
[storage]
database_url = "sqlite:///{tmp_path / "gw.db"}"
spill_dir = "{tmp_path / "spill"}"

[providers.local]
kind = "echo"

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1" }}]

[[keys]]
name = "slow"
key = "{GATEWAY_KEY}"
rpm = 1
""")
    client = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0)
    client.messages.create(model="echo", max_tokens=10, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="echo", max_tokens=10, messages=HI)
    assert limited.value.body["type"] == "error" and limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers.get("retry-after")
