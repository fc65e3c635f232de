"""`gateway prices refresh --from openrouter` against a fake OpenRouter, and the prices file in use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import cli
from proxy.config import ConfigError, load_config
from tests.conftest import PROVIDER_KEY
from tests.pg import ledger_config
from tests.servers import ServerThread

# The shape of OpenRouter's GET /api/v1/models: prices are USD per token, as decimal strings.
MODELS = [
    {"id": "openai/gpt-4o-mini", "name": "OpenAI: GPT-4o-mini", "context_length": 128000,
     "pricing": {"prompt": "0.00000015", "completion": "0.0000006", "request": "0", "image": "0",
                 "web_search": "0", "internal_reasoning": "0", "input_cache_read": "0.000000075"},
     "architecture": {"input_modalities": ["text", "image", "file"], "output_modalities": ["text"]},
     "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice", "response_format"]},
    {"id": "anthropic/claude-3.5-haiku", "pricing": {"prompt": "0.0000008", "completion": "0.000004",
                                                     "request": "0.005"}},
    {"id": "openai/ok", "pricing": {"prompt": "0.000002", "completion": "0.000008", "input_cache_read": "0.0000005"}},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},  # variable: no price to state
    {"id": "meta/free", "pricing": {"prompt": "0", "completion": "0"}},  # free is a price: zero
    {"id": "broken/no-pricing"},
]


class FakeOpenRouter:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.status = 200

        async def models(request: Request) -> Response:
            self.paths.append(request.url.path)
            if self.status != 200:
                return Response(b'{"error": {"message": "down", "code": 503}}', self.status)
            return Response(orjson.dumps({"data": MODELS}), media_type="application/json")

        self.server = ServerThread(Starlette(routes=[Route("/api/v1/models", models)])).start()
        self.url = self.server.url


@pytest.fixture(scope="module")
def openrouter() -> Iterator[FakeOpenRouter]:
    fake = FakeOpenRouter()
    yield fake
    fake.server.stop()


def test_refresh_writes_per_million_prices(openrouter, tmp_path, capsys):
    out = tmp_path / "prices.json"
    assert cli.main(["prices", "refresh", "--from", "openrouter", "--base-url", openrouter.url,
                     "--write", str(out)]) == 0
    assert openrouter.paths[-1] == "/api/v1/models"
    assert capsys.readouterr().out.strip() == f"wrote 4 model prices from openrouter to {out}"
    models = orjson.loads(out.read_bytes())["models"]
    assert models["openai/gpt-4o-mini"] == {"input_per_mtok": 0.15, "output_per_mtok": 0.6,
                                            "cached_input_per_mtok": 0.075, "context_window": 128000,
                                            "capabilities": ["streaming", "tools", "vision"]}
    assert models["anthropic/claude-3.5-haiku"] == {"input_per_mtok": 0.8, "output_per_mtok": 4.0,
                                                    "per_request": 0.005}
    assert models["meta/free"] == {"input_per_mtok": 0.0, "output_per_mtok": 0.0}
    assert "openrouter/auto" not in models and "broken/no-pricing" not in models


def test_refresh_failure_leaves_the_file_alone(openrouter, tmp_path, capsys):
    out = tmp_path / "prices.json"
    out.write_text('{"models": {}}')
    openrouter.status = 503
    try:
        assert cli.main(["prices", "refresh", "--from", "openrouter", "--base-url", openrouter.url,
                         "--write", str(out)]) == 1
    finally:
        openrouter.status = 200
    assert "503" in capsys.readouterr().err
    assert out.read_text() == '{"models": {}}'


def _write_config(tmp_path: Any, fake_url: str, prices_file: str = "prices.json") -> str:
    extra = """
[[models]]
name = "from-file"
targets = [{ provider = "fake", model = "ok" }]

[[models]]
name = "vendor-prefixed"
targets = [{ provider = "fake", model = "gpt-4o-mini" }]

[[models]]
name = "explicit"
targets = [{ provider = "fake", model = "gpt-4o-mini", input_per_mtok = 9.0, output_per_mtok = 9.0 }]
"""
    text = ledger_config(fake_url, f"sqlite:///{tmp_path / 'u.db'}",
                         f'prices_file = "{prices_file}"\nspill_dir = "{tmp_path / "spill"}"', extra=extra)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_targets_without_prices_take_them_from_the_file(openrouter, fake_openai, tmp_path, capsys):
    config_path = _write_config(tmp_path, fake_openai.url)
    before = load_config(config_path)  # the file does not exist yet: not an error, just no prices
    assert before.models["from-file"].targets[0].input_per_mtok is None

    # With the config's prices_file (relative to the config file), no --write is needed.
    assert cli.main(["prices", "refresh", "--from", "openrouter", "--base-url", openrouter.url,
                     "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "prices.json").exists()
    assert "still without a price:" in out and "a-ok -> fake/ok" not in out and "from-file" not in out

    config = load_config(config_path)
    t = config.models["from-file"].targets[0]  # exact id "ok" is not listed; "openai/ok" is
    assert (t.input_per_mtok, t.output_per_mtok, t.cached_input_per_mtok) == (2.0, 8.0, 0.5)
    t = config.models["vendor-prefixed"].targets[0]
    assert (t.input_per_mtok, t.output_per_mtok, t.cached_input_per_mtok) == (0.15, 0.6, 0.075)
    t = config.models["explicit"].targets[0]  # explicit prices in gateway.toml win
    assert (t.input_per_mtok, t.output_per_mtok, t.cached_input_per_mtok) == (9.0, 9.0, None)
    assert config.models["a-slow-stream"].targets[0].input_per_mtok is None  # not in the file: stays unpriced


def test_file_prices_are_charged(openrouter, fake_openai, make_gateway, tmp_path):
    config_path = _write_config(tmp_path, fake_openai.url)
    assert cli.main(["prices", "refresh", "--from", "openrouter", "--base-url", openrouter.url,
                     "--write", str(tmp_path / "prices.json")]) == 0
    text = open(config_path).read().replace('prices_file = "prices.json"',
                                            f'prices_file = "{tmp_path / "prices.json"}"')
    gw = make_gateway(text)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="from-file", messages=[{"role": "user", "content": "price me"}])
    u = raw.parse().usage
    cached = u.prompt_tokens_details.cached_tokens
    expected = ((u.prompt_tokens - cached) * 2.0 + cached * 0.5 + u.completion_tokens * 8.0) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-10)
    assert PROVIDER_KEY not in raw.http_response.text


def test_refresh_without_a_destination_is_an_error(tmp_path, capsys):
    path = tmp_path / "g.toml"
    path.write_text("[server]\nrequire_auth = false\n")
    assert cli.main(["prices", "refresh", "--from", "openrouter", "--config", str(path)]) == 2
    assert "--write FILE or set [storage] prices_file" in capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"models": {"x": {"input_per_mtok": "cheap", "output_per_mtok": 1}}}',
                                     '{"models": {"x": {"input_per_mtok": 1}}}', "not json", "[]"])
def test_a_broken_prices_file_is_a_config_error(tmp_path, content):
    (tmp_path / "prices.json").write_text(content)
    path = tmp_path / "g.toml"
    path.write_text('[server]\nrequire_auth = false\n[storage]\nprices_file = "prices.json"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "storage.prices_file"
