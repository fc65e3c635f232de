"""Chat completions through the official OpenAI SDK against the running gateway and a fake upstream."""

from __future__ import annotations

import json

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
