"""Rate limits, concurrency limits and budgets: exact across replicas with Redis, the same in-process.

Semantics (identical in both backends):
- rpm and tpm use GCRA over a 60 s window: a limit of N per minute allows a burst of N at once, then
  refills continuously at N/60 per second. It is exact (no fixed-window edge doubling) and keeps one
  number per scope. TPM reserves the request's estimated prompt tokens plus its max_tokens (or the
  target's default_max_tokens) before the call, and settles to the real usage after it.
- max_parallel counts a key's requests in flight (entries older than 10 minutes are dropped, so a
  crashed replica cannot leak slots forever).
- budgets reserve the request's worst-case cost (estimated prompt plus max_tokens at the priciest
  target) against the spend so far in the current period (UTC day, UTC month, or total), and settle
  to the row's real cost afterwards. Spend starts from the usage ledger's rows for the period.
- Every scope of a request is checked, and only if all pass reserved, atomically: in Redis by one Lua
  script (one round trip; all key names share one hash tag so the script is legal on Redis Cluster).
  Settling happens after the response, off the request path.
- With Redis, the round trip is hidden behind the upstream call when it safely can be: if this
  replica's last verdict for the same key and model (under ``ROOM_FRESH_S`` old) left every limit at
  least ``ROOM_FRACTION`` of its room after this request's amount, the upstream call starts while
  the script runs. Every request is still checked and counted; a refusal cancels the call already
  under way (the client gets the 429, the row records what the upstream was sent). Near a limit, or
  without a recent verdict, the check comes first as before. A whole-body request sends the script
  with ``admit_soon`` and makes its call in its own task; the reply is judged in a callback when it
  comes in, so the overlap costs no task and no extra wake-up.
- Under steady traffic a replica takes leases: a request that goes to Redis also asks for a small
  block of each rpm/tpm limit's room (about ``LEASE_HORIZON_S`` of this replica's recent demand,
  at most ``LEASE_LIMIT_SHARE`` of the limit, and only while a quarter of the window stays free after
  it). Requests that fit in the replica's leases are admitted in-process, with no round trip; what a
  lease has left after ``LEASE_HOLD_S`` goes back to Redis. Leased units are counted in Redis when
  granted, so the replicas together never admit more than a limit; near a limit no leases are
  granted, and a replica may refuse early by at most what other replicas still hold. Keys with a
  budget or max_parallel, and requests that come slower than one per ``LEASE_AFTER_S``, are checked
  one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.client_request import ClientRequest
from proxy.cost import estimated_cost
from proxy.errors import GatewayError
from proxy.records import UsageRecord
from proxy.redis_client import Encoded, MiniRedis, RedisError
from proxy.settings import Config, KeyConfig, ModelAlias

log = logging.getLogger("gateway.limits")

WINDOW_S = 60.0
PARALLEL_STALE_S = 600.0
ROOM_FRACTION = 0.25  # overlap the check with the upstream call only with this much room left
ROOM_FRESH_S = 1.0  # ... by a verdict at most this old
ROOM_MAX_ENTRIES = 10_000  # (key, model) pairs remembered; the memory is dropped when full
SETTLE_BATCH_S = 0.005  # settlements wait this long to be sent with others
SETTLE_BATCH_MAX = 500
LEASE_AFTER_S = 0.005  # a check whose requests come closer together than this starts taking leases
LEASE_FIRST = 4  # the first lease of a check: this many requests' worth
LEASE_HORIZON_S = 0.02  # later leases: about this long of the demand seen while the last one lasted
LEASE_LIMIT_SHARE = 0.01  # and never more than this share of the limit
LEASE_HOLD_S = 0.5  # what a lease has left after this long goes back to the store
LEASE_WAIT_S = 1.0  # a lease asked for and not answered within this long is asked for again
PREFIX = "{llm-gateway}:"  # one hash tag: every key of one script lands in one Redis Cluster slot


@dataclass(slots=True)
class Check:
    scope: str  # key | model | global | parallel | budget
    kind: str  # gcra | parallel | budget
    key: str
    limit: float
    amount: float
    unit: str  # requests | tokens | usd
    ttl_s: float = 0.0  # budget: seconds until the period ends (0 = never); parallel: how long a slot stays
    wire: Encoded | None = None  # kind, limit and ttl as the script takes them, for checks reused by requests


@dataclass(slots=True)
class Ticket:
    request_id: str
    checks: list[Check]
    results: list[float]  # per check: what remains of its limit after this request, then seconds to its reset
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    settled: bool = False

    def headers(self, out: dict[str, str] | None = None) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers from the tightest rpm and the tightest tpm check (the first on a
        tie), found in one pass, added to ``out`` (the response's headers) or a new dict: this runs on
        every limited request's path."""
        results = self.results
        requests = tokens = -1  # the index of each unit's tightest check
        for i, check in enumerate(self.checks):
            if check.kind == "gcra":
                if check.unit == "requests":
                    if requests < 0 or results[2 * i] < results[2 * requests]:
                        requests = i
                elif tokens < 0 or results[2 * i] < results[2 * tokens]:
                    tokens = i
        if out is None:
            out = {}
        for i, (limit_name, remaining_name, reset_name) in ((requests, REQUESTS_HEADERS), (tokens, TOKENS_HEADERS)):
            if i >= 0:
                remaining = int(results[2 * i] + 1e-9)  # the floor, for what is shown (never below 0)
                out[limit_name] = str(int(self.checks[i].limit))
                out[remaining_name] = str(remaining) if remaining > 0 else "0"
                out[reset_name] = duration(results[2 * i + 1])
        return out


