"""kind = "anthropic": the official OpenAI SDK against the gateway in front of a fake Anthropic API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, Running, start_gateway
from tests.fakes.anthropic_server import REDACTED, make_app, sign
from tests.servers import ServerThread

ANTHROPIC_KEY = "sk-ant-provider-secret-456"
SCENARIOS = ["claude-ok", "claude-cache", "claude-tools", "claude-now", "fail-400", "fail-401", "fail-403", "fail-404",
             "fail-429", "fail-500", "fail-529", "leak-key", "not-json", "error-stream", "cut-stream", "split-stream",
             "finish-end_turn", "finish-stop_sequence", "finish-max_tokens", "finish-refusal", "finish-pause_turn",
             "finish-model_context_window_exceeded"]
MSGS = [{"role": "user", "content": "tell me about Paris"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
PDF = "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK"


def config(fake_url: str, tmp: Path, key: str = ANTHROPIC_KEY, extra_provider: str = "") -> str:
    models = "\n".join(f'[[models]]\nname = "c-{m}"\ntargets = [{{ provider = "claude", model = "{m}" }}]\n'
                       for m in SCENARIOS)
    return f"""
[storage]
database_url = "sqlite:///:memory:"
spill_dir = "{tmp / "spill"}"

[providers.claude]
kind = "anthropic"
base_url = "{fake_url}"
api_key = "{key}"
timeout_s = 5
{extra_provider}

{models}

[[models]]
name = "c-drop"
targets = [{{ provider = "claude", model = "claude-ok", drop_unsupported = true }}]

[[models]]
name = "c-small"
targets = [{{ provider = "claude", model = "claude-ok", default_max_tokens = 300 }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[Running]:
    app = make_app(ANTHROPIC_KEY)
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


@pytest.fixture(scope="module")
def gateway(fake: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_gateway(config(fake.url, tmp_path_factory.mktemp("anthropic")))
    yield running
    running.server.stop()


@pytest.fixture
def client(gateway: Running) -> openai.OpenAI:
    return gateway.client()


def sent(fake: Running) -> dict[str, Any]:
    """The body of the last request the fake Anthropic API received."""
    return fake.app.state.fake.last()["body"]


def reply(fake: Running) -> dict[str, Any]:
    """The last message the fake Anthropic API answered with."""
    return fake.app.state.fake.replies[-1]


def reassemble(stream: Any) -> tuple[dict[str, Any], str | None, list[Any]]:
    """Rebuild the assistant message from stream deltas, as an SDK user would, checking chunk invariants."""
    chunks = list(stream)
    content: list[str] = []
    reasoning: list[str] = []
    blocks: list[dict[str, Any]] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    assert chunks[0].choices[0].delta.role == "assistant"
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        extra = delta.model_extra or {}
        reasoning.append(extra.get("reasoning_content") or "")
        blocks += extra.get("thinking_blocks") or []
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # first delta of a call: id, type and name, once
                assert tc.id and tc.type == "function" and tc.function.name
                calls[tc.index] = {"id": tc.id, "type": "function",
                                   "function": {"name": tc.function.name, "arguments": ""}}
            else:
                assert tc.id is None and tc.function.name is None
            calls[tc.index]["function"]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        assert sorted(calls) == list(range(len(calls)))
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = blocks
    return message, finish, chunks


# --- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["c-claude-ok", "c-split-stream"])
def test_text_and_streamed_text_are_equal(client, fake, alias):
    full = client.chat.completions.create(model=alias, messages=MSGS)
    assert full.choices[0].message.content == "Hello tell me about Paris"
    assert full.model == alias and full.object == "chat.completion" and full.id.startswith("chatcmpl-")
    assert isinstance(full.created, int) and full.choices[0].finish_reason == "stop"
    message, finish, chunks = reassemble(client.chat.completions.create(model=alias, messages=MSGS, stream=True))
    assert message["content"] == full.choices[0].message.content and finish == "stop"
    assert all(c.model == alias for c in chunks)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage


def test_request_shape_headers_and_defaults(client, fake):
    client.chat.completions.create(model="c-claude-ok", messages=MSGS)
    request = fake.app.state.fake.last()
    assert request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in request["headers"]
    assert GATEWAY_KEY not in json.dumps(request["headers"])
    assert request["body"] == {"model": "claude-ok", "max_tokens": 4096,
                               "messages": [{"role": "user", "content": [{"type": "text",
                                                                          "text": "tell me about Paris"}]}]}


def test_stream_wire_format(gateway, fake):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "c-claude-ok", "messages": MSGS, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        body = b"".join(r.iter_raw())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert sent(fake)["stream"] is True and "stream_options" not in sent(fake)
    events = [e for e in body.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)  # no upstream event names or pings leak through
    assert events[-1] == b"data: [DONE]" and body.count(b"[DONE]") == 1
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == []
    assert b"20250101" not in body  # the upstream's dated model name never shows


def test_system_and_developer_messages_become_system_and_turns_merge(client, fake):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "developer", "content": [{"type": "text", "text": "answer in French"}]},
                {"role": "user", "content": "third"}]
    resp = client.chat.completions.create(model="c-claude-ok", messages=messages)
    assert resp.choices[0].message.content == "Hello third"
    body = sent(fake)
    assert body["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "answer in French"}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][0]["content"]] == ["first", "second"]


def test_sampling_fields_are_mapped(client, fake):
    client.chat.completions.create(model="c-claude-ok", messages=MSGS, max_completion_tokens=77, stop="END",
                                   temperature=1.7, top_p=0.5, user="user-42", seed=3)
    body = sent(fake)
    assert (body["max_tokens"], body["stop_sequences"], body["temperature"]) == (77, ["END"], 1.0)
    assert body["top_p"] == 0.5 and body["metadata"] == {"user_id": "user-42"} and "seed" not in body
    client.chat.completions.create(model="c-claude-ok", messages=MSGS, max_tokens=55, stop=["a", "b"], temperature=0.2)
    body = sent(fake)
    assert (body["max_tokens"], body["stop_sequences"], body["temperature"]) == (55, ["a", "b"], 0.2)
    client.chat.completions.create(model="c-small", messages=MSGS)
    assert sent(fake)["max_tokens"] == 300  # the target's default_max_tokens


def test_assistant_prefill_loses_trailing_whitespace(client, fake):
    messages = MSGS + [{"role": "assistant", "content": "Paris is "}]
    client.chat.completions.create(model="c-claude-ok", messages=messages)
    assert sent(fake)["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Paris is"}]}


