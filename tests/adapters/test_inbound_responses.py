"""adapters.inbound: OpenAI Responses <-> the internal chat request, answer and stream, and pass-through."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from adapters.base import Usage
from adapters.errors import APIError
from adapters.inbound.openai_responses import check_translatable, to_chat
from adapters.inbound.openai_responses_passthrough import ResponsesPassthrough
from adapters.inbound.openai_responses_reply import ResponsesFromChat, response_from_chat
from adapters.openai import OpenAIStream
from tests.adapters.helpers import KEY, feed_in_pieces, provider


def events(out: bytes) -> list[dict[str, Any]]:
    found = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            found.append(event)
    return found


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_to_chat_maps_items() -> None:
    body = {"model": "a", "instructions": "be brief", "max_output_tokens": 99, "reasoning": {"effort": "high"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "input": [
                {"role": "developer", "content": "dev"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}]}
    original = json.dumps(body)
    chat = to_chat(body)
    assert json.dumps(body) == original
    assert chat == {
        "model": "a", "max_completion_tokens": 99, "reasoning_effort": "high",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                   "strict": True}},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "dev"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "https://x/a.png",
                                                                             "detail": "low"}}]},
            {"role": "assistant", "content": "ok", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"}]}


@pytest.mark.parametrize(("extra", "param"), [({"previous_response_id": "r"}, "previous_response_id"),
                                              ({"store": True}, "store"), ({"conversation": "c"}, "conversation")])
def test_stateful_parameters_are_a_400(extra: dict[str, Any], param: str) -> None:
    check_translatable({"model": "a", "store": False})
    with pytest.raises(APIError) as err:
        check_translatable({"model": "a", **extra})
    assert err.value.status == 400 and err.value.param == param


def test_response_from_chat() -> None:
    chat = {"id": "chatcmpl-1", "created": 7, "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "partial", "reasoning_content": "hmm",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    out = response_from_chat(chat, {"model": "alias", "max_output_tokens": 5, "user": "u"}, "alias",
                             Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=2, reasoning_tokens=1), "req_1")
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["type"] for i in out["output"]] == ["reasoning", "message", "function_call"]
    assert out["output"][1]["content"][0]["text"] == "partial" and out["output"][2]["call_id"] == "c1"
    assert out["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 15}
    assert (out["id"], out["created_at"], out["model"], out["max_output_tokens"], out["user"]) == (
        "resp_1", 7, "alias", 5, "u")


def test_stream_items_in_order_whatever_the_cuts() -> None:
    raw = b"".join([
        chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "hm"}),
        chunk({"content": "Hi"}), chunk({"content": "!"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "f", "arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        chunk({}, "tool_calls"), chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 4}),
        b"data: [DONE]\n\n"])
    for cuts in ([], [5, 200, 201], list(range(1, len(raw), 17))):
        tr = ResponsesFromChat(OpenAIStream("alias", True), {"model": "alias"}, "alias", "req_1")
        got = events(feed_in_pieces(tr, raw, cuts))
        assert [e["type"] for e in got] == [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done", "response.output_item.done",
            "response.output_item.added", "response.content_part.added", "response.output_text.delta",
            "response.output_text.delta", "response.output_text.done", "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.delta", "response.function_call_arguments.done",
            "response.output_item.done", "response.completed"]
        assert [e["sequence_number"] for e in got] == list(range(len(got)))
        assert [e["output_index"] for e in got if e["type"] == "response.output_item.done"] == [0, 1, 2]
        final = got[-1]["response"]
        assert final["status"] == "completed" and final["usage"]["total_tokens"] == 7
        assert final["output"][2]["arguments"] == '{"a":1}' and final["output"][1]["content"][0]["text"] == "Hi!"
        assert tr.done and tr.usage is not None and tr.usage.completion_tokens == 4


def sse(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def test_passthrough_rewrites_only_response_events() -> None:
    tr = ResponsesPassthrough(provider("openai", "http://x"), "alias")
    created = sse("response.created", sequence_number=0, response={"model": "gpt-x-2025", "status": "in_progress"})
    assert events(tr.feed(created))[0]["response"]["model"] == "alias"
    delta = sse("response.output_text.delta", sequence_number=1, item_id="m", output_index=0, content_index=0,
                delta="hi", logprobs=[])
    assert tr.feed(delta) == delta
    done = sse("response.completed", sequence_number=2, response={"model": "gpt-x", "usage": {
        "input_tokens": 5, "input_tokens_details": {"cached_tokens": 1}, "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}})
    assert events(tr.feed(done))[0]["response"]["model"] == "alias" and tr.done
    assert tr.usage == Usage(prompt_tokens=5, completion_tokens=2, cached_tokens=1)


def test_passthrough_error_event_is_scrubbed() -> None:
    tr = ResponsesPassthrough(provider("openai", "http://x"), "alias")
    out = tr.feed(sse("error", sequence_number=0, code="server_error", message=f"bad key {KEY}", param=None))
    assert KEY not in out.decode() and events(out)[0]["type"] == "error" and tr.done and tr.error is not None
