"""The OpenAI (and Azure) pass-through stream translator, fed directly with upstream bytes."""

from __future__ import annotations

import json
import random

import pytest

from adapters.azure import AzureStream
from adapters.base import UpstreamError
from adapters.openai import OpenAIStream
from adapters.sse_decoder import iter_data

USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def chunk(delta=None, finish=None, model="gpt-4o-mini", **extra) -> dict:
    """A chat.completion.chunk as section 1.3 of the wire-format reference shows it."""
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1694268190, "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}]}
    body.update(extra)
    return body


def sse(*events: dict | str, newline: str = "\n") -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}{newline}{newline}"
                   for e in events).encode()


UPSTREAM = [chunk({"role": "assistant", "content": ""}, usage=None), chunk({"content": "Hel"}, usage=None),
            chunk({"content": "lo"}, usage=None), chunk({}, "stop", usage=None), chunk(usage=USAGE)]


def run(translator: OpenAIStream, raw: bytes, cuts: list[int]) -> bytes:
    out = b"".join(translator.feed(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True))
    return out + translator.end()


def events(out: bytes) -> list:
    return [p if p == b"[DONE]" else json.loads(p) for p in iter_data(out)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_any_split_relays_the_same_stream(newline, include_usage):
    raw = sse(*UPSTREAM, "[DONE]", newline=newline)
    expected = [{**e, "model": "alias"} for e in UPSTREAM[:4]]
    if include_usage:
        expected.append({**UPSTREAM[4], "model": "alias"})
    rng = random.Random(len(newline))
    splits = [[], *[[c] for c in range(1, len(raw))],
              *[sorted(rng.sample(range(1, len(raw)), 8)) for _ in range(50)]]
    for cuts in splits:
        t = OpenAIStream("alias", include_usage)
        got = events(run(t, raw, cuts))
        assert got == [*expected, b"[DONE]"], cuts
        assert t.done and t.error is None
        assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (9, 12)


def test_content_events_pass_through_byte_for_byte_but_for_the_model():
    raw = sse(*UPSTREAM[:4])
    t = OpenAIStream("alias", include_usage=False)
    assert t.feed(raw) == raw.replace(b'"model": "gpt-4o-mini"', b'"model":"alias"')
    assert t.usage is None


def test_an_event_waits_for_its_blank_line():
    t = OpenAIStream("alias", include_usage=True)
    line = sse(UPSTREAM[1])[:-1]  # "data: {...}\n", the blank line still to come
    assert t.feed(line) == b""
    assert json.loads(t.feed(b"\n")[len(b"data: "):])["choices"][0]["delta"] == {"content": "Hel"}


def test_done_ends_the_stream_and_what_follows_is_dropped():
    t = OpenAIStream("alias", include_usage=True)
    out = t.feed(sse(UPSTREAM[3]) + b"data:[DONE] \n\n" + sse(UPSTREAM[1]))
    assert out.endswith(b"data: [DONE]\n\n") and out.count(b"data:") == 2
    assert t.done
    assert t.feed(sse(UPSTREAM[1])) == b""
    assert t.end() == b""


def test_usage_chunk_with_choices_is_kept_without_include_usage():
    """Some servers put usage on the last content chunk: the client still needs its content."""
    last = chunk({"content": "!"}, "stop", usage=USAGE)
    t = OpenAIStream("alias", include_usage=False)
    assert events(t.feed(sse(last, "[DONE]"))) == [{**last, "model": "alias"}, b"[DONE]"]
    assert t.usage.prompt_tokens == 9


def test_in_band_error_is_relayed_and_recorded():
    error = {"error": {"message": "overloaded", "type": "server_error", "code": "busy"}}
    t = OpenAIStream("alias", include_usage=True)
    out = t.feed(sse(UPSTREAM[1], error))
    assert events(out) == [{**UPSTREAM[1], "model": "alias"}, error]
    assert isinstance(t.error, UpstreamError)
    assert (t.error.message, t.error.type, t.error.code) == ("overloaded", "server_error", "busy")
    assert t.end() == b""  # no [DONE] after an error is not a truncation


def test_truncated_stream_raises_and_flushes_the_cut_off_event():
    t = OpenAIStream("alias", include_usage=True)
    t.feed(sse(UPSTREAM[0]))
    assert t.feed(sse(UPSTREAM[1])[:-2]) == b""
    with pytest.raises(UpstreamError) as info:
        t.end()
    assert info.value.code == "stream_truncated" and info.value.status == 502


def test_unterminated_last_event_is_relayed_at_end():
    t = OpenAIStream("alias", include_usage=True)
    assert t.feed(sse(UPSTREAM[1]) + b"data: [DONE]") != b""
    assert t.end() == b"data: [DONE]\n\n"
    assert t.done


def test_estimated_tokens_count_data_events():
    t = OpenAIStream("alias", include_usage=True)
    t.feed(sse(*UPSTREAM[:3]))
    assert t.estimated_completion_tokens() == 3


def test_azure_content_filter_opening_chunk_is_dropped():
    """Section 6: Azure's first chunk has choices [], id "" and model "" with prompt_filter_results."""
    opening = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    t = AzureStream("alias", include_usage=False)
    got = events(run(t, sse(opening, *UPSTREAM[:4], "[DONE]"), []))
    assert got == [*[{**e, "model": "alias"} for e in UPSTREAM[:4]], b"[DONE]"]
