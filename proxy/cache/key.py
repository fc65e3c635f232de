"""The cache key: a SHA-256 of the request's canonical form, with what cannot change the answer left out."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Fields that change how an answer is delivered or labelled, never what it says.
IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "request_id", "store", "service_tier"})


def request_key(endpoint: str, alias: str, body: dict[str, Any], strategy: str, scope: str) -> str:
    """The entry's key for a whole chat request; ``scope`` is the key's name (or "*" when global)."""
    if strategy == "full_request":
        form: Any = {k: v for k, v in body.items() if k not in IGNORED}
        form["model"] = alias
    else:
        form = {"messages": _contents(body.get("messages"))}
        if strategy == "content+model":
            form["model"] = alias
    return digest(endpoint, scope, form)


def params_key(endpoint: str, alias: str, body: dict[str, Any], scope: str, skip: frozenset[str]) -> str:
    """What besides the content must match: the alias and every other parameter (semantic mode, embeddings)."""
    form = {k: v for k, v in body.items() if k not in IGNORED and k not in skip}
    form["model"] = alias
    return digest(endpoint, scope, form)


def item_key(params: str, item: Any) -> str:
    """One embeddings input item's key under its request's other parameters."""
    return digest("embedding", params, item)


def digest(endpoint: str, scope: str, form: Any) -> str:
    canonical = orjson.dumps([endpoint, scope, form], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _contents(messages: Any) -> list[Any]:
    """Each message's role and content: the conversation without names, ids or other metadata."""
    if not isinstance(messages, list):
        return []
    return [[m.get("role"), m.get("content"), m.get("tool_calls")] if isinstance(m, dict) else m for m in messages]


def is_deterministic(body: dict[str, Any]) -> bool:
    """temperature 0 or a seed: the answers that ``deterministic_only`` lets the cache keep."""
    temperature = body.get("temperature")
    return (isinstance(temperature, int | float) and temperature == 0) or body.get("seed") is not None
