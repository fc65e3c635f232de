"""``strategy = "capability"``: among an alias's targets, those that can serve the request (vision,
tools, JSON schema output, reasoning, a context window that fits), then the cheapest of them; targets
declare capabilities in gateway.toml or take them from the price table's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, Running, storage_table

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}


def config(tmp: Path) -> str:
    prices = tmp / "prices.json"
    prices.write_text(json.dumps({"models": {"table-eyes": {
        "input_per_mtok": 0.5, "output_per_mtok": 0.5, "context_window": 50000, "capabilities": ["vision"]}}}))
    return f"""
{storage_table(tmp)}prices_file = "{prices}"

[providers.local]
kind = "echo"

[[models]]
name = "smart"
strategy = "capability"

[[models.targets]]
provider = "local"
model = "thinker"
input_per_mtok = 5.0
output_per_mtok = 5.0
context_window = 200000
capabilities = ["vision", "tools", "json_schema", "reasoning"]

[[models.targets]]
provider = "local"
model = "eyes"
input_per_mtok = 1.0
output_per_mtok = 1.0
context_window = 100000
capabilities = ["vision", "tools"]

[[models.targets]]
provider = "local"
model = "plain"
input_per_mtok = 0.1
output_per_mtok = 0.1
context_window = 8000

[[models]]
name = "from-table"
strategy = "capability"
targets = [
  {{ provider = "local", model = "plain", input_per_mtok = 0.1, output_per_mtok = 0.1 }},
  {{ provider = "local", model = "table-eyes" }},
]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


def served_by(gw: Running, model: str, content: Any = "hi", **extra: Any) -> str:
    raw = gw.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **extra)  # type: ignore[arg-type]
    return raw.headers["x-gateway-upstream-model"]


def test_each_capability_picks_the_cheapest_target_that_has_it(make_gateway: Any, tmp_path: Path) -> None:
    gw: Running = make_gateway(config(tmp_path))
    assert served_by(gw, "smart") == "plain"  # nothing special: the cheapest (4,096 default max_tokens fit)
    assert served_by(gw, "smart", [{"type": "text", "text": "what is it?"}, IMAGE]) == "eyes"  # vision
    assert served_by(gw, "smart", tools=[TOOL]) == "eyes"  # tools
    assert served_by(gw, "smart", response_format=SCHEMA) == "thinker"  # JSON schema output
    assert served_by(gw, "smart", reasoning_effort="low") == "thinker"  # reasoning
    # context: 10,000 tokens of completion do not fit plain's 8,000-token window
    assert served_by(gw, "smart", max_tokens=10_000) == "eyes"
    assert served_by(gw, "smart", max_tokens=150_000) == "thinker"
    # several needs at once: only a target with all of them
    assert served_by(gw, "smart", [IMAGE], tools=[TOOL], reasoning_effort="high") == "thinker"


def test_capabilities_from_the_price_tables_metadata(make_gateway: Any, tmp_path: Path) -> None:
    gw: Running = make_gateway(config(tmp_path))
    assert served_by(gw, "from-table") == "plain"
    assert served_by(gw, "from-table", [IMAGE]) == "table-eyes"  # the prices file says it has vision
    with pytest.raises(openai.BadRequestError) as no_tools:
        served_by(gw, "from-table", tools=[TOOL])
    assert no_tools.value.code == "no_capable_target" and no_tools.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as too_long:  # over table-eyes' 50,000 (plain says no window)
        served_by(gw, "from-table", [IMAGE], max_tokens=60_000)
    assert too_long.value.code == "no_capable_target" and "vision" in too_long.value.message


def test_no_target_can_serve_it_is_a_400_naming_the_parameter(make_gateway: Any, tmp_path: Path) -> None:
    gw: Running = make_gateway(config(tmp_path))
    with pytest.raises(openai.BadRequestError) as huge:
        served_by(gw, "smart", max_tokens=500_000)
    assert huge.value.code == "no_capable_target" and huge.value.param == "max_tokens"


def test_unknown_capability_is_a_config_error(tmp_path: Path) -> None:
    import tomllib

    from proxy.config import parse_config
    from proxy.settings import ConfigError

    text = config(tmp_path).replace('"json_schema", "reasoning"', '"json_schema", "telepathy"')
    with pytest.raises(ConfigError, match=r"models\[0\]\.targets\[0\]\.capabilities: unknown capability 'telepathy'"):
        parse_config(tomllib.loads(text), "gw.toml", {})
