"""Partial model names (``fuzzy_models``, proxy/model_names.py): ranked against the aliases and a glob
alias's upstream model list (fetched once and cached), said in ``x-gateway-model-resolved`` and on the
usage row; an ambiguous name is a 404 naming the candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.model_names import MIN_SCORE, rank, score
from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, ledger_rows, storage_table
from tests.servers import ServerThread

MSGS = [{"role": "user", "content": "hi"}]
UPSTREAM_MODELS = ["anthropic/claude-3.5-sonnet", "anthropic/claude-3-opus", "anthropic/claude-3-7-sonnet",
                   "anthropic/claude-3-5-sonnet-20240620", "openai/gpt-4o", "meta/llama-3.1-70b"]


def test_the_ranking_rules() -> None:
    aliases = ["anthropic/claude-3.5-sonnet", "gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    assert rank("claude-3.5", aliases) == ["anthropic/claude-3.5-sonnet"]  # the seed's example
    assert rank("claude-3-5", aliases) == ["anthropic/claude-3.5-sonnet"]  # 3-5 is the version 3.5
    assert rank("gpt-tset", ["gpt-test", "echo"]) == ["gpt-test"]  # a misspelling
    assert rank("something-else", ["gpt-test", "echo", "unreachable"]) == []  # under the minimum score
    assert score("something-else", "gpt-test") < MIN_SCORE <= score("gpt-tset", "gpt-test")
    # one family: the newest version wins; two families at the top: ambiguous
    sonnets = ["claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022", "claude-3-7-sonnet", "claude-3-haiku"]
    assert rank("sonnet", sonnets) == ["claude-3-7-sonnet"]
    assert rank("claude-3.5-sonnet", sonnets) == ["claude-3-5-sonnet-20241022"]
    assert sorted(rank("claude-3.5", ["claude-3.5-sonnet", "claude-3.5-haiku"])) == ["claude-3.5-haiku",
                                                                                     "claude-3.5-sonnet"]
    assert sorted(rank("gpt-4", ["gpt-4o", "gpt-4.1", "gpt-4o-mini"])) == ["gpt-4.1", "gpt-4o", "gpt-4o-mini"]


class Upstream:
    """An OpenAI-compatible upstream with a model list; counts how often the list is fetched."""

    def __init__(self) -> None:
        self.list_calls = 0
        self.authorization: list[str | None] = []

    async def models(self, request: Request) -> JSONResponse:
        self.list_calls += 1
        self.authorization.append(request.headers.get("authorization"))
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in UPSTREAM_MODELS]})

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": body["model"]},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/models", self.models), Route("/v1/chat/completions", self.chat,
                                                                         methods=["POST"])])


@pytest.fixture
def upstream() -> Any:
    fake = Upstream()
    server = ServerThread(fake.app()).start()
    yield fake, server.url
    server.stop()


def config(url: str, tmp: Path, fuzzy: bool = True) -> str:
    return f"""
[server]
fuzzy_models = {str(fuzzy).lower()}

{storage_table(tmp)}
[providers.router]
kind = "openai"
base_url = "{url}/v1"
api_key = "{PROVIDER_KEY}"

[[models]]
name = "gpt-4o-mini"
targets = [{{ provider = "router", model = "openai/gpt-4o-mini" }}]

[[models]]
name = "anthropic/*"
targets = [{{ provider = "router" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"

[[keys]]
name = "minis"
key = "sk-minis-only"
models = ["gpt-4o-mini"]
"""


def test_partial_names_resolve_through_a_glob_aliases_upstream_list(upstream: Any, make_gateway: Any,
                                                                       tmp_path: Path) -> None:
    fake, url = upstream
    gw: Running = make_gateway(config(url, tmp_path))
    client = gw.client()
    # claude-3.5-sonnet and claude-3-5-sonnet-20240620 are one family: the dated one is its newest version
    raw = client.chat.completions.with_raw_response.create(model="claude-3.5", messages=MSGS)  # type: ignore[arg-type]
    assert raw.headers["x-gateway-model-resolved"] == "anthropic/claude-3-5-sonnet-20240620"
    assert raw.parse().choices[0].message.content == "anthropic/claude-3-5-sonnet-20240620"  # forwarded so
    # the newest of a family: claude-3-7-sonnet over the 3.5 ones
    raw = client.chat.completions.with_raw_response.create(model="sonnet", messages=MSGS)  # type: ignore[arg-type]
    assert raw.headers["x-gateway-model-resolved"] == "anthropic/claude-3-7-sonnet"
    # aliases are candidates too; a name an alias (or glob) matches is never ranked
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mnii", messages=MSGS)  # type: ignore[arg-type]
    assert raw.headers["x-gateway-model-resolved"] == "gpt-4o-mini"
    raw = client.chat.completions.with_raw_response.create(model="anthropic/claude-3-opus",
                                                           messages=MSGS)  # type: ignore[arg-type]
    assert "x-gateway-model-resolved" not in raw.headers
    # openai/gpt-4o is in the upstream list but no glob alias forwards openai/*: not a candidate
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="openai/gpt-4o", messages=MSGS)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unsure:
        client.chat.completions.create(model="claude-3", messages=MSGS)  # type: ignore[arg-type]
    assert unsure.value.code == "model_ambiguous" and unsure.value.param == "model"
    assert "`anthropic/claude-3-opus`" in unsure.value.message and "sonnet" in unsure.value.message
    assert fake.list_calls == 1  # fetched once, then cached
    assert fake.authorization == [f"Bearer {PROVIDER_KEY}"]
    rows = ledger_rows(tmp_path / "gw.db", "SELECT model, status FROM usage_log ORDER BY created_at", (), 6)
    assert rows[:3] == [("anthropic/claude-3-5-sonnet-20240620", 200), ("anthropic/claude-3-7-sonnet", 200),
                        ("gpt-4o-mini", 200)]  # the row records what the name resolved to
    assert ("claude-3", 404) in rows


def test_candidates_are_only_the_keys_models_and_only_when_enabled(upstream: Any, make_gateway: Any,
                                                                   tmp_path: Path) -> None:
    fake, url = upstream
    gw: Running = make_gateway(config(url, tmp_path))
    minis = gw.client("sk-minis-only")
    with pytest.raises(openai.NotFoundError) as hidden:  # the key may not use anthropic/*: nothing to rank
        minis.chat.completions.create(model="claude-3", messages=MSGS)  # type: ignore[arg-type]
    assert hidden.value.code == "model_not_found" and "claude-3-opus" not in hidden.value.message
    assert minis.chat.completions.create(model="gpt-4o-mni", messages=MSGS).model == "gpt-4o-mini"  # type: ignore
    (tmp_path / "off").mkdir()
    strict: Running = make_gateway(config(url, tmp_path / "off", fuzzy=False))
    with pytest.raises(openai.NotFoundError):
        strict.client().chat.completions.create(model="claude-3.5", messages=MSGS)  # type: ignore[arg-type]