# --- images and files ------------------------------------------------------------------------------


def test_images_become_base64_and_url_sources(client, fake):
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}", "detail": "low"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    resp = client.chat.completions.create(model="c-claude-ok", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == "Hello what is this"
    blocks = sent(fake)["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_unsupported_image_type_is_a_400(client):
    content = [{"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG_1PX}"}}]
    with pytest.raises(openai.BadRequestError, match="image/bmp") as e:
        client.chat.completions.create(model="c-claude-ok", messages=[{"role": "user", "content": content}])
    assert e.value.body["param"] == "messages[0].content[0].image_url"


def test_pdf_file_becomes_document(client, fake):
    content = [{"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
               {"type": "text", "text": "summarize"}]
    client.chat.completions.create(model="c-claude-ok", messages=[{"role": "user", "content": content}])
    source = {"type": "base64", "media_type": "application/pdf", "data": PDF}
    assert sent(fake)["messages"][0]["content"][0] == {"type": "document", "title": "a.pdf", "source": source}


# --- tools -----------------------------------------------------------------------------------------


def test_tool_calls_non_stream_and_stream_agree(client, fake):
    full = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL])
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    upstream_calls = [b for b in reply(fake)["content"] if b["type"] == "tool_use"]
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        (u["id"], u["name"], u["input"]) for u in upstream_calls]
    assert sent(fake)["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                    "input_schema": WEATHER_TOOL["function"]["parameters"]}]

    message, finish, _ = reassemble(client.chat.completions.create(model="c-claude-tools", messages=MSGS,
                                                                   tools=[WEATHER_TOOL], stream=True))
    assert finish == "tool_calls" and message["content"] == "Let me check."
    streamed = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]
    assert streamed == [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]


