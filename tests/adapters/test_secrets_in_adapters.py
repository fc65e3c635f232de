"""Adapters and secrets: model names escaped whole into URL paths, and every string of an upstream error
(whole body or in-band event) scrubbed of every credential the config holds."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from adapters.anthropic import AnthropicAdapter
from adapters.azure import AzureAdapter
from adapters.base import UpstreamError
from adapters.gemini import GeminiAdapter
from adapters.openai import OpenAIAdapter, OpenAIStream
from adapters.redact import MIN_SECRET_CHARS, Redactor, provider_secrets
from adapters.targets import ProviderConfig
from tests.adapters.helpers import KEY, call, provider, user

BASE = "https://upstream.test"
OTHER = "sk-another-providers-key-99"  # a second provider's key: the config-wide redactor knows it too
TRAVERSAL = "x/../../../v1/models?"


# --- URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "path"), [
    (TRAVERSAL, "/v1beta/models/x%2F..%2F..%2F..%2Fv1%2Fmodels%3F:generateContent"),
    ("a b#c", "/v1beta/models/a%20b%23c:generateContent"),
    ("models/y/../z", "/v1beta/models/y%2F..%2Fz:generateContent"),
    ("tunedModels/mine-1", "/v1beta/tunedModels/mine-1:generateContent"),
    ("gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent"),
])
def test_gemini_escapes_the_model_as_one_segment(model, path):
    adapter = GeminiAdapter(provider("gemini", BASE))
    assert adapter.chat_request(call(user(), model, adapter.provider)).url == BASE + path
    assert adapter.embeddings_request(call({"input": "x"}, model, adapter.provider)).url == (
        BASE + path.replace("generateContent", "batchEmbedContents"))


def test_gemini_stream_url_keeps_only_its_own_query():
    adapter = GeminiAdapter(provider("gemini", BASE))
    url = adapter.chat_request(call(user(), TRAVERSAL, adapter.provider, stream=True)).url
    assert url == f"{BASE}/v1beta/models/{quote(TRAVERSAL, safe='')}:streamGenerateContent?alt=sse"
    assert url.count("?") == 1


@pytest.mark.parametrize("endpoint", ["chat", "embeddings"])
def test_azure_escapes_the_deployment_and_version(endpoint):
    adapter = AzureAdapter(provider("azure", BASE, api_version="2024-10-21&x=y"))
    make = adapter.chat_request if endpoint == "chat" else adapter.embeddings_request
    url = make(call(user(), TRAVERSAL, adapter.provider)).url
    rest = "chat/completions" if endpoint == "chat" else "embeddings"
    assert url == f"{BASE}/openai/deployments/{quote(TRAVERSAL, safe='')}/{rest}?api-version=2024-10-21%26x%3Dy"


# --- the Redactor ------------------------------------------------------------------------------------------


def test_redactor_hides_every_form_longest_first():
    r = Redactor([KEY, KEY + "-longer", "short"])  # "short" is under MIN_SECRET_CHARS: a placeholder
    assert len("short") < MIN_SECRET_CHARS
    text = (f"a {KEY}-longer b Bearer {KEY} {quote(KEY + '/', safe='')} {base64.b64encode(KEY.encode()).decode()} "
            "short")
    out = r.text(text)
    assert KEY not in out and "longer" not in out and "short" in out
    assert base64.b64encode(KEY.encode()).decode().rstrip("=") not in out
    assert r.value({KEY: [KEY, {"n": 1, "k": f"x{KEY}"}], "n": None}) == {"***": ["***", {"n": 1, "k": "x***"}],
                                                                           "n": None}
    assert r.raw(f'data: {{"error": "{KEY}"}}'.encode()) == b'data: {"error": "***"}'
    assert KEY not in repr(r)
    assert not Redactor(["", "x"]) and Redactor([KEY])


def test_provider_secrets_take_secret_looking_headers():
    secrets = provider_secrets("sk-main", {"x-api-key": "k1", "Authorization": "Bearer tok-123", "x-org": "visible"})
    assert set(secrets) == {"sk-main", "k1", "Bearer tok-123", "tok-123"}


# --- errors ---------------------------------------------------------------------------------------------


def config_wide(kind: str, **kw: Any) -> ProviderConfig:
    prov = provider(kind, BASE, **kw)
    prov.redactor = Redactor([KEY, OTHER])
    return prov


def everywhere(key: str) -> dict:
    return {"message": f"bad key {key}", "type": key, "code": key, "param": f"Bearer {key}",
            "details": {"nested": [key, {key: key}]}}


@pytest.mark.parametrize("status", [400, 401, 429, 500])
@pytest.mark.parametrize("secret", [KEY, OTHER])
def test_openai_error_bodies_are_scrubbed_in_every_field(status, secret):
    adapter = OpenAIAdapter(config_wide("openai"))
    err = adapter.error(status, orjson.dumps({"error": everywhere(secret)}), {"retry-after": secret})
    rendered = orjson.dumps(err.body()) + repr(err.headers).encode() + str(err).encode()
    assert secret.encode() not in rendered and b"***" in rendered


def test_anthropic_and_gemini_error_bodies_are_scrubbed():
    anthropic = AnthropicAdapter(config_wide("anthropic"))
    err = anthropic.error(529, orjson.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                                         "message": f"busy {OTHER}"}}), {})
    assert OTHER not in json.dumps(err.body())
    gemini = GeminiAdapter(config_wide("gemini"))
    body = {"error": {"code": 400, "message": OTHER, "status": OTHER.upper()}}  # not a status Google defines
    err = gemini.error(400, orjson.dumps(body), {})
    assert OTHER.lower() not in json.dumps(err.body()).lower()


def test_openai_in_band_error_event_is_scrubbed_wherever_the_error_member_is():
    stream = OpenAIStream("alias", include_usage=False, redactor=Redactor([KEY]))
    out = stream.feed(b'data: {"id":"c1","object":"error", "error": ' + orjson.dumps(everywhere(KEY)) + b"}\n\n"
                      + b'data: { "error" : "' + KEY.encode() + b' not json\n\n')
    assert KEY.encode() not in out and out.count(b"data: ") == 2
    assert isinstance(stream.error, UpstreamError) and KEY not in str(stream.error.body())