REQUESTS_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKENS_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


@dataclass(slots=True)
class Plan:
    """A request's checks, ready to send; ``overlap``: the upstream call may start before the verdict
    (for a leasable plan, decided by ``admit_here`` when the leases cannot admit it)."""

    checks: list[Check]
    tokens: int
    cost: float
    request_id: str
    room_key: tuple[str, str]
    overlap: bool
    leasable: bool = False  # every check is an rpm/tpm one, on Redis: leases can admit it
    asks: list[float] | None = None  # per check, the lease units asked for with this request's script


@dataclass(slots=True)
class Lease:
    """Room of one rpm or tpm limit that this replica took from the store ahead of its requests."""

    left: float = 0.0  # units this replica may still admit without asking the store
    until: float = 0.0  # monotonic: no admits from it after this; what is left goes back
    remaining: float = 0.0  # the limit's room in the store after the grant, for x-ratelimit-remaining
    reset_at: float = 0.0  # monotonic: when the limit's window would be whole again, as of the grant
    granted_at: float = 0.0
    size: float = 0.0  # units of the latest grant (0: none since the last give-back)
    asked_until: float = 0.0  # monotonic: a grant is on its way until then
    last_ask: float = 0.0  # monotonic: the latest request of this limit that went to the store
    check: Check | None = None  # the limit as of the latest grant (what a give-back is settled by)
    limit: float = 0.0  # its value: a lease serves only requests checked against the same limit (0: none)


@dataclass(slots=True)
class Denial:
    check: Check
    retry_after_s: float


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1.5s. Under a minute, to the millisecond, remembered per millisecond:
    it runs twice per limited request, and formatting costs several times a lookup."""
    if seconds < 60:
        ms = int(seconds * 1000 + 0.5) if seconds > 0 else 0
        text = _RESETS.get(ms)
        if text is None:
            whole, part = divmod(ms, 1000)
            text = _RESETS[ms] = f"{whole}.{part:03d}".rstrip("0") + "s" if part else f"{whole}s"
        return text
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest}s"


_RESETS: dict[int, str] = {}  # at most 60,000 short strings


def period_of(period: str, now: datetime) -> tuple[str, datetime | None, float]:
    """(id, start, seconds until the next period) for a budget period at ``now`` (UTC)."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y-%m-%d"), start, 86400 - (now - start).total_seconds()
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start.strftime("m%Y-%m"), start, (nxt - now).total_seconds()
    return "total", None, 0.0


class StoreUnavailable(Exception):
    pass


# --- backends ------------------------------------------------------------------------------------


