"""Semantic mode: a miss is answered by the stored answer of the most similar earlier prompt.

The prompt's text is embedded through the gateway's own embeddings path (so the call has its usage
row, counts against the key's rpm, and is itself cached per input), with ``[cache] embedding_model``.
Candidates are the prompts stored for the same bucket: alias, scope and every parameter but the
messages. The search is brute force over the bucket's newest ``CANDIDATES`` vectors (cosine
similarity of unit vectors, in pure Python): an index kept
per replica for the memory backend, at most ``semantic_max_entries`` vectors in all (4 bytes a
dimension), and a Redis list per bucket (trimmed to ``CANDIDATES``, expiring with the TTL) for the
Redis backend, so every replica searches the same candidates.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from adapters.base import Reply
from proxy.cache.entry import unpack
from proxy.cache.key import params_key
from proxy.echo import message_text
from proxy.pipeline.transaction import ClientWatch, WholeAnswer

if TYPE_CHECKING:
    from proxy.cache.response import Plan, ResponseCache
    from proxy.pipeline.transaction import Transaction

CANDIDATES = 128  # vectors compared per lookup: about 60-100 µs each at 1,536 dimensions
KEY_CHARS = 64  # a sha256 in hex, before each packed vector in Redis


class EmbedRequest:
    """An in-process embeddings request on the same key as the chat request it serves (an ``Inbound``)."""

    endpoint = "embeddings"
    client_request_id = None
    api_headers = session_id = end_user = None

    def __init__(self, authorization: str | None, body: dict[str, Any]) -> None:
        self.authorization = authorization
        self.body = body
        self.watch = ClientWatch()
        self.cache_control = None

    async def json(self, limit: int) -> dict[str, Any]:
        return self.body


def prompt_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    return "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in messages if isinstance(m, dict))


def unit(vector: Any) -> array | None:
    if not isinstance(vector, list) or not vector or not all(isinstance(v, int | float) for v in vector):
        return None
    norm = math.sqrt(sum(v * v for v in vector))
    return array("f", [v / norm for v in vector]) if norm else None


def similarity(a: array, b: array) -> float:
    return sum(map(operator.mul, a, b)) if len(a) == len(b) else -1.0


class SemanticIndex:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.vectors: OrderedDict[tuple[str, str], array] = OrderedDict()  # (bucket, key), oldest first
        self.buckets: dict[str, OrderedDict[str, array]] = {}

    async def lookup(self, tx: Transaction, plan: Plan, cache: ResponseCache) -> Reply | None:
        """The most similar stored prompt's answer if it is similar enough; else None (plan keeps the vector)."""
        assert tx.request is not None
        body = tx.request.body
        plan.bucket = params_key("chat", tx.request.model, body, plan.scope, frozenset({"messages"}))
        plan.vector = await self.embed(tx, cache, prompt_text(body.get("messages")))
        if plan.vector is None:
            return None
        best, best_key = -1.0, None
        for key, vector in await self.candidates(plan.bucket, cache):
            score = similarity(plan.vector, vector)
            if score > best:
                best, best_key = score, key
        if best_key is None or best < cache.config.similarity_threshold:
            return None
        data = await cache.store_.get(best_key)
        if data is None:
            return None
        tx.headers["x-gateway-cache-similarity"] = f"{best:.4f}"
        return cache._hit(tx, plan, unpack(data), "hit-semantic")

    async def embed(self, tx: Transaction, cache: ResponseCache, text: str) -> array | None:
        model = cache.config.embedding_model
        answer = await cache.runtime.pipeline.handle(EmbedRequest(tx.authorization, {"model": model, "input": text}))
        assert isinstance(answer, WholeAnswer)
        answer.after()  # its usage row
        if answer.status != 200:
            return None
        try:
            return unit(orjson.loads(answer.body)["data"][0]["embedding"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return None

    async def candidates(self, bucket: str, cache: ResponseCache) -> list[tuple[str, array]]:
        if cache.store_.remote:
            raw = await cache.store_.vectors(bucket, CANDIDATES)  # type: ignore[attr-defined]
            out = []
            for item in raw:
                vector = array("f")
                vector.frombytes(item[KEY_CHARS:])
                out.append((item[:KEY_CHARS].decode(), vector))
            return out
        entries = self.buckets.get(bucket)
        if not entries:
            return []
        return list(entries.items())[-CANDIDATES:]

    async def add(self, tx: Transaction, plan: Plan, cache: ResponseCache) -> None:
        if plan.vector is None or plan.bucket is None:
            return
        if cache.store_.remote:
            await cache.store_.add_vector(plan.bucket, plan.key.encode() + plan.vector.tobytes(),  # type: ignore
                                          CANDIDATES, plan.ttl_s)
            return
        entries = self.buckets.setdefault(plan.bucket, OrderedDict())
        entries[plan.key] = plan.vector
        self.vectors[(plan.bucket, plan.key)] = plan.vector
        while len(self.vectors) > self.max_entries:
            (bucket, key), _ = self.vectors.popitem(last=False)
            kept = self.buckets.get(bucket)
            if kept is not None:
                kept.pop(key, None)
                if not kept:
                    del self.buckets[bucket]

    def clear(self) -> None:
        self.vectors.clear()
        self.buckets.clear()
