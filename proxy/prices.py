"""Model prices from a local file, and `gateway prices refresh` to fill that file from OpenRouter.

The file (JSON, USD per million tokens)::

    {"source": "openrouter", "fetched_at": "2026-01-01T00:00:00Z",
     "models": {"openai/gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6,
                                       "cached_input_per_mtok": 0.075,
                                       "context_window": 128000, "capabilities": ["tools", "vision"]}}}

``context_window`` and ``capabilities`` (any of CAPABILITIES) are optional metadata: GET /v1/models
shows them for an alias whose first target's model is in the file (proxy.models_api); they never
change routing or prices.

A target with neither ``input_per_mtok`` nor ``output_per_mtok`` in gateway.toml takes its prices
from the first table that has its upstream model id, looked up first exactly, then as ``<vendor>/<model>``
(vendor from the provider kind: openai, anthropic, google), which is how OpenRouter names them. The
tables, in order: the latest scheduled or on-demand refresh (proxy.price_refresh), the prices file,
and the table shipped in the package (proxy/data/prices.json: OpenAI, Anthropic, Google, Mistral,
DeepSeek and Groq list prices). Explicit prices in gateway.toml always win. A model found nowhere
stays unpriced: cost_usd null.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from proxy.settings import Config, ConfigError, ModelAlias, ProviderConfig, Target

log = logging.getLogger("gateway")

OPENROUTER_URL = "https://openrouter.ai"
PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "per_request", "per_image",
                "per_second", "per_character", "per_web_search")
MEDIA_FIELDS = ("per_image", "per_second", "per_character")  # pass-through endpoints' unit prices
META_FIELDS = ("context_window", "capabilities")
CAPABILITIES = ("streaming", "tools", "vision", "reasoning", "embeddings")
VENDORS = {"openai": "openai", "azure": "openai", "anthropic": "anthropic", "gemini": "google"}
DEFAULT_PRICES = Path(__file__).parent / "data" / "prices.json"  # package data: the wheel carries it


# --- reading and applying ------------------------------------------------------------------------------------------


def load_prices(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Model id -> price (and metadata) fields. Raises ValueError for a file that is not in the format above."""
    data = orjson.loads(Path(path).read_bytes())
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError('expected a JSON object with a "models" object')
    out: dict[str, dict[str, Any]] = {}
    for model_id, prices in models.items():
        if not isinstance(prices, dict):
            raise ValueError(f"models.{model_id}: expected an object")
        entry: dict[str, Any] = {}
        for name, value in prices.items():
            if name in META_FIELDS:
                entry[name] = _metadata(f"models.{model_id}.{name}", name, value)
                continue
            if name not in PRICE_FIELDS:
                raise ValueError(f"models.{model_id}.{name}: unknown field")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"models.{model_id}.{name}: expected a number >= 0")
            entry[name] = float(value)
        tokens = "input_per_mtok" in entry and "output_per_mtok" in entry
        if not tokens and not any(name in entry for name in MEDIA_FIELDS):  # a media model may have only those
            raise ValueError(f"models.{model_id}: input_per_mtok and output_per_mtok are required "
                             f"(or one of {', '.join(MEDIA_FIELDS)})")
        out[model_id] = entry
    return out


def _metadata(where: str, name: str, value: Any) -> int | list[str]:
    if name == "context_window":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: expected an integer >= 1")
        return value
    if not isinstance(value, list) or any(v not in CAPABILITIES for v in value):
        raise ValueError(f"{where}: expected an array of {', '.join(CAPABILITIES)}")
    return list(value)


def default_prices() -> dict[str, dict[str, Any]]:
    """The price table shipped in the package (proxy/data/prices.json): list prices of common models."""
    return load_prices(DEFAULT_PRICES)


def apply_prices_file(file: str, path: str, providers: dict[str, ProviderConfig],
                      models: dict[str, ModelAlias]) -> None:
    """Fill unpriced targets from the prices file (``path``, "" for none), then from the shipped table. A
    missing file is not an error (it is what `gateway prices refresh` creates)."""
    tables = []
    if path:
        try:
            tables.append(load_prices(path))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:  # orjson.JSONDecodeError is a ValueError
            raise ConfigError(file, "storage.prices_file", f"{path}: {e}") from None
    apply_tables(models, providers, [*tables, default_prices()])


@dataclass(slots=True)
class PriceChange:
    alias: str
    provider: str
    model: str
    field: str
    old: float | None
    new: float | None

    def __str__(self) -> str:
        return f"{self.alias} -> {self.provider}/{self.model}: {self.field} {self.old} -> {self.new}"


def apply_tables(models: dict[str, ModelAlias], providers: dict[str, ProviderConfig],
                 tables: list[dict[str, dict[str, Any]]]) -> list[PriceChange]:
    """Price every target gateway.toml leaves unpriced from the first table that has its model, in place
    (requests read the targets as they go: no restart or reload). Explicit prices always win: each target
    starts again from what gateway.toml said. Returns what changed."""
    changes: list[PriceChange] = []
    for alias in models.values():
        if not alias.configured_prices:  # the first time: what gateway.toml itself says, kept for later tables
            alias.configured_prices = [{n: getattr(t, n) for n in PRICE_FIELDS} for t in alias.targets]
        found = [_first(tables, t, providers.get(t.provider)) for t in alias.targets]
        alias.target_metadata = [{k: e[k] for k in META_FIELDS if k in e} if e else {} for e in found]
        alias.file_metadata = alias.target_metadata[0]
        for target, configured, entry in zip(alias.targets, alias.configured_prices, found, strict=True):
            priced = configured["input_per_mtok"] is not None or configured["output_per_mtok"] is not None
            for name in PRICE_FIELDS:
                new = configured[name]
                if new is None and not priced and entry is not None:  # a unit price in gateway.toml wins
                    new = entry.get(name)
                old = getattr(target, name)
                if new != old:
                    setattr(target, name, new)
                    changes.append(PriceChange(alias.name, target.provider, target.model, name, old, new))
    return changes


