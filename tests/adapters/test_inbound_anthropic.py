"""adapters.inbound: Anthropic Messages <-> the internal chat request, answer and stream, and pass-through."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from adapters.base import Usage
from adapters.errors import APIError
from adapters.inbound.anthropic_messages import check_request, to_chat
from adapters.inbound.anthropic_messages_reply import MessagesFromChat, message_from_chat
from adapters.inbound.anthropic_passthrough import MessagesPassthrough, request
from adapters.openai import OpenAIStream
from tests.adapters.helpers import KEY, feed_in_pieces, provider


def events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            found.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return found


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


# request ------------------------------------------------------------------------------------------------


def test_to_chat_maps_every_part() -> None:
    system = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    body = {"model": "a", "max_tokens": 50, "system": system,
            "thinking": {"type": "enabled", "budget_tokens": 10000}, "stream": True, "top_p": 0.9,
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            "messages": [
                {"role": "user", "content": [{"type": "document", "title": "t.pdf", "source": {
                    "type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                              "content": [{"type": "text", "text": "boom"}]}]}]}
    original = json.dumps(body)
    chat = to_chat(body)
    assert json.dumps(body) == original  # not mutated
    assert chat == {
        "model": "a", "max_completion_tokens": 50, "top_p": 0.9, "reasoning_effort": "medium", "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}},
        "messages": [
            {"role": "system", "content": "one\n\ntwo"},
            {"role": "user", "content": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                                                   "filename": "t.pdf"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}]}


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4096, "medium"), (16384, "high")])
def test_thinking_budget_becomes_effort(budget: int, effort: str) -> None:
    body = {"model": "a", "max_tokens": 5, "messages": [], "thinking": {"type": "enabled", "budget_tokens": budget}}
    assert to_chat(body)["reasoning_effort"] == effort
    assert "reasoning_effort" not in to_chat({**body, "thinking": {"type": "disabled"}})


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "a", "max_tokens": True, "messages": []}, "max_tokens"),
    ({"model": "a", "max_tokens": 1, "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    ({"model": "a", "max_tokens": 1, "messages": [], "stream": "yes"}, "stream"),
])
def test_check_request_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as err:
        check_request(body)
    assert err.value.status == 400 and err.value.param == param


def test_count_tokens_needs_no_max_tokens() -> None:
    check_request({"model": "a", "messages": []}, counting=True)


# answers ------------------------------------------------------------------------------------------------


def test_message_from_chat() -> None:
    chat = {"id": "chatcmpl-9", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "ok", "reasoning_content": "r",
        "thinking_blocks": [{"type": "thinking", "thinking": "r", "signature": "s"},
                            {"type": "redacted_thinking", "data": "d"}],
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":2}'}}]}}]}
    usage = Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=3)
    assert message_from_chat(chat, "alias", usage, "req_1") == {
        "id": "msg_9", "type": "message", "role": "assistant", "model": "alias",
        "content": [{"type": "thinking", "thinking": "r", "signature": "s"}, {"type": "redacted_thinking", "data": "d"},
                    {"type": "text", "text": "ok"}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 2}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
                  "output_tokens": 4}}


def test_stream_from_chat_blocks_in_order_whatever_the_cuts() -> None:
    raw = b"".join([
        chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "think"}),
        chunk({"thinking_blocks": [{"type": "thinking", "thinking": "think", "signature": "sig"}]}),
        chunk({"content": "Hi"}), chunk({"content": " there"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}),
        b"data: [DONE]\n\n"])
    for cuts in ([], [7, 100, 101, 350], list(range(1, len(raw), 13))):
        tr = MessagesFromChat(OpenAIStream("alias", True), "alias", "req_1")
        got = events(feed_in_pieces(tr, raw, cuts))
        assert tr.done and tr.usage is not None and tr.usage.prompt_tokens == 9
        assert [n for n, _ in got] == [
            "message_start", "ping",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop"]
        assert got[0][1]["message"]["model"] == "alias"
        assert got[4][1]["delta"] == {"type": "signature_delta", "signature": "sig"}
        assert got[10][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
        assert got[14][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                              "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                                        "cache_read_input_tokens": 4, "output_tokens": 5}}


def test_stream_from_chat_error_chunk_becomes_error_event() -> None:
    tr = MessagesFromChat(OpenAIStream("alias", True), "alias", "req_1")
    out = tr.feed(chunk({"content": "a"}) + b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n')
    assert events(out)[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    assert tr.done


# pass-through -------------------------------------------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


START = sse("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x-2025",
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "cache_read_input_tokens": 5,
                                                          "output_tokens": 1}}})
MIDDLE = (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
          + sse("ping", {"type": "ping"})
          + sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "Hi"}})
          + sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
END = (sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": 7}})
       + sse("message_stop", {"type": "message_stop"}))


def test_passthrough_stream_forwards_bytes_and_reads_usage() -> None:
    tr = MessagesPassthrough(provider("anthropic", "http://x"), "alias")
    first = tr.feed(START)
    assert events(first)[0][1]["message"]["model"] == "alias"
    assert tr.feed(MIDDLE[:40]) == b""  # an event is only forwarded whole
    assert tr.feed(MIDDLE[40:]) == MIDDLE  # untouched bytes
    assert tr.feed(END) == END and tr.done
    assert tr.usage == Usage(prompt_tokens=17, completion_tokens=7, cached_tokens=5)


def test_passthrough_error_event_is_scrubbed_and_truncation_raises() -> None:
    tr = MessagesPassthrough(provider("anthropic", "http://x"), "alias")
    out = tr.feed(START + sse("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                   "message": f"key {KEY} overloaded"}}))
    name, data = events(out)[-1]
    assert name == "error" and data["error"]["type"] == "overloaded_error" and KEY not in out.decode()
    assert tr.done and tr.error is not None
    cut = MessagesPassthrough(provider("anthropic", "http://x"), "alias")
    cut.feed(START + MIDDLE)
    with pytest.raises(APIError):
        cut.end()
    assert cut.usage is not None and cut.usage.prompt_tokens == 17


def test_passthrough_request_rewrites_model_and_adds_the_client_beta() -> None:
    req = request("http://x/v1/messages", {"x-api-key": KEY, "anthropic-beta": "a"}, {"model": "alias", "n": 1},
                  "claude-x", "b")
    assert orjson.loads(req.content) == {"model": "claude-x", "n": 1}
    assert req.headers == {"x-api-key": KEY, "anthropic-beta": "a,b"}