@pytest.mark.parametrize("choice,expected", [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"})])
def test_tool_choice_mapping(client, fake, choice, expected):
    client.chat.completions.create(model="c-claude-ok", messages=MSGS, tools=[WEATHER_TOOL], tool_choice=choice)
    assert sent(fake)["tool_choice"] == expected


def test_a_call_of_a_tool_without_parameters_has_arguments_that_parse(client, fake):
    """The stream carries no argument fragment at all (one empty input_json_delta): the client must
    still get valid JSON, "{}", as the whole-body answer has."""
    bare = {"type": "function", "function": {"name": "now"}}
    full = client.chat.completions.create(model="c-claude-now", messages=MSGS, tools=[bare])
    assert [(c.function.name, c.function.arguments) for c in full.choices[0].message.tool_calls] == [("now", "{}")]
    message, finish, _ = reassemble(client.chat.completions.create(model="c-claude-now", messages=MSGS,
                                                                   tools=[bare], stream=True))
    assert finish == "tool_calls"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [("now", "{}")]


def test_parallel_tool_calls_false_and_tool_without_parameters(client, fake):
    bare = {"type": "function", "function": {"name": "now"}}
    resp = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL, bare],
                                          parallel_tool_calls=False)
    assert len(resp.choices[0].message.tool_calls) == 1
    body = sent(fake)
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["tools"][1] == {"name": "now", "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_loop(client, fake, stream):
    first = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL], stream=stream)
    if stream:
        assistant, _, _ = reassemble(first)
    else:
        assistant = first.choices[0].message.model_dump(exclude_none=True)
    results = [{"role": "tool", "tool_call_id": c["id"], "content": temp}
               for c, temp in zip(assistant["tool_calls"], ["18C", "12C"], strict=True)]
    messages = MSGS + [assistant] + results + [{"role": "user", "content": "and?"}]
    final = client.chat.completions.create(model="c-claude-tools", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "It is 18C and 12C" and final.choices[0].finish_reason == "stop"
    turns = sent(fake)["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert turns[1]["content"][1]["input"] == {"city": "Paris", "unit": "celsius", "note": 'says "hi"'}
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01paris", "content": "18C"},
                                   {"type": "tool_result", "tool_use_id": "toolu_01london", "content": "12C"},
                                   {"type": "text", "text": "and?"}]


def test_tool_results_open_their_user_turn(client, fake):
    first = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL])
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    paris, london = (c["id"] for c in assistant["tool_calls"])
    messages = MSGS + [assistant, {"role": "tool", "tool_call_id": paris, "content": [{"type": "text", "text": "18C"}]},
                       {"role": "user", "content": "note: metric"}, {"role": "tool", "tool_call_id": london,
                                                                     "content": "12C"}]
    final = client.chat.completions.create(model="c-claude-tools", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "It is 18C and 12C"
    assert [b["type"] for b in sent(fake)["messages"][2]["content"]] == ["tool_result", "tool_result", "text"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_with_thinking_sends_signed_blocks_back(client, fake, stream):
    first = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL],
                                           reasoning_effort="low", stream=stream)
    if stream:
        assistant, finish, _ = reassemble(first)
    else:
        assistant, finish = first.choices[0].message.model_dump(exclude_none=True), first.choices[0].finish_reason
    assert sent(fake)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert finish == "tool_calls" and assistant["content"] == "Let me check."
    thought = "The user wants an answer. I should be brief."
    assert assistant["reasoning_content"] == thought
    assert assistant["thinking_blocks"] == [{"type": "thinking", "thinking": thought, "signature": sign(thought)},
                                            {"type": "redacted_thinking", "data": REDACTED}]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_weather", "get_weather"]

    results = [{"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in assistant["tool_calls"]]
    # The SDK also accepts the message object itself and sends its extra fields back.
    for passed_back in [assistant] if stream else [assistant, first.choices[0].message]:
        final = client.chat.completions.create(model="c-claude-tools", messages=MSGS + [passed_back] + results,
                                               tools=[WEATHER_TOOL], reasoning_effort="low")
        assert final.choices[0].message.content == "It is sunny and sunny"
        assert sent(fake)["messages"][1]["content"][:2] == assistant["thinking_blocks"]


def test_thinking_blocks_missing_or_altered_are_rejected_upstream(client):
    first = client.chat.completions.create(model="c-claude-tools", messages=MSGS, tools=[WEATHER_TOOL],
                                           reasoning_effort="low")
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in assistant["tool_calls"]]
    without = {k: v for k, v in assistant.items() if k != "thinking_blocks"}
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):
        client.chat.completions.create(model="c-claude-tools", messages=MSGS + [without] + results,
                                       tools=[WEATHER_TOOL], reasoning_effort="low")
    altered = {**assistant, "thinking_blocks": [{**assistant["thinking_blocks"][0], "thinking": "edited"}]}
    with pytest.raises(openai.BadRequestError, match="Invalid `signature`"):
        client.chat.completions.create(model="c-claude-tools", messages=MSGS + [altered] + results,
                                       tools=[WEATHER_TOOL], reasoning_effort="low")
    # With thinking off the old blocks are left out, so the same history is accepted.
    resp = client.chat.completions.create(model="c-claude-tools", messages=MSGS + [assistant] + results,
                                          tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == "It is sunny and sunny"


@pytest.mark.parametrize("kwargs,thinking,max_tokens", [
    ({"reasoning_effort": "medium"}, {"type": "enabled", "budget_tokens": 8192}, 8192 + 4096),
    ({"reasoning_effort": "high", "max_completion_tokens": 3000}, {"type": "enabled", "budget_tokens": 2999}, 3000),
    ({"reasoning_effort": "minimal", "max_tokens": 5000}, {"type": "enabled", "budget_tokens": 1024}, 5000),
    ({"reasoning_effort": "none"}, None, 4096),
])
def test_reasoning_effort_budgets(client, fake, kwargs, thinking, max_tokens):
    resp = client.chat.completions.create(model="c-claude-ok", messages=MSGS, **kwargs)
    assert resp.choices[0].message.content == "Hello tell me about Paris"
    assert sent(fake).get("thinking") == thinking and sent(fake)["max_tokens"] == max_tokens


def test_reasoning_effort_needs_room_for_a_budget(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="c-claude-ok", messages=MSGS, reasoning_effort="low",
                                       max_completion_tokens=1000)
    assert e.value.body["param"] == "reasoning_effort"


def test_temperature_with_reasoning(client, fake):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="c-claude-ok", messages=MSGS, reasoning_effort="low", temperature=0.5)
    assert e.value.body["param"] == "temperature"
    client.chat.completions.create(model="c-claude-ok", messages=MSGS, reasoning_effort="low", temperature=1.5)
    assert sent(fake)["temperature"] == 1.0  # clamped to 1, which thinking allows
    client.chat.completions.create(model="c-drop", messages=MSGS, reasoning_effort="low", temperature=0.5)
    assert "temperature" not in sent(fake) and sent(fake)["thinking"]["type"] == "enabled"