class MemoryBackend:
    """In-process: the same arithmetic as the Lua script, on dicts. ``clock`` is injectable for tests."""

    remote = False  # a check costs no round trip: nothing to overlap

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, float] = {}
        self.parallel: dict[str, dict[str, float]] = {}

    async def acquire(self, checks: list[Check], request_id: str,
                      asks: list[float] | None = None) -> tuple[Denial | None, list[float], None]:
        """(a denial, or None and per check its remaining room and seconds to reset; no leases here)."""
        now = self.clock()
        results: list[float] = []
        new_values: list[float] = []
        for check in checks:
            if check.kind == "gcra":
                step = WINDOW_S / check.limit
                tat = max(self.values.get(check.key, now), now)
                new = tat + check.amount * step
                if new - now > WINDOW_S + 1e-9:
                    return Denial(check, _gcra_retry(check, new - WINDOW_S - now)), [], None
                new_values.append(new)
                results += ((now + WINDOW_S - new) / step, new - now)
            elif check.kind == "parallel":
                slots = self.parallel.setdefault(check.key, {})
                for rid, started in list(slots.items()):
                    if started < now - PARALLEL_STALE_S:
                        del slots[rid]
                if len(slots) + 1 > check.limit:
                    return Denial(check, 1.0), [], None
                new_values.append(0.0)
                results += (check.limit - len(slots) - 1, 0.0)
            else:
                spent = self.values.get(check.key, 0.0)
                if spent + check.amount > check.limit + 1e-12:
                    return Denial(check, check.ttl_s), [], None
                new_values.append(spent + check.amount)
                results += (check.limit - spent - check.amount, check.ttl_s)
        for check, value in zip(checks, new_values, strict=True):
            if check.kind == "parallel":
                self.parallel[check.key][request_id] = now
            else:
                self.values[check.key] = value
        return None, results, None

    async def settle(self, entries: list[tuple[Check, float, str]]) -> None:
        now = self.clock()
        for check, delta, request_id in entries:
            if check.kind == "parallel":
                self.parallel.get(check.key, {}).pop(request_id, None)
            elif check.kind == "gcra" and check.key in self.values:
                self.values[check.key] = max(now, self.values[check.key] + delta * WINDOW_S / check.limit)
            elif check.kind == "budget":
                self.values[check.key] = self.values.get(check.key, 0.0) + delta

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        self.values.setdefault(key, value)

    async def aclose(self) -> None:
        pass


