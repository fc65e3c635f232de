"""The response cache stage: exact-match lookups and stores for chat (whole and streamed) and embeddings.

One ``ResponseCache`` per Runtime (it reads that config); the store and the flights it shares are
app-level, so a config reload keeps every entry.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.base import Reply
from proxy.cache import embeddings
from proxy.cache.capture import StreamCapture
from proxy.cache.entry import CorruptEntry, Entry, pack, unpack
from proxy.cache.flight import Flights
from proxy.cache.key import is_deterministic, request_key
from proxy.cache.replay import replay_answer
from proxy.cache.store import CacheStore
from proxy.cost import cost_usd
from proxy.errors import bad_request
from proxy.pipeline.cache import StreamEnd
from proxy.pipeline.transaction import StreamAnswer, Transaction

if TYPE_CHECKING:
    import asyncio

    from proxy.cache.semantic import SemanticIndex
    from proxy.runtime import Runtime

log = logging.getLogger("gateway.cache")


@dataclass(slots=True)
class Plan:
    """What the cache stage decided for one request, read again when its answer is in."""

    key: str
    alias: str
    ttl_s: float
    store: bool  # keep the answer (not with no-store, nor after a store error)
    read: bool = True  # look the key up (not with Cache-Control: no-cache)
    flight: asyncio.Future[bytes | None] | None = None  # this request leads the key's single flight
    items: embeddings.Items | None = None  # embeddings: the batch's items, cached and not
    scope: str = "*"
    bucket: str | None = None  # semantic mode: alias, scope and parameters but the messages
    vector: array | None = None  # semantic mode: the prompt's unit embedding
    flights: Flights | None = None

    def abandon(self) -> None:
        """The request failed: identical ones waiting for its answer call the upstream themselves now."""
        if self.flight is not None and self.flights is not None:
            self.flights.land(self.key, self.flight, None)


class ResponseCache:
    def __init__(self, runtime: Runtime, store: CacheStore, flights: Flights,
                 semantic: SemanticIndex | None = None) -> None:
        self.runtime = runtime
        self.config = runtime.config.cache
        self.store_ = store
        self.flights = flights
        self.semantic = semantic
        self.max_entry = int(self.config.max_entry_kb * 1024)

    # lookup ------------------------------------------------------------------------------------------

    async def lookup(self, tx: Transaction) -> Reply | None:
        assert tx.alias is not None and tx.request is not None
        plan = self._plan(tx)
        if plan is None:
            return None
        tx.cache_state = plan
        if plan.items is not None:
            return await self._lookup_items(tx, plan)
        if plan.read:
            try:
                data = await self.store_.get(plan.key)
                if data is None:
                    data = await self._wait_for_leader(plan)
                if data is not None:
                    return self._hit(tx, plan, unpack(data), "hit")
                if self.semantic is not None and tx.endpoint == "chat":
                    reply = await self.semantic.lookup(tx, plan, self)
                    if reply is not None:
                        return reply
            except Exception as exc:  # an unreachable store or a corrupt entry: the upstream answers
                return self._error(tx, plan, exc)
        self._result(tx, plan, "miss")
        return None

    def _plan(self, tx: Transaction) -> Plan | None:
        """The request's key and TTL, or None when it bypasses the cache (said in x-gateway-cache)."""
        config, alias, request = self.config, tx.alias, tx.request
        assert alias is not None and request is not None
        control, ttl_header = tx.cache_control or (None, None)
        directives = {d.strip().lower() for d in control.split(",")} if control else set()
        ttl = alias.cache_ttl_s or config.ttl_s
        if ttl_header is not None:
            try:
                ttl = float(ttl_header)
            except ValueError:
                ttl = -1.0
            if not ttl > 0 or ttl != ttl or ttl == float("inf"):
                raise bad_request("x-gateway-cache-ttl must be a positive number of seconds",
                                  param="x-gateway-cache-ttl", code="invalid_value")
        if (not alias.cache or "no-store" in directives
                or (config.deterministic_only and request.endpoint == "chat" and not is_deterministic(request.body))):
            tx.headers["x-gateway-cache"] = "bypass"
            self.runtime.obs.cache_result(alias.name, "bypass")
            return None
        scope = tx.key.name if config.scope == "key" and tx.key is not None else "*"
        plan = Plan("", alias.name, ttl, True, scope=scope, flights=self.flights)
        # The model as resolved: the alias, or for a glob alias the name it forwards (each its own answers).
        model = request.model
        items = embeddings.items_of(request.body, model, alias.name, scope) if tx.endpoint == "embeddings" else None
        plan.items = items
        if plan.items is None:
            plan.key = request_key(tx.endpoint, model, request.body, config.hash_strategy, scope)
        plan.read = "no-cache" not in directives  # no-cache: no lookup, but the answer is kept
        return plan

    async def _wait_for_leader(self, plan: Plan) -> bytes | None:
        """Another request already asking the upstream for this key: its answer, within coalesce_wait_s."""
        plan.flight = self.flights.lead(plan.key)
        if plan.flight is not None:
            return None
        data = await self.flights.follow(plan.key, self.config.coalesce_wait_s)
        if data is None:
            plan.flight = self.flights.lead(plan.key)  # the leader kept nothing: this one may
        return data

    def _hit(self, tx: Transaction, plan: Plan, entry: Entry, result: str) -> Reply:
        tx.headers["x-gateway-cache"] = result
        tx.headers["age"] = str(entry.age())
        tx.cost_saved_usd = entry.cost_usd
        plan.store = False
        if plan.flight is not None:  # its followers get the same answer
            self.flights.land(plan.key, plan.flight, pack(entry.body, entry.usage, entry.cost_usd))
        self._count(plan, "semantic_hit" if result == "hit-semantic" else "hit")
        return Reply(entry.body, entry.usage)

    def _error(self, tx: Transaction, plan: Plan, exc: Exception) -> None:
        if not isinstance(exc, CorruptEntry) and not getattr(exc, "quiet", False):
            log.warning("response cache unavailable, request %s bypasses it: %s", tx.request_id, exc)
        plan.store = isinstance(exc, CorruptEntry)  # a fresh answer replaces a corrupt entry
        tx.headers["x-gateway-cache"] = "bypass"
        self._count(plan, "error")
        return None

    def _result(self, tx: Transaction, plan: Plan, result: str) -> None:
        tx.headers["x-gateway-cache"] = result
        self._count(plan, result)

    def _count(self, plan: Plan, result: str) -> None:
        self.runtime.obs.cache_result(plan.alias, result)

    async def _lookup_items(self, tx: Transaction, plan: Plan) -> Reply | None:
        items = plan.items
        assert items is not None and tx.request is not None
        if plan.read:
            try:
                await items.fetch(self.store_)
            except Exception as exc:
                return self._error(tx, plan, exc)
        if items.complete():
            tx.cost_saved_usd = items.saved_usd()
            plan.store = False
            tx.headers["x-gateway-cache"] = "hit"
            self._count(plan, "hit")
            return items.reply()
        items.narrow(tx.request)  # only the inputs not cached go upstream
        self._result(tx, plan, "miss")
        return None

    # store -------------------------------------------------------------------------------------------

    async def store(self, tx: Transaction) -> None:
        plan = tx.cache_state
        if not isinstance(plan, Plan) or tx.outcome is None or tx.outcome.reply is None:
            return
        reply = tx.outcome.reply
        if plan.items is not None:
            await self._store_items(tx, plan)
            return
        data = None
        if plan.store and len(reply.body) <= self.max_entry:
            cost = cost_usd(tx.outcome.call.target, reply.usage) if reply.usage is not None else None
            data = pack(reply.body, reply.usage, cost)
            await self._put(tx, plan, data)
        if plan.flight is not None:
            self.flights.land(plan.key, plan.flight, data)

    async def _put(self, tx: Transaction, plan: Plan, data: bytes) -> None:
        try:
            await self.store_.set(plan.key, plan.alias, data, plan.ttl_s)
        except Exception as exc:
            log.warning("response cache store failed for request %s: %s", tx.request_id, exc)
            self._count(plan, "error")
            return
        if self.semantic is not None and tx.endpoint == "chat":
            await self.semantic.add(tx, plan, self)

    async def _store_items(self, tx: Transaction, plan: Plan) -> None:
        assert plan.items is not None and tx.outcome is not None and tx.outcome.reply is not None
        try:
            await plan.items.merge(tx.outcome, self.store_ if plan.store else None, plan.ttl_s, self.max_entry)
        except Exception as exc:
            log.warning("response cache store failed for request %s: %s", tx.request_id, exc)
            self._count(plan, "error")

    # streams -----------------------------------------------------------------------------------------

    def replay(self, tx: Transaction, on_end: StreamEnd) -> StreamAnswer:
        return replay_answer(tx, on_end)

    def tap(self, tx: Transaction) -> StreamTap | None:
        plan = tx.cache_state
        if not isinstance(plan, Plan) or not (plan.store or plan.flight is not None):
            return None
        return StreamTap(self, tx, plan)


class StreamTap:
    """Sees a stream miss as it is relayed, and stores it if it completed."""

    __slots__ = ("cache", "tx", "plan", "capture")

    def __init__(self, cache: ResponseCache, tx: Transaction, plan: Plan) -> None:
        self.cache, self.tx, self.plan = cache, tx, plan
        self.capture = StreamCapture(cache.max_entry)

    def feed(self, data: bytes) -> None:
        self.capture.feed(data)

    async def ended(self, completed: bool) -> None:
        cache, tx, plan = self.cache, self.tx, self.plan
        data = None
        try:
            outcome = tx.outcome
            if completed and plan.store and outcome is not None and outcome.stream is not None:
                usage = outcome.stream.translator.usage
                body = self.capture.completion(usage)
                if body is not None and len(body) <= cache.max_entry:
                    cost = cost_usd(outcome.call.target, usage) if usage is not None else None
                    data = pack(body, usage, cost)
                    await cache._put(tx, plan, data)
        except Exception:  # a bug here must not break the stream's accounting
            log.exception("response cache could not keep stream request %s", tx.request_id)
        finally:
            if plan.flight is not None:
                cache.flights.land(plan.key, plan.flight, data)
