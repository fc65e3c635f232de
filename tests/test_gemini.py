"""kind = "gemini" through the official OpenAI SDK, against the gateway and a fake Gemini API on loopback."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import httpx
import openai
import pytest

from adapters.gemini import make_call_id, parse_call_id
from tests.conftest import GATEWAY_KEY, Running, start_gateway
from tests.fakes.gemini_server import SKIP_SIGNATURE, THINK_USAGE, TOOL_ARGS, make_app, vector_for
from tests.servers import ServerThread

GEMINI_KEY = "AIzaSy-fake-gemini-provider-key-789"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about Paris"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius"]}},
                   "required": ["city"], "additionalProperties": False}}}
OTHER_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(40))).decode()

ALIASES = {
    "g-text": "gemini-2.5-flash", "g3": "gemini-3-pro-preview", "g-think": "gemini-2.5-think",
    "g-tools": "gemini-2.5-flash-tools", "g3-tools": "gemini-3-pro-tools", "g-embed": "gemini-embedding-001",
    "g-blocked": "blocked", "g-midstream": "midstream-error", "g-midstream-data": "midstream-error-data",
    "g-cut": "cut-stream",
    **{f"g-finish-{r}": f"finish-{r}" for r in ("MAX_TOKENS", "SAFETY", "RECITATION", "BLOCKLIST",
                                                "PROHIBITED_CONTENT", "SPII", "OTHER", "MALFORMED_FUNCTION_CALL")},
    **{f"g-fail-{c}": f"fail-{c}" for c in ("400", "403", "404", "429", "429h", "500", "503", "context")},
}


def gemini_toml(fake_url: str, tmp: Path) -> str:
    # One gateway serves the whole module: a high failure_threshold keeps deliberate failures from
    # opening a target's circuit for the tests after them.
    models = "".join(f'[[models]]\nname = "{alias}"\ntargets = [{{ provider = "gem", model = "{model}", '
                     f'failure_threshold = 10000 }}]\n\n' for alias, model in ALIASES.items())
    return f"""
[server]
require_auth = true

[storage]
database_url = "sqlite:///:memory:"
spill_dir = "{tmp / "spill"}"

[providers.gem]
kind = "gemini"
base_url = "{fake_url}"
api_key = "{GEMINI_KEY}"
timeout_s = 5

[providers.badkey]
kind = "gemini"
base_url = "{fake_url}/"
api_key = "AIzaSy-revoked-key"

{models}
[[models]]
name = "g-drop"
targets = [{{ provider = "gem", model = "gemini-2.5-flash", drop_unsupported = true }}]

