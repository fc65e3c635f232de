"""LangChain's ChatOpenAI (langchain-openai), unmodified, through the gateway: invoke and stream over chat
completions (with usage and tool calls), and over the Responses API (use_responses_api=True)."""

from __future__ import annotations

from collections.abc import Iterator

import langchain_openai
import pytest

from tests.conftest import GATEWAY_KEY, Running, base_config, start_gateway

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def gw(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_gateway(base_config(fake_openai.url, tmp_path_factory.mktemp("lc-openai") / "gw.db"))
    yield running
    running.server.stop()


def chat(gw: Running, model: str, **kwargs: object) -> object:
    return langchain_openai.ChatOpenAI(model=model, base_url=gw.url + "/v1", api_key=GATEWAY_KEY, max_retries=0,
                                       timeout=20, **kwargs)


@pytest.mark.parametrize(("model", "text"), [("gpt-test", "Hello tell me about Paris"),
                                             ("echo", "Echo: tell me about Paris")])
def test_invoke_and_stream(gw: Running, fake_openai: Running, model: str, text: str) -> None:
    llm = chat(gw, model, stream_usage=True)
    reply = llm.invoke("tell me about Paris")
    assert reply.content == text
    assert reply.response_metadata["model_name"] == model
    assert reply.usage_metadata["input_tokens"] > 0 and reply.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("tell me about Paris"))
    assert len(chunks) > 2  # streamed, not one whole answer
    assert "".join(c.content for c in chunks) == text
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata["output_tokens"] > 0
    assert total.response_metadata["finish_reason"] == "stop"


def test_tool_calls(gw: Running) -> None:
    reply = chat(gw, "a-tools").bind_tools([WEATHER]).invoke("weather in Paris?")
    assert [c["name"] for c in reply.tool_calls] == ["get_weather"]
    assert reply.tool_calls[0]["id"] == "call_abc"


@pytest.mark.parametrize(("model", "text"), [("gpt-test", "Hello tell me about Paris"),
                                             ("echo", "Echo: tell me about Paris")])
def test_responses_api(gw: Running, fake_openai: Running, model: str, text: str) -> None:
    llm = chat(gw, model, use_responses_api=True)
    reply = llm.invoke("tell me about Paris")
    assert reply.text == text
    assert reply.usage_metadata["output_tokens"] > 0
    if model == "gpt-test":
        assert fake_openai.app.state.fake.last()["path"] == "/v1/responses"
    streamed = list(llm.stream("tell me about Paris"))
    assert "".join(c.text for c in streamed) == text
