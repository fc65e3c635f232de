"""Partial model names (``[server] fuzzy_models``): a name that is no alias, and that no glob alias
matches, is ranked against the aliases and the upstream model lists of glob aliases with rapidfuzz.

The rules (README "Partial model names"):

- names are compared as tokens, lower case, split at ``/ - _ :`` and spaces, with a version written
  ``3-5`` or ``3_5`` read as ``3.5`` (``claude-3.5`` and ``claude-3-5-sonnet`` share the token ``3.5``);
- a candidate's score (0-100) is the better of its token score (rapidfuzz ``token_set_ratio``: 100 when
  every token sent is one of the candidate's) and its prefix score (``ratio`` of the name sent against
  as many leading characters of the candidate, or of its part after the last ``/``);
- candidates under ``MIN_SCORE`` are out; of the best ones (within ``TIE`` points of the top), those
  of one family (the same tokens once version numbers and dates are removed) count once, as their
  newest version (numbers compared as numbers, left to right);
- one left: the name resolves to it; several: a 404 ``model_ambiguous`` naming them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson
from rapidfuzz import fuzz

from adapters.base import UpstreamRequest
from proxy.errors import GatewayError

log = logging.getLogger("gateway")

MIN_SCORE = 80.0  # below it a name is too far from any candidate to be meant
TIE = 1.0  # candidates this close to the best score are as good as it
LIST_TTL_S = 600.0  # an upstream's model list is fetched again after this long
LIST_RETRY_S = 60.0  # after a failed fetch, the next try waits this long (the request gets no candidates)
LIST_TIMEOUT_S = 10.0  # a list is fetched on a request's path: it may not hold it up for long
MAX_LISTED = 10  # an ambiguous name's 404 names at most this many candidates

_VERSION_JOIN = re.compile(r"(?<![\d.])(\d{1,2})[-_.](\d{1,2})(?![\d])")
_SPLIT = re.compile(r"[/\-_:\s]+")
_VERSION = re.compile(r"^v?\d+(?:\.\d+)*$")


def tokens(name: str) -> list[str]:
    return [t for t in _SPLIT.split(_VERSION_JOIN.sub(r"\1.\2", name.lower())) if t]


def score(sent: str, candidate: str) -> float:
    want = " ".join(tokens(sent))
    token = fuzz.token_set_ratio(want, " ".join(tokens(candidate)))
    prefix = max(fuzz.ratio(want, " ".join(tokens(part))[: len(want)])
                 for part in {candidate, candidate.rsplit("/", 1)[-1]})
    return max(token, prefix)


def family(name: str) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(the name's tokens without versions, its versions as numbers): a family and its newest member."""
    words, versions = [], []
    for t in tokens(name):
        if _VERSION.match(t):
            versions.append(tuple(int(n) for n in t.lstrip("v").split(".")))
        else:
            words.append(t)
    return tuple(words), tuple(versions)


def rank(sent: str, candidates: Iterable[str]) -> list[str]:
    """The names ``sent`` may mean by the rules above: one name, several (ambiguous), or none."""
    scored = [(score(sent, c), c) for c in dict.fromkeys(candidates)]
    scored = [(s, c) for s, c in scored if s >= MIN_SCORE]
    if not scored:
        return []
    best = max(s for s, _ in scored)
    newest: dict[tuple[str, ...], tuple[tuple[tuple[int, ...], ...], str]] = {}
    for s, c in sorted(scored, key=lambda sc: (-sc[0], sc[1])):
        if s < best - TIE:
            break
        words, versions = family(c)
        if words not in newest or versions > newest[words][0]:
            newest[words] = (versions, c)
    return [c for _, c in newest.values()]


def ambiguous(sent: str, names: list[str]) -> GatewayError:
    listed = ", ".join(f"`{n}`" for n in names[:MAX_LISTED]) + (", ..." if len(names) > MAX_LISTED else "")
    return GatewayError(404, f"The model `{sent}` is ambiguous: it could be {listed}. Send one of these names.",
                        code="model_ambiguous", param="model")


@dataclass(slots=True)
class _List:
    names: list[str] = field(default_factory=list)
    expires: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UpstreamModels:
    """The model lists of the providers behind glob aliases (OpenAI-compatible and Anthropic kinds: their
    ``GET /models``), fetched on first need and kept ``LIST_TTL_S``; one fetch at a time per provider."""

    KINDS = ("openai", "anthropic")

    def __init__(self) -> None:
        self.lists: dict[str, _List] = {}

    async def names(self, upstream: Any, timeout_s: float) -> list[str]:
        provider = upstream.provider
        if provider.kind not in self.KINDS:
            return []
        entry = self.lists.setdefault(provider.name, _List())
        if entry.expires > time.monotonic():
            return entry.names
        async with entry.lock:
            if entry.expires > time.monotonic():
                return entry.names  # fetched while this request waited
            try:
                entry.names = await _fetch(upstream, timeout_s)
                entry.expires = time.monotonic() + LIST_TTL_S
            except Exception as exc:  # the list is a convenience: the request goes on without it
                log.warning("model list of provider %s unavailable (%s); retried in %ds", provider.name,
                            type(exc).__name__, LIST_RETRY_S)
                entry.expires = time.monotonic() + LIST_RETRY_S
        return entry.names


async def _fetch(upstream: Any, timeout_s: float) -> list[str]:
    provider, adapter = upstream.provider, upstream.adapter
    url = f"{provider.base_url}/v1/models?limit=1000" if provider.kind == "anthropic" else f"{provider.base_url}/models"
    headers = {k: v for k, v in adapter.headers.items() if k != "content-type"}
    raw = await upstream.fetch(UpstreamRequest(url, headers, b"", method="GET"), min(5.0, timeout_s), timeout_s)
    data = orjson.loads(raw).get("data")
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(data, list) \
        else []


async def glob_candidates(runtime: Any, models: UpstreamModels) -> list[tuple[str, Any]]:
    """(upstream model id, the glob alias that forwards it) for every forwarding target of a glob alias."""
    found: list[tuple[str, Any]] = []
    for alias in runtime.globs:
        for target in alias.targets:
            if target.model:
                continue  # a glob alias's target with a model of its own forwards no name
            names = await models.names(runtime.upstreams[target.provider], min(LIST_TIMEOUT_S, target.timeout_s))
            found += [(n, alias) for n in names if fnmatchcase(n, alias.name)]
    return found
