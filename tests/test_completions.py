"""POST /v1/completions (legacy text completions) through the OpenAI SDK: passed through to OpenAI-kind
targets, answered by echo, refused with a 400 for kinds that have no such endpoint; auth, the key's
model list, limits, usage rows and metrics as for chat."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, base_config, ledger_rows

EXTRA = """
[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant-unused"

[[models]]
name = "claude-x"
targets = [{ provider = "claude", model = "claude-sonnet-4-5" }]

[[models]]
name = "gpt-rpm"
rpm = 1
targets = [{ provider = "fake", model = "ok" }]
"""


@pytest.fixture
def gw(make_gateway, fake_openai, tmp_path):
    return make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", EXTRA))


def test_non_stream_passes_through_with_the_alias_as_model(gw, fake_openai, tmp_path):
    raw = gw.client().completions.with_raw_response.create(model="gpt-test", prompt="Say hi", max_tokens=20,
                                                           temperature=0.2, extra_body={"custom": 1})
    out = raw.parse()
    assert out.object == "text_completion" and out.model == "gpt-test"
    assert out.choices[0].text == "Hello Say hi" and out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 2 and out.usage.completion_tokens == 3
    sent = fake_openai.app.state.fake.last()
    assert sent["path"] == "/v1/completions"
    assert sent["body"] == {"model": "ok", "prompt": "Say hi", "max_tokens": 20, "temperature": 0.2, "custom": 1}
    assert raw.headers["x-gateway-provider"] == "fake" and raw.headers["x-gateway-cost-usd"]
    rows = ledger_rows(tmp_path / "gw.db", "SELECT endpoint, model, status, prompt_tokens, completion_tokens, "
                       "stream FROM usage_log WHERE request_id = ?", (raw.headers["x-request-id"],))
    assert rows == [("completions", "gpt-test", 200, 2, 3, 0)]


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_relays_text_and_usage_as_asked(gw, fake_openai, tmp_path, include_usage):
    options = {"include_usage": True} if include_usage else None
    with gw.client().completions.with_streaming_response.create(
            model="gpt-test", prompt="tell me more", stream=True, stream_options=options) as raw:
        chunks = list(raw.parse())
        request_id = raw.headers["x-request-id"]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Hello tell me more"
    assert all(c.model == "gpt-test" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = [c.usage for c in chunks if c.usage]
    assert (len(usage) == 1) is include_usage
    # The gateway always asks the upstream for usage: the row has real counts either way.
    assert fake_openai.app.state.fake.last()["body"]["stream_options"] == {"include_usage": True}
    rows = ledger_rows(tmp_path / "gw.db", "SELECT endpoint, stream, status, prompt_tokens, completion_tokens FROM "
                       "usage_log WHERE request_id = ?", (request_id,))
    assert rows == [("completions", 1, 200, 3, 4)]


def test_echo_answers_completions(gw):
    client = gw.client()
    out = client.completions.create(model="echo", prompt="ping pong", max_tokens=50)
    assert out.choices[0].text == "Echo: ping pong" and out.model == "echo" and out.usage.prompt_tokens == 2
    text = "".join(c.choices[0].text for c in client.completions.create(model="echo", prompt="ping pong",
                                                                         stream=True) if c.choices)
    assert text == "Echo: ping pong"


@pytest.mark.parametrize("stream", [False, True])
def test_a_kind_without_completions_is_a_400_naming_model_and_endpoint(gw, stream):
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().completions.create(model="claude-x", prompt="hi", stream=stream)
    assert e.value.body["code"] == "unsupported_endpoint" and e.value.body["param"] == "model"
    assert "'claude-x'" in e.value.message and "/v1/completions" in e.value.message


def test_auth_allow_list_validation_and_limits(gw):
    with pytest.raises(openai.AuthenticationError):
        gw.client(key="sk-wrong").completions.create(model="gpt-test", prompt="hi")
    with pytest.raises(openai.PermissionDeniedError):
        gw.client(key=LIMITED_KEY).completions.create(model="a-ok", prompt="hi")
    assert gw.client(key=LIMITED_KEY).completions.create(model="gpt-test", prompt="hi").choices
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    r = httpx.post(gw.url + "/v1/completions", headers=headers, json={"model": "gpt-test"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(gw.url + "/v1/completions", headers=headers, json={"model": "gpt-test", "prompt": ["a", 1]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"
    r = httpx.post(gw.url + "/v1/completions", headers=headers,
                   json={"model": "gpt-test", "prompt": "x", "logprobs": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    client = gw.client()
    client.completions.create(model="gpt-rpm", prompt="one")
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="gpt-rpm", prompt="two")


def test_upstream_errors_and_metrics(gw):
    with pytest.raises(openai.InternalServerError) as e:
        gw.client().completions.create(model="a-fail-500", prompt="hi")
    assert e.value.status_code == 502
    gw.client().completions.create(model="gpt-test", prompt="hi")
    text = httpx.get(gw.url + "/metrics").text
    assert 'gateway_requests_total{endpoint="completions",model="gpt-test",provider="fake",status="200"}' in text
    assert 'gateway_requests_total{endpoint="completions",model="a-fail-500",provider="fake",status="502"}' in text
