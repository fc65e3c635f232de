"""POST /v1/responses through the official OpenAI SDK: passed through to an OpenAI-kind fake, translated
for Anthropic, Gemini and echo targets; every answer and stream event valid against OpenAI's published
schema (/work/shared/reference/openai-openapi.json, or the copy named by OPENAI_OPENAPI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, ledger_rows, start_gateway
from tests.fakes.anthropic_server import make_app as make_fake_anthropic
from tests.fakes.gemini_server import make_app as make_fake_gemini
from tests.schemas import assert_valid, event_schemas
from tests.servers import ServerThread

ANTHROPIC_KEY = "sk-ant-provider-secret-654"
GEMINI_KEY = "gemini-provider-secret-987"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def config(anthropic_url: str, openai_url: str, gemini_url: str, db: Path) -> str:
    return f"""
[storage]
database_url = "sqlite:///{db}"
spill_dir = "{db.parent / "spill"}"

[providers.claude]
kind = "anthropic"
base_url = "{anthropic_url}"
api_key = "{ANTHROPIC_KEY}"

[providers.fake]
kind = "openai"
base_url = "{openai_url}/v1"
api_key = "{PROVIDER_KEY}"

[providers.gem]
kind = "gemini"
base_url = "{gemini_url}"
api_key = "{GEMINI_KEY}"

[providers.local]
kind = "echo"

[[models]]
name = "gpt"
targets = [{{ provider = "fake", model = "ok", input_per_mtok = 1.0, output_per_mtok = 2.0 }}]

[[models]]
name = "gpt-tools"
targets = [{{ provider = "fake", model = "tools" }}]

[[models]]
name = "gpt-400"
targets = [{{ provider = "fake", model = "fail-400" }}]

[[models]]
name = "gpt-fail-stream"
targets = [{{ provider = "fake", model = "fail-stream" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-ok" }}]

[[models]]
name = "claude-tools"
targets = [{{ provider = "claude", model = "claude-tools" }}]

[[models]]
name = "claude-error-stream"
targets = [{{ provider = "claude", model = "error-stream" }}]

[[models]]
name = "claude-short"
targets = [{{ provider = "claude", model = "finish-max_tokens" }}]

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
    db = tmp_path_factory.mktemp("responses") / "gw.db"
    running = start_gateway(config(fakes["claude"].url, fakes["openai"].url, fakes["gemini"].url, db))
    running.db = db  # type: ignore[attr-defined]
    yield running
    running.server.stop()


@pytest.fixture
def client(gateway: Running) -> openai.OpenAI:
    return gateway.client()


def openai_requests(fakes: dict[str, Running]) -> list[dict[str, Any]]:
    return fakes["openai"].app.state.fake.requests


def raw_response(gateway: Running, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                   timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def raw_events(gateway: Running, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True}, timeout=10,
                      headers={"authorization": f"Bearer {GATEWAY_KEY}"}) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if lines:
            assert lines[0] == f"event: {json.loads(lines[1][6:])['type']}", block
            events.append(json.loads(lines[1][6:]))
    return events


def assert_valid_stream(events: list[dict[str, Any]]) -> None:
    kinds = event_schemas()
    for event in events:
        assert event["type"] in kinds, event["type"]
        assert_valid(kinds[event["type"]], event)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e["sequence_number"] for e in events] == list(range(events[0]["sequence_number"],
                                                                events[0]["sequence_number"] + len(events)))


# every kind ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "text"), [("gpt", "Hello tell me about Paris"),
                                             ("claude", "Hello tell me about Paris"),
                                             ("gemini", "Hello tell me about Paris"),
                                             ("echo", "Echo: tell me about Paris")])
