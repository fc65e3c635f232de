"""A stored answer's bytes: one JSON header line (when, tokens, cost) and then the answer's body as sent."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from adapters.base import Usage


class CorruptEntry(Exception):
    """Bytes in the store that this gateway cannot read: the request bypasses the cache."""


@dataclass(slots=True)
class Entry:
    body: bytes  # the whole chat.completion (or embeddings list) JSON
    usage: Usage | None
    cost_usd: float | None  # what the original answer cost: what a hit saves
    stored_at: float  # epoch seconds

    def age(self) -> int:
        return max(0, int(time.time() - self.stored_at))


def pack(body: bytes, usage: Usage | None, cost_usd: float | None) -> bytes:
    tokens = None if usage is None else [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                         usage.reasoning_tokens, usage.estimated]
    return orjson.dumps({"at": time.time(), "cost": cost_usd, "usage": tokens}) + b"\n" + body


def unpack(data: bytes) -> Entry:
    head, sep, body = data.partition(b"\n")
    try:
        meta = orjson.loads(head)
        tokens = meta["usage"]
        usage = None if tokens is None else Usage(int(tokens[0]), int(tokens[1]), int(tokens[2]), int(tokens[3]),
                                                  bool(tokens[4]))
        cost = meta["cost"]
        entry = Entry(body, usage, None if cost is None else float(cost), float(meta["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        raise CorruptEntry("unreadable cache entry header") from None
    if not sep or not body.startswith(b"{"):
        raise CorruptEntry("cache entry without a JSON body")
    return entry
