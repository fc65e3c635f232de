"""Embeddings cached per input item: a batch that repeats some inputs sends only the new ones upstream,
and its answer lists every input in the original order."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from adapters.base import Reply, Usage
from proxy.cache.key import item_key, params_key
from proxy.cost import cost_usd

if TYPE_CHECKING:
    from proxy.cache.store import CacheStore
    from proxy.client_request import ClientRequest
    from proxy.dispatch import Outcome


def items_of(body: dict[str, Any], model: str, alias: str, scope: str) -> Items | None:
    """The batch's items, or None for an input this cache keys as a whole request."""
    given = body.get("input")
    if isinstance(given, str) or (isinstance(given, list) and given and all(isinstance(t, int) for t in given)):
        inputs, single = [given], True
    elif isinstance(given, list) and given and all(isinstance(x, str | list) for x in given):
        inputs, single = list(given), False
    else:
        return None
    return Items(inputs, single, params_key("embeddings", model, body, scope, frozenset({"input"})), model, alias)


class Items:
    __slots__ = ("inputs", "single", "alias", "keys", "found", "missing", "model")

    def __init__(self, inputs: list[Any], single: bool, params: str, model: str, alias: str) -> None:
        self.inputs = inputs
        self.single = single
        self.alias = alias
        self.keys = [item_key(params, x) for x in inputs]
        self.found: list[dict[str, Any] | None] = [None] * len(inputs)  # {"e": embedding, "t": tokens, "c": cost}
        self.missing = list(range(len(inputs)))
        self.model = model  # what the answer names: the alias, or the name a glob alias forwarded

    async def fetch(self, store: CacheStore) -> None:
        for i, data in enumerate(await store.get_many(self.keys)):
            if data is None:
                continue
            try:
                item = orjson.loads(data)
                if isinstance(item, dict) and "e" in item:
                    self.found[i] = item
            except orjson.JSONDecodeError:
                continue  # a corrupt item is a miss: it is sent upstream and stored again
        self.missing = [i for i, item in enumerate(self.found) if item is None]

    def complete(self) -> bool:
        return not self.missing

    def saved_usd(self) -> float | None:
        costs = [item.get("c") for item in self.found if item is not None]
        return None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]

    def reply(self) -> Reply:
        tokens = sum(int(item.get("t") or 0) for item in self.found if item is not None)
        body = {"object": "list", "model": self.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": item["e"]}
                         for i, item in enumerate(self.found) if item is not None]}
        return Reply(orjson.dumps(body), Usage(prompt_tokens=tokens))

    def narrow(self, request: ClientRequest) -> None:
        """Only the inputs not cached go upstream (a copy of the body: the client's stays as sent)."""
        if len(self.missing) < len(self.inputs):
            request.body = {**request.body, "input": [self.inputs[i] for i in self.missing]}

    async def merge(self, outcome: Outcome, store: CacheStore | None, ttl_s: float, max_entry: int) -> None:
        """Keep each new item; answer with every item in the original order."""
        reply = outcome.reply
        assert reply is not None
        answer = orjson.loads(reply.body)
        data = sorted(answer.get("data") or (), key=lambda d: d.get("index", 0))
        if len(data) != len(self.missing):
            return  # not one embedding per input sent: neither stored nor merged
        usage = reply.usage
        cost = cost_usd(outcome.call.target, usage) if usage is not None else None
        share = len(data) or 1
        tokens = usage.prompt_tokens / share if usage is not None else 0
        now = time.time()
        kept = []
        for i, d in zip(self.missing, data, strict=True):
            item = {"e": d.get("embedding"), "t": tokens, "c": None if cost is None else cost / share, "at": now}
            self.found[i] = item
            encoded = orjson.dumps(item)
            if len(encoded) <= max_entry:
                kept.append((self.keys[i], encoded))
        if len(self.missing) < len(self.inputs):  # some came from the cache: the client gets the whole batch
            answer["data"] = [{"object": "embedding", "index": i, "embedding": item["e"]}
                              for i, item in enumerate(self.found) if item is not None]
            reply.body = orjson.dumps(answer)
        self.missing = []
        if store is not None and kept:
            await store.set_many(kept, self.alias, ttl_s)
