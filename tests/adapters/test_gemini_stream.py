"""Gemini streamGenerateContent?alt=sse -> OpenAI chunks (wire-format reference, sections 5.2 and 1.3)."""

from __future__ import annotations

import json
import random

import pytest

from adapters.base import UpstreamError
from adapters.gemini import GeminiAdapter, parse_call_id
from tests.adapters.helpers import call, deltas, feed_in_pieces, openai_events, provider, user

PROVIDER = provider("gemini", "https://generativelanguage.test")
ADAPTER = GeminiAdapter(PROVIDER)
USAGE_META = {"promptTokenCount": 12, "candidatesTokenCount": 7, "thoughtsTokenCount": 40,
              "cachedContentTokenCount": 0, "totalTokenCount": 59}


def translator(include_usage: bool = True):
    return ADAPTER.chat_stream(call(user(), "gemini-2.5-flash", PROVIDER, stream=True,
                                    include_usage=include_usage, alias="my-gemini"))


def sse(*events: dict, newline: str = "\r\n") -> bytes:
    """Data-only events, no [DONE]: the stream ends when the connection closes."""
    return "".join(f"data: {json.dumps(e)}{newline}{newline}" for e in events).encode()


def event(parts: list, finish: str | None = None, **extra) -> dict:
    c: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        c["finishReason"] = finish
    return {"candidates": [c], "modelVersion": "gemini-2.5-flash", "responseId": "abc123", **extra}


STREAM = [event([{"text": "(thinking)", "thought": True}]), event([{"text": "It is "}]),
          event([{"text": "18C."}], "STOP", usageMetadata=USAGE_META)]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_text_stream_whatever_the_reads(include_usage, newline):
    raw = sse(*STREAM, newline=newline)
    rng = random.Random(3)
    for cuts in [[], list(range(1, len(raw))), *[sorted(rng.sample(range(1, len(raw)), 15)) for _ in range(30)]]:
        t = translator(include_usage)
        events = openai_events(feed_in_pieces(t, raw, cuts))
        chunks = [e for e in events if e != "[DONE]"]
        assert events[-1] == "[DONE]"
        assert deltas(events) == [{"role": "assistant", "content": "", "reasoning_content": "(thinking)"},
                                  {"content": "It is "}, {"content": "18C."}, {}]
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None, None, None, "stop"]
        assert {c["id"] for c in chunks} == {"chatcmpl-abc123"} and {c["model"] for c in chunks} == {"my-gemini"}
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 47
            assert all(c["usage"] is None for c in chunks[:-1])
        else:
            assert all("usage" not in c for c in chunks)
        assert t.done and (t.usage.prompt_tokens, t.usage.reasoning_tokens) == (12, 40)


def test_nothing_goes_out_before_the_close_says_the_stream_is_whole():
    t = translator()
    out = t.feed(sse(*STREAM))
    assert b"[DONE]" not in out and not t.done  # Gemini has no [DONE]: only the close completes the stream
    assert t.end().endswith(b"data: [DONE]\n\n")


def test_function_calls_in_a_stream():
    parts = [{"functionCall": {"id": "fc-1", "name": "get_weather", "args": {"city": "Paris"}},
              "thoughtSignature": "CiQB"}, {"functionCall": {"name": "now", "args": {}}}]
    events = openai_events(feed_in_pieces(translator(), sse(event(parts, "STOP")), []))
    first, finish = deltas(events)
    assert first["role"] == "assistant" and first["content"] is None
    calls = first["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "now"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_call_id(calls[0]["id"]) == ("CiQB", "fc-1")
    assert finish == {} and events[1]["choices"][0]["finish_reason"] == "tool_calls"


def test_two_candidates_each_finish():
    def two(text_a: str, text_b: str, finish: str | None = None) -> dict:
        cands = [{"index": i, "content": {"role": "model", "parts": [{"text": t}]}}
                 for i, t in enumerate([text_a, text_b])]
        for c in cands if finish else ():
            c["finishReason"] = finish
        return {"candidates": cands, "responseId": "r"}

    events = openai_events(feed_in_pieces(translator(False), sse(two("a", "b"), two("c", "d", "MAX_TOKENS")), []))
    by_index: dict[int, str] = {}
    finishes = {}
    for e in events[:-1]:
        (choice,) = e["choices"]
        by_index[choice["index"]] = by_index.get(choice["index"], "") + (choice["delta"].get("content") or "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert by_index == {0: "ac", 1: "bd"} and finishes == {0: "length", 1: "length"}


def test_a_stream_without_finish_reason_is_truncated():
    t = translator()
    t.feed(sse(*STREAM[:2]))
    with pytest.raises(UpstreamError) as info:
        t.end()
    assert (info.value.status, info.value.code) == (502, "stream_truncated")
    assert t.estimated_completion_tokens() == -(-len("(thinking)It is ") // 4)


ERROR = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}


def test_an_error_event():
    t = translator()
    events = openai_events(t.feed(sse(STREAM[1], ERROR, STREAM[2])))
    assert deltas(events) == [{"role": "assistant", "content": "It is "}]
    assert events[-1]["error"]["message"] == "upstream gemini returned 503: The model is overloaded."
    assert t.done and t.error is not None and t.error.status == 502
    assert t.end() == b""


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_a_bare_pretty_printed_error_after_events(step):
    """Errors can arrive as plain JSON outside SSE framing (reference 5.2), even after 200 and some events."""
    raw = sse(STREAM[1]) + json.dumps([ERROR], indent=2).encode() + b"\n"
    t = translator()
    out = b"".join(t.feed(raw[i:i + step]) for i in range(0, len(raw), step))
    events = openai_events(out)
    assert deltas(events) == [{"role": "assistant", "content": "It is "}]
    assert events[-1]["error"]["message"] == "upstream gemini returned 503: The model is overloaded."
    assert t.done and t.error is not None


def test_a_blocked_prompt_finishes_with_content_filter():
    events = openai_events(feed_in_pieces(translator(False), sse({"promptFeedback": {"blockReason": "SAFETY"}}), []))
    assert deltas(events) == [{"role": "assistant", "content": ""}, {}]
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"


def test_an_event_that_is_not_json_is_a_bad_response():
    with pytest.raises(UpstreamError) as info:
        translator().feed(b"data: {oops\n\n")
    assert info.value.reason == "bad_response"
