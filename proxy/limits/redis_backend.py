"""The Redis store: every check of a request in one Lua script call, exact across replicas.

The scripts live next to this module (``acquire.lua``, ``settle.lua``); every number they share with
Python is defined here and prepended to their source, so the two cannot drift apart.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from proxy.limits.checks import (
    BUDGET_SLACK_USD,
    GCRA_SLACK_S,
    PARALLEL_RETRY_S,
    PREFIX,
    WINDOW_S,
    Check,
    Denial,
    Encoded,
    gcra_retry,
)
from proxy.limits.leases import LEASE_FREE_SHARE
from proxy.limits.store import Settlement, SpendUnknown, StoreUnavailable, Verdict
from proxy.settings import StorageConfig

ACQUIRE_ARGS_PER_CHECK = 5  # kind, limit, ttl, amount, lease asked for
SETTLE_ARGS_PER_ENTRY = 4  # kind, limit, delta, request id
GCRA_KEY_LINGER_MS = 1000  # an rpm/tpm key outlives its last reservation by this much, then expires
BUDGET_KEY_LINGER_S = 86400  # a budget's key outlives its period by this much, for late settlements
# A budgeted request's reservations stay readable this long, for a release after a timeout. It counts from
# when the script ran, and the release follows the store's recovery by a second: short keeps Redis small.
HELD_TTL_S = 30
REDIS_ERRORS = (Exception,)  # any failure of a call is the store's (see proxy.redis_client.ERRORS)


def lua_script(name: str, **constants: float) -> str:
    """The package's script ``name`` with ``constants`` defined as Lua locals ahead of it."""
    source = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return "".join(f"local {key} = {value!r}\n" for key, value in constants.items()) + source


ACQUIRE_LUA = lua_script("acquire.lua", ARGS_PER_CHECK=ACQUIRE_ARGS_PER_CHECK, WINDOW_S=WINDOW_S,
                         GCRA_SLACK_S=GCRA_SLACK_S, LEASE_MAX_AHEAD_S=WINDOW_S * (1 - LEASE_FREE_SHARE),
                         PARALLEL_RETRY_S=PARALLEL_RETRY_S, BUDGET_SLACK_USD=BUDGET_SLACK_USD,
                         GCRA_KEY_LINGER_MS=GCRA_KEY_LINGER_MS, BUDGET_KEY_LINGER_S=BUDGET_KEY_LINGER_S,
                         HELD_TTL_S=HELD_TTL_S)
SETTLE_LUA = lua_script("settle.lua", ARGS_PER_ENTRY=SETTLE_ARGS_PER_ENTRY, WINDOW_S=WINDOW_S,
                        GCRA_KEY_LINGER_MS=GCRA_KEY_LINGER_MS)
RENEW_LUA = lua_script("renew.lua")
RELEASE_LUA = lua_script("release.lua")


def held_key(request_id: str) -> str:
    """Where acquire.lua keeps a budgeted request's reservations (same hash tag as every limit key)."""
    return f"{PREFIX}held:{request_id}"


class RedisBackend:
    remote = True

    def __init__(self, url: str, storage: StorageConfig | None = None) -> None:
        # Imported here: redis-py loads OpenTelemetry when it is installed, and a gateway without Redis
        # should load neither.
        from proxy.redis_client import RedisClient, RedisTLS

        tls = storage and RedisTLS(storage.redis_ca_file, storage.redis_client_cert, storage.redis_client_key)
        self.client = RedisClient(url, tls or None)  # no I/O here: it connects at the first call

    def wire(self, check: Check) -> Encoded:
        return _wire(check)

    async def acquire(self, checks: list[Check], request_id: str, asks: list[float] | None = None) -> Verdict:
        keys = [c.key for c in checks]
        for check in checks:
            if check.kind == "budget":
                keys.append(held_key(request_id))
                break
        try:
            reply = await self.client.run_script(ACQUIRE_LUA, keys, acquire_args(checks, request_id, asks))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return verdict_of(checks, reply)

    async def settle(self, entries: list[Settlement]) -> None:
        args: list[Any] = []
        for check, delta, request_id in entries:
            args += [check.kind, repr(check.limit), repr(delta).encode(), request_id.encode()]
        try:
            await self.client.run_script(SETTLE_LUA, [c.key for c, _, _ in entries], args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def renew(self, slots: list[tuple[Check, str]]) -> None:
        args: list[Any] = []
        for check, request_id in slots:
            args += [request_id.encode(), str(int(check.ttl_s * 1000))]
        try:
            await self.client.run_script(RENEW_LUA, [c.key for c, _ in slots], args)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def release(self, request_ids: list[str]) -> None:
        try:
            await self.client.run_script(RELEASE_LUA, [held_key(rid) for rid in request_ids], [])
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        expiry = ("EX", int(ttl_s) + BUDGET_KEY_LINGER_S) if ttl_s else ()
        try:
            await self.client.call("SET", key, repr(value), "NX", *expiry)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.call("PING"))
        except REDIS_ERRORS:
            return False

    async def aclose(self) -> None:
        await self.client.aclose()


def acquire_args(checks: list[Check], request_id: str, asks: list[float] | None) -> list[Any]:
    """The acquire script's ARGV: the request id, then ``ACQUIRE_ARGS_PER_CHECK`` values per check."""
    # Bytes go to the wire as they are: a check's constants are encoded once (``Check.wire``).
    args: list[Any] = [request_id.encode()]
    for i, c in enumerate(checks):
        args += c.wire or _wire(c)
        args += (repr(c.amount).encode(), repr(asks[i]).encode() if asks is not None and asks[i] else b"0")
    return args


def _wire(check: Check) -> Encoded:
    return check.kind.encode(), repr(check.limit).encode(), repr(check.ttl_s).encode()


def verdict_of(checks: list[Check], reply: Any) -> Verdict:
    """The acquire script's reply read back: a denial, or the results and lease grants per check."""
    if isinstance(reply, list):  # {0, failing check's index, seconds to wait}; {1, index, 0}: spend unknown
        check = checks[int(reply[1]) - 1]
        if int(reply[0]) == 1:
            raise SpendUnknown(check)
        wait = float(reply[2])
        return Denial(check, gcra_retry(check, wait) if check.kind == "gcra" else wait), [], None
    values = list(map(float, reply.split()))
    grants = values[2::3]
    del values[2::3]
    return None, values, grants