def _first(tables: list[dict[str, dict[str, Any]]], target: Target,
           provider: ProviderConfig | None) -> dict[str, Any] | None:
    return next((e for e in (lookup(t, target, provider) for t in tables) if e is not None), None)


def lookup(prices: dict[str, dict[str, Any]], target: Target,
           provider: ProviderConfig | None) -> dict[str, Any] | None:
    if not target.model:
        return None  # a glob alias forwards the client's model name: nothing fixed to look up
    if target.model in prices:
        return prices[target.model]
    vendor = VENDORS.get(provider.kind) if provider is not None else None
    if vendor is not None:
        return prices.get(f"{vendor}/{target.model}")
    return None


def unpriced_targets(config: Config) -> list[str]:
    """'alias -> provider/model' for every target without a price (the local echo provider aside)."""
    out = []
    for alias in config.models.values():
        for t in alias.targets:
            provider = config.providers.get(t.provider)
            if provider is None or provider.kind == "echo":
                continue
            media = any(getattr(t, name) is not None for name in MEDIA_FIELDS)
            if (t.input_per_mtok is None or t.output_per_mtok is None) and not media:
                out.append(f"{alias.name} -> {t.provider}/{t.model or '<requested model>'}")
    return out


def warn_unpriced(config: Config) -> list[str]:
    missing = unpriced_targets(config)
    for name in missing:
        where = f" and not in {config.storage.prices_file}" if config.storage.prices_file else ""
        log.warning("no price for %s (no input_per_mtok/output_per_mtok%s): its cost_usd will be null",
                    name, where)
    return missing


# --- refreshing from OpenRouter ------------------------------------------------------------------------------------


def _usd(value: Any) -> Decimal | None:
    """OpenRouter prices are USD as decimal strings; "-1" marks a price it cannot state."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        return None
    return usd if usd.is_finite() and usd >= 0 else None


def _per_mtok(value: Any) -> float | None:
    per_token = _usd(value)
    return None if per_token is None else float(per_token * 1_000_000)  # Decimal: "0.00000015" -> exactly 0.15


def parse_openrouter(data: Any) -> dict[str, dict[str, Any]]:
    """OpenRouter's GET /api/v1/models body -> prices per model id (models without a usable price left out)."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError('expected a JSON object with a "data" array')
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        pricing = item.get("pricing")
        if not isinstance(pricing, dict):
            continue
        prompt, completion = _per_mtok(pricing.get("prompt")), _per_mtok(pricing.get("completion"))
        if prompt is None or completion is None:
            continue
        entry: dict[str, Any] = {"input_per_mtok": prompt, "output_per_mtok": completion}
        cached = _per_mtok(pricing.get("input_cache_read"))
        if cached is not None:
            entry["cached_input_per_mtok"] = cached
        per_request = _usd(pricing.get("request"))
        if per_request:
            entry["per_request"] = float(per_request)
        per_search = _usd(pricing.get("web_search"))
        if per_search:
            entry["per_web_search"] = float(per_search)
        entry.update(openrouter_metadata(item))
        out[item["id"]] = entry
    return out


def openrouter_metadata(item: dict[str, Any]) -> dict[str, Any]:
    """context_length, and capabilities from supported_parameters and architecture.input_modalities (where
    OpenRouter states them: a model it lists is a chat model, so one with either also streams)."""
    out: dict[str, Any] = {}
    window = item.get("context_length")
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        out["context_window"] = window
    params = item.get("supported_parameters")
    arch = item.get("architecture")
    modalities = arch.get("input_modalities") if isinstance(arch, dict) else None
    if isinstance(params, list) or isinstance(modalities, list):
        params = params if isinstance(params, list) else []
        caps = ["streaming"]
        if "tools" in params:
            caps.append("tools")
        if isinstance(modalities, list) and "image" in modalities:
            caps.append("vision")
        if "reasoning" in params or "include_reasoning" in params:
            caps.append("reasoning")
        out["capabilities"] = caps
    return out


def fetch_openrouter(base_url: str = OPENROUTER_URL, timeout: float = 30.0) -> dict[str, dict[str, float]]:
    import httpx

    url = base_url.rstrip("/") + "/api/v1/models"
    resp = httpx.get(url, timeout=timeout, headers={"accept": "application/json"}, follow_redirects=True)
    if resp.status_code != 200:
        raise ValueError(f"GET {url} answered {resp.status_code}: {resp.text[:200]}")
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"GET {url} did not answer JSON: {e}") from None
    return parse_openrouter(data)


def write_prices(path: str | os.PathLike[str], prices: dict[str, dict[str, Any]], source: str) -> None:
    """Atomically: a gateway starting meanwhile reads the old file or the new one, never half of one."""
    target = Path(path)
    body = {"source": source, "fetched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "models": dict(sorted(prices.items()))}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
