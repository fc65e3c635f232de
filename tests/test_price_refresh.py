"""Prices that stay current: the shipped table prices common models out of the box; a scheduled refresh
from OpenRouter (a fake here) and POST /admin/prices/refresh change prices without a restart or reload,
logged with what changed; explicit prices in gateway.toml always win."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, storage_table
from tests.servers import ServerThread

MSGS = [{"role": "user", "content": "hello there"}]
ADMIN = "adm-prices-1"


class OpenRouter:
    """GET /api/v1/models with prices per token as decimal strings, as OpenRouter sends them."""

    def __init__(self) -> None:
        self.prices = {"openai/gpt-4o-mini": ("0.000001", "0.000002"), "openai/gpt-4o": ("0.000009", "0.000009")}
        self.calls = 0
        self.fail = False
        self.extra: list[dict[str, Any]] = []  # listed as they are

    async def models(self, request: Request) -> JSONResponse:
        self.calls += 1
        if self.fail:
            return JSONResponse({"error": "down"}, 503)
        data = [{"id": m, "pricing": {"prompt": p, "completion": c}, "context_length": 128000}
                for m, (p, c) in self.prices.items()]
        return JSONResponse({"data": data + self.extra})


@pytest.fixture
def openrouter() -> Any:
    fake = OpenRouter()
    server = ServerThread(Starlette(routes=[Route("/api/v1/models", fake.models)])).start()
    yield fake, server.url
    server.stop()


def config(upstream: str, openrouter: str, tmp: Path, hours: float = 0.0) -> str:
    return f"""
[server]
admin_key = "{ADMIN}"

{storage_table(tmp)}prices_refresh_hours = {hours}
prices_refresh_url = "{openrouter}"

[providers.openai]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{PROVIDER_KEY}"

[[models]]
name = "mini"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[[models]]
name = "big"
targets = [{{ provider = "openai", model = "gpt-4o", input_per_mtok = 1.0, output_per_mtok = 1.0 }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


def priced(gw: Running, model: str) -> tuple[float, tuple[int, int, int]]:
    """(the cost the gateway said, (prompt, cached, completion) tokens) of one request."""
    raw = gw.client().chat.completions.with_raw_response.create(model=model, messages=MSGS)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return float(raw.headers["x-gateway-cost-usd"]), (usage.prompt_tokens, cached or 0, usage.completion_tokens)


def cost(tokens: tuple[int, int, int], input_per_mtok: float, output_per_mtok: float,
         cached_per_mtok: float | None = None) -> float:
    prompt, cached, completion = tokens
    cached_rate = input_per_mtok if cached_per_mtok is None else cached_per_mtok
    return ((prompt - cached) * input_per_mtok + cached * cached_rate + completion * output_per_mtok) / 1e6


def wait_for_price(gw: Running, model: str, rates: tuple[float, float], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        said, tokens = priced(gw, model)
        if said == pytest.approx(cost(tokens, *rates)):
            return
        assert time.monotonic() < deadline, f"{model} still costs {said}, not at {rates}"
        time.sleep(0.2)


def test_shipped_table_prices_common_models_out_of_the_box(fake_openai: Running, openrouter: Any,
                                                            make_gateway: Any, tmp_path: Path) -> None:
    _, router_url = openrouter
    gw = make_gateway(config(fake_openai.url, router_url, tmp_path))
    said, tokens = priced(gw, "mini")
    assert said == pytest.approx(cost(tokens, 0.15, 0.60, 0.075))  # gpt-4o-mini's list price, from the package
    assert tokens[1] > 0  # the fake reports cached tokens: their price is the table's too
    said, tokens = priced(gw, "big")
    assert said == pytest.approx(cost(tokens, 1.0, 1.0))  # gateway.toml's own price, not the table's 2.5 / 10


def test_a_scheduled_refresh_changes_a_price_without_a_restart(fake_openai: Running, openrouter: Any,
                                                                make_gateway: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    fake, router_url = openrouter
    caplog.set_level(logging.INFO, logger="gateway.prices")
    gw = make_gateway(config(fake_openai.url, router_url, tmp_path, hours=0.0005))  # every 1.8 s
    wait_for_price(gw, "mini", (1.0, 2.0))  # the refresh at start
    fake.prices["openai/gpt-4o-mini"] = ("0.000003", "0.000004")
    wait_for_price(gw, "mini", (3.0, 4.0))  # the next scheduled one, same process, no reload
    said, tokens = priced(gw, "big")
    assert said == pytest.approx(cost(tokens, 1.0, 1.0))  # OpenRouter lists gpt-4o: gateway.toml still wins
    changed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("price changed")]
    assert "price changed: mini -> openai/gpt-4o-mini: input_per_mtok 1.0 -> 3.0" in changed
    assert not any("big ->" in line for line in changed)
    assert fake.calls >= 2


def test_admin_refresh_applies_at_once_and_says_what_changed(fake_openai: Running, openrouter: Any,
                                                             make_gateway: Any, tmp_path: Path) -> None:
    fake, router_url = openrouter
    gw = make_gateway(config(fake_openai.url, router_url, tmp_path))
    url = gw.url + "/admin/prices/refresh"
    assert httpx.post(url, timeout=10).status_code == 401
    assert httpx.post(url, headers={"authorization": f"Bearer {GATEWAY_KEY}"}, timeout=10).status_code == 403
    assert fake.calls == 0  # no schedule without prices_refresh_hours
    r = httpx.post(url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "prices.refresh" and body["models"] == 2
    changes = {(c["alias"], c["field"]): (c["old"], c["new"]) for c in body["changed"]}
    assert changes[("mini", "input_per_mtok")] == (0.15, 1.0)
    assert changes[("mini", "output_per_mtok")] == (0.6, 2.0)
    assert changes[("mini", "cached_input_per_mtok")] == (0.075, None)  # OpenRouter states none for it
    assert not any(alias == "big" for alias, _ in changes)
    said, tokens = priced(gw, "mini")
    assert said == pytest.approx(cost(tokens, 1.0, 2.0))
    fake.fail = True
    failed = httpx.post(url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "prices_refresh_failed"
    said, tokens = priced(gw, "mini")
    assert said == pytest.approx(cost(tokens, 1.0, 2.0))  # a failed refresh keeps the running prices


class SearchingUpstream:
    """An OpenAI-compatible upstream whose answers report web searches the way OpenRouter does."""

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
                 "server_tool_use": {"web_search_requests": 3}}
        if body["model"].startswith("gpt-4o-mini-search"):
            usage.pop("server_tool_use")  # OpenAI's search models report no count: one search an answer
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "found"},
                                          "finish_reason": "stop"}], "usage": usage})


