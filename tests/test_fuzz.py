"""Generated hostile requests against the running app over real sockets (hypothesis, derandomized):
bodies around the chat and embeddings schemas with wrong types, huge and negative numbers, deep
nesting, odd unicode and control characters, odd content types and header values. Every request gets
a whole answer below 500 on a connection that stays usable (unless the answer says it closes), and
every error body is OpenAI-shaped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GATEWAY_KEY, Running, base_config, start_gateway
from tests.hostile import RawConnection, assert_openai_error

# Reproducible in CI (derandomize), nothing written to .hypothesis/ in the checkout (database=None).
FUZZ = settings(max_examples=1200, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

ODD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", "\x00", "a\r\nb", "\u202e", "\ufeff", "🦜", "e\u0301", "\\", '"', "\x7f", "\u2028", "echo", "echo/x"])
NUMBERS = st.sampled_from([0, -1, 1, 2, 128, 129, -5, 10**15, -(10**15), 2**63 - 1, -(2**63), 1e15, -1e308, 1e308,
                           0.5, 2.5, -0.0]) | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                                             allow_infinity=False)
SCALARS = st.none() | st.booleans() | NUMBERS | ODD_TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(ODD_TEXT, inner, max_size=3), max_leaves=8)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


DEEP = st.sampled_from([100, 230, 250, 300, 1000]).map(_nested)
VALUE = st.one_of(SCALARS, JSON, DEEP)
MODEL = st.sampled_from(["echo", "echo/fuzz", "missing"]) | ODD_TEXT.map(lambda t: "echo/" + t) | VALUE
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | VALUE}, optional={"text": VALUE})
CONTENT = ODD_TEXT | st.lists(PART | VALUE, max_size=3) | VALUE
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant"]) | VALUE,
                                              "content": CONTENT, "name": VALUE, "tool_calls": VALUE})
CHAT_PARAMS = ["temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "frequency_penalty",
               "presence_penalty", "logprobs", "top_logprobs", "seed", "stream", "stream_options", "stop", "tools",
               "tool_choice", "parallel_tool_calls", "logit_bias", "response_format", "user", "metadata", "store",
               "modalities", "reasoning_effort", "service_tier", "functions", "function_call", "input"]
CHAT = st.fixed_dictionaries(
    {"model": MODEL, "messages": st.lists(MESSAGE, min_size=1, max_size=3) | VALUE},
    optional={name: VALUE for name in CHAT_PARAMS} | {"stream": st.booleans() | VALUE,
                                                       "stream_options": st.fixed_dictionaries(
                                                           {"include_usage": st.booleans() | VALUE})})
TOKENS = st.lists(st.integers(-3, 100_000) | VALUE, max_size=4)
EMBEDDINGS = st.fixed_dictionaries(
    {"model": MODEL, "input": ODD_TEXT | st.lists(ODD_TEXT | VALUE, max_size=4) | TOKENS
     | st.lists(TOKENS, max_size=3) | VALUE},
    optional={"dimensions": st.integers(-2, 64) | VALUE, "user": VALUE, "messages": VALUE,
              "encoding_format": st.sampled_from(["float", "base64"]) | VALUE})
RAW = st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"{}", b'{"model": "echo"}', b"\xff\xfe", b"[" * 2000,
                       b'{"model": "echo", "messages": [' + b"[" * 1100 + b"]" * 1100 + b"]}",
                       b'{"a": 1e999}', b'{"a": 123456789012345678901234567890}', b'{"a": "\\ud800"}']) | st.binary(
    max_size=40)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", "",
                                 "\x01\x02", "application/json\x00"])
# Header values: any byte but CR and LF (which would end the header, and so the request, early).
HEADER_VALUE = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@pytest.fixture(scope="module")
def gw(fake_openai, tmp_path_factory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("fuzz")
    extra = '[[models]]\nname = "echo/*"\ntargets = [{ provider = "local" }]\n'
    running = start_gateway(base_config(fake_openai.url, tmp / "gw.db", extra))
    yield running
    running.server.stop()


class Client:
    """One keep-alive connection, replaced only when an answer says it closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = RawConnection(port)

    def send(self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        head = [b"POST " + path.encode() + b" HTTP/1.1", b"host: 127.0.0.1",
                b"authorization: Bearer " + GATEWAY_KEY.encode(), b"content-length: %d" % len(body)]
        head += [name + b": " + value for name, value in headers]
        self.conn.send(b"\r\n".join(head) + b"\r\n\r\n" + body)
        response = self.conn.read_response()  # raises Closed if the connection was dropped
        assert response.status < 500, (response.status, response.body[:300], body[:300])
        if response.status >= 400:
            assert_openai_error(response)
        elif response.headers.get("content-type", "").startswith("application/json"):
            orjson.loads(response.body)
        if response.closes:
            self.conn.close()
            self.conn = RawConnection(self.port)


@pytest.fixture(scope="module")
def client(gw) -> Iterator[Client]:
    c = Client(gw.server.port)
    yield c
    c.conn.close()


def _dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels)
        return json.dumps(body).encode()


@FUZZ
@given(body=CHAT, content_type=CONTENT_TYPES)
def test_fuzzed_chat_requests(client, body, content_type):
    client.send("/v1/chat/completions", _dumps(body), [(b"content-type", content_type.encode("latin-1"))])


@FUZZ
@given(body=EMBEDDINGS)
def test_fuzzed_embeddings_requests(client, body):
    client.send("/v1/embeddings", _dumps(body), [(b"content-type", b"application/json")])


@settings(FUZZ, max_examples=400)
@given(raw=RAW, path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/admin/keys", "/v1/models"]),
       name=st.sampled_from([b"x-request-id", b"content-type", b"x-odd", b"user-agent"]), value=HEADER_VALUE)
def test_fuzzed_raw_bodies_and_header_values(client, raw, path, name, value):
    client.send(path, raw, [(name, value)])
