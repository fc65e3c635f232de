"""Load and validate gateway.toml into plain dataclasses.

Every error names the file, the key path and the reason, e.g.
``gateway.toml:providers.openai.api_key: environment variable OPENAI_API_KEY is not set``.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapters.redact import Redactor, provider_secrets
from proxy.auth import hash_key
from proxy.capabilities import TARGET_CAPABILITIES
from proxy.config_cache import parse_cache
from proxy.config_guardrails import check_attached, parse_guardrails
from proxy.config_providers import PROVIDER_KINDS, keyless_providers, parse_providers
from proxy.config_reader import Loader, Section, count
from proxy.prices import CAPABILITIES, apply_prices_file
from proxy.settings import (
    BUDGET_PERIODS,
    FALLBACK_REASONS,
    RETRYABLE_STATUSES,
    STRATEGIES,
    Config,
    ConfigError,
    FilesConfig,
    KeyConfig,
    LimitsConfig,
    ModelAlias,
    ObservabilityConfig,
    ProviderConfig,
    ServerConfig,
    StorageConfig,
    Target,
)

__all__ = [  # the settings are re-exported for callers of load_config
    "PROVIDER_KINDS", "keyless_providers", "load_config", "parse_config",
    "BUDGET_PERIODS", "FALLBACK_REASONS", "RETRYABLE_STATUSES", "STRATEGIES", "Config", "ConfigError",
    "KeyConfig", "LimitsConfig", "ModelAlias", "ObservabilityConfig", "ProviderConfig", "ServerConfig",
    "StorageConfig", "Target",
]

def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    file = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "-", "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "-", f"invalid TOML: {e}") from None
    return parse_config(raw, file, dict(os.environ) if env is None else env)


def parse_config(raw: dict[str, Any], file: str, env: dict[str, str]) -> Config:
    cfg = Loader(file, env)
    root = Section(cfg, "", raw)

    s = Section(cfg, "server", root.get("server", dict, {}))
    server = ServerConfig(
        host=s.get("host", str, "127.0.0.1"),
        port=int(s.number("port", 8080, minimum=0)),
        max_body_mb=s.number("max_body_mb", 32.0, minimum=0.001),
        require_auth=s.get("require_auth", bool, True),
        admin_key=s.get("admin_key", str, ""),
        fuzzy_models=s.get("fuzzy_models", bool, False),
        metrics_port=count(s, "metrics_port", 0, minimum=0),
        metrics_require_admin=s.get("metrics_require_admin", bool, False),
        idle_timeout_s=s.number("idle_timeout_s", 5.0, minimum=0.001),
        header_timeout_s=s.number("header_timeout_s", 10.0, minimum=0.001),
        body_timeout_s=s.number("body_timeout_s", 30.0, minimum=0.001),
        max_connections=count(s, "max_connections", 10_000, minimum=1),
        cors_origins=_origins(s),
        guardrails=s.string_list("guardrails", []),
        ui=s.get("ui", bool, True),
    )
    if server.port > 65535:
        raise ConfigError(file, "server.port", "must be <= 65535")
    if server.metrics_port > 65535:
        raise ConfigError(file, "server.metrics_port", "must be <= 65535")
    if server.metrics_port and server.metrics_port == server.port:
        raise ConfigError(file, "server.metrics_port", "must differ from server.port (0 = serve on the main port)")
    if server.metrics_require_admin and not server.admin_key:
        raise ConfigError(file, "server.metrics_require_admin", "needs server.admin_key to be set")
    s.done()

    s = Section(cfg, "storage", root.get("storage", dict, {}))
    storage = StorageConfig(
        database_url=s.get("database_url", str, "sqlite:///gateway.db"),
        redis_url=s.get("redis_url", str, ""),
        redis_ca_file=s.get("redis_ca_file", str, ""),
        redis_client_cert=s.get("redis_client_cert", str, ""),
        redis_client_key=s.get("redis_client_key", str, ""),
        retention_days=count(s, "retention_days", 0, minimum=0),
        spill_dir=s.get("spill_dir", str, "usage-spill"),
        prices_file=s.get("prices_file", str, ""),
        prices_refresh_hours=s.number("prices_refresh_hours", 0.0, minimum=0.0),
        prices_refresh_url=s.get("prices_refresh_url", str, "https://openrouter.ai"),
        queue_max_rows=count(s, "queue_max_rows", 10_000, minimum=1),
        flush_interval_ms=count(s, "flush_interval_ms", 200, minimum=1),
        durability=s.get("durability", str, "batch"),
    )
    if storage.durability not in ("batch", "strict"):
        raise ConfigError(file, "storage.durability", "must be 'batch' or 'strict'")
    if not storage.spill_dir:
        raise ConfigError(file, "storage.spill_dir", "must not be empty")
    if storage.prices_file:
        storage.prices_file = str(Path(file).parent / storage.prices_file)  # absolute paths stay as they are
    if not storage.prices_refresh_url.startswith(("http://", "https://")):
        raise ConfigError(file, "storage.prices_refresh_url", "must start with http:// or https://")
    if not storage.database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ConfigError(file, "storage.database_url", "must start with sqlite:// or postgresql://")
    _check_stores(file, storage)
    s.done()

    s = Section(cfg, "observability", root.get("observability", dict, {}))
    observability = ObservabilityConfig(
        access_log=s.get("access_log", bool, True),
        log_bodies=s.get("log_bodies", bool, False),
        capture_content=s.get("capture_content", bool, False),
    )
    s.done()

    providers = parse_providers(cfg, root.get("providers", dict, {}))
    models = _parse_models(cfg, root.get("models", list, []), providers)
    apply_prices_file(file, storage.prices_file, providers, models)  # and the shipped table
    keys = _parse_keys(cfg, root.get("keys", list, []))
    s = Section(cfg, "limits", root.get("limits", dict, {}))
    limits = LimitsConfig(rpm=_opt_count(s, "rpm"), tpm=_opt_count(s, "tpm"),
                          on_store_error=s.get("on_store_error", str, "local"),
                          expected_replicas=count(s, "expected_replicas", 1, 1),
                          per_user_rpm=_opt_count(s, "per_user_rpm"), per_user_tpm=_opt_count(s, "per_user_tpm"))
    if limits.on_store_error not in ("local", "allow", "deny"):
        raise ConfigError(file, "limits.on_store_error", "must be 'local', 'allow' or 'deny'")
    s.done()
    files = _parse_files(cfg, root.get("files", dict, {}), models, providers)
    cache = parse_cache(Section(cfg, "cache", root.get("cache", dict, {})), storage, models)
    guardrails = parse_guardrails(cfg, root.get("guardrails", list, []), models)
    check_attached(file, guardrails, server.guardrails, models, keys)
    root.done()

    used = {t.provider for alias in models.values() for t in alias.targets}
    for name, err in cfg.deferred.items():
        if name in used:
            raise err
        del providers[name]  # unusable and unused: leave it out
    if server.require_auth and not keys and not server.admin_key:  # admin_key alone: keys come from /admin/keys
        raise ConfigError(file, "keys", "require_auth is true but no [[keys]] are defined and server.admin_key "
                          "is not set (set one to create keys through the admin API)")
    redactor = Redactor(_secrets(server, storage, providers) + [g.secret for g in guardrails.values()])
    for provider in providers.values():
        provider.redactor = redactor  # every provider's errors hide every secret of the config
    return Config(path=file, server=server, storage=storage, providers=providers, models=models, keys=keys,
                  limits=limits, observability=observability, redactor=redactor, files=files,
                  cache=cache, guardrails=guardrails)


FILES_KINDS = ("openai", "azure")  # provider kinds that serve /v1/files and /v1/batches


def _parse_files(cfg: Loader, table: Any, models: dict[str, ModelAlias],
                 providers: dict[str, ProviderConfig]) -> FilesConfig:
    s = Section(cfg, "files", table)
    files = FilesConfig(model=s.get("model", str, ""))
    s.done()
    if files.model:
        alias = models.get(files.model)
        if alias is None or alias.is_glob:
            raise ConfigError(cfg.file, "files.model", f"{files.model!r} is not an alias defined in [[models]]")
        if not any(t.provider in providers and providers[t.provider].kind in FILES_KINDS for t in alias.targets):
            raise ConfigError(cfg.file, "files.model", f"alias {files.model!r} has no target of kind "
                              + " or ".join(FILES_KINDS))
    return files


PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # libpq's, as asyncpg reads them


def _check_stores(file: str, storage: StorageConfig) -> None:
    """What the limits store and the ledger will be given, checked at start: URLs and the files they name."""
    if storage.redis_url:
        from proxy.redis_client import check_url

        try:
            check_url(storage.redis_url)
        except ValueError as exc:
            password = urlsplit(storage.redis_url).password if "@" in storage.redis_url else None
            reason = str(exc).replace(password, "***") if password else str(exc)
            raise ConfigError(file, "storage.redis_url", reason) from None
    base = Path(file).parent
    for name in ("redis_ca_file", "redis_client_cert", "redis_client_key"):
        value = getattr(storage, name)
        if not value:
            continue
        if not storage.redis_url.startswith("rediss://"):
            raise ConfigError(file, f"storage.{name}", "applies only to a rediss:// redis_url (Redis over TLS)")
        path = base / value  # relative to the config file's directory; absolute paths stay as they are
        if not path.is_file():
            raise ConfigError(file, f"storage.{name}", f"no such file: {path}")
        setattr(storage, name, str(path))
    if storage.redis_client_key and not storage.redis_client_cert:
        raise ConfigError(file, "storage.redis_client_key", "needs storage.redis_client_cert")
    query = parse_qs(urlsplit(storage.database_url).query) if storage.database_url.startswith("postgres") else {}
    sslmode = query.get("sslmode", ["prefer"])[0]
    if sslmode not in PG_SSLMODES:
        raise ConfigError(file, "storage.database_url", f"sslmode={sslmode!r} must be one of {', '.join(PG_SSLMODES)}")
    for param in ("sslrootcert", "sslcert", "sslkey"):
        for value in query.get(param, []):
            if not Path(value).is_file():
                raise ConfigError(file, "storage.database_url", f"{param}: no such file: {value}")


def _secrets(server: ServerConfig, storage: StorageConfig, providers: dict[str, ProviderConfig]) -> list[str]:
    """What no error may show: provider credentials, the admin key and the storage passwords."""
    secrets = [server.admin_key]
    for provider in providers.values():
        secrets += provider_secrets(provider.api_key, provider.headers)
        if provider.proxy:  # the proxy's password, were a message to quote its URL
            secrets.append(urlsplit(provider.proxy if "://" in provider.proxy else "http://" + provider.proxy).password
                           or "")
    for url in (storage.database_url, storage.redis_url):
        try:
            secrets.append(urlsplit(url).password or "")
        except ValueError:  # a malformed URL fails later, where it is used
            pass
    return secrets


def _parse_models(cfg: Loader, items: list[Any], providers: dict[str, ProviderConfig]) -> dict[str, ModelAlias]:
    models: dict[str, ModelAlias] = {}
    for i, body in enumerate(items):
        m = Section(cfg, f"models[{i}]", body)
        name = m.get("name", str, required=True)
        if not name:
            raise ConfigError(cfg.file, m.key("name"), "must not be empty")
        if name in models:
            raise ConfigError(cfg.file, m.key("name"), f"duplicate alias {name!r}")
        raw_targets = m.get("targets", list, required=True)
        if not raw_targets:
            raise ConfigError(cfg.file, m.key("targets"), "needs at least one target")
        is_glob = any(c in name for c in "*?[")
        targets = [
            _parse_target(cfg, Section(cfg, f"models[{i}].targets[{j}]", tbody), providers, "" if is_glob else name)
            for j, tbody in enumerate(raw_targets)
        ]
        strategy = m.get("strategy", str, "priority")
        if strategy not in STRATEGIES:
            raise ConfigError(cfg.file, m.key("strategy"), f"unknown strategy {strategy!r}; expected one of "
                              + ", ".join(STRATEGIES))
        fallback_on = m.string_list("fallback_on", list(FALLBACK_REASONS))
        for reason in fallback_on:
            if reason not in FALLBACK_REASONS:
                raise ConfigError(cfg.file, m.key("fallback_on"), f"unknown reason {reason!r}; expected any of "
                                  + ", ".join(FALLBACK_REASONS))
        hedge = m.number("hedge_after_ms", None)
        capabilities = m.get("capabilities", list, None)
        if capabilities is not None:
            for item in capabilities:
                if item not in CAPABILITIES:
                    raise ConfigError(cfg.file, m.key("capabilities"), f"unknown capability {item!r}; expected any "
                                      "of " + ", ".join(CAPABILITIES))
        models[name] = ModelAlias(
            name=name,
            targets=targets,
            strategy=strategy,
            fallback_on=tuple(fallback_on),
            max_cost_per_request=m.number("max_cost_per_request", None),
            hedge_after_ms=hedge,
            keepalive_s=m.number("keepalive_s", 15.0, minimum=0.01),
            retry_after_cap_s=m.number("retry_after_cap_s", 5.0),
            rpm=_opt_count(m, "rpm"),
            tpm=_opt_count(m, "tpm"),
            capabilities=None if capabilities is None else tuple(capabilities),
            cache=m.get("cache", bool, True),
            cache_ttl_s=m.number("cache_ttl_s", None, minimum=0.001),
            guardrails=m.string_list("guardrails", []),
        )
        m.done()
    return models


def _parse_target(cfg: Loader, t: Section, providers: dict[str, ProviderConfig], default_model: str) -> Target:
    provider = t.get("provider", str, required=True)
    if provider not in providers and provider not in cfg.deferred:
        raise ConfigError(cfg.file, t.key("provider"), f"undefined provider {provider!r}")
    p = providers.get(provider)
    timeout = p.timeout_s if p else 120.0
    retry_on = t.get("retry_on", list, None)
    if retry_on is not None:
        allowed = ("connection", "timeout") + RETRYABLE_STATUSES
        for item in retry_on:
            if item not in allowed or isinstance(item, bool):
                raise ConfigError(cfg.file, t.key("retry_on"), f"{item!r} is not retryable; expected any of "
                                  + ", ".join(map(str, allowed)))
    target = Target(
        provider=provider,
        model=t.get("model", str, default_model),
        input_per_mtok=t.number("input_per_mtok", None),
        output_per_mtok=t.number("output_per_mtok", None),
        cached_input_per_mtok=t.number("cached_input_per_mtok", None),
        per_request=t.number("per_request", None),
        per_image=t.number("per_image", None),
        per_second=t.number("per_second", None),
        per_character=t.number("per_character", None),
        per_web_search=t.number("per_web_search", None),
        default_max_tokens=int(t.number("default_max_tokens", 4096, minimum=1)),
        drop_unsupported=t.get("drop_unsupported", bool, False),
        weight=t.number("weight", 1.0),
        max_retries=int(t.number("max_retries", 1)),
        context_window=_opt_int(t.number("context_window", None, minimum=1)),
        connect_timeout_s=t.number("connect_timeout_s", p.connect_timeout_s if p else 10.0, minimum=0.001),
        first_byte_timeout_s=t.number("first_byte_timeout_s", timeout, minimum=0.001),
        head_timeout_s=t.number("first_byte_timeout_s", None, minimum=0.001),
        timeout_s=t.number("timeout_s", timeout, minimum=0.001),
        stream_idle_timeout_s=t.number("stream_idle_timeout_s", timeout, minimum=0.001),
        failure_threshold=int(t.number("failure_threshold", 5, minimum=1)),
        cooldown_s=t.number("cooldown_s", 30.0),
        failure_rate=t.number("failure_rate", None, minimum=0.001),
        failure_window_s=t.number("failure_window_s", 60.0, minimum=0.001),
        failure_min_requests=int(t.number("failure_min_requests", 10, minimum=1)),
    )
    if target.failure_rate is not None and target.failure_rate > 1:
        raise ConfigError(cfg.file, t.key("failure_rate"), "must be a share of attempts, at most 1")
    if retry_on is not None:
        target.retry_on = tuple(retry_on)
    capabilities = t.get("capabilities", list, None)
    if capabilities is not None:
        unknown = [c for c in capabilities if c not in TARGET_CAPABILITIES]
        if unknown:
            raise ConfigError(cfg.file, t.key("capabilities"), f"unknown capability {unknown[0]!r}; expected any of "
                              + ", ".join(TARGET_CAPABILITIES))
        target.capabilities = tuple(capabilities)
    t.done()
    return target


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\*")


def _origins(s: Section) -> list[str]:
    """[server] cors_origins: "*" or origins as a browser sends them (scheme://host[:port], no path)."""
    origins = s.string_list("cors_origins", [])
    for i, origin in enumerate(origins):
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(s.cfg.file, f"{s.key('cors_origins')}[{i}]", f"{origin!r} is not an origin: expected "
                              '"*" or scheme://host[:port] without a path, e.g. "https://app.example.com"')
    return origins


def _opt_count(s: Section, name: str) -> int | None:
    value = s.get(name, int, None)
    if value is not None and value < 1:
        raise ConfigError(s.cfg.file, s.key(name), "must be >= 1")
    return value


def _opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _parse_keys(cfg: Loader, items: list[Any]) -> list[KeyConfig]:

    keys: list[KeyConfig] = []
    names: set[str] = set()
    for i, body in enumerate(items):
        k = Section(cfg, f"keys[{i}]", body)
        name = k.get("name", str, required=True)
        if name in names:
            raise ConfigError(cfg.file, k.key("name"), f"duplicate key name {name!r}")
        names.add(name)
        secret = k.get("key", str, "")
        digest = k.get("key_sha256", str, "")
        if bool(secret) == bool(digest):
            raise ConfigError(cfg.file, k.key("key"), "set exactly one of key or key_sha256")
        if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(cfg.file, k.key("key_sha256"), "must be 64 lowercase hex characters")
        budget = k.number("budget_usd", None)
        period = k.get("budget_period", str, "month")
        if period not in BUDGET_PERIODS:
            raise ConfigError(cfg.file, k.key("budget_period"), "must be one of " + ", ".join(BUDGET_PERIODS))
        expires = k.get("expires_at", (str, datetime), None)
        keys.append(
            KeyConfig(name=name, key_hash=digest or hash_key(secret), models=k.string_list("models", ["*"]),
                      rpm=_opt_count(k, "rpm"), tpm=_opt_count(k, "tpm"), max_parallel=_opt_count(k, "max_parallel"),
                      budget_usd=budget, budget_period=period,
                      expires_at=None if expires is None else _utc(cfg, k.key("expires_at"), expires),
                      metadata=k.get("metadata", dict, {}), user_rpm=_opt_count(k, "user_rpm"),
                      user_tpm=_opt_count(k, "user_tpm"), user_budget_usd=k.number("user_budget_usd", None),
                      guardrails=k.string_list("guardrails", []))
        )
        k.done()
    return keys


def _utc(cfg: Loader, key: str, value: str | datetime) -> datetime:
    """A TOML datetime or an ISO-8601 string; naive times are taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(cfg.file, key, f"{value!r} is not an ISO-8601 date-time") from None
    if not isinstance(value, datetime):
        raise ConfigError(cfg.file, key, "expected a date-time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
