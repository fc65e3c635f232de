"""Embeddings (float and base64) and the models endpoints, through the OpenAI SDK."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY


def test_embeddings_base64_default_and_float(client, fake_openai):
    # The SDK asks for base64 unless told otherwise and decodes packed float32 itself.
    default = client.embeddings.create(model="a-ok", input=["hello world", "abc"], dimensions=4)
    assert fake_openai.app.state.fake.last()["body"]["encoding_format"] == "base64"
    floats = client.embeddings.create(model="a-ok", input=["hello world", "abc"], dimensions=4,
                                      encoding_format="float")
    assert default.model == floats.model == "a-ok"
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 4
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6)
    assert floats.usage.prompt_tokens == 3


def test_an_answer_larger_than_the_read_buffer_comes_whole(gateway):
    """A whole-body answer bigger than proxy.http1.HIGH_WATER (the most a stream may buffer unread):
    100 embeddings of 3072 floats are about 1.7 MB. It is read to its end, not paused at 1 MB until
    the upstream timeout; and the connection it came on serves the next request."""
    from proxy.http1 import HIGH_WATER

    client = gateway.client(timeout=10)
    inputs = [f"text {i}" for i in range(100)]
    for _ in range(2):  # the second goes over the connection the first one used
        raw = client.embeddings.with_raw_response.create(model="a-ok", input=inputs, dimensions=3072,
                                                         encoding_format="float")
        assert len(raw.content) > HIGH_WATER
        out = raw.parse()
        assert [d.index for d in out.data] == list(range(100))
        assert all(len(d.embedding) == 3072 for d in out.data)


def test_echo_embeddings_are_deterministic_unit_vectors(client):
    one = client.embeddings.create(model="echo", input="same text", dimensions=64)
    two = client.embeddings.create(model="echo", input="same text", dimensions=64, encoding_format="float")
    other = client.embeddings.create(model="echo", input="other text", dimensions=64)
    vec = one.data[0].embedding
    assert len(vec) == 64 and math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-5)
    assert vec == pytest.approx(two.data[0].embedding, rel=1e-6)
    assert vec != pytest.approx(other.data[0].embedding, rel=1e-3)
    assert one.usage.prompt_tokens == 2


def test_embeddings_errors(gateway, client):
    r = httpx.post(gateway.url + "/v1/embeddings", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                   json={"model": "a-ok"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    with pytest.raises(openai.InternalServerError) as e:
        client.embeddings.create(model="a-fail-500", input="x")
    assert e.value.status_code == 502


def test_models_list_and_get_respect_key(gateway):
    full = {m.id for m in gateway.client().models.list()}
    assert {"gpt-test", "echo", "a-ok"} <= full
    limited = gateway.client(key=LIMITED_KEY)
    assert {m.id for m in limited.models.list()} == {"gpt-test", "echo"}
    model = limited.models.retrieve("gpt-test")
    assert model.id == "gpt-test" and model.object == "model"
    with pytest.raises(openai.PermissionDeniedError):
        limited.models.retrieve("a-ok")
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("nope")


def test_paths_without_v1_prefix(gateway):
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    r = httpx.post(gateway.url + "/chat/completions", headers=headers,
                   json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "echo"
    assert httpx.get(gateway.url + "/models", headers=headers).json()["object"] == "list"


def test_health_endpoints(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").status_code == 200


def test_float_arrays_answered_to_base64_are_encoded(make_gateway, fake_openai, tmp_path):
    """An upstream that answers float arrays to encoding_format=base64 (Ollama, LM Studio, Infinity): the
    gateway packs them as OpenAI does (little-endian float32), since an SDK that asked for base64 decodes
    whatever it gets (the Node SDK turns an array into [0, 0])."""
    import base64
    import struct

    from tests.conftest import base_config

    extra = '[[models]]\nname = "floaty"\ntargets = [{ provider = "fake", model = "floats-always" }]\n'
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    raw = gw.client().embeddings.with_raw_response.create(model="floaty", input=["hello world", "abc"],
                                                          dimensions=4, encoding_format="base64")
    wire = raw.http_response.json()["data"]
    assert fake_openai.app.state.fake.last()["body"]["encoding_format"] == "base64"
    assert all(isinstance(d["embedding"], str) for d in wire)
    expected = [[round((len(t) + j) / 100, 4) for j in range(4)] for t in ("hello world", "abc")]
    for d, vec in zip(wire, expected, strict=True):
        assert list(struct.unpack("<4f", base64.b64decode(d["embedding"]))) == pytest.approx(vec, rel=1e-6)
    # Unless told a format, the SDK asks for base64 and decodes it (with numpy or struct) itself.
    parsed = gw.client().embeddings.create(model="floaty", input=["hello world", "abc"], dimensions=4)
    assert fake_openai.app.state.fake.last()["body"]["encoding_format"] == "base64"
    assert [d.embedding for d in parsed.data] == [pytest.approx(v, rel=1e-6) for v in expected]
    floats = gw.client().embeddings.create(model="floaty", input="abc", dimensions=4, encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(expected[1], rel=1e-6)  # float requests stay floats


def test_models_tell_context_window_prices_and_capabilities(make_gateway, fake_openai, tmp_path):
    """Each alias's context window, prices per million tokens and capabilities, from gateway.toml and the
    prices file, as extra fields of OpenAI's model object (the SDK keeps them in model_extra)."""
    import orjson

    from tests.conftest import base_config

    (tmp_path / "prices.json").write_bytes(orjson.dumps({"models": {
        "openai/gpt-4.1": {"input_per_mtok": 2.0, "output_per_mtok": 8.0, "cached_input_per_mtok": 0.5,
                           "context_window": 1047576, "capabilities": ["streaming", "tools", "vision"]}}}))
    extra = """
[providers.oai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-unused"

[[models]]
name = "smart"
targets = [{ provider = "oai", model = "gpt-4.1" }]

[[models]]
name = "said"
capabilities = ["streaming", "tools", "reasoning"]
targets = [{ provider = "oai", model = "gpt-4.1", context_window = 200000, input_per_mtok = 3, output_per_mtok = 15 }]
"""
    toml = base_config(fake_openai.url, tmp_path / "gw.db", extra).replace(
        "[storage]\n", f'[storage]\nprices_file = "{tmp_path / "prices.json"}"\n', 1)
    client = make_gateway(toml).client()
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert listed["smart"] == {
        "context_window": 1047576,
        "pricing": {"input_per_million": 2.0, "output_per_million": 8.0, "cached_input_per_million": 0.5},
        "capabilities": {"streaming": True, "tools": True, "vision": True, "reasoning": False, "embeddings": False}}
    # gateway.toml wins over the file: its window, its prices, its capabilities
    assert listed["said"] == {
        "context_window": 200000, "pricing": {"input_per_million": 3.0, "output_per_million": 15.0},
        "capabilities": {"streaming": True, "tools": True, "vision": False, "reasoning": True, "embeddings": False}}
    assert listed["gpt-test"]["pricing"] == {"input_per_million": 1.0, "output_per_million": 2.0}
    assert listed["a-ok"] == {"context_window": None, "pricing": None, "capabilities": None}  # nothing says
    assert listed["echo"]["capabilities"]["embeddings"] is True and listed["echo"]["pricing"] is None
    one = client.models.retrieve("smart")
    assert one.id == "smart" and one.owned_by == "oai" and one.model_extra == listed["smart"]


def test_an_unknown_capability_fails_at_start(fake_openai, tmp_path):
    import tomllib

    from proxy.config import ConfigError, parse_config
    from tests.conftest import base_config

    extra = '[[models]]\nname = "x"\ncapabilities = ["tools", "telepathy"]\ntargets = [{ provider = "fake" }]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(tomllib.loads(base_config(fake_openai.url, tmp_path / "gw.db", extra)), "gateway.toml", {})
    assert e.value.key.endswith(".capabilities") and "telepathy" in e.value.reason
