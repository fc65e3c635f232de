"""The request pipeline called in-process, with no HTTP server: stages in order, hooks and cache
interfaces, and one usage row per request however it ends."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

import orjson
import pytest

from adapters.base import Reply, Usage
from proxy.config import parse_config
from proxy.errors import GatewayError
from proxy.pipeline import ClientWatch, Pipeline, StreamAnswer, Transaction, WholeAnswer
from proxy.records import UsageRecord
from proxy.runtime import Runtime

SECRET = "sk-pipeline-test"
CONFIG = f"""
[server]
require_auth = true

[providers.local]
kind = "echo"

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1", input_per_mtok = 1.0, output_per_mtok = 2.0 }}]

[[keys]]
name = "team"
key = "{SECRET}"
rpm = 2
"""


class Rows:
    """A usage sink that keeps what it is given."""

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    def submit(self, record: UsageRecord) -> None:
        self.rows.append(record)


class Inbound:
    """A request from a program, not from HTTP."""

    api_headers = cache_control = session_id = end_user = None

    def __init__(self, body: dict[str, Any] | bytes, key: str = SECRET, endpoint: str = "chat") -> None:
        self.endpoint = endpoint
        self.authorization = f"Bearer {key}"
        self.client_request_id: str | None = None
        self.watch = ClientWatch()
        self.body = body

    async def json(self, limit: int) -> dict[str, Any]:
        if isinstance(self.body, bytes):
            raise GatewayError(400, "Request body is not valid JSON", code="invalid_json")
        return self.body


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


def runtime() -> tuple[Runtime, Rows]:
    rows = Rows()
    config = parse_config(tomllib.loads(CONFIG), "test.toml", {})
    return Runtime(config, sink=rows), rows


def answer_json(answer: WholeAnswer) -> dict[str, Any]:
    answer.after()  # what the HTTP edge runs once the answer is sent
    return orjson.loads(answer.body)


def test_a_chat_request_runs_in_process_and_leaves_one_row():
    rt, sink = runtime()
    answer = asyncio.run(rt.pipeline.handle(Inbound(chat("hello there"))))
    assert isinstance(answer, WholeAnswer) and answer.status == 200
    body = answer_json(answer)
    assert body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert answer.headers["x-gateway-provider"] == "local" and answer.headers["x-ratelimit-limit-requests"] == "2"
    [row] = sink.rows
    assert (row.key_name, row.model, row.provider, row.upstream_model, row.status) == ("team", "echo", "local",
                                                                                       "echo-1", 200)
    assert row.prompt_tokens == body["usage"]["prompt_tokens"] and row.completion_tokens == 4
    assert row.cost_usd == pytest.approx((row.prompt_tokens * 1.0 + 4 * 2.0) / 1e6)
    assert not row.cache_hit and rt.active == 0


def test_failures_at_each_stage_answer_in_openai_shape_and_are_accounted():
    rt, sink = runtime()

    async def run(inbound: Inbound) -> WholeAnswer:
        answer = await rt.pipeline.handle(inbound)
        assert isinstance(answer, WholeAnswer)
        answer.after()
        return answer

    async def scenario() -> list[WholeAnswer]:
        return [await run(Inbound(chat("x"), key="sk-wrong")),  # authenticate: no row
                await run(Inbound(b"not json")),  # read
                await run(Inbound({"model": "echo", "messages": "nope"})),  # parse
                await run(Inbound(chat("x") | {"model": "missing"})),  # resolve
                await run(Inbound(chat("one"))), await run(Inbound(chat("two"))),
                await run(Inbound(chat("three")))]  # limits: rpm 2

    answers = asyncio.run(scenario())
    assert [a.status for a in answers] == [401, 400, 400, 404, 200, 200, 429]
    assert orjson.loads(answers[2].body)["error"]["param"] == "messages"
    assert [(r.status, r.error_type, r.model) for r in sink.rows] == [
        (400, "invalid_json", ""), (400, "invalid_type", "echo"), (404, "model_not_found", "missing"),
        (200, None, "echo"), (200, None, "echo"), (429, "rate_limit_exceeded", "echo")]
    assert rt.active == 0


def test_hooks_run_in_order_and_can_change_or_refuse_the_request():
    rt, sink = runtime()
    seen: list[str] = []

    class Upper:
        async def before_request(self, tx: Transaction) -> None:
            assert tx.alias is not None and tx.ticket is None  # resolved, not yet admitted
            seen.append("before")
            if tx.request.body["messages"][0]["content"] == "forbidden":
                raise GatewayError(400, "refused by a hook", code="hook_refused")
            tx.request.body["messages"][0]["content"] = tx.request.body["messages"][0]["content"].upper()

        async def after_response(self, tx: Transaction) -> None:
            seen.append("after")

    pipeline = Pipeline(rt, hooks=Upper())

    async def scenario() -> tuple[dict, WholeAnswer, list[bytes]]:
        first = await pipeline.handle(Inbound(chat("quiet")))
        assert isinstance(first, WholeAnswer)
        first_body = answer_json(first)
        refused = await pipeline.handle(Inbound(chat("forbidden")))
        assert isinstance(refused, WholeAnswer)
        refused.after()
        streamed = await pipeline.handle(Inbound(chat("stream me", stream=True)))
        assert isinstance(streamed, StreamAnswer)
        chunks = [c async for c in streamed.chunks(None)]
        await streamed.finish(False)
        return first_body, refused, chunks

    first, refused, chunks = asyncio.run(scenario())
    assert first["choices"][0]["message"]["content"] == "Echo: QUIET"
    assert refused.status == 400 and orjson.loads(refused.body)["error"]["code"] == "hook_refused"
    assert b"STREAM" in b"".join(chunks)
    assert seen == ["before", "after", "before", "before", "after"]
    assert [(r.status, r.stream) for r in sink.rows] == [(200, False), (400, False), (200, True)]


def test_a_cache_hit_skips_the_upstream_and_is_accounted_as_a_hit():
    rt, sink = runtime()
    stored: list[bytes] = []

    class OneAnswer:
        async def lookup(self, tx: Transaction) -> Reply | None:
            if not stored:
                return None
            return Reply(stored[0], Usage(prompt_tokens=3, completion_tokens=5))

        async def store(self, tx: Transaction) -> None:
            if tx.outcome is not None and tx.outcome.reply is not None:
                stored.append(tx.outcome.reply.body)

    pipeline = Pipeline(rt, cache=OneAnswer())

    async def scenario() -> list[WholeAnswer]:
        return [await pipeline.handle(Inbound(chat("remember me"))) for _ in range(2)]

    first, second = asyncio.run(scenario())
    first_body = answer_json(first)
    assert answer_json(second) == first_body
    assert "x-gateway-provider" not in second.headers  # no upstream was asked
    miss, hit = sink.rows
    assert (miss.cache_hit, miss.provider, miss.cost_usd is not None) == (False, "local", True)
    assert (hit.cache_hit, hit.provider, hit.prompt_tokens, hit.completion_tokens, hit.cost_usd) == (
        True, None, 3, 5, 0.0)
