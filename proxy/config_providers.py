"""The [providers.NAME] tables: kind, base URL, credentials, timeouts and connection settings (proxy,
TLS files), each checked at start so a bad one fails with file, key and reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proxy.config_reader import Loader, Section
from proxy.http1_connect import env_proxy, no_password, parse_proxy, tls_context
from proxy.settings import Config, ConfigError, ProviderConfig

PROVIDER_KINDS = ("openai", "echo", "anthropic", "gemini", "azure")

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "echo": "http://echo.local/v1",
}


def parse_providers(cfg: Loader, table: dict[str, Any]) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    for name, body in table.items():
        cfg.current_provider = name
        p = Section(cfg, f"providers.{name}", body)
        kind = p.get("kind", str, required=True)
        if kind not in PROVIDER_KINDS:
            expected = ", ".join(PROVIDER_KINDS)
            raise ConfigError(cfg.file, p.key("kind"), f"unknown kind {kind!r}; expected one of {expected}")
        base_url = p.get("base_url", str, DEFAULT_BASE_URLS.get(kind, ""))
        if kind == "azure" and not base_url:
            raise ConfigError(cfg.file, p.key("base_url"), "is required for kind 'azure'")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(cfg.file, p.key("base_url"), "must start with http:// or https://")
        timeout = p.number("timeout_s", 120.0, minimum=0.001)
        api_key, headers = p.get("api_key", str, ""), p.string_map("headers")
        anthropic_beta = p.get("anthropic_beta", str, "")
        # These go into request headers: a CR or LF (say from an env file's line end) would split them.
        for key, value in [("api_key", api_key), ("anthropic_beta", anthropic_beta),
                           *((f"headers.{h}", v) for h, v in headers.items()), *((f"headers.{h}", h) for h in headers)]:
            if any(c in value for c in "\r\n\0"):
                raise ConfigError(cfg.file, p.key(key), "must not contain a line break or NUL character")
        providers[name] = ProviderConfig(
            name=name,
            kind=kind,
            base_url=base_url.rstrip("/"),
            api_key=api_key,
            timeout_s=timeout,
            connect_timeout_s=p.number("connect_timeout_s", min(10.0, timeout), minimum=0.001),
            headers=headers,
            api_version=p.get("api_version", str, ""),
            anthropic_beta=anthropic_beta,
            max_response_mb=p.number("max_response_mb", 64.0, minimum=0.001),
            **_connection_keys(cfg, p, base_url),
        )
        p.done()
    cfg.current_provider = None
    return providers


def _connection_keys(cfg: Loader, p: Section, base_url: str) -> dict[str, Any]:
    """proxy, ca_file, client_cert, client_key, verify_tls: checked here, so a bad one fails at start."""
    proxy = p.get("proxy", str, None)
    key = p.key("proxy")
    if proxy is None:  # not set: the environment's, as curl does it
        proxy, variable = env_proxy(base_url, cfg.env)
        key = f"{key} (from {variable} in the environment)"
    if proxy:
        try:
            parse_proxy(proxy)
        except ValueError as e:
            raise ConfigError(cfg.file, key, str(e)) from None
    files = {name: p.get(name, str, "") for name in ("ca_file", "client_cert", "client_key")}
    for name, path in files.items():
        if path:  # relative to the config file, as prices_file is
            path = files[name] = str(Path(cfg.file).parent / path)
            if not os.access(path, os.R_OK):
                reason = "no such file" if not os.path.exists(path) else "not readable"
                raise ConfigError(cfg.file, p.key(name), f"{reason}: {path}")
    verify = p.get("verify_tls", bool, True)
    if files["client_key"] and not files["client_cert"]:
        raise ConfigError(cfg.file, p.key("client_key"), "needs client_cert")
    if files["ca_file"] and not verify:
        raise ConfigError(cfg.file, p.key("ca_file"), "has no use with verify_tls = false")
    try:
        context = tls_context(files["ca_file"])
    except OSError as e:  # ssl.SSLError included
        raise ConfigError(cfg.file, p.key("ca_file"), f"not a usable PEM CA bundle: {e}") from None
    if files["client_cert"]:
        try:
            context.load_cert_chain(files["client_cert"], files["client_key"] or None, password=no_password)
        except OSError as e:
            raise ConfigError(cfg.file, p.key("client_cert"), "certificate and key do not load (PEM, matching, "
                              f"key not encrypted): {e}") from None
    return {"proxy": proxy, "verify_tls": verify, **files}


def keyless_providers(config: Config) -> list[str]:
    """Providers of a kind that needs a key (anthropic, gemini, azure, openai at api.openai.com) configured
    with neither ``api_key`` nor a credential header: each upstream call will be refused (a 502)."""
    out = []
    for name, p in config.providers.items():
        needs_key = p.kind in ("anthropic", "gemini", "azure") or (
            p.kind == "openai" and "api.openai.com" in p.base_url)
        credential_header = any(w in h.lower() for h in p.headers for w in ("auth", "key", "token"))
        if needs_key and not p.api_key and not credential_header:
            out.append(name)
    return out
