"""Reservations against what a provider really bills: requests with tools, a response_format schema, an
image, n = 50 and no max_tokens, sent through the gateway to an upstream that reports usage the way a
provider counts it. tpm reserves at least the stated bound of the real usage, and a budget is never
overrun by more than that bound's shortfall of one request (README, "Keys, limits and budgets")."""

from __future__ import annotations

import base64
import math
import os
import time
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import ServerThread

HI = [{"role": "user", "content": "hi"}]


def tools(n: int) -> list[dict]:
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": "Look up the current weather for a city, in metric units.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"},
                                                        "days": {"type": "integer", "minimum": 1}},
                       "required": ["city"]}}} for i in range(n)]


PRICE = 1000.0  # USD per million tokens, in and out: a token costs $0.001
DEFAULT_MAX_TOKENS = 64
IMAGE_1024_HIGH = 765  # OpenAI: a 1024x1024 image in high detail, 85 + 170 x 4 tiles
IMAGE = "data:image/png;base64," + base64.b64encode(os.urandom(100_000)).decode()  # "1024x1024", 100 KB


def billed_prompt(body: dict[str, Any]) -> int:
    """What the fake provider bills for a prompt: denser than the gateway's estimate where it can be,
    text and JSON at 3 characters a token, 3 tokens per message and 3 to prime the reply, images at
    their documented cost."""
    tokens = 3
    for message in body["messages"]:
        tokens += 3
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                tokens += math.ceil(len(part["text"]) / 3)
            elif part["type"] == "image_url":
                tokens += IMAGE_1024_HIGH
    for field in ("tools", "response_format"):
        if field in body:
            tokens += math.ceil(len(orjson.dumps(body[field])) / 3)
    return tokens


def billed_completion(body: dict[str, Any]) -> int:
    """Every choice runs to its ceiling: max_tokens, else the model's own (the target's default)."""
    return (body.get("max_tokens") or DEFAULT_MAX_TOKENS) * (body.get("n") or 1)


def provider() -> Starlette:
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        n = body.get("n") or 1
        prompt, completion = billed_prompt(body), billed_completion(body)
        return Response(orjson.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}
                        for i in range(n)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}),
            media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


SCHEMA = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
    "type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(300)}}}}
KINDS: dict[str, dict[str, Any]] = {
    "tools": {"messages": HI, "tools": tools(100), "max_tokens": 16},
    "response_format": {"messages": HI, "response_format": SCHEMA, "max_tokens": 16},
    "image": {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                                         {"type": "image_url", "image_url": {"url": IMAGE}}]}],
              "max_tokens": 16},
    "n": {"messages": HI, "n": 50, "max_tokens": 16},
    "no_max_tokens": {"messages": HI},
}


def bound(reserved: float, body: dict[str, Any]) -> float:
    """The README's bound: real usage within 4/3 of the reservation (text and JSON at 3 characters a
    token rather than 4) plus the chat format's tokens, 4 per message and 3 for the reply."""
    return reserved * 4 / 3 + 4 * len(body["messages"]) + 3


@pytest.fixture(scope="module")
def upstream():
    server = ServerThread(provider()).start()
    yield server
    server.stop()


def _config(upstream_url: str, tmp_path, budgets: dict[str, float]) -> str:
    keys = "".join(f'[[keys]]\nname = "tpm-{kind}"\nkey = "sk-tpm-{kind}"\ntpm = 10000000\n\n'
                   f'[[keys]]\nname = "usd-{kind}"\nkey = "sk-usd-{kind}"\nbudget_usd = {budget!r}\n'
                   f'budget_period = "total"\n\n' for kind, budget in budgets.items())
    target = (f'{{ provider = "billing", model = "b", input_per_mtok = {PRICE}, output_per_mtok = {PRICE}, '
              f'default_max_tokens = {DEFAULT_MAX_TOKENS} }}')
    return f"""
[storage]
database_url = "sqlite:///{tmp_path / 'gw.db'}"
spill_dir = "{tmp_path / 'spill'}"

[providers.billing]
kind = "openai"
base_url = "{upstream_url}/v1"

[[models]]
name = "m"
targets = [{target}]

{keys}
"""


def _chat(url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                      json={"model": "m", **body}, timeout=10)


def test_each_kind_of_request_reserves_within_the_bound_of_what_it_is_billed(make_gateway, upstream, tmp_path):
    real = {kind: billed_prompt(body) + billed_completion(body) for kind, body in KINDS.items()}
    budgets = {kind: 3.5 * tokens * PRICE / 1e6 for kind, tokens in real.items()}
    gw = make_gateway(_config(upstream.url, tmp_path, budgets))
    for kind, body in KINDS.items():
        # tpm: the first request on a fresh bucket shows its reservation in x-ratelimit-remaining-tokens
        first = _chat(gw.url, f"sk-tpm-{kind}", body)
        assert first.status_code == 200, (kind, first.text)
        reserved = 10_000_000 - int(first.headers["x-ratelimit-remaining-tokens"])
        used = first.json()["usage"]["total_tokens"]
        assert used == real[kind]
        assert used <= bound(reserved, body), (kind, reserved, used)

        # budget: requests one after another until refused; what was spent passes the budget by at most
        # the bound's shortfall of the last request admitted
        spent, admitted = 0.0, 0
        for _ in range(20):
            answer = _chat(gw.url, f"sk-usd-{kind}", body)
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "insufficient_quota"
                break
            assert answer.status_code == 200, (kind, answer.text)
            spent += answer.json()["usage"]["total_tokens"] * PRICE / 1e6
            admitted += 1
            time.sleep(0.05)  # settled to the real cost before the next one
        assert admitted >= 1, kind
        shortfall = max(0.0, bound(reserved, body) - reserved) * PRICE / 1e6
        assert spent <= budgets[kind] + shortfall + 1e-9, (kind, admitted, spent, budgets[kind])
