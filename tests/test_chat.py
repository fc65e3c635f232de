"""Chat completions through the official OpenAI SDK against the running gateway and a fake upstream."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY
from tests.fakes.openai_server import TOOL_ARGS

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about Paris"}]


def collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_non_stream_answer_model_is_alias_and_headers(gateway, client, fake_openai):
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MSGS, temperature=0.3,
                                                           extra_body={"custom_field": {"x": 1}})
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello tell me about Paris"
    assert resp.model == "gpt-test"
    assert raw.headers["x-gateway-provider"] == "fake"
    assert raw.headers["x-gateway-upstream-model"] == "ok"
    assert raw.headers["x-request-id"]
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens == 5
    sent = fake_openai.app.state.fake.last()
    assert sent["body"]["model"] == "ok"  # only model changed...
    assert sent["body"]["temperature"] == 0.3 and sent["body"]["custom_field"] == {"x": 1}  # ...the rest as sent
    assert sent["body"]["messages"] == MSGS


def test_gateway_key_not_forwarded_provider_key_is(client, fake_openai):
    client.chat.completions.create(model="gpt-test", messages=MSGS)
    headers = fake_openai.app.state.fake.last()["headers"]
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert GATEWAY_KEY not in json.dumps(headers)


def test_client_request_id_is_kept(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}",
                                                                 "x-request-id": "my-trace-42"},
                   json={"model": "gpt-test", "messages": MSGS})
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-trace-42"


def test_gateway_request_ids_are_unique_and_sort_in_arrival_order(gateway):
    """Time-ordered ids keep the ledger's primary-key index appending (proxy.requests.request_ids)."""
    ids = []
    for _ in range(6):
        r = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                       json={"model": "gpt-test", "messages": MSGS})
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
        time.sleep(0.002)  # the id's clock counts milliseconds
    assert all(re.fullmatch(r"req_[0-9a-f]{28}", rid) for rid in ids), ids
    assert sorted(ids) == ids and len(set(ids)) == len(ids)