def test_create_and_stream_on_every_kind(client: openai.OpenAI, gateway: Running, alias: str, text: str) -> None:
    response = client.responses.create(model=alias, input="tell me about Paris", instructions="be brief",
                                       max_output_tokens=200)
    assert response.output_text == text and response.model == alias and response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    events = list(client.responses.create(model=alias, input="tell me about Paris", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == text and events[-1].type == "response.completed"
    assert events[-1].response.output_text == text and events[-1].response.usage is not None
    with client.responses.stream(model=alias, input="tell me about Paris") as stream:
        final = stream.get_final_response()
    assert final.output_text == text
    body = {"model": alias, "input": [{"role": "user", "content": [{"type": "input_text",
                                                                    "text": "tell me about Paris"}]}]}
    assert_valid("Response", raw_response(gateway, body))
    assert_valid_stream(raw_events(gateway, body))


def test_usage_rows_say_responses(client: openai.OpenAI, gateway: Running) -> None:
    client.responses.create(model="gpt", input="one two", extra_headers={"x-request-id": "resp-row-1"})
    list(client.responses.create(model="claude", input="one two", stream=True,
                                 extra_headers={"x-request-id": "resp-row-2"}))
    rows = ledger_rows(gateway.db, "SELECT endpoint, model, stream, status, prompt_tokens, cached_tokens, "  # type: ignore[attr-defined]
                       "cost_usd FROM usage_log WHERE request_id LIKE 'resp-row-%' ORDER BY request_id", (), at_least=2)
    assert [r[:4] for r in rows] == [("responses", "gpt", 0, 200), ("responses", "claude", 1, 200)]
    assert rows[0][4:6] == (5, 2) and rows[0][6] > 0
    assert 'endpoint="responses"' in httpx.get(gateway.url + "/metrics", timeout=10).text


# pass-through to OpenAI ---------------------------------------------------------------------------------


def test_passthrough_forwards_the_body_as_sent(client: openai.OpenAI, fakes: dict[str, Running]) -> None:
    body = {"input": "hi", "tools": [WEATHER, {"type": "web_search"}], "store": True,
            "previous_response_id": "resp_abc", "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"}}
    response = client.responses.create(model="gpt", **body)
    assert response.model == "gpt"
    sent = openai_requests(fakes)[-1]
    assert sent["path"] == "/v1/responses" and sent["body"] == {**body, "model": "ok"}
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_passthrough_stream_and_errors(client: openai.OpenAI, gateway: Running) -> None:
    events = raw_events(gateway, {"model": "gpt-tools", "input": "weather?"})
    assert_valid_stream(events)
    assert all(e["response"]["model"] == "gpt-tools" for e in events if "response" in e)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done and done[0]["arguments"] == '{"city":"Paris"}'
    failed = raw_events(gateway, {"model": "gpt-fail-stream", "input": "hi"})
    assert failed[-1]["type"] == "response.failed" and failed[-1]["response"]["error"]["code"] == "server_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gpt-400", input="hi")
    assert bad.value.body["param"] == "input"


# translation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_translated_and_tool_loop(client: openai.OpenAI, gateway: Running, stream: bool) -> None:
    args: dict[str, Any] = {"model": "claude-tools", "input": "weather in Paris and London?", "tools": [WEATHER]}
    if stream:
        with client.responses.stream(**args) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(**args)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    follow = client.responses.create(model="claude-tools", tools=[WEATHER], input=[
        {"role": "user", "content": "weather in Paris and London?"},
        *[{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls],
        *[{"type": "function_call_output", "call_id": c.call_id,
           "output": f"sunny in {json.loads(c.arguments)['city']}"} for c in calls]])
    assert follow.output_text == "It is sunny in Paris and sunny in London"
    assert_valid_stream(raw_events(gateway, args))


def test_reasoning_becomes_a_reasoning_item(client: openai.OpenAI, gateway: Running) -> None:
    body = {"model": "gemini-think", "input": "think about it", "reasoning": {"effort": "low", "summary": "auto"}}
    response = client.responses.create(**body)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text and response.usage.output_tokens_details.reasoning_tokens == 5
    assert response.usage.input_tokens_details.cached_tokens == 4
    events = raw_events(gateway, body)
    assert_valid_stream(events)
    kinds = [e["type"] for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.output_text.delta")


def test_json_schema_and_max_output_tokens_reach_the_target(client: openai.OpenAI, fakes: dict[str, Running]) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    client.responses.create(model="claude", input="hi", max_output_tokens=321,
                            text={"format": {"type": "json_schema", "name": "thing", "schema": schema}})
    sent = fakes["claude"].app.state.fake.requests[-1]["body"]
    assert sent["max_tokens"] == 321 and sent["output_config"] == {"format": {"type": "json_schema",
                                                                               "schema": schema}}


def test_length_stop_is_incomplete(client: openai.OpenAI, gateway: Running) -> None:
    response = client.responses.create(model="claude-short", input="hi")
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    events = raw_events(gateway, {"model": "claude-short", "input": "hi"})
    assert events[-1]["type"] == "response.incomplete"
    assert_valid_stream(events)


def test_upstream_error_midstream_is_response_failed(gateway: Running) -> None:
    events = raw_events(gateway, {"model": "claude-error-stream", "input": "hi"})
    assert events[-1]["type"] == "response.failed"
    assert_valid_stream(events)
    assert ANTHROPIC_KEY not in json.dumps(events)


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
])
def test_what_only_openai_can_do_is_a_400_elsewhere(client: openai.OpenAI, extra: dict[str, Any], param: str
                                                     ) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="claude", **{"input": "hi", **extra})
    assert err.value.body["param"] == param
    client.responses.create(model="claude", input="hi", store=False)  # store: false is what the gateway does


def test_bad_requests_and_get(client: openai.OpenAI, gateway: Running) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="echo", input=5)  # type: ignore[arg-type]
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="echo", input="hi", max_output_tokens=0)
    assert err.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_123")
    assert missing.value.body["param"] == "response_id"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0).responses.create(
            model="echo", input="hi")