def test_response_format_json_schema_becomes_output_config(client, fake):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    client.chat.completions.create(model="c-claude-ok", messages=MSGS, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert sent(fake)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


# --- usage and finish reasons ----------------------------------------------------------------------


def test_usage_is_exact_including_cache(client, fake):
    resp = client.chat.completions.create(model="c-claude-cache", messages=MSGS)
    upstream = reply(fake)["usage"]
    assert upstream["cache_read_input_tokens"] and upstream["cache_creation_input_tokens"]
    prompt = upstream["input_tokens"] + upstream["cache_read_input_tokens"] + upstream["cache_creation_input_tokens"]
    assert resp.usage.prompt_tokens == prompt
    assert resp.usage.prompt_tokens_details.cached_tokens == upstream["cache_read_input_tokens"]
    assert resp.usage.completion_tokens == upstream["output_tokens"]
    assert resp.usage.total_tokens == prompt + upstream["output_tokens"]

    _, _, chunks = reassemble(client.chat.completions.create(model="c-claude-cache", messages=MSGS, stream=True,
                                                             stream_options={"include_usage": True}))
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    assert usage_chunks[0].usage.model_dump() == resp.usage.model_dump()  # cumulative, not summed


@pytest.mark.parametrize("alias", ["c-claude-ok", "c-claude-tools"])
def test_usage_counts_thinking_tokens_as_reasoning(client, fake, alias):
    resp = client.chat.completions.create(model=alias, messages=MSGS, reasoning_effort="low")
    upstream = reply(fake)["usage"]
    assert upstream["output_tokens_details"]["thinking_tokens"] > 0
    assert resp.usage.completion_tokens_details.reasoning_tokens == upstream["output_tokens_details"]["thinking_tokens"]
    assert resp.usage.prompt_tokens == upstream["input_tokens"]
    assert resp.usage.completion_tokens == upstream["output_tokens"]
    _, _, chunks = reassemble(client.chat.completions.create(model=alias, messages=MSGS, reasoning_effort="low",
                                                             stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.model_dump() == resp.usage.model_dump()


@pytest.mark.parametrize("model,finish", [
    ("finish-end_turn", "stop"), ("finish-stop_sequence", "stop"), ("finish-max_tokens", "length"),
    ("finish-refusal", "content_filter"), ("finish-pause_turn", "stop"),
    ("finish-model_context_window_exceeded", "length")])
def test_finish_reasons(client, model, finish):
    resp = client.chat.completions.create(model=f"c-{model}", messages=MSGS, stop=["END"])
    assert resp.choices[0].finish_reason == finish
    _, streamed, _ = reassemble(client.chat.completions.create(model=f"c-{model}", messages=MSGS, stop=["END"],
                                                               stream=True))
    assert streamed == finish


class Capture:
    """Wraps the gateway's usage sink to see the rows it writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.records: list[Any] = []

    def submit(self, record: Any) -> None:
        self.records.append(record)
        self.inner.submit(record)

    def wait(self, model: str) -> Any:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            found = [r for r in self.records if r.model == model]
            if found:
                return found[-1]
            time.sleep(0.01)
        raise AssertionError(f"no usage row for {model}")


@pytest.fixture
def ledger(gateway: Running) -> Iterator[Capture]:
    runtime = gateway.app.state.runtime
    capture = runtime.sink = Capture(runtime.sink)
    yield capture
    runtime.sink = capture.inner


def test_streams_are_accounted_even_without_a_usage_chunk(client, fake, ledger):
    _, _, chunks = reassemble(client.chat.completions.create(model="c-claude-cache", messages=MSGS, stream=True))
    assert all(c.usage is None for c in chunks)
    upstream, row = reply(fake)["usage"], ledger.wait("c-claude-cache")
    assert not row.usage_estimated and row.status == 200
    assert row.prompt_tokens == (upstream["input_tokens"] + upstream["cache_read_input_tokens"]
                                 + upstream["cache_creation_input_tokens"])
    assert row.cached_tokens == upstream["cache_read_input_tokens"]
    assert row.completion_tokens == upstream["output_tokens"]


def test_a_failed_stream_still_bills_the_prompt(client, fake, ledger):
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="c-error-stream", messages=MSGS, stream=True))
    row = ledger.wait("c-error-stream")
    assert row.prompt_tokens == reply(fake)["usage"]["input_tokens"] and row.completion_tokens >= 1
    assert row.error_type == "status_5xx"


# --- unsupported fields ----------------------------------------------------------------------------


UNSUPPORTED = [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {
        "type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]}, "messages[0].content[1]"),
]


@pytest.mark.parametrize("extra,param", UNSUPPORTED)
def test_unsupported_fields_are_a_400_naming_the_field(client, fake, extra, param):
    before = len(fake.app.state.fake.requests)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{"model": "c-claude-ok", "messages": MSGS, **extra})
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    assert param.split("[")[0] in e.value.body["message"] or "audio" in e.value.body["message"]
    assert len(fake.app.state.fake.requests) == before  # never sent upstream


@pytest.mark.parametrize("extra,param", UNSUPPORTED)
def test_unsupported_fields_are_dropped_when_the_target_says_so(client, fake, extra, param):
    resp = client.chat.completions.create(**{"model": "c-drop", "messages": MSGS, **extra})
    assert resp.choices[0].message.content.startswith("Hello")
    body = sent(fake)  # the fake rejects unknown fields, so reaching it proves they were left out
    assert "input_audio" not in json.dumps(body)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,exc,status", [
    ("fail-400", openai.BadRequestError, 400), ("fail-401", openai.InternalServerError, 502),
    ("fail-403", openai.InternalServerError, 502), ("fail-404", openai.NotFoundError, 404),
    ("fail-500", openai.InternalServerError, 502), ("not-json", openai.InternalServerError, 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_error_statuses(client, model, exc, status, stream):
    with pytest.raises(exc) as e:
        list(client.chat.completions.create(model=f"c-{model}", messages=MSGS, stream=stream)) if stream else \
            client.chat.completions.create(model=f"c-{model}", messages=MSGS)
    assert e.value.status_code == status
    assert set(e.value.body) == {"message", "type", "param", "code"}
    if model == "fail-400":
        assert e.value.body["message"] == "fake failure 400" and e.value.body["type"] == "invalid_request_error"


def test_429_keeps_retry_after(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="c-fail-429", messages=MSGS)
    assert e.value.response.headers["retry-after"] == "11"
    assert e.value.body["type"] == "rate_limit_error"


def test_529_overloaded_is_a_retryable_503(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="c-fail-529", messages=MSGS, stream=True)
    assert e.value.status_code == 503 and "Overloaded" in e.value.body["message"]
    assert e.value.body["type"] == "service_unavailable_error"


def test_midstream_error_event_raises_in_the_sdk(client):
    stream = client.chat.completions.create(model="c-error-stream", messages=MSGS, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        for chunk in stream:
            seen.append(chunk)
    assert seen and seen[-1].choices[0].delta.content == "Hello "  # text before the error was delivered


def test_stream_cut_before_message_stop_is_an_error(client):
    with pytest.raises(openai.APIError, match="ended before message_stop"):
        list(client.chat.completions.create(model="c-cut-stream", messages=MSGS, stream=True))


def test_provider_key_never_reaches_the_client(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="c-leak-key", messages=MSGS)
    assert ANTHROPIC_KEY not in json.dumps(e.value.body) and "***" in e.value.body["message"]


def test_wrong_provider_key_and_beta_header(make_gateway, fake, tmp_path):
    wrong = make_gateway(config(fake.url, tmp_path, key="sk-ant-wrong"))
    with pytest.raises(openai.InternalServerError, match="invalid x-api-key") as e:
        wrong.client().chat.completions.create(model="c-claude-ok", messages=MSGS)
    # Anthropic refusing the gateway's key is not the client's bad key: a 502 that names the provider.
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_auth_failed"
    assert "refused the gateway's credentials" in e.value.message and e.value.body["code"] != "invalid_api_key"
    beta = make_gateway(config(fake.url, tmp_path,
                               extra_provider='anthropic_beta = "fine-grained-tool-streaming-2025-05-14"'))
    beta.client().chat.completions.create(model="c-claude-ok", messages=MSGS)
    assert fake.app.state.fake.last()["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"


def test_fake_rejects_what_the_real_api_rejects(fake):
    """The fake's strictness is what makes the translation tests able to fail."""
    url, headers = fake.url + "/v1/messages", {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    user = {"role": "user", "content": "hi"}
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    cases = [
        ({"model": "m", "messages": [user]}, headers, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}, user]}, headers, "role"),
        ({"model": "m", "max_tokens": 9, "messages": [user, user]}, headers, "roles must alternate"),
        ({"model": "m", "max_tokens": 9, "messages": [user, use, {"role": "user", "content": [
            {"type": "text", "text": "x"}, result]}]}, headers, "must come before"),
        ({"model": "m", "max_tokens": 9, "messages": [user, {"role": "assistant", "content": "a"}, {
            "role": "user", "content": [result]}]}, headers, "unexpected `tool_use_id`"),
        ({"model": "m", "max_tokens": 9, "messages": [user], "n": 2}, headers, "Extra inputs"),
        ({"model": "m", "max_tokens": 2000, "messages": [user], "thinking": {"type": "enabled", "budget_tokens": 2000}},
         headers, "greater than `thinking.budget_tokens`"),
        ({"model": "m", "max_tokens": 2000, "messages": [user], "thinking": {"type": "enabled", "budget_tokens": 500}},
         headers, "greater than or equal to 1024"),
        ({"model": "m", "max_tokens": 9, "messages": [user]}, {"x-api-key": ANTHROPIC_KEY}, "anthropic-version"),
    ]
    http = httpx.Client()
    for body, hdrs, message in cases:
        r = http.post(url, json=body, headers=hdrs)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert message in r.json()["error"]["message"], (message, r.text)
    r = http.post(url, json={"model": "m", "max_tokens": 9, "messages": [user]},
                  headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_embeddings_are_a_400(client):
    with pytest.raises(openai.BadRequestError, match="no embeddings"):
        client.embeddings.create(model="c-claude-ok", input="hi")