@pytest.mark.parametrize("alias", ["gpt-test", "a-split-stream", "a-comment-stream", "echo"])
def test_streamed_text_equals_non_streamed(client, alias):
    full = client.chat.completions.create(model=alias, messages=MSGS).choices[0].message.content
    text, chunks = collect(client.chat.completions.create(model=alias, messages=MSGS, stream=True))
    assert text == full
    assert all(c.model == alias for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_usage_only_when_asked(client, fake_openai):
    _, chunks = collect(client.chat.completions.create(model="gpt-test", messages=MSGS, stream=True))
    assert all(c.usage is None for c in chunks)
    # ...but the upstream was asked for it, so the gateway can account for the tokens
    assert fake_openai.app.state.fake.last()["body"]["stream_options"] == {"include_usage": True}

    full = client.chat.completions.create(model="gpt-test", messages=MSGS)
    _, chunks = collect(client.chat.completions.create(model="gpt-test", messages=MSGS, stream=True,
                                                       stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_stream_ends_with_single_done(gateway):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "a-split-stream", "messages": MSGS, "stream": True}) as r:
        body = b"".join(r.iter_raw())
    assert body.count(b"data: [DONE]") == 1 and body.rstrip().endswith(b"data: [DONE]")
    assert b"2024-07-18" not in body  # the upstream's dated model name never shows


def test_tool_call_stream_reassembles(client):
    full = client.chat.completions.create(model="a-tools", messages=MSGS)
    call = full.choices[0].message.tool_calls[0]
    assert full.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(model="a-tools", messages=MSGS, stream=True)
    name, ident, args, finish = None, None, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            ident = ident or tc.id
            name = name or (tc.function.name if tc.function else None)
            args += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert (ident, name, finish) == (call.id, call.function.name, "tool_calls")
    assert json.loads(args) == json.loads(call.function.arguments) == json.loads(TOOL_ARGS)


def test_stream_cut_midway_ends_with_error(client):
    stream = client.chat.completions.create(model="a-cut-stream", messages=MSGS, stream=True)
    with pytest.raises(openai.APIError, match="ended before"):
        for _ in stream:
            pass


def test_stream_inband_error_reaches_client(client):
    # Before the first bytes reach the client it is an HTTP error (fallback is still possible then);
    # after them it is an error event. Either way the SDK raises with the upstream's message.
    with pytest.raises(openai.APIError, match="overloaded mid-stream"):
        for _ in client.chat.completions.create(model="a-error-stream", messages=MSGS, stream=True):
            pass


def test_echo_provider_counts_tokens_honestly(client):
    resp = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two, three"}])
    assert resp.choices[0].message.content == "Echo: one two, three"
    assert resp.usage.prompt_tokens == 4  # one two , three
    assert resp.usage.completion_tokens == 6  # Echo : one two , three
    again = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two, three"}])
    assert again.choices[0].message.content == resp.choices[0].message.content


def test_a_burst_of_events_in_one_read_sends_the_first_before_translating_the_rest(gateway):
    """An upstream read that holds many events (a fast upstream's burst): the first event is written
    to the client on its own, so the first token does not wait for the whole burst to be translated
    (for 200 events that wait was most of the gateway's time to first token). Each write of the
    gateway is one HTTP chunk, so the chunk framing shows what went out together."""
    body = json.dumps({"model": "a-burst-stream", "stream": True,
                       "messages": [{"role": "user", "content": "one two three four five six seven eight"}]})
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                     f"authorization: Bearer {GATEWAY_KEY}\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode())
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            piece = sock.recv(65536)
            assert piece, "the gateway closed the stream early"
            raw += piece
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    writes = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        writes.append(rest[:size])
        rest = rest[size + 2:]
    per_write = [w.count(b"data: ") for w in writes]
    events = [e for w in writes for e in w.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(c for c in contents if c) == "Hello one two three four five six seven eight"
    assert per_write[0] == 1, f"events per write: {per_write}"  # the role chunk, alone
    assert max(per_write[1:]) >= 5, f"events per write: {per_write}"  # the burst still went out together


async def test_usage_in_the_unrelayed_rest_of_a_first_read_still_counts():
    """The client leaves right after the first event of a burst: the rest of that read never reaches
    it, but the upstream sent (and bills) the usage in it, so closing the stream still reads it."""
    from adapters.openai import OpenAIStream
    from proxy.dispatch import StreamStart
    from proxy.upstream import EchoStream

    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    burst = (event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
             + event({**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]})
             + event({**chunk, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                                         "total_tokens": 9}})
             + b"data: [DONE]\n\n")
    translator = OpenAIStream("alias", include_usage=True)
    cut = burst.index(b"\n\n") + 2
    first = translator.feed(burst[:cut])

    async def nothing():
        return
        yield b""

    start = StreamStart(EchoStream(nothing()), nothing(), translator, first, burst[cut:])
    await start.aclose()
    assert translator.usage is not None
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (7, 2)
    assert translator.done and start.rest == b""


@pytest.mark.parametrize("upstream_model", ["alias", "alias-2026-01-01", ""])
def test_stream_model_member_becomes_the_alias_across_reads(upstream_model):
    """Every chunk names the alias, whatever the upstream called it, however the reads split the events;
    an upstream that already says the alias gets its bytes through unchanged."""
    from adapters.openai import OpenAIStream

    events = [b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": name,
                                      "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]},
                                     separators=(",", ":")).encode() + b"\n\n"
              for i, name in enumerate(["", upstream_model, upstream_model, upstream_model])]
    raw = b"".join(events) + b"data: [DONE]\n\n"
    for step in (7, 50, len(raw)):
        translator = OpenAIStream("alias", include_usage=True)
        out = b"".join(translator.feed(raw[i:i + step]) for i in range(0, len(raw), step))
        assert translator.done
        payloads = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
        assert [p["model"] for p in payloads] == ["alias"] * 4
        assert [p["choices"][0]["delta"]["content"] for p in payloads] == ["t0", "t1", "t2", "t3"]
        if upstream_model == "alias":
            assert out == raw.replace(b'"model":""', b'"model":"alias"')