def _gcra_retry(check: Check, wait: float) -> float:
    # A request larger than the whole window can never pass: say so with a full window.
    return WINDOW_S if check.amount > check.limit else wait


ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid = ARGV[1]
local out = {}
local new = {}
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local kind, limit, ttl, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'gcra' then
    local step = 60 / limit
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    local v = tat + amount * step
    if v - now > 60 + 1e-9 then return {0, i, tostring(v - 60 - now)} end
    -- a lease, if asked for, only while a quarter of the window stays free after it
    local lease = tonumber(ARGV[b + 5])
    if lease > 0 and v + lease * step - now <= 45 then v = v + lease * step else lease = 0 end
    new[i] = v
    out[#out + 1] = tostring((now + 60 - v) / step)
    out[#out + 1] = tostring(v - now)
    out[#out + 1] = tostring(lease)
  elseif kind == 'parallel' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - ttl)
    local n = redis.call('ZCARD', KEYS[i])
    if n + 1 > limit then return {0, i, '1'} end
    out[#out + 1] = tostring(limit - n - 1)
    out[#out + 1] = '0'
    out[#out + 1] = '0'
  else
    local spent = tonumber(redis.call('GET', KEYS[i])) or 0
    if spent + amount > limit + 1e-12 then return {0, i, tostring(ttl)} end
    out[#out + 1] = tostring(limit - spent - amount)
    out[#out + 1] = tostring(ttl)
    out[#out + 1] = '0'
  end
end
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local kind, ttl, amount = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'gcra' then
    -- all 17 digits: tostring keeps 14, which at today's epoch rounds to 0.1 ms, more than a request's step
    -- at high limits (0.06 ms at 1M rpm): counts would drift with every request
    redis.call('SET', KEYS[i], string.format('%.17g', new[i]), 'PX', math.ceil((new[i] - now) * 1000) + 1000)
  elseif kind == 'parallel' then
    redis.call('ZADD', KEYS[i], now, rid)
    redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000))
  else
    redis.call('INCRBYFLOAT', KEYS[i], amount)
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 86400) end
  end
end
-- one bulk string ("remaining reset leased remaining reset leased ..."): cheaper to read than an array
return table.concat(out, ' ')
"""

SETTLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local kind, limit, delta, rid = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4]
  if kind == 'parallel' then
    redis.call('ZREM', KEYS[i], rid)
  elseif kind == 'gcra' and delta ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat then
      local v = tat + delta * 60 / limit
      if v <= now then redis.call('DEL', KEYS[i])
      else redis.call('SET', KEYS[i], string.format('%.17g', v), 'PX', math.ceil((v - now) * 1000) + 1000) end
    end
  elseif kind == 'budget' and delta ~= 0 then
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], delta) end
  end
end
return 1
"""


class RedisBackend:
    remote = True

    def __init__(self, url: str) -> None:
        # A purpose-built client (proxy.redis_client): the script call is on every request's path.
        self.client = MiniRedis(url)

    @staticmethod
    def _acquire_args(checks: list[Check], request_id: str, asks: list[float] | None) -> list[Any]:
        # What changes per request goes as bytes, so pack() does not remember it (see proxy.redis_client.pack).
        args: list[Any] = [request_id.encode()]
        for i, c in enumerate(checks):
            # per check: kind, limit, ttl (a budget's: time left in its period), amount, lease asked for
            args += (c.wire or Encoded(c.kind, repr(c.limit), repr(c.ttl_s).encode()), repr(c.amount).encode(),
                     repr(asks[i]).encode() if asks is not None and asks[i] else b"0")
        return args

    @staticmethod
    def _acquired(checks: list[Check], reply: Any) -> tuple[Denial | None, list[float], list[float] | None]:
        """(a denial, or None and per check its remaining room and seconds to reset; per check the
        lease units granted)."""
        if isinstance(reply, list):  # {0, failing check's index, seconds to wait}
            check = checks[int(reply[1]) - 1]
            wait = float(reply[2])
            return Denial(check, _gcra_retry(check, wait) if check.kind == "gcra" else wait), [], None
        values = list(map(float, reply.split()))
        grants = values[2::3]
        del values[2::3]
        return None, values, grants

    async def acquire(self, checks: list[Check], request_id: str,
                      asks: list[float] | None = None) -> tuple[Denial | None, list[float], list[float] | None]:
        try:
            reply = await self.client.run_script(ACQUIRE_LUA, [c.key for c in checks],
                                                 self._acquire_args(checks, request_id, asks))
        except (OSError, TimeoutError, RedisError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return self._acquired(checks, reply)

    def acquire_soon(self, checks: list[Check], request_id: str,
                     asks: list[float] | None = None) -> asyncio.Future[Any] | None:
        """``acquire`` without waiting: the script leaves now and the future holds its raw reply, for
        ``acquired``. None when no connection is open (then ``acquire`` opens one)."""
        return self.client.script_now(ACQUIRE_LUA, [c.key for c in checks],
                                      self._acquire_args(checks, request_id, asks))

    def acquired(self, checks: list[Check], sent: asyncio.Future[Any]
                 ) -> tuple[Denial | None, list[float], list[float] | None] | None:
        """The verdict in an ``acquire_soon`` reply; None if the script did not run and must go again
        by ``acquire`` (not cached on the server yet, or a Redis Cluster redirection)."""
        try:
            reply = sent.result()
            if self.client.resend(reply):
                return None
            reply = self.client.script_result(reply)
        except (OSError, TimeoutError, RedisError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return self._acquired(checks, reply)

    async def settle(self, entries: list[tuple[Check, float, str]]) -> None:
        args: list[Any] = []
        for check, delta, request_id in entries:
            args += [check.kind, repr(check.limit), repr(delta).encode(), request_id.encode()]
        try:
            await self.client.run_script(SETTLE_LUA, [c.key for c, _, _ in entries], args)
        except (OSError, TimeoutError, RedisError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        expiry = ("EX", int(ttl_s) + 86400) if ttl_s else ()
        try:
            await self.client.call("SET", key, repr(value), "NX", *expiry)
        except (OSError, TimeoutError, RedisError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def ping(self) -> bool:
        try:
            return await self.client.call("PING") == b"PONG"
        except (OSError, TimeoutError, RedisError):
            return False

    async def aclose(self) -> None:
        await self.client.aclose()


# --- the limiter ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Limits:
    config: Config
    backend: Any  # MemoryBackend | RedisBackend
    on_store_error: Callable[[str], None] = lambda scope: None  # metrics hook
    on_denied: Callable[[str], None] = lambda scope: None
    # Settlements not yet sent: freed concurrency slots, one per request; and token and budget
    # corrections, summed per Redis key (the script adds them, so a batch needs one entry per key).
    releases: list[tuple[Check, float, str]] = field(default_factory=list)
    owed: dict[str, tuple[Check, float]] = field(default_factory=dict)
    flusher: asyncio.Task[None] | None = None
    # (key, model) -> (until when, each check's remaining room) from this replica's last verdict
    room: dict[tuple[str, str], tuple[float, list[float]]] = field(default_factory=dict)
    standing: dict[tuple[Any, ...], list[Check]] = field(default_factory=dict)  # see _standing
    resends: set[asyncio.Task[None]] = field(default_factory=set)  # admit_soon scripts sent again (rare)
    leases: dict[str, Lease] = field(default_factory=dict)  # Redis key of an rpm/tpm limit -> this replica's lease

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        url = config.storage.redis_url
        return cls(config, RedisBackend(url) if url else MemoryBackend())

    def plan(self, key: KeyConfig | None, alias: ModelAlias, request: ClientRequest) -> Plan | None:
        """The checks for one request, or None when nothing limits it (no estimates, no store call)."""
        standing = self._standing(key, alias)
        budgeted = key is not None and key.budget_usd is not None
        if not standing and not budgeted:
            return None
        prompt_tokens, request_id = request.prompt_estimate, request.request_id
        max_tokens = request.completion_allowance(alias.targets[0].default_max_tokens)
        tokens = prompt_tokens + max_tokens
        checks = [check if check.unit != "tokens" else Check(check.scope, "gcra", check.key, check.limit, tokens,
                                                              "tokens", 0.0, check.wire) for check in standing]
        cost = 0.0
        if key is not None and budgeted:
            cost = max((estimated_cost(t, prompt_tokens, max_tokens) or 0.0) for t in alias.targets)
            period_id, _, ttl = period_of(key.budget_period, datetime.now(UTC))
            checks.append(Check("budget", "budget", f"{PREFIX}spend:key:{key.name}:{period_id}", key.budget_usd, cost,
                                "usd", ttl))
        room_key = (key.name if key is not None else "", alias.name)
        if not self.backend.remote:
            return Plan(checks, tokens, cost, request_id, room_key, False)
        if not budgeted and _all_gcra(checks):  # overlap is decided if the leases cannot admit it
            return Plan(checks, tokens, cost, request_id, room_key, False, True)
        return Plan(checks, tokens, cost, request_id, room_key, self._roomy(room_key, checks))

    def _standing(self, key: KeyConfig | None, alias: ModelAlias) -> list[Check]:
        """The rpm, tpm and max_parallel checks of a key and alias (a tpm one with no amount yet), built
        once per set of limits and shared by the requests under them. Found by the limits' values, so a
        reload or a key given new limits gets checks of its own."""
        limits = self.config.limits
        found = (limits.rpm, limits.tpm, alias.name, alias.rpm, alias.tpm)
        if key is not None:
            found += (key.name, key.rpm, key.tpm, key.max_parallel)
        checks = self.standing.get(found)
        if checks is None:
            if len(self.standing) >= ROOM_MAX_ENTRIES:
                self.standing.clear()
            checks = self.standing[found] = []
            scopes = [("global", "global", limits.rpm, limits.tpm),
                      ("model", f"model:{alias.name}", alias.rpm, alias.tpm)]
            if key is not None:
                scopes.append(("key", f"key:{key.name}", key.rpm, key.tpm))
            for scope, name, rpm, tpm in scopes:
                if rpm:
                    checks.append(Check(scope, "gcra", f"{PREFIX}rpm:{name}", rpm, 1, "requests"))
                if tpm:
                    checks.append(Check(scope, "gcra", f"{PREFIX}tpm:{name}", tpm, 0, "tokens"))
            if key is not None and key.max_parallel:
                checks.append(Check("parallel", "parallel", f"{PREFIX}inflight:key:{key.name}", key.max_parallel, 1,
                                    "requests", PARALLEL_STALE_S))
            for check in checks:
                check.wire = Encoded(check.kind, repr(check.limit), repr(check.ttl_s))
        return checks

    def _roomy(self, room_key: tuple[str, str], checks: list[Check]) -> bool:
        seen = self.room.get(room_key)
        if seen is None or seen[0] < time.monotonic() or len(seen[1]) != len(checks):
            return False
        for check, left in zip(checks, seen[1], strict=True):  # a loop, not all(genexpr): once per request
            if left - check.amount < ROOM_FRACTION * check.limit:
                return False
        return True

    def admit_here(self, plan: Plan) -> Ticket | None:
        """A Ticket if this replica's leases hold room for every check of the plan (taken from them
        now); else None, and the plan goes to the store, asking for leases where its checks see steady
        traffic."""
        if not plan.leasable:
            return None
        now = time.monotonic()
        leases = self.leases
        for check in plan.checks:
            lease = leases.get(check.key)
            if lease is None or lease.left < check.amount or lease.until < now or lease.limit != check.limit:
                plan.asks = self._asks(plan.checks, now)
                plan.overlap = self._roomy(plan.room_key, plan.checks)
                return None
        results: list[float] = []
        for check in plan.checks:
            lease = leases[check.key]
            lease.left -= check.amount
            reset_s = lease.reset_at - now
            results += (lease.remaining + lease.left, reset_s if reset_s > 0 else 0.0)
        return Ticket(plan.request_id, plan.checks, results, plan.tokens, plan.cost)

    def _asks(self, checks: list[Check], now: float) -> list[float] | None:
        """Per check, the lease units to ask for with a request that goes to the store: none for a
        check whose requests come slowly, or whose last ask is still on its way; else enough for
        about LEASE_HORIZON_S at the pace the last lease was used up, at most LEASE_LIMIT_SHARE of
        the limit and at least two requests' worth."""
        asks: list[float] = []
        for check in checks:
            lease = self.leases.get(check.key)
            if lease is None:
                if len(self.leases) >= ROOM_MAX_ENTRIES:
                    self._give_back_all()
                lease = self.leases[check.key] = Lease()
            gap, lease.last_ask = now - lease.last_ask, now
            if lease.limit and lease.limit != check.limit:  # the limit changed (a reload, the admin API)
                self._give_back(lease)
            want = 0.0
            if lease.asked_until < now:
                if lease.size and now < lease.until:  # used up before it expired: size by its pace
                    want = lease.size * LEASE_HORIZON_S / max(now - lease.granted_at, 1e-4)
                elif gap < LEASE_AFTER_S:
                    want = LEASE_FIRST * check.amount
                want = float(int(min(want, LEASE_LIMIT_SHARE * check.limit)))
                if want < 2 * check.amount or want <= 0:
                    want = 0.0
                else:
                    lease.asked_until = now + LEASE_WAIT_S
            asks.append(want)
        return asks if any(asks) else None

    def _granted(self, plan: Plan, results: list[float] | None, grants: list[float] | None) -> None:
        """The store's answer to a plan's lease asks: what it granted joins the leases (and the
        request's own results show the room as if nothing were leased); an ask refused, failed or
        not granted is no longer on its way."""
        asks, plan.asks = plan.asks, None
        if asks is None:
            return
        now = time.monotonic()
        for i, check in enumerate(plan.checks):
            lease = self.leases.get(check.key)
            if not asks[i] or lease is None:
                continue
            lease.asked_until = 0.0
            got = grants[i] if grants and results else 0.0
            if not got:
                continue
            assert results is not None
            if lease.limit and lease.limit != check.limit:
                self._give_back(lease)
            lease.left += got
            lease.check, lease.limit, lease.size = check, check.limit, got
            lease.granted_at, lease.until = now, now + LEASE_HOLD_S
            lease.remaining, lease.reset_at = results[2 * i], now + results[2 * i + 1]
            results[2 * i] += lease.left
            asyncio.get_running_loop().call_later(LEASE_HOLD_S, self._expire, lease, now)

    def _expire(self, lease: Lease, granted_at: float) -> None:
        if lease.granted_at == granted_at:  # not renewed since: what is left goes back
            self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        left, lease.left, lease.size, lease.limit = lease.left, 0.0, 0.0, 0.0
        check = lease.check
        if left > 0 and check is not None:
            seen = self.owed.get(check.key)
            self.owed[check.key] = (check, -left if seen is None else seen[1] - left)
            self._settle_soon(False)

    def _give_back_all(self) -> None:
        """Every lease's unused units go back (at shutdown, or when too many limits are remembered)."""
        for lease in self.leases.values():
            self._give_back(lease)
        self.leases.clear()

    async def admit(self, plan: Plan) -> Ticket | None:
        """Check and reserve in one store call: a Ticket, None when the store is down and
        ``on_store_error = "allow"``, or a GatewayError (429, or 503 under ``"deny"``)."""
        try:
            denial, results, grants = await self.backend.acquire(plan.checks, plan.request_id, plan.asks)
        except StoreUnavailable as exc:
            return self._unavailable(plan, exc)
        except BaseException:  # cancelled: a lease granted meanwhile is lost (it refills like any use)
            self._granted(plan, None, None)
            raise
        return self._verdict(plan, denial, results, grants)

    def admit_soon(self, plan: Plan, on_refusal: Callable[[], None]) -> asyncio.Future[Ticket | None] | None:
        """``admit`` for an overlapped plan, without waiting: the store call leaves now, and the request
        goes on to its upstream call. The future takes what ``admit`` would return or raise once the reply
        is in; on a refusal (429, or 503 under ``"deny"``) ``on_refusal`` is called then, to stop the
        upstream call. None when the store has no open connection: use ``admit``."""
        sent = self.backend.acquire_soon(plan.checks, plan.request_id, plan.asks) if self.backend.remote else None
        if sent is None:
            return None
        verdict: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        sent.add_done_callback(lambda sent: self._answered(plan, sent, verdict, on_refusal))
        return verdict

    def _answered(self, plan: Plan, sent: asyncio.Future[Any], verdict: asyncio.Future[Ticket | None],
                  on_refusal: Callable[[], None]) -> None:
        if verdict.done() and plan.asks is None:  # the request stopped waiting, and no lease rides on the reply
            return
        parsed: tuple[Denial | None, list[float], list[float] | None] | StoreUnavailable | None
        try:
            parsed = self.backend.acquired(plan.checks, sent)
        except StoreUnavailable as exc:
            parsed = exc
        if parsed is None and verdict.done():  # did not run, and nobody waits for it: no lease either
            self._granted(plan, None, None)
            return
        if parsed is None:  # the script must go again (rare): by admit, in a task of its own
            task = asyncio.ensure_future(self._admit_into(plan, verdict, on_refusal))
            self.resends.add(task)
            task.add_done_callback(self.resends.discard)
            return
        if verdict.done():  # only the lease is still wanted
            if isinstance(parsed, StoreUnavailable) or parsed[0] is not None:
                self._granted(plan, None, None)
            else:
                self._granted(plan, parsed[1], parsed[2])
            return
        try:
            if isinstance(parsed, StoreUnavailable):
                ticket = self._unavailable(plan, parsed)
            else:
                ticket = self._verdict(plan, *parsed)
        except GatewayError as refusal:
            _conclude(verdict, on_refusal, None, refusal)
            return
        _conclude(verdict, on_refusal, ticket, None)

    async def _admit_into(self, plan: Plan, verdict: asyncio.Future[Ticket | None],
                          on_refusal: Callable[[], None]) -> None:
        try:
            ticket = await self.admit(plan)
        except GatewayError as refusal:
            _conclude(verdict, on_refusal, None, refusal)
            return
        _conclude(verdict, on_refusal, ticket, None)

    def _unavailable(self, plan: Plan, exc: StoreUnavailable) -> None:
        self._granted(plan, None, None)
        self.room.pop(plan.room_key, None)
        self.on_store_error("store")
        log.warning("limits store unavailable (%s): %s", self.config.limits.on_store_error, exc)
        if self.config.limits.on_store_error == "deny":
            raise GatewayError(503, "Rate limits cannot be checked right now; try again shortly.",
                               "service_unavailable_error", "limits_unavailable",
                               headers={"retry-after": "1"}) from None
        return None

    def _verdict(self, plan: Plan, denial: Denial | None, results: list[float],
                 grants: list[float] | None = None) -> Ticket:
        self._granted(plan, None if denial else results, grants)
        if denial is not None:
            self.room.pop(plan.room_key, None)
            self.on_denied(denial.check.scope)
            raise _rejection(denial)
        if self.backend.remote:
            if len(self.room) >= ROOM_MAX_ENTRIES:
                self.room.clear()
            self.room[plan.room_key] = (time.monotonic() + ROOM_FRESH_S, results[0::2])
        return Ticket(plan.request_id, plan.checks, results, plan.tokens, plan.cost)

    async def store_state(self) -> str:
        """For /readyz: "in-process", or whether the Redis store answers a PING right now."""
        if not self.backend.remote:
            return "in-process"
        return "up" if await self.backend.ping() else "down"

    async def acquire(self, key: KeyConfig | None, alias: ModelAlias, request: ClientRequest) -> Ticket | None:
        plan = self.plan(key, alias, request)
        return None if plan is None else await self.admit(plan)

    def settle(self, ticket: Ticket | None, record: UsageRecord, extra: Sequence[UsageRecord] = ()) -> None:
        """Replace reservations with what the request really used (``extra``: rows of hedge losers it
        also spent); runs in the background."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        used_tokens = record.prompt_tokens + record.completion_tokens
        cost = record.cost_usd or 0.0
        for row in extra:
            used_tokens += row.prompt_tokens + row.completion_tokens
            cost += row.cost_usd or 0.0
        urgent = settling = False
        owed = self.owed
        for check in ticket.checks:
            if check.kind == "parallel":
                self.releases.append((check, 0.0, ticket.request_id))
                urgent = settling = True
                continue
            if check.unit == "tokens":
                delta = used_tokens - ticket.reserved_tokens
                lease = self.leases.get(check.key)
                if lease is not None and lease.limit == check.limit and lease.left >= delta:
                    lease.left -= delta  # tokens not used go back to this replica's lease, more used come from it
                    continue
            elif check.unit == "usd":
                delta = cost - ticket.reserved_cost
            else:
                continue
            seen = owed.get(check.key)
            owed[check.key] = (check, delta if seen is None else seen[1] + delta)
            settling = True
        if settling:
            self._settle_soon(urgent)

    def _settle_soon(self, urgent: bool) -> None:
        if self.flusher is None or self.flusher.done():
            # A freed concurrency slot goes out at once; token and budget corrections (and leases given
            # back) can wait a few milliseconds to be sent with others (one script call per batch).
            self.flusher = asyncio.ensure_future(self._flush_soon(0 if urgent else SETTLE_BATCH_S))

    def charge(self, plan: Plan, record: UsageRecord) -> None:
        """A refused request that spent anyway (its upstream call had started before the verdict, and
        answered): its tokens and cost count against the key's tpm and budget, as its row does in the
        ledger. Nothing was reserved for it, so all of it is added; runs in the background."""
        if record.prompt_tokens or record.completion_tokens or record.cost_usd:
            self.settle(Ticket(plan.request_id, [c for c in plan.checks if c.kind != "parallel"], []), record)

    async def _flush_soon(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.flush()

    async def flush(self) -> None:
        while self.releases or self.owed:
            entries = self.releases + [(check, delta, "") for check, delta in self.owed.values()]
            self.releases, self.owed = [], {}
            for start in range(0, len(entries), SETTLE_BATCH_MAX):
                try:
                    await self.backend.settle(entries[start:start + SETTLE_BATCH_MAX])
                except StoreUnavailable as exc:
                    self.on_store_error("store")
                    log.warning("limits store unavailable while settling: %s", exc)

    async def seed_budgets(self, spend_by_key: dict[str, float], keys: list[KeyConfig]) -> None:
        """Start each budgeted key's spend from the ledger, unless a replica already did."""
        now = datetime.now(UTC)
        for key in keys:
            if key.budget_usd is None:
                continue
            period_id, _, ttl = period_of(key.budget_period, now)
            with contextlib.suppress(StoreUnavailable):
                await self.backend.seed(f"{PREFIX}spend:key:{key.name}:{period_id}", spend_by_key.get(key.name, 0.0),
                                        ttl)

    async def aclose(self) -> None:
        self._give_back_all()
        if self.flusher is not None:
            self.flusher.cancel()
        await self.flush()
        await self.backend.aclose()


def _all_gcra(checks: list[Check]) -> bool:
    for check in checks:
        if check.kind != "gcra":
            return False
    return bool(checks)


def _conclude(verdict: asyncio.Future[Ticket | None], on_refusal: Callable[[], None], ticket: Ticket | None,
              refusal: GatewayError | None) -> None:
    if verdict.done():
        return
    if refusal is None:
        verdict.set_result(ticket)
        return
    verdict.set_exception(refusal)
    on_refusal()


def _rejection(denial: Denial) -> GatewayError:
    check = denial.check
    retry = str(max(1, math.ceil(denial.retry_after_s))) if denial.retry_after_s else "60"
    if check.kind == "budget":
        return GatewayError(429, f"Budget of ${check.limit:g} for this key is used up for the current period.",
                            "insufficient_quota", "insufficient_quota", headers={"retry-after": retry})
    headers = {"retry-after": retry}
    if check.kind == "gcra":
        headers.update({f"x-ratelimit-limit-{check.unit}": str(int(check.limit)),
                        f"x-ratelimit-remaining-{check.unit}": "0",
                        f"x-ratelimit-reset-{check.unit}": duration(denial.retry_after_s)})
    if check.kind == "parallel":
        message = f"Too many concurrent requests for this key (max_parallel = {int(check.limit)})."
    else:
        what = "requests" if check.unit == "requests" else "tokens"
        message = (f"Rate limit reached for {check.scope} scope: {int(check.limit)} {what} per minute. "
                   f"Please try again in {retry}s.")
        if check.amount > check.limit:
            message = (f"This request needs {int(check.amount)} tokens (prompt plus max_tokens), more than the "
                       f"{check.scope} scope's limit of {int(check.limit)} tokens per minute.")
    return GatewayError(429, message, "rate_limit_error", "rate_limit_exceeded", headers=headers)


async def seed_budgets(config: Config, limits: Limits, keys: list[KeyConfig]) -> None:
    """Budgets start from the ledger: the spend of each budgeted key in its current period."""
    budgeted = [k for k in keys if k.budget_usd is not None]
    if not budgeted:
        return
    from proxy.storage import open_store, redact

    store = open_store(config.storage.database_url)
    now = datetime.now(UTC)
    spend: dict[str, float] = {}
    try:
        async with asyncio.timeout(5):
            await store.open()
            await store.migrate()
            for key in budgeted:
                _, start, _ = period_of(key.budget_period, now)
                rows = await store.report(start or datetime(1970, 1, 1, tzinfo=UTC), now, "key")
                spend[key.name] = next((r.cost_usd or 0.0 for r in rows if r.group == key.name), 0.0)
    except Exception as exc:  # the gateway still starts; budgets count from zero until seeded
        log.warning("could not read spend so far from %s for budgets: %s", redact(store.url), exc)
        return
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    await limits.seed_budgets(spend, budgeted)
