"""Every failure a client can see is an OpenAI error body with the right status."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, PROVIDER_KEY, base_config

MSGS = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert r.headers["content-type"].startswith("application/json")
    return err


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b""])
def test_400_bad_json(gateway, body):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH, content=body)
    assert_openai_error(r, 400)


@pytest.mark.parametrize("payload,param", [({"messages": MSGS}, "model"), ({"model": "gpt-test"}, "messages"),
                                           ({"model": "gpt-test", "messages": []}, "messages"),
                                           ({"model": "gpt-test", "messages": MSGS, "stream": "yes"}, "stream")])
def test_400_missing_fields(gateway, payload, param):
    err = assert_openai_error(httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH, json=payload), 400)
    assert err["param"] == param


def test_401_missing_and_wrong_key(gateway):
    assert_openai_error(httpx.post(gateway.url + "/v1/chat/completions", json={"model": "gpt-test"}), 401)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(key="sk-wrong").chat.completions.create(model="gpt-test", messages=MSGS)
    assert_openai_error(httpx.get(gateway.url + "/v1/models", headers={"authorization": "Basic abc"}), 401)


def test_403_model_not_allowed_for_key(gateway):
    limited = gateway.client(key=LIMITED_KEY)
    assert limited.chat.completions.create(model="gpt-test", messages=MSGS).model == "gpt-test"
    with pytest.raises(openai.PermissionDeniedError):
        limited.chat.completions.create(model="a-ok", messages=MSGS)


def test_404_unknown_alias_and_path(gateway, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSGS)
    assert "fake" not in str(e.value) and PROVIDER_KEY not in str(e.value)
    assert_openai_error(httpx.get(gateway.url + "/v1/nothing-here", headers=AUTH), 404)


def test_405_wrong_method(gateway):
    assert_openai_error(httpx.get(gateway.url + "/v1/chat/completions", headers=AUTH), 405)
    assert_openai_error(httpx.delete(gateway.url + "/v1/models", headers=AUTH), 405)


def test_413_body_too_large(make_gateway, fake_openai, tmp_path):
    text = base_config(fake_openai.url, tmp_path / "g.db")
    gw = make_gateway(text.replace("require_auth = true", "require_auth = true\nmax_body_mb = 0.01"))
    big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 20000}]}
    assert_openai_error(httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json=big), 413)

    def chunks():  # no content-length: the limit is enforced while reading
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}]}'

    assert_openai_error(httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, content=chunks()), 413)


@pytest.mark.parametrize("alias,status,exc", [("a-fail-400", 400, openai.BadRequestError),
                                              ("a-fail-404", 404, openai.NotFoundError),
                                              ("a-fail-500", 502, openai.InternalServerError),
                                              ("a-fail-503", 502, openai.InternalServerError),
                                              ("a-not-json", 502, openai.InternalServerError),
                                              ("unreachable", 502, openai.InternalServerError),
                                              ("a-slow", 504, openai.InternalServerError)])
def test_upstream_failures_map_to_statuses(client, alias, status, exc):
    with pytest.raises(exc) as e:
        client.chat.completions.create(model=alias, messages=MSGS)
    assert e.value.status_code == status
    assert isinstance(e.value.body, dict) and set(e.value.body) >= {"message", "type", "code"}


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_keeps_retry_after(gateway, stream):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH,
                   json={"model": "a-fail-429", "messages": MSGS, "stream": stream})
    err = assert_openai_error(r, 429)
    assert r.headers["retry-after"] == "7" and err["code"] == "rate_limit_exceeded"


def test_stream_upstream_error_before_first_byte_is_http_status(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH,
                   json={"model": "a-fail-500", "messages": MSGS, "stream": True})
    assert_openai_error(r, 502)


def test_provider_key_never_in_error(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH, json={"model": "a-leak-key", "messages": MSGS})
    err = assert_openai_error(r, 502)  # the provider refused the gateway's key: not the client's 401
    assert PROVIDER_KEY not in r.text and "***" in err["message"]


def test_internal_error_is_openai_shaped_and_still_accounted(make_gateway, fake_openai, tmp_path, monkeypatch):
    """A bug deep in the request path (injected here) answers 500 in OpenAI shape and leaves its row."""
    from proxy.upstream import Upstream

    gw = make_gateway(base_config(fake_openai.url, tmp_path / "g.db"))
    rows = []
    sink = gw.app.state.runtime.sink
    monkeypatch.setattr(gw.app.state.runtime, "sink", type("S", (), {"submit": lambda self, r: (rows.append(r),
                                                                                               sink.submit(r))})())

    async def broken(self, req, connect_s, total_s):
        raise RuntimeError("injected bug")

    monkeypatch.setattr(Upstream, "fetch", broken)
    r = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={"model": "gpt-test", "messages": MSGS})
    err = assert_openai_error(r, 500)
    assert err["code"] == "internal_error" and "injected" not in r.text
    deadline = time.monotonic() + 2  # the row is handed to the ledger just after the response is sent
    while not rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(row.status, row.error_type) for row in rows] == [(500, "internal_error")]
    assert gw.app.state.runtime.active == 0


def _one_shot_upstream(answer: bytes) -> tuple[int, socket.socket]:
    """A socket server that answers each request with ``answer`` as raw bytes, then closes the connection."""

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], server


def _ask_raw_upstream(make_gateway, fake_openai, tmp: Path, answer: bytes,
                      kind: str = "openai") -> tuple[httpx.Response, float]:
    """One chat request through a gateway whose only target is a raw-socket upstream answering ``answer``;
    the response and the seconds it took (the gateway's start not included)."""
    port, server = _one_shot_upstream(answer)
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    extra = (f'[providers.raw]\nkind = "{kind}"\nbase_url = "{base_url}"\napi_key = "raw-key"\ntimeout_s = 5\n'
             '[[models]]\nname = "raw"\ntargets = [{ provider = "raw", model = "m", max_retries = 0 }]\n')
    gw = make_gateway(base_config(fake_openai.url, tmp / "gw.db", extra))
    try:
        started = time.monotonic()
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                       json={"model": "raw", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        return r, time.monotonic() - started
    finally:
        server.close()


def test_an_answer_that_ends_with_the_connection_is_read_whole(make_gateway, fake_openai, tmp_path):
    """No content-length, no chunking: the body ends when the upstream closes (RFC 9112 6.3). The
    gateway must take the close as the end of the answer, not hang or fail."""
    body = (b'{"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": '
            b'[{"index": 0, "message": {"role": "assistant", "content": "until close"}, "finish_reason": "stop"}], '
            b'"usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}')
    r, took = _ask_raw_upstream(make_gateway, fake_openai, tmp_path,
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                b"connection: close\r\n\r\n" + body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "until close"
    assert took < 2  # at the close, not at a timeout


def test_an_answer_cut_short_of_its_content_length_is_a_502_at_once(make_gateway, fake_openai, tmp_path):
    r, took = _ask_raw_upstream(make_gateway, fake_openai, tmp_path,
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                b"content-length: 500\r\n\r\n" + b'{"id": "chatcmpl-1", "choices": [')
    err = assert_openai_error(r, 502)
    assert err["code"] == "upstream_connection_error"
    assert took < 2  # at the close, not at the 5 s timeout


def test_an_answer_that_is_not_http_is_a_502_at_once(make_gateway, fake_openai, tmp_path):
    r, took = _ask_raw_upstream(make_gateway, fake_openai, tmp_path,
                                b"SSH-2.0-OpenSSH_9.6\r\nthis is not an HTTP response\r\n\r\n")
    assert assert_openai_error(r, 502)["code"] == "upstream_connection_error"
    assert took < 2


def test_a_stream_that_goes_quiet_mid_way_ends_at_its_idle_timeout(make_gateway, fake_openai, tmp_path):
    """slow-stream sends a chunk every 50 ms; with stream_idle_timeout_s = 0.02 the first gap is too long
    once the stream has started: the client gets an error event and the row says timeout."""
    import uuid

    from tests.conftest import ledger_rows, stream_data

    db = tmp_path / "gw.db"
    extra = ('[[models]]\nname = "quiet"\ntargets = [{ provider = "fake", model = "slow-stream", max_retries = 0, '
             'stream_idle_timeout_s = 0.02 }]\n')
    gw = make_gateway(base_config(fake_openai.url, db, extra))
    rid = f"quiet-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    events = stream_data(gw.url, "quiet", rid)
    assert time.monotonic() - started < 2  # the whole stream would take 20 s
    assert '"upstream_timeout"' in events[-1]
    rows = ledger_rows(db, "SELECT status, error_type FROM usage_log WHERE request_id LIKE ?", (rid + ".%",))
    assert rows == [(504, "timeout")]


def _answer(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, content_type, len(body)) + body)


@pytest.mark.parametrize(("answer", "status", "code", "says"), [
    # some servers answer 200 with an error body
    (_answer(200, b'{"error": {"message": "model overloaded", "type": "server_error"}}'), 502, "upstream_error",
     "model overloaded"),
    (_answer(200, b'{"id": "chatcmpl-1", "object": "chat.completion"}'), 502, "bad_upstream_response",
     "without choices"),
    (_answer(400, b'{"error": "prompt too long"}'), 400, None, "prompt too long"),  # error as a bare string
    (_answer(503, b"<html>Service Unavailable</html>", b"text/html"), 502, "upstream_error", "non-JSON body"),
])
def test_odd_upstream_answers_become_openai_errors(make_gateway, fake_openai, tmp_path, answer, status, code, says):
    r, _ = _ask_raw_upstream(make_gateway, fake_openai, tmp_path, answer)
    err = assert_openai_error(r, status)
    assert err["code"] == code and says in err["message"]


@pytest.mark.parametrize(("answer", "code", "says"), [
    (_answer(200, b'{"error": {"code": 500, "message": "internal hiccup", "status": "INTERNAL"}}'), "upstream_error",
     "internal hiccup"),
    (_answer(200, b'{"modelVersion": "gemini-x"}'), "bad_upstream_response", "without candidates"),
    (_answer(503, b"<html>Service Unavailable</html>", b"text/html"), "upstream_error", "non-JSON body"),
])
def test_odd_gemini_answers_become_openai_errors(make_gateway, fake_openai, tmp_path, answer, code, says):
    r, _ = _ask_raw_upstream(make_gateway, fake_openai, tmp_path, answer, kind="gemini")
    err = assert_openai_error(r, 502)
    assert err["code"] == code and says in err["message"] and "raw-key" not in r.text


def test_provider_refusing_its_credentials_is_a_502_naming_it_and_counted(make_gateway, fake_openai, tmp_path):
    """An upstream 401/403 is the gateway's provider key refused, not the client's key: the client gets a
    502 naming the provider (never invalid_api_key), and gateway_upstream_errors_total counts it."""
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db"))
    client = gw.client()
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="a-fail-401", messages=MSGS, stream=stream)
        assert e.value.status_code == 502 and e.value.body["code"] == "upstream_auth_failed"
        assert e.value.body["code"] != "invalid_api_key" and e.value.body["type"] == "upstream_error"
        assert "upstream fake refused the gateway's credentials for it (HTTP 401)" in e.value.message
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_upstream_errors_total{provider="fake",reason="auth_refused"} 2.0' in metrics


def test_a_provider_without_the_key_its_kind_needs_is_named_at_start(make_gateway, fake_openai, tmp_path, caplog):
    extra = """
[providers.claude]
kind = "anthropic"

[providers.openai_com]
kind = "openai"

[providers.vertex]
kind = "gemini"
headers = { authorization = "Bearer ya29.token" }
"""
    with caplog.at_level(logging.WARNING, logger="gateway"):
        make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    warned = " ".join(r.getMessage() for r in caplog.records if "has no api_key" in r.getMessage())
    assert "provider claude (kind anthropic)" in warned and "provider openai_com (kind openai)" in warned
    assert "vertex" not in warned and "local" not in warned and "fake" not in warned  # a key, a header, or none needed


def test_first_byte_timeout_bounds_a_whole_body_answers_head(make_gateway, fake_openai, tmp_path):
    """first_byte_timeout_s is not only for streams: a whole-body request whose response head has not come
    in time fails with 504 (and may fall back), instead of waiting out timeout_s."""
    extra = """
[[models]]
name = "late-head"
targets = [{ provider = "fake", model = "delay-3000", first_byte_timeout_s = 0.3, timeout_s = 20, max_retries = 0 }]

[[models]]
name = "slow-body"
targets = [{ provider = "fake", model = "delay-1800", timeout_s = 20, max_retries = 0 }]
"""
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    with pytest.raises(openai.APIStatusError) as e:
        gw.client(timeout=15).chat.completions.create(model="late-head", messages=MSGS)
    assert e.value.status_code == 504 and e.value.body["code"] == "upstream_timeout"
    assert "sent no response head in 0.3s" in e.value.message
    # Unset on the target, the provider-wide default (1.5 s here) does not cut a slow whole-body answer
    # that the target's own timeout_s allows.
    assert gw.client(timeout=15).chat.completions.create(model="slow-body", messages=MSGS).choices


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions/", {"model": "echo", "messages": MSGS}),
    ("/v1/embeddings/", {"model": "echo", "input": "hi"}),
    ("/v1/completions/", {"model": "echo", "prompt": "hi"}),
    ("/chat/completions/", {"model": "echo", "messages": MSGS}),
])
def test_a_trailing_slash_is_served_like_the_route_without_it(gateway, path, body):
    r = httpx.post(gateway.url + path, headers=AUTH, json=body)
    assert r.status_code == 200 and r.json()["model"] == "echo"
    r = httpx.get(gateway.url + "/v1/models/", headers=AUTH)
    assert r.status_code == 200 and r.json()["object"] == "list"