[[models]]
name = "g-badkey"
targets = [{{ provider = "badkey", model = "gemini-2.5-flash" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


@pytest.fixture(scope="module")
def fake_gemini():
    app = make_app(GEMINI_KEY)
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


@pytest.fixture
def fake(fake_gemini):
    return fake_gemini.app.state.fake


@pytest.fixture(scope="module")
def gw(fake_gemini, tmp_path_factory):
    # What the make_gateway fixture does, once per module: starting a gateway per test would cost
    # about 0.3 s each.
    running = start_gateway(gemini_toml(fake_gemini.url, tmp_path_factory.mktemp("gemini")))
    yield running
    running.server.stop()


@pytest.fixture
def oc(gw) -> openai.OpenAI:
    return gw.client()


def collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def reassemble_tool_calls(chunks) -> dict[int, dict]:
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or tc.id
            call["name"] = call["name"] or tc.function.name
            call["arguments"] += tc.function.arguments or ""
    return calls


def raw_stream(gw: Running, payload: dict) -> bytes:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, json={**payload, "stream": True}) as r:
        assert r.status_code == 200
        return b"".join(r.iter_raw())


# --- text, system prompt, generation config ------------------------------------------------------------


def test_text_and_streamed_text_equal(oc, gw, fake):
    full = oc.chat.completions.create(model="g-text", messages=MSGS)
    assert full.choices[0].message.content == "Hello tell me about Paris"
    assert full.choices[0].finish_reason == "stop" and full.model == "g-text"
    sent = fake.last()
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert GATEWAY_KEY not in json.dumps(sent["headers"])

    text, chunks = collect(oc.chat.completions.create(model="g-text", messages=MSGS, stream=True))
    assert text == full.choices[0].message.content
    assert fake.last()["path"].endswith(":streamGenerateContent") and fake.last()["query"] == {"alt": "sse"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.model == "g-text" and c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in chunks)

    body = raw_stream(gw, {"model": "g-text", "messages": MSGS})
    assert body.count(b"data: [DONE]") == 1 and body.rstrip().endswith(b"data: [DONE]")
    assert b"gemini-2.5-flash" not in body  # the upstream model name never shows


def test_system_messages_become_system_instruction(oc, fake):
    messages = [{"role": "system", "content": "rule one"},
                {"role": "developer", "content": [{"type": "text", "text": "rule two"}]},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "system", "content": "rule three"},
                {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "Paris"}]}]
    resp = oc.chat.completions.create(model="g-text", messages=messages)
    assert resp.choices[0].message.content == "Hello and Paris"
    body = fake.last()["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "rule one"}, {"text": "rule two"}, {"text": "rule three"}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]},
                                {"role": "model", "parts": [{"text": "hello"}]},
                                {"role": "user", "parts": [{"text": "and"}, {"text": "Paris"}]}]


def test_generation_config_mapping(oc, fake):
    resp = oc.chat.completions.create(model="g-text", messages=MSGS, max_tokens=100, temperature=0.3, top_p=0.9,
                                      stop="END", seed=7, n=2, presence_penalty=0.1, frequency_penalty=0.2,
                                      response_format={"type": "json_object"}, user="u-1", parallel_tool_calls=None)
    assert fake.last()["body"]["generationConfig"] == {
        "maxOutputTokens": 100, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"], "seed": 7,
        "candidateCount": 2, "presencePenalty": 0.1, "frequencyPenalty": 0.2, "responseMimeType": "application/json"}
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.content == "Hello tell me about Paris" for c in resp.choices)

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    oc.chat.completions.create(model="g-text", messages=MSGS, max_completion_tokens=50, max_tokens=9,
                               stop=["x", "y"], response_format={"type": "json_schema", "json_schema": {
                                   "name": "thing", "schema": schema, "strict": True}})
    assert fake.last()["body"]["generationConfig"] == {
        "maxOutputTokens": 50, "stopSequences": ["x", "y"], "responseMimeType": "application/json",
        "responseJsonSchema": schema}
    oc.chat.completions.create(model="g-text", messages=MSGS)
    assert "generationConfig" not in fake.last()["body"]


def test_streamed_n2_choices(oc):
    _, chunks = collect(oc.chat.completions.create(model="g-text", messages=MSGS, n=2, stream=True))
    texts = {0: "", 1: ""}
    finishes = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "Hello tell me about Paris", 1: "Hello tell me about Paris"}
    assert finishes == {0: "stop", 1: "stop"}


