"""Anthropic Messages SSE -> OpenAI chunks (wire-format reference, sections 4.3 and 4.5, streaming table)."""

from __future__ import annotations

import json
import random

import pytest

from adapters.anthropic import AnthropicAdapter
from adapters.base import UpstreamError
from tests.adapters.helpers import call, deltas, feed_in_pieces, openai_events, provider, user

PROVIDER = provider("anthropic", "https://api.anthropic.test")
ADAPTER = AnthropicAdapter(PROVIDER)


def translator(include_usage: bool = True):
    return ADAPTER.chat_stream(call(user(), "claude-x", PROVIDER, stream=True, include_usage=include_usage,
                                    alias="my-claude"))


def sse(*events: dict, newline: str = "\n") -> bytes:
    """Named events, each ``data.type`` repeating the event name, as Anthropic sends them."""
    return "".join(f"event: {e['type']}{newline}data: {json.dumps(e)}{newline}{newline}" for e in events).encode()


MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x", "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}
# Section 4.3's stream: thinking, ping, text, a tool call, stop.
REFERENCE = [
    MESSAGE_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQ"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "ping"},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking."}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 89}},
    {"type": "message_stop"},
]
EXPECTED_DELTAS = [
    {"role": "assistant", "content": ""},
    {"reasoning_content": "Let me"},
    {"thinking_blocks": [{"type": "thinking", "thinking": "Let me", "signature": "EqQ"}]},
    {"content": "Checking."},
    {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
    {},
]
USAGE = {"prompt_tokens": 25, "completion_tokens": 89, "total_tokens": 114,
         "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def check_reference_output(events: list, include_usage: bool) -> None:
    chunks = [e for e in events if e != "[DONE]"]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert deltas(events) == EXPECTED_DELTAS
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_1"}
    assert {c["model"] for c in chunks} == {"my-claude"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes == [None] * 7 + ["tool_calls"]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_reference_stream_whatever_the_reads(include_usage, newline):
    raw = sse(*REFERENCE, newline=newline)
    rng = random.Random(7)
    splits = [[], [len(raw) // 2], *[sorted(rng.sample(range(1, len(raw)), 20)) for _ in range(30)]]
    for cuts in splits:
        t = translator(include_usage)
        check_reference_output(openai_events(feed_in_pieces(t, raw, cuts)), include_usage)
        assert t.done and t.error is None
        assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (25, 89)


def test_byte_by_byte():
    raw = sse(*REFERENCE)
    t = translator()
    check_reference_output(openai_events(feed_in_pieces(t, raw, list(range(1, len(raw))))), True)


def test_a_tool_call_without_arguments_still_gets_an_object():
    events = [MESSAGE_START,
              {"type": "content_block_start", "index": 0,
               "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
              {"type": "message_stop"}]
    got = deltas(openai_events(feed_in_pieces(translator(), sse(*events), [])))
    assert got[1:3] == [{"tool_calls": [{"index": 0, "id": "toolu_2", "type": "function",
                                         "function": {"name": "now", "arguments": ""}}]},
                        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}]


def test_cache_usage_is_part_of_the_prompt():
    start = json.loads(json.dumps(MESSAGE_START))
    start["message"]["usage"] = {"input_tokens": 3, "cache_read_input_tokens": 100,
                                 "cache_creation_input_tokens": 20, "output_tokens": 1}
    t = translator()
    events = openai_events(feed_in_pieces(t, sse(start, *REFERENCE[1:]), []))
    assert events[-2]["usage"]["prompt_tokens"] == 123
    assert events[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}


def test_error_event_after_200():
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    t = translator()
    out = t.feed(sse(MESSAGE_START, REFERENCE[6], REFERENCE[7], error, *REFERENCE[8:]))
    events = openai_events(out)
    assert deltas(events) == [{"role": "assistant", "content": ""}, {"content": "Checking."}]
    assert events[-1] == {"error": {"message": "upstream anthropic is overloaded: Overloaded",
                                    "type": "service_unavailable_error", "param": None,
                                    "code": "server_is_overloaded"}}
    assert t.done and t.error is not None and t.error.status == 503
    assert t.feed(sse(REFERENCE[-1])) == b"" and t.end() == b""
    # what the upstream read (the prompt) and wrote (one delta) is still billed
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (25, 1)


def test_truncated_stream_raises_and_bills_what_was_sent():
    raw = sse(*REFERENCE[:8])
    t = translator()
    out = t.feed(raw + b'event: content_block_delta\ndata: {"type":"content_bl')
    assert deltas(openai_events(out))[-1] == {"content": "Checking."}
    with pytest.raises(UpstreamError) as info:
        t.end()
    assert (info.value.status, info.value.code) == (502, "stream_truncated")
    assert t.usage.prompt_tokens == 25 and t.usage.completion_tokens >= 2


def test_an_event_that_is_not_json_is_a_bad_response():
    t = translator()
    with pytest.raises(UpstreamError) as info:
        t.feed(b"event: message_start\ndata: {not json\n\n")
    assert info.value.reason == "bad_response"


def test_nothing_is_sent_before_an_events_blank_line():
    t = translator()
    line = sse(MESSAGE_START)[:-1]
    assert t.feed(line) == b""
    assert deltas(openai_events(t.feed(b"\n"))) == [{"role": "assistant", "content": ""}]
