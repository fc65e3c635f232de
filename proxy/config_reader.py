"""Reading gateway.toml's tables: ${VAR} interpolation, typed getters that name the key path in every
error, and the loader state a parse carries (file, environment, the provider being read)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from proxy.settings import ConfigError

# --- interpolation -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVar(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise MissingVar(name)

    return _VAR.sub(sub, value)


# --- field checking ------------------------------------------------------------------------------


class Section:
    """Reads typed fields out of one TOML table and rejects keys nobody reads."""

    def __init__(self, cfg: Loader, path: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(cfg.file, path, f"expected a table, got {type_name(table)}")
        self.cfg = cfg
        self.path = path
        self.table = table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if required:
                raise ConfigError(self.cfg.file, self.key(name), "is required")
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.cfg.file, self.key(name), f"expected {_kinds(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(self.cfg.file, self.key(name), f"expected {_kinds(kinds)}, got {type_name(value)}")
        if isinstance(value, str):
            value = self.cfg.interpolate(self.key(name), value)
        return value

    def number(self, name: str, default: float | None, minimum: float = 0) -> float | None:
        value = self.get(name, float, default)
        if value is not None and value < minimum:
            raise ConfigError(self.cfg.file, self.key(name), f"must be >= {minimum}")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        table = self.get(name, dict, {})
        out = {}
        for k, v in table.items():
            if not isinstance(v, str):
                raise ConfigError(self.cfg.file, f"{self.key(name)}.{k}", f"expected a string, got {type_name(v)}")
            out[k] = self.cfg.interpolate(f"{self.key(name)}.{k}", v)
        return out

    def string_list(self, name: str, default: list[str]) -> list[str]:
        value = self.get(name, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.cfg.file, f"{self.key(name)}[{i}]", "expected a string")
        return list(value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise ConfigError(self.cfg.file, self.key(unknown[0]), "unknown key")


def type_name(value: Any) -> str:
    return {
        str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "a table"
    }.get(type(value), type(value).__name__)


def _kinds(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
             dict: "a table", datetime: "a date-time"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class Loader:
    def __init__(self, file: str, env: dict[str, str]) -> None:
        self.file = file
        self.env = env
        # A provider whose secret is missing is an error only if an alias uses it.
        self.deferred: dict[str, ConfigError] = {}
        self.current_provider: str | None = None

    def interpolate(self, key: str, value: str) -> str:
        try:
            return interpolate(value, self.env)
        except MissingVar as e:
            err = ConfigError(self.file, key, f"environment variable {e.name} is not set and has no default")
            if self.current_provider is None:
                raise err from None
            self.deferred.setdefault(self.current_provider, err)
            return ""


def count(s: Section, name: str, default: int, minimum: int) -> int:
    value = s.get(name, int, default)
    if value < minimum:
        raise ConfigError(s.cfg.file, s.key(name), f"must be >= {minimum}")
    return value