@pytest.mark.parametrize("alias,effort,expected", [
    ("g-text", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("g-text", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("g-text", "none", {"thinkingBudget": 0}),
    ("g3", "minimal", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("g3", "medium", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
    ("g3", "high", {"thinkingLevel": "HIGH", "includeThoughts": True}),
])
def test_reasoning_effort_to_thinking_config(oc, fake, alias, effort, expected):
    oc.chat.completions.create(model=alias, messages=MSGS, reasoning_effort=effort)
    assert fake.last()["body"]["generationConfig"] == {"thinkingConfig": expected}


def test_top_k_is_mapped(oc, fake):
    """top_k (an extension OpenAI-compatible servers take) reaches Gemini as topK instead of being dropped."""
    oc.chat.completions.create(model="g-text", messages=MSGS, extra_body={"top_k": 40})
    assert fake.last()["body"]["generationConfig"] == {"topK": 40}


@pytest.mark.parametrize("effort,max_tokens,budget", [("low", 500, 499), ("minimal", 512, 511), ("low", 5000, 1024),
                                                      ("none", 300, 0)])
def test_thinking_budget_fits_under_max_tokens(oc, fake, effort, max_tokens, budget):
    """Thoughts count against maxOutputTokens: a budget at or past it is cut to the limit less one, as the
    Anthropic adapter does, so the answer keeps room."""
    oc.chat.completions.create(model="g-text", messages=MSGS, reasoning_effort=effort, max_tokens=max_tokens)
    config = fake.last()["body"]["generationConfig"]
    assert config["maxOutputTokens"] == max_tokens
    assert config["thinkingConfig"]["thinkingBudget"] == budget < max_tokens


def test_bad_values_are_400_naming_the_field(oc, fake):
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="g-text", messages=MSGS, reasoning_effort="extreme")
    assert e.value.body["param"] == "reasoning_effort"
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="g-text", messages=MSGS, logit_bias={"50256": -100})
    assert e.value.body["param"] == "logit_bias" and e.value.body["code"] == "unsupported_parameter"
    # the same request on a drop_unsupported target goes through without the field
    assert oc.chat.completions.create(model="g-drop", messages=MSGS, logit_bias={"50256": -100}).choices
    # Google's own 400 (temperature out of range) reaches the client as a 400 with Google's message
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oc.chat.completions.create(model="g-text", messages=MSGS, temperature=2.5)


# --- thoughts and usage --------------------------------------------------------------------------------


def test_thoughts_and_exact_usage(oc):
    resp = oc.chat.completions.create(model="g-think", messages=MSGS)
    message = resp.choices[0].message
    assert message.content == "Hello tell me about Paris"
    assert message.model_extra["reasoning_content"] == "Thinking about what the user wants."
    u = resp.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (11, 12, 23)
    assert u.prompt_tokens_details.cached_tokens == THINK_USAGE["cachedContentTokenCount"] == 4
    assert u.completion_tokens_details.reasoning_tokens == THINK_USAGE["thoughtsTokenCount"] == 5

    stream = oc.chat.completions.create(model="g-think", messages=MSGS, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(stream)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks
                        if c.choices)
    assert reasoning == message.model_extra["reasoning_content"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == u.model_dump()
    assert sum(1 for c in chunks if c.usage is not None) == 1

    _, chunks = collect(oc.chat.completions.create(model="g-think", messages=MSGS, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)


# --- tools ---------------------------------------------------------------------------------------------


def test_tool_calls_non_stream_and_stream(oc, fake):
    full = oc.chat.completions.create(model="g-tools", messages=MSGS, tools=[WEATHER_TOOL])
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == TOOL_ARGS
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert all(c.type == "function" and re.fullmatch(r"call_[A-Za-z0-9_.-]+", c.id) for c in calls)
    assert len({c.id for c in calls}) == 2
    body = fake.last()["body"]
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather for a city",
        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]}]}]
    assert "toolConfig" not in body

    _, chunks = collect(oc.chat.completions.create(model="g-tools", messages=MSGS, tools=[WEATHER_TOOL], stream=True))
    streamed = reassemble_tool_calls(chunks)
    assert sorted(streamed) == [0, 1]
    assert [json.loads(streamed[i]["arguments"]) for i in (0, 1)] == TOOL_ARGS
    assert all(streamed[i]["name"] == "get_weather" and streamed[i]["id"].startswith("call_") for i in (0, 1))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("choice,expected", [
    ("auto", {"mode": "AUTO"}),
    ("required", {"mode": "ANY"}),
    ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_tool_choice_mapping(oc, fake, choice, expected):
    resp = oc.chat.completions.create(model="g-tools", messages=MSGS, tools=[WEATHER_TOOL, OTHER_TOOL],
                                      tool_choice=choice)
    assert fake.last()["body"]["toolConfig"] == {"functionCallingConfig": expected}
    calls = resp.choices[0].message.tool_calls
    if expected["mode"] == "NONE":
        assert calls is None and resp.choices[0].finish_reason == "stop"
    else:
        assert calls[0].function.name == expected.get("allowedFunctionNames", ["get_weather"])[0]


def test_allowed_tools_auto_narrows_declarations(oc, fake):
    oc.chat.completions.create(model="g-tools", messages=MSGS, tools=[WEATHER_TOOL, OTHER_TOOL], tool_choice={
        "type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "function", "function": {"name": "get_time"}}]}})
    body = fake.last()["body"]
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == ["get_time"]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


@pytest.mark.parametrize("stream_first_turn", [False, True])
def test_gemini3_tool_loop_keeps_thought_signature(oc, fake, stream_first_turn):
    messages = [{"role": "user", "content": "weather in Paris and London?"}]
    if stream_first_turn:
        _, chunks = collect(oc.chat.completions.create(model="g3-tools", messages=messages, tools=[WEATHER_TOOL],
                                                       stream=True))
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for _, c in sorted(reassemble_tool_calls(chunks).items())]
        assistant = {"role": "assistant", "content": None, "tool_calls": calls}
        issued = fake.responses[-1][-1]["candidates"][0]["content"]["parts"]
    else:
        first = oc.chat.completions.create(model="g3-tools", messages=messages, tools=[WEATHER_TOOL])
        assistant = first.choices[0].message.model_dump(exclude_none=True)
        issued = fake.responses[-1]["candidates"][0]["content"]["parts"]
    assert len(assistant["tool_calls"]) == 2
    messages += [assistant,
                 {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "18C"},
                 {"role": "tool", "tool_call_id": assistant["tool_calls"][1]["id"], "content": "12C"}]
    final = oc.chat.completions.create(model="g3-tools", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == "Results: get_weather=18C; get_weather=12C"
    assert final.choices[0].finish_reason == "stop"

    contents = fake.last()["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    sent_calls = contents[1]["parts"]
    # the signature Gemini issued comes back byte for byte on the first call; the ids Gemini gave come back too
    assert sent_calls[0]["thoughtSignature"] == issued[0]["thoughtSignature"]
    assert "thoughtSignature" not in sent_calls[1]
    assert [p["functionCall"] for p in sent_calls] == [p["functionCall"] for p in issued]
    assert [p["functionResponse"] for p in contents[2]["parts"]] == [
        {"name": "get_weather", "response": {"output": "18C"}, "id": issued[0]["functionCall"]["id"]},
        {"name": "get_weather", "response": {"output": "12C"}, "id": issued[1]["functionCall"]["id"]}]


def test_gemini3_history_without_signature_gets_placeholder(oc, fake):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_from_elsewhere", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
                {"role": "tool", "tool_call_id": "toolu_from_elsewhere", "content": [{"type": "text", "text": "20C"}]}]
    resp = oc.chat.completions.create(model="g3-tools", messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == "Results: get_weather=20C"
    model_turn = fake.last()["body"]["contents"][1]
    assert model_turn == {"role": "model", "parts": [
        {"text": "Let me check."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": SKIP_SIGNATURE}]}


def test_tool_message_needs_an_earlier_call(oc):
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="g-tools", messages=messages, tools=[WEATHER_TOOL])
    assert e.value.body["param"] == "messages[1].tool_call_id"


def test_call_id_carries_signature_and_gemini_id():
    signature = base64.b64encode(b"\xfb\xef\xff\x00sig").decode()  # has '+', '/' and '='
    ident = make_call_id(signature, "fc.1/x")
    assert re.fullmatch(r"call_[0-9a-f]{24}\.s[A-Za-z0-9_-]+\.i[A-Za-z0-9_-]+", ident)
    assert parse_call_id(ident) == (signature, "fc.1/x")
    assert parse_call_id(make_call_id("not base64!")) == ("not base64!", None)
    assert parse_call_id(make_call_id()) == (None, None)
    assert parse_call_id("call_abc.sAAAA") == (None, None)  # not one of ours: nothing is invented


# --- media ---------------------------------------------------------------------------------------------


def test_media_reaches_gemini_as_inline_and_file_data(oc, fake):
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
               {"type": "input_audio", "input_audio": {"data": PNG, "format": "wav"}},
               {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PNG}"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=2"}}]
    resp = oc.chat.completions.create(model="g-text", messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content == "Hello what is this"
    assert fake.last()["body"]["contents"][0]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"inlineData": {"mimeType": "audio/wav", "data": PNG}},
        {"inlineData": {"mimeType": "application/pdf", "data": PNG}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=2"}}]


def test_image_url_gemini_cannot_type_is_400_unless_dropped(oc, fake):
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x.test/img"}}]
    messages = [{"role": "user", "content": content}]
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="g-text", messages=messages)
    assert e.value.body["param"] == "messages[0].content[1].image_url.url"
    oc.chat.completions.create(model="g-drop", messages=messages)
    assert fake.last()["body"]["contents"][0]["parts"] == [{"text": "look"}]


# --- finish reasons ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason,expected", [
    ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"), ("MALFORMED_FUNCTION_CALL", "stop"), ("blocked", "content_filter"),
])
def test_finish_reasons(oc, reason, expected):
    alias = "g-blocked" if reason == "blocked" else f"g-finish-{reason}"
    full = oc.chat.completions.create(model=alias, messages=MSGS)
    assert full.choices[0].finish_reason == expected
    assert full.choices[0].message.content == ("Hello partial" if reason == "MAX_TOKENS" else
                                               None if expected == "content_filter" else "")
    text, chunks = collect(oc.chat.completions.create(model=alias, messages=MSGS, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [expected]
    assert text == (full.choices[0].message.content or "")
    assert chunks[0].choices[0].delta.role == "assistant"


# --- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_float_and_base64(oc, gw, fake):
    texts = ["hello world", "a much longer sentence about embeddings"]
    resp = oc.embeddings.create(model="g-embed", input=texts, dimensions=5, encoding_format="float")
    assert [d.embedding for d in resp.data] == [vector_for(t, 5) for t in texts]
    assert [d.index for d in resp.data] == [0, 1] and resp.model == "g-embed"
    sent = fake.last()
    assert sent["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent["body"] == {"requests": [
        {"model": "models/gemini-embedding-001", "outputDimensionality": 5, "content": {"parts": [{"text": t}]}}
        for t in texts]}
    # usage is an estimate: ceil(characters / 4) per input
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 3 + 10

    # the SDK asks for base64 when the caller does not choose, and decodes packed float32
    default = oc.embeddings.create(model="g-embed", input="hello world")
    assert default.data[0].embedding == pytest.approx(vector_for("hello world", 8), rel=1e-6)
    assert "outputDimensionality" not in fake.last()["body"]["requests"][0]

    r = httpx.post(gw.url + "/v1/embeddings", headers=AUTH,
                   json={"model": "g-embed", "input": "hi", "dimensions": 3, "encoding_format": "base64"})
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    assert list(struct.unpack("<3f", packed)) == pytest.approx(vector_for("hi", 3), rel=1e-6)


def test_embeddings_inputs_gemini_cannot_take_are_400(oc):
    with pytest.raises(openai.BadRequestError) as e:
        oc.embeddings.create(model="g-embed", input=[[1, 2, 3]])
    assert e.value.body["param"] == "input[0]"
    with pytest.raises(openai.BadRequestError) as e:
        oc.embeddings.create(model="g-embed", input=[f"text {i}" for i in range(101)])
    assert e.value.body["param"] == "input" and "100" in e.value.message
    assert len(oc.embeddings.create(model="g-embed", input=[f"text {i}" for i in range(100)]).data) == 100


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias,status,exc,code", [
    ("g-fail-400", 400, openai.BadRequestError, "invalid_argument"),
    ("g-fail-403", 502, openai.InternalServerError, "upstream_auth_failed"),
    ("g-fail-404", 404, openai.NotFoundError, "not_found"),
    ("g-fail-500", 502, openai.InternalServerError, "upstream_error"),
    ("g-fail-503", 502, openai.InternalServerError, "upstream_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_error_statuses(oc, gw, alias, status, exc, code, stream):
    with pytest.raises(exc) as e:
        oc.chat.completions.create(model=alias, messages=MSGS, stream=stream)
    assert e.value.status_code == status and e.value.body["code"] == code
    r = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={"model": alias, "messages": MSGS})
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_context_overflow_is_marked_for_fallback(oc):
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="g-fail-context", messages=MSGS)
    assert e.value.body["code"] == "context_length_exceeded" and "input token count" in e.value.message


@pytest.mark.parametrize("alias,retry_after", [("g-fail-429", "7"), ("g-fail-429h", "11")])
def test_429_keeps_retry_after(oc, alias, retry_after):
    with pytest.raises(openai.RateLimitError) as e:
        oc.chat.completions.create(model=alias, messages=MSGS)
    assert e.value.response.headers["retry-after"] == retry_after
    assert e.value.body["type"] == "rate_limit_error" and "quota" in e.value.message + "exhausted"


def test_invalid_provider_key_is_502_naming_the_provider_and_never_shown(oc, gw, fake):
    """Google refusing the gateway's key is not the client's bad key: a 502 naming the provider."""
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            oc.chat.completions.create(model="g-badkey", messages=MSGS, stream=stream)
        assert e.value.status_code == 502 and e.value.body["code"] == "upstream_auth_failed"
        assert "refused the gateway's credentials" in e.value.message and "API key not valid" in e.value.message
        assert "revoked" not in json.dumps(e.value.body)
    assert fake.last()["headers"]["x-goog-api-key"] == "AIzaSy-revoked-key"


@pytest.mark.parametrize("alias", ["g-midstream", "g-midstream-data"])
def test_midstream_error_reaches_client(oc, gw, alias):
    with pytest.raises(openai.APIError, match="overloaded"):
        for _ in oc.chat.completions.create(model=alias, messages=MSGS, stream=True):
            pass
    body = raw_stream(gw, {"model": alias, "messages": MSGS})
    assert b"[DONE]" not in body and body.count(b'"error"') == 1
    assert b"Hello tell " in b"".join(re.findall(rb'"content":"([^"]*)"', body))


def test_stream_cut_before_finish_reason_is_an_error(oc):
    with pytest.raises(openai.APIError, match="ended before a finishReason"):
        for _ in oc.chat.completions.create(model="g-cut", messages=MSGS, stream=True):
            pass


# --- the fake is as strict as the real API (so the tests above can fail) -------------------------------


@pytest.mark.parametrize("model,body,fragment", [
    ("gemini-2.5-flash", {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    ("gemini-2.5-flash", {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                          "generationConfig": {"responseMimeType": "application/json", "responseSchema": {},
                                               "responseJsonSchema": {}}}, "cannot both"),
    ("gemini-2.5-flash", {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                          "generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}, "not supported"),
    ("gemini-3-pro-tools", {"contents": [
        {"role": "user", "parts": [{"text": "x"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "1"}}}]}]},
     "thought_signature"),
    ("gemini-2.5-flash", {"contents": [
        {"role": "user", "parts": [{"text": "x"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {"output": "1"}}}]}]},
     "matches no function call"),
    ("gemini-2.5-flash", {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "stream": True}, "Unknown name"),
])
def test_fake_rejects_what_gemini_rejects(fake_gemini, model, body, fragment):
    r = httpx.post(f"{fake_gemini.url}/v1beta/models/{model}:generateContent", json=body,
                   headers={"x-goog-api-key": GEMINI_KEY})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert fragment in r.json()["error"]["message"]
    r = httpx.post(f"{fake_gemini.url}/v1beta/models/{model}:generateContent", json=body)
    assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