def test_web_searches_are_charged_from_the_providers_usage(openrouter: Any, make_gateway: Any,
                                                            tmp_path: Path) -> None:
    fake, router_url = openrouter
    upstream = ServerThread(Starlette(routes=[Route("/v1/chat/completions", SearchingUpstream().chat,
                                                    methods=["POST"])])).start()
    try:
        text = config(upstream.url, router_url, tmp_path) + """
[[models]]
name = "searcher"
targets = [{ provider = "openai", model = "gpt-4o", input_per_mtok = 1.0, output_per_mtok = 1.0, per_web_search = 0.5 }]

[[models]]
name = "search-preview"
targets = [{ provider = "openai", model = "gpt-4o-mini-search-preview" }]
"""
        gw = make_gateway(text)
        client = gw.client()

        def said(model: str) -> float:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS)  # type: ignore
            return float(raw.headers["x-gateway-cost-usd"])

        assert said("searcher") == pytest.approx(1100 / 1e6 + 3 * 0.5)  # gateway.toml's per_web_search
        assert said("mini") == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6)  # the table has no search price
        # the shipped table's search price for OpenAI's search models, one search per answer
        assert said("search-preview") == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6 + 0.0275)
        fake.prices = {}
        fake.extra = [{"id": "openai/gpt-4o-mini",
                       "pricing": {"prompt": "0.000001", "completion": "0.000002", "web_search": "0.004"}}]
        body = httpx.post(gw.url + "/admin/prices/refresh", headers={"authorization": f"Bearer {ADMIN}"},
                          timeout=10).json()
        assert {(c["field"], c["new"]) for c in body["changed"]} >= {("per_web_search", 0.004)}
        assert said("mini") == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6 + 3 * 0.004)  # OpenRouter's price
    finally:
        upstream.stop()
