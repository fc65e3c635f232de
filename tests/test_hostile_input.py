"""Bad input from clients gets a 4xx in OpenAI's error format naming the parameter: never a 500, never
a forwarded request, never a closed connection; and a 500 keeps its connection and what is pipelined."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import orjson
import pytest
from starlette.routing import Route

from proxy import echo
from tests.conftest import GATEWAY_KEY, Running, base_config, ledger_rows, start_gateway
from tests.hostile import RawConnection, assert_openai_error, request

ADMIN_KEY = "sk-admin-hostile"
MSGS = [{"role": "user", "content": "hi"}]


def _deep(levels: int) -> object:
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.fixture(scope="module")
def gw(fake_openai, tmp_path_factory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("hostile")
    extra = '[[models]]\nname = "echo/*"\ntargets = [{ provider = "local" }]\n'
    text = base_config(fake_openai.url, tmp / "gw.db", extra).replace(
        "[server]\n", f'[server]\nadmin_key = "{ADMIN_KEY}"\n', 1)
    running = start_gateway(text)
    running.db = tmp / "gw.db"  # type: ignore[attr-defined]
    yield running
    running.server.stop()


def _post(gw: Running, path: str, body: object, key: str = GATEWAY_KEY) -> httpx.Response:
    content = json.dumps(body).encode()  # orjson writes at most 254 levels: these bodies go deeper
    return httpx.post(gw.url + path, content=content, timeout=10,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"})


def _chat(**fields: object) -> dict:
    return {"model": "echo", "messages": MSGS, **fields}


BAD_CHAT = [
    (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages[0].content[0].text"),
    (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": True}]}]), "messages[0].content[0].text"),
    (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": None}]}]), "messages[0].content[0].text"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "text": 5}]}]), "messages[0].content[0].text"),
    (_chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (_chat(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]"),
    (_chat(temperature="hot"), "temperature"),
    (_chat(temperature=3), "temperature"),
    (_chat(top_p=-0.5), "top_p"),
    (_chat(n=1e15), "n"),
    (_chat(n=0), "n"),
    (_chat(max_tokens=-5), "max_tokens"),
    (_chat(max_tokens="5"), "max_tokens"),
    (_chat(max_tokens=True), "max_tokens"),
    (_chat(max_completion_tokens=0), "max_completion_tokens"),
    (_chat(tools="x"), "tools"),
    (_chat(tools=["x"]), "tools[0]"),
    (_chat(tool_choice=5), "tool_choice"),
    (_chat(stop=5), "stop"),
    (_chat(stop=["a", 5]), "stop[1]"),
    (_chat(frequency_penalty=9), "frequency_penalty"),
    (_chat(presence_penalty="x"), "presence_penalty"),
    (_chat(logprobs="yes"), "logprobs"),
    (_chat(top_logprobs=50), "top_logprobs"),
    (_chat(seed=1.5), "seed"),
    (_chat(stream="yes"), "stream"),
    (_chat(stream_options=5), "stream_options"),
    (_chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (_chat(response_format="json"), "response_format"),
    (_chat(user=5), "user"),
    (_chat(parallel_tool_calls="no"), "parallel_tool_calls"),
    (_chat(logit_bias=[1]), "logit_bias"),
    (_chat(model=5), "model"),
    (_chat(model="echo\u0000"), "model"),
    (_chat(model="x" * 257), "model"),
    (_chat(model="echo/a\r\nb"), "model"),
    (_chat(model="echo/a\u0000b"), "model"),
    (_chat(model="echo/\u00fc\u20ac"), "model"),  # not Latin-1: cannot travel in a header to the provider
    (_chat(messages=_deep(300)), "messages"),
    (_chat(metadata={"a": _deep(300)}), "metadata"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT, ids=[p + "-" + str(i) for i, (_, p) in enumerate(BAD_CHAT)])
def test_bad_chat_parameters_get_a_400_naming_them(gw, body, param):
    r = _post(gw, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = assert_openai_error(_as_raw(r))
    assert error["param"] == param and error["type"] == "invalid_request_error"


BAD_EMBEDDINGS = [
    ({"model": "echo", "input": "hi", "messages": 5}, "messages"),
    ({"model": "echo", "input": ["a", 5]}, "input[1]"),
    ({"model": "echo", "input": [1, "a"]}, "input[1]"),
    ({"model": "echo", "input": [[1, 2], "a"]}, "input[1]"),
    ({"model": "echo", "input": [[1, -2]]}, "input[0][1]"),
    ({"model": "echo", "input": [None]}, "input[0]"),
    ({"model": "echo", "input": 5}, "input"),
    ({"model": "echo", "input": "hi", "dimensions": "5"}, "dimensions"),
    ({"model": "echo", "input": "hi", "dimensions": 0}, "dimensions"),
    ({"model": "echo", "input": "hi", "user": 5}, "user"),
    ({"model": "echo", "input": ["a"] * 2049}, "input"),
]


@pytest.mark.parametrize(("body", "param"), BAD_EMBEDDINGS,
                         ids=[p + "-" + str(i) for i, (_, p) in enumerate(BAD_EMBEDDINGS)])
def test_bad_embeddings_parameters_get_a_400_naming_them(gw, body, param):
    r = _post(gw, "/v1/embeddings", body)
    assert r.status_code == 400, r.text
    assert assert_openai_error(_as_raw(r))["param"] == param


def test_good_requests_still_pass(gw):
    ok = [("/v1/chat/completions", _chat(temperature=0.5, n=1, max_tokens=5, stop=["x"], tools=[],
                                         messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                         stream_options=None, seed=-3, top_p=1, user="u")),
          ("/v1/chat/completions", _chat(model="echo/some-model")),
          ("/v1/chat/completions", _chat(model="echo/a b")),
          ("/v1/embeddings", {"model": "echo", "input": [[1, 2], [3]], "dimensions": 8}),
          ("/v1/embeddings", {"model": "echo", "input": [1, 2, 3], "dimensions": 8}),
          ("/v1/embeddings", {"model": "echo", "input": ["a", "b"], "dimensions": 8})]
    for path, body in ok:
        r = _post(gw, path, body)
        assert r.status_code == 200, (body, r.text)


def test_a_refused_model_name_leaves_a_row_the_database_takes(gw):
    r = _post(gw, "/v1/chat/completions", _chat(model="nul\u0000name"), )
    assert r.status_code == 400
    rid = r.headers["x-request-id"]
    rows = ledger_rows(gw.db, "SELECT model, status FROM usage_log WHERE request_id = ?", (rid,))
    assert rows == [("nul\ufffdname", 400)]


def test_json_nested_deeper_than_orjson_writes_is_refused_at_parse(gw):
    shallow = _post(gw, "/v1/chat/completions", _chat(metadata={"a": _deep(200)}))
    assert shallow.status_code == 200
    deep = _post(gw, "/v1/chat/completions", _chat(metadata={"a": _deep(260)}))
    assert deep.status_code == 400 and deep.json()["error"]["param"] == "metadata"


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "k1", "expires_at": "0001-01-01T00:00:00+05:00"}, "expires_at"),
    ({"name": "k2", "expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),
    ({"name": "k3", "metadata": {"a": _deep(300)}}, "metadata"),
])
def test_admin_refuses_out_of_range_settings(gw, body, param):
    r = _post(gw, "/admin/keys", body, key=ADMIN_KEY)
    assert r.status_code == 400, r.text
    assert assert_openai_error(_as_raw(r))["param"] == param


def test_echo_answers_odd_input_without_raising():
    status, body = echo.answer("/v1/embeddings", orjson.dumps({"input": ["a", 5]}))
    assert status == 400 and orjson.loads(body)["error"]["param"] == "input"
    status, body = echo.answer("/v1/chat/completions", orjson.dumps(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": None}, {"type": "text", "text": "x"}]}]}))
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "Echo: x"
    status, _ = echo.answer("/v1/chat/completions", orjson.dumps({"messages": 5}))
    assert status == 200


def test_malformed_http_gets_an_openai_error(gw):
    c = RawConnection(gw.server.port)
    try:
        c.send(b"NOT HTTP AT ALL\r\n\r\n")
        response = c.read_response()
        assert response.status == 400 and response.closes
        assert assert_openai_error(response)["code"] == "invalid_http"
    finally:
        c.close()


def test_a_500_keeps_the_connection_and_the_pipelined_request_behind_it(gw):
    async def boom(request):
        raise RuntimeError("a bug")

    class ReturnsNothing:  # an ASGI app (not a function): Starlette calls it as it is
        async def __call__(self, scope, receive, send) -> None:
            return None

    gw.app.router.routes.insert(0, Route("/boom", boom))
    gw.app.router.routes.insert(0, Route("/nothing", ReturnsNothing()))
    try:
        c = RawConnection(gw.server.port)
        try:
            c.send(request("GET", "/boom") + request("GET", "/healthz") + request("GET", "/nothing")
                   + request("GET", "/healthz"))
            for expected in (500, 200, 500, 200):
                response = c.read_response()
                assert response.status == expected and not response.closes
                if expected == 500:
                    assert assert_openai_error(response)["code"] == "internal_error"
            c.send(request("GET", "/healthz"))  # and the connection is still good
            assert c.read_response().status == 200
        finally:
            c.close()
    finally:
        del gw.app.router.routes[:2]


def test_client_model_names_do_not_grow_metrics(gw):
    before = httpx.get(gw.url + "/metrics").text
    huge = _post(gw, "/v1/chat/completions", _chat(model="echo/" + "y" * 200_000))
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "model"
    for i in range(20):  # distinct long names on a glob alias, each answered
        assert _post(gw, "/v1/chat/completions", _chat(model=f"echo/{i:03d}" + "x" * 240)).status_code == 200
    after = httpx.get(gw.url + "/metrics").text
    assert "x" * 240 not in after and "y" * 1000 not in after
    assert 'model="echo/*"' in after  # they are counted under the alias's pattern
    assert len(after) - len(before) < 30_000, len(after) - len(before)


def _as_raw(r: httpx.Response):
    from tests.hostile import Response

    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


# --- Content-Encoding -------------------------------------------------------------------------------


def _encoded_config(fake_url: str, tmp_path) -> str:
    config = base_config(fake_url, tmp_path / "gw.db")
    return config.replace("require_auth = true", "require_auth = true\nmax_body_mb = 1")


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", "gzip, identity"])
def test_gzip_and_deflate_bodies_are_decoded(make_gateway, fake_openai, tmp_path, coding):
    import gzip
    import zlib

    gw = make_gateway(_encoded_config(fake_openai.url, tmp_path))
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "squeezed"}]})
    if coding.startswith("gzip"):
        data = gzip.compress(body)
    elif coding == "deflate":
        data = zlib.compress(body)
    else:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data, coding = packer.compress(body) + packer.flush(), "deflate"
    r = httpx.post(gw.url + "/v1/chat/completions", content=data, timeout=10,
                   headers={"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json",
                            "content-encoding": coding})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello squeezed"


def test_a_zip_bomb_is_413_and_bad_encodings_are_refused(make_gateway, fake_openai, tmp_path):
    import gzip

    gw = make_gateway(_encoded_config(fake_openai.url, tmp_path))
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json"}
    # 64 MB of spaces inside valid JSON packs into about 64 KB: far under the 1 MB limit as sent.
    bomb = gzip.compress(b'{"model": "gpt-test", "messages": [' + b" " * (64 << 20) + b"]}", compresslevel=9)
    assert len(bomb) < (1 << 20)
    r = httpx.post(gw.url + "/v1/chat/completions", content=bomb, timeout=30,
                   headers={**headers, "content-encoding": "gzip"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(gw.url + "/v1/chat/completions", content=b"\x28\xb5\x2f\xfd", timeout=10,
                   headers={**headers, "content-encoding": "zstd"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_content_encoding"
    assert "zstd" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/v1/chat/completions", content=b"not gzip at all", timeout=10,
                   headers={**headers, "content-encoding": "gzip"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body_encoding"
    assert gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}]).choices
