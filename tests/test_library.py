"""Library mode (proxy.library): the gateway in-process, with no HTTP server, on the server's pipeline.
The README's example is run as written; ``gw.chat`` and the server give the same answer, usage row
and metrics for the same request."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from starlette.applications import Starlette
from starlette.routing import Mount

from proxy import Gateway
from proxy.config import parse_config
from proxy.library_types import (
    AuthenticationError,
    BadRequestError,
    GatewayAPIError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from proxy.storage import COLUMNS
from tests.conftest import GATEWAY_KEY, LIMITED_KEY, ROOT, Running, base_config, ledger_rows, start_gateway
from tests.servers import ServerThread

HELLO = [{"role": "user", "content": "Hello there"}]


def echo_gateway(tmp: Path, **extra: Any) -> Gateway:
    return Gateway(
        providers=[{"name": "local", "kind": "echo"}],
        models=[{"name": "echo", "targets": [{"provider": "local", "model": "echo-1", "input_per_mtok": 1.0,
                                              "output_per_mtok": 2.0}]},
                {"name": "emb", "targets": [{"provider": "local", "model": "embed"}]}],
        storage={"database_url": f"sqlite:///{tmp / 'gw.db'}", "spill_dir": str(tmp / "spill")},
        **extra,
    )


def rows(db: Path, at_least: int = 1) -> list[dict[str, Any]]:
    found = ledger_rows(db, f"SELECT {', '.join(COLUMNS)} FROM usage_log ORDER BY created_at", (), at_least)
    return [dict(zip(COLUMNS, r, strict=True)) for r in found]


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its library example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "answered by local"  # post_response saw the answer, before it was printed
    assert lines[1].startswith("Echo: HELLO! local ")  # pre_request changed the prompt
    assert "Echo: HI THERE" in lines
    assert "2 1536" in lines  # two vectors of the echo provider's size
    total_requests, total_cost = lines[-1].split()[:2]
    assert int(total_requests) == 3 and float(total_cost) > 0
    assert "[('local', 3, 0.0)]" in lines[-1]


def test_chat_stream_embeddings_and_one_row_each(tmp_path: Path) -> None:
    with echo_gateway(tmp_path) as gw:
        r = gw.chat(model="echo", messages=HELLO, max_tokens=50, user="alice")
        assert r.content == "Echo: Hello there" and r.provider == "local"
        assert r.usage is not None and r.usage["completion_tokens"] == 4
        assert r.cost == pytest.approx((r.usage["prompt_tokens"] * 1.0 + 4 * 2.0) / 1e6)
        assert r.raw["object"] == "chat.completion" and r.raw["model"] == "echo" and r.request_id
        chunks = list(gw.chat_stream(model="echo", messages=HELLO, stream_options={"include_usage": True}))
        assert "".join(c.delta for c in chunks) == "Echo: Hello there"
        assert chunks[-1].usage is not None and any(c.finish_reason == "stop" for c in chunks)
        vectors = gw.embeddings(model="emb", input=["a", "b"])
        assert len(vectors) == 2 and len(vectors[0]) == 1536 and vectors.vectors[1] == list(vectors)[1]
    found = rows(tmp_path / "gw.db", 3)
    assert [(r["endpoint"], r["stream"], r["status"]) for r in found] == [("chat", 0, 200), ("chat", 1, 200),
                                                                            ("embeddings", 0, 200)]
    assert found[0]["request_id"] and found[0]["cost_usd"] == pytest.approx(r.cost)
    assert [row["end_user"] for row in found] == ["alice", None, None]  # `user=` names the end user


def test_errors_are_typed_and_carry_the_server_body(fake_openai: Running, tmp_path: Path) -> None:
    text = base_config(fake_openai.url, tmp_path / "lib.db", '[[models]]\nname = "capped"\ntargets = '
                       '[{ provider = "local", model = "echo-1" }]\nrpm = 1\n')
    server = start_gateway(base_config(fake_openai.url, tmp_path / "srv.db"))
    try:
        gw = Gateway(config=parse_config(tomllib.loads(text), "test.toml", dict(os.environ)), api_key=GATEWAY_KEY)
        with gw:
            cases = [({"model": "nope", "messages": HELLO}, NotFoundError, GATEWAY_KEY),
                     ({"model": "echo", "messages": HELLO, "temperature": "hot"}, BadRequestError, GATEWAY_KEY),
                     ({"model": "a-fail-500", "messages": HELLO}, InternalServerError, GATEWAY_KEY)]
            for body, cls, key in cases:
                with pytest.raises(cls) as caught:
                    gw.chat(**body)
                expected = httpx.post(server.url + "/v1/chat/completions", json=body,
                                      headers={"authorization": f"Bearer {key}"}, timeout=10)
                assert caught.value.status_code == expected.status_code
                assert caught.value.body == expected.json()  # the server's own error body
            assert caught.value.type == expected.json()["error"]["type"]
            with pytest.raises(BadRequestError) as bad:
                gw.chat(model="echo", messages=HELLO, temperature="hot")
            assert bad.value.param == "temperature"
            gw.chat(model="capped", messages=HELLO)
            with pytest.raises(RateLimitError) as limited:
                gw.chat(model="capped", messages=HELLO)
            assert "retry-after" in limited.value.headers
            with pytest.raises(InternalServerError):  # an error before the stream starts
                list(gw.chat_stream(model="a-fail-500", messages=HELLO))
            with pytest.raises(GatewayAPIError) as cut:  # an error event mid-stream
                list(gw.chat_stream(model="a-error-stream", messages=HELLO))
            assert cut.value.status_code >= 500
        limited_gw = Gateway(config=gw.config, api_key=LIMITED_KEY)
        with limited_gw, pytest.raises(PermissionDeniedError):
            limited_gw.chat(model="a-ok", messages=HELLO)
        anonymous = Gateway(config=gw.config)
        with anonymous, pytest.raises(AuthenticationError) as unauth:
            anonymous.chat(model="echo", messages=HELLO)
        assert unauth.value.body["error"]["code"] == "invalid_api_key"
    finally:
        server.server.stop()


def test_chat_and_the_server_give_the_same_answer_row_and_metrics(fake_openai: Running, tmp_path: Path) -> None:
    server_db, library_db = tmp_path / "srv.db", tmp_path / "lib.db"
    server = start_gateway(base_config(fake_openai.url, server_db))
    try:
        text = base_config(fake_openai.url, library_db)
        with Gateway(config=parse_config(tomllib.loads(text), "test.toml", dict(os.environ)),
                     api_key=GATEWAY_KEY) as gw:
            params = {"model": "gpt-test", "messages": HELLO, "max_tokens": 50}
            raw = server.client().chat.completions.with_raw_response.create(**params)
            ours = gw.chat(**params)
            theirs = raw.http_response.json()  # the bytes the server sent, not the SDK's model of them
            for answer in (theirs, ours.raw):
                answer.pop("id"), answer.pop("created")
            assert ours.raw == theirs
            for header in ("x-gateway-provider", "x-gateway-upstream-model", "x-gateway-cost-usd",
                           "x-gateway-attempts"):
                assert ours.headers[header] == raw.headers[header]
            metrics_server = httpx.get(server.url + "/metrics", timeout=10).text
            metrics_library = gw.metrics()
        server_row, library_row = rows(server_db)[0], rows(library_db)[0]
        for row in (server_row, library_row):
            for varying in ("request_id", "created_at", "latency_ms", "ttft_ms"):
                row.pop(varying)
        assert library_row == server_row
        assert library_row["cost_usd"] > 0

        def counted(text: str) -> list[str]:
            wanted = ("gateway_requests_total", "gateway_tokens_total", "gateway_cost_usd_total",
                      "gateway_request_duration_seconds_count")
            return sorted(line for line in text.splitlines() if line.startswith(wanted))

        assert counted(metrics_library) == counted(metrics_server)
        assert any('model="gpt-test"' in line for line in counted(metrics_library))
    finally:
        server.server.stop()


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def pre_request(self, request: dict[str, Any]) -> None:  # coroutines work too
        if "refuse" in str(request.get("messages")):
            raise BadRequestError(400, {"error": {"message": "refused by policy", "type": "invalid_request_error",
                                                  "param": "messages", "code": "policy"}})
        request["messages"] = [{"role": "user", "content": "rewritten"}]

    def post_response(self, response: Any) -> dict[str, Any] | None:
        self.seen.append(response.provider)
        if response.raw:
            response.raw["choices"][0]["message"]["content"] += " [checked]"
        return None


def test_middleware_sees_changes_and_refuses_requests(tmp_path: Path) -> None:
    recorder = Recorder()
    with echo_gateway(tmp_path) as gw:
        gw.add_middleware(recorder)
        assert gw.chat(model="echo", messages=HELLO).content == "Echo: rewritten [checked]"
        assert "".join(c.delta for c in gw.chat_stream(model="echo", messages=HELLO)) == "Echo: rewritten"
        with pytest.raises(BadRequestError) as refused:
            gw.chat(model="echo", messages=[{"role": "user", "content": "please refuse"}])
        assert refused.value.code == "policy" and refused.value.param == "messages"
        with pytest.raises(TypeError):
            gw.add_middleware(object())
    assert recorder.seen == ["local", "local"]
    statuses = [r["status"] for r in rows(tmp_path / "gw.db", 3)]
    assert statuses == [200, 200, 400]  # the refusal has its row, as a server refusal does


def test_async_twins_on_the_callers_loop_and_from_another(tmp_path: Path) -> None:
    async def on_our_loop() -> tuple[str | None, str, int]:
        async with echo_gateway(tmp_path / "a") as gw:
            r = await gw.achat(model="echo", messages=HELLO)
            text = "".join([c.delta async for c in gw.achat_stream(model="echo", messages=HELLO)])
            vectors = await gw.aembeddings(model="emb", input="x")
            with pytest.raises(RuntimeError):  # a sync call would wait on the loop it blocks
                gw.chat(model="echo", messages=HELLO)
            summary = await gw.analytics.asummary("1h")
            assert summary.total_requests == 3
            return r.content, text, len(vectors)

    (tmp_path / "a").mkdir()
    assert asyncio.run(on_our_loop()) == ("Echo: Hello there", "Echo: Hello there", 1)

    (tmp_path / "b").mkdir()
    with echo_gateway(tmp_path / "b") as gw:  # its own thread's loop; awaited from another loop

        async def elsewhere() -> list[str | None]:
            answers = await asyncio.gather(*[gw.achat(model="echo", messages=[{"role": "user", "content": str(i)}])
                                             for i in range(5)])
            text = "".join([c.delta async for c in gw.achat_stream(model="echo", messages=HELLO)])
            return [a.content for a in answers] + [text]

        assert asyncio.run(elsewhere()) == [f"Echo: {i}" for i in range(5)] + ["Echo: Hello there"]


def test_leaving_a_stream_early_stops_it_and_its_row_says_499(fake_openai: Running, tmp_path: Path) -> None:
    text = base_config(fake_openai.url, tmp_path / "gw.db")
    with Gateway(config=parse_config(tomllib.loads(text), "test.toml", dict(os.environ)), api_key=GATEWAY_KEY) as gw:
        stream = gw.chat_stream(model="a-slow-stream", messages=HELLO)
        next(stream)
        stream.close()
        found = ledger_rows(tmp_path / "gw.db", "SELECT status, stream FROM usage_log", ())
    assert found == [(499, 1)]


def test_analytics_summary(tmp_path: Path) -> None:
    with echo_gateway(tmp_path) as gw:
        for _ in range(3):
            gw.chat(model="echo", messages=HELLO)
        with pytest.raises(NotFoundError):
            gw.chat(model="missing", messages=HELLO)
        stats = gw.analytics.summary(period="24h")  # no sleep: the summary waits for the rows
    assert stats.total_requests == 4
    assert stats.total_cost == pytest.approx(sum(r["cost_usd"] or 0 for r in rows(tmp_path / "gw.db", 4)))
    assert stats.avg_latency_ms > 0 and stats.cache_hit_rate == 0.0
    assert [(p.name, p.requests, p.error_rate) for p in stats.by_provider] == [("local", 3, 0.0)]


def test_rows_are_flushed_when_the_context_manager_exits(tmp_path: Path) -> None:
    gw = echo_gateway(tmp_path)
    with gw:
        gw.chat(model="echo", messages=HELLO)
    with sqlite3.connect(tmp_path / "gw.db") as conn:  # no polling: closing flushed the ledger
        assert conn.execute("SELECT count(*) FROM usage_log").fetchone() == (1,)
    with pytest.raises(RuntimeError):
        gw.metrics()  # stopped


def test_asgi_app_mounted_in_starlette(tmp_path: Path) -> None:
    gw = echo_gateway(tmp_path)
    recorder = Recorder()
    gw.add_middleware(recorder)
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gw.aclose()  # mounted apps get no lifespan of their own: the host's stops the gateway

    host = Starlette(routes=[Mount("/llm", app=gw.asgi_app())], lifespan=lifespan)
    server = ServerThread(host).start()
    try:
        client = OpenAI(base_url=server.url + "/llm/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="echo", messages=HELLO)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "Echo: rewritten [checked]"  # the library's middleware ran
        assert [m.id for m in client.models.list()] == ["echo", "emb"]
        streamed = client.chat.completions.create(model="echo", messages=HELLO, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Echo: rewritten"
    finally:
        server.stop()
    found = rows(tmp_path / "gw.db", 2)
    assert [r["stream"] for r in found] == [0, 1]


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from proxy.settings import ConfigError

    with pytest.raises(ConfigError, match="models"):
        Gateway(providers=[{"name": "local", "kind": "echo"}],
                models=[{"name": "x", "targets": [{"provider": "missing"}]}])
    with pytest.raises(TypeError, match="name"):
        Gateway(providers=[{"kind": "echo"}], models=[])
