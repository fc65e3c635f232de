"""The gateway under servers without GatewayHttpProtocol's extensions (plain uvicorn with h11 or
httptools, httpx's ASGI transport): the same answers and the same accounting, through ``send`` and
``receive()`` alone."""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.conftest import GATEWAY_KEY, Running, base_config, ledger_rows, stream_data
from tests.servers import ServerThread

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
MSGS = [{"role": "user", "content": "go"}]
MODELS = ('[[models]]\nname = "stalled"\nkeepalive_s = 0.1\n'
           'targets = [{ provider = "fake", model = "stall-3000", first_byte_timeout_s = 10 }]\n'
           '[[models]]\nname = "a-hang-3000"\ntargets = [{ provider = "fake", model = "hang-3000" }]\n')


@pytest.fixture(params=["h11", "httptools"])
def served(request: pytest.FixtureRequest, fake_openai: Running, tmp_path: Path):
    """A gateway under uvicorn's own protocol, and its usage database."""
    db = tmp_path / "gw.db"
    app = create_app(parse_config(tomllib.loads(base_config(fake_openai.url, db, MODELS)), "test.toml",
                                  dict(os.environ)))
    server = ServerThread(app, http=request.param).start()
    yield Running(server, app), db
    server.stop()


def _rows(db: Path, rid: str, at_least: int = 1) -> list[tuple]:
    return ledger_rows(db, "SELECT stream, status, error_type, completion_tokens > 0 FROM usage_log "
                           "WHERE request_id LIKE ? ORDER BY stream", (rid + "%",), at_least)


def test_chat_whole_and_streamed(served) -> None:
    gw, db = served
    rid = f"plain-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # the second pair on a kept-alive connection
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=5) as client:
            whole = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MSGS},
                                headers={"x-request-id": rid + "-w"})
            assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"]
            assert whole.headers["x-gateway-provider"] == "fake" and "x-gateway-cost-usd" in whole.headers
            data = stream_data(gw.url, "gpt-test", rid + "-s")
            assert data[-1] == "[DONE]" and len(data) > 2
    assert _rows(db, rid, 4) == [(0, 200, None, 1)] * 2 + [(1, 200, None, 1)] * 2


def test_a_client_leaving_a_stream_is_accounted(served, fake_openai: Running) -> None:
    """Without the server's hang-up hook, a task waiting on ``receive()`` notices the hang-up: the
    upstream is closed at once and the row says 499, both mid-stream and before the first token."""
    gw, db = served
    outcomes = fake_openai.app.state.fake.stream_outcomes
    for model, lines in (("a-slow-stream", 3), ("stalled", 1)):
        before = len(outcomes)
        rid = f"leaver-{uuid.uuid4().hex[:8]}"
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={**AUTH, "x-request-id": rid},
                          json={"model": model, "messages": MSGS, "stream": True}, timeout=10) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += bool(line)
                if seen == lines:
                    break
        started = time.monotonic()
        while len(outcomes) == before and time.monotonic() - started < 5:
            time.sleep(0.02)
        assert outcomes[before:] == ["client_gone"], model
        assert time.monotonic() - started < 1.0, model  # not when the upstream's stream would end
        assert _rows(db, rid) == [(1, 499, "client_disconnect", model == "a-slow-stream")]


@pytest.mark.parametrize("served", ["h11"], indirect=True)
def test_a_client_leaving_a_whole_body_request_is_accounted(served, fake_openai: Running) -> None:
    """What GatewayHttpProtocol's hook gives (tests/test_disconnect.py), from a task watching receive():
    the upstream call stopped at once and a 499 row, not a call run on to the provider's timeout."""
    gw, db = served
    outcomes = fake_openai.app.state.fake.call_outcomes
    before = len(outcomes)
    rid = f"leaver-{uuid.uuid4().hex[:8]}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", headers={**AUTH, "x-request-id": rid},
                   json={"model": "a-hang-3000", "messages": MSGS}, timeout=0.3)
    started = time.monotonic()
    while len(outcomes) == before and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert time.monotonic() - started < 0.8
    assert ledger_rows(db, "SELECT status FROM usage_log WHERE request_id LIKE ?", (rid + "%",)) == [(499,)]


def test_chat_through_an_asgi_transport(fake_openai: Running, tmp_path: Path) -> None:
    """httpx's in-process transport: no socket, no extensions; the lifespan is run by hand."""
    db = tmp_path / "gw.db"
    app = create_app(parse_config(tomllib.loads(base_config(fake_openai.url, db)), "test.toml", dict(os.environ)))
    rid = f"asgi-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[httpx.Response, list[str]]:
        starlette = getattr(app, "app", app)
        async with starlette.router.lifespan_context(starlette):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                         headers=AUTH, timeout=5) as client:
                whole = await client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MSGS},
                                          headers={"x-request-id": rid + "-w"})
                streamed = await client.post("/v1/chat/completions", headers={"x-request-id": rid + "-s"},
                                             json={"model": "gpt-test", "messages": MSGS, "stream": True})
                assert streamed.status_code == 200
                assert streamed.headers["content-type"].startswith("text/event-stream")
                return whole, [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]

    whole, data = asyncio.run(main())
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"]
    assert data[-1] == "[DONE]" and len(data) > 2
    assert _rows(db, rid, 2) == [(0, 200, None, 1), (1, 200, None, 1)]
