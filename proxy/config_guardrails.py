"""The [[guardrails]] tables (proxy.guardrails) and the names that attach them, checked at start.

Guardrails attach in three places, applied in this order (each name once, first place wins):
``[server] guardrails`` (every request), an alias's ``guardrails`` and a key's ``guardrails``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from proxy.config_reader import Loader, Section
from proxy.settings import GUARDRAIL_KINDS, PII_ENTITIES, ConfigError, GuardrailConfig, KeyConfig, ModelAlias

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ENTITY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def parse_guardrails(cfg: Loader, items: list[Any], models: dict[str, ModelAlias]) -> dict[str, GuardrailConfig]:
    out: dict[str, GuardrailConfig] = {}
    for i, body in enumerate(items):
        s = Section(cfg, f"guardrails[{i}]", body)
        g = _parse_one(s, models)
        if g.name in out:
            raise ConfigError(cfg.file, s.key("name"), f"duplicate guardrail {g.name!r}")
        out[g.name] = g
        s.done()
    return out


def _choice(s: Section, name: str, choices: tuple[str, ...], default: str) -> str:
    value = s.get(name, str, default)
    if value not in choices:
        raise ConfigError(s.cfg.file, s.key(name), "must be one of " + ", ".join(repr(c) for c in choices))
    return value


def _parse_one(s: Section, models: dict[str, ModelAlias]) -> GuardrailConfig:
    file = s.cfg.file
    name = s.get("name", str, required=True)
    if not _NAME.fullmatch(name):
        raise ConfigError(file, s.key("name"), "must be 1-64 letters, digits or -_.")
    s.get("kind", str, required=True)
    kind = _choice(s, "kind", GUARDRAIL_KINDS, "")
    transforms = kind in ("pii", "regex")  # only these find spans they can replace
    g = GuardrailConfig(
        name=name, kind=kind,
        on=_choice(s, "on", ("input", "output", "both"), "input"),
        action=_choice(s, "action", ("redact", "block", "flag") if transforms else ("block", "flag"),
                       "redact" if transforms else "block"),
        restore=s.get("restore", bool, False),
        threshold=s.number("threshold", 0.5, minimum=0.0) or 0.0,
        timeout_s=s.number("timeout_s", 5.0, minimum=0.001) or 5.0,
        on_error=_choice(s, "on_error", ("allow", "block"), "allow"),
    )
    if kind != "pii" and "entities" in s.table:
        raise ConfigError(file, s.key("entities"), "only kind = \"pii\" takes entities")
    if kind == "pii":
        entities = s.string_list("entities", list(PII_ENTITIES))
        for j, entity in enumerate(entities):
            if entity not in PII_ENTITIES:
                raise ConfigError(file, f"{s.key('entities')}[{j}]", f"unknown entity {entity!r}; expected any of "
                                  + ", ".join(PII_ENTITIES))
        if not entities:
            raise ConfigError(file, s.key("entities"), "must name at least one entity")
        g.entities = tuple(entities)
    if kind == "regex":
        g.patterns = s.string_map("patterns")
        if not g.patterns:
            raise ConfigError(file, s.key("patterns"), 'kind = "regex" needs patterns = { type = "regex", ... }')
        for entity, pattern in g.patterns.items():
            if not _ENTITY.fullmatch(entity):
                raise ConfigError(file, f"{s.key('patterns')}.{entity}", "the name must be a letter then letters, "
                                  "digits or _ (it names the placeholder)")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(file, f"{s.key('patterns')}.{entity}", f"invalid regular expression: {e}") from None
    if g.restore and not (transforms and g.action == "redact" and g.on_input):
        raise ConfigError(file, s.key("restore"), 'restore needs action = "redact" on input')
    if kind == "injection" and g.threshold > 1:
        raise ConfigError(file, s.key("threshold"), "is a score between 0 and 1")
    if kind == "python":
        g.function = s.get("function", str, required=True)
        _check_function(file, s.key("function"), g.function)
    if kind == "webhook":
        g.url = s.get("url", str, required=True)
        if not g.url.startswith(("http://", "https://")):
            raise ConfigError(file, s.key("url"), "must start with http:// or https://")
        g.secret = s.get("secret", str, "")
    if kind == "llm":
        g.model = s.get("model", str, required=True)
        alias = models.get(g.model)
        if alias is None or alias.is_glob:
            raise ConfigError(file, s.key("model"), f"{g.model!r} is not an alias defined in [[models]]")
        if alias.guardrails:
            raise ConfigError(file, s.key("model"), f"alias {g.model!r} has guardrails of its own; a classifier's "
                              "alias must have none")
        g.prompt = s.get("prompt", str, "")
        if g.prompt and "{text}" not in g.prompt:
            raise ConfigError(file, s.key("prompt"), "must contain {text}, where the text to classify goes")
    return g


def _check_function(file: str, key: str, spec: str) -> None:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(file, key, f"{spec!r} is not \"module:function\"")
    try:
        fn = getattr(importlib.import_module(module), attr, None)
    except Exception as e:  # an import error in the user's module: said at start, not per request
        raise ConfigError(file, key, f"cannot import {module!r}: {type(e).__name__}: {e}") from None
    if not callable(fn):
        raise ConfigError(file, key, f"{module!r} has no function {attr!r}")


def check_attached(file: str, guardrails: dict[str, GuardrailConfig], server: list[str],
                   models: dict[str, ModelAlias], keys: list[KeyConfig]) -> None:
    """Every attached name is a defined guardrail."""
    places: list[tuple[str, list[str]]] = [("server.guardrails", server)]
    places += [(f"models[{i}].guardrails", m.guardrails) for i, m in enumerate(models.values())]
    places += [(f"keys[{i}].guardrails", k.guardrails) for i, k in enumerate(keys)]
    for key, names in places:
        for j, name in enumerate(names):
            if name not in guardrails:
                raise ConfigError(file, f"{key}[{j}]", f"undefined guardrail {name!r}")
