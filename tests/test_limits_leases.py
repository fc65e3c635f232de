"""Leases under concurrency: requests that find their lease empty while a grant is on its way wait for
it instead of each making a store call, and are still counted exactly; on a redis-server of the test's
own, so script calls can be counted server-wide."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from proxy.config import parse_config
from proxy.errors import GatewayError
from proxy.limits import Limits, RedisBackend
from proxy.limits.checks import WINDOW_S
from tests.redis_util import RedisServer
from tests.test_limits import GCRA_TOML, MSG, chat_request

RPM = 100_000


@pytest.fixture
def private_redis():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def _setup(url: str):
    import tomllib

    name = f"k-{uuid.uuid4().hex[:10]}"
    text = GCRA_TOML.replace('"k"', f'"{name}"').replace("rpm = 60", f"rpm = {RPM}").replace("tpm = 600\n", "")
    config = parse_config(tomllib.loads(text), "t.toml", {})
    store = redis.Redis.from_url(url)
    bucket = f"{{llm-gateway}}:rpm:key:{name}"
    now, micros = store.time()
    tat = now + micros / 1e6 + 10  # 10 s of the window used: the TAT stays put until requests move it
    store.set(bucket, repr(tat))
    return config, store, bucket, tat


def _scripts(store: redis.Redis) -> int:
    stats = store.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


async def _one(limits: Limits, config, request_id: str) -> str:
    """One request as the pipeline admits it: 'here' (from leases at once), 'admitted' (after waiting or
    a store call), or 'refused'."""
    plan = limits.plan(config.keys[0], config.models["m"], chat_request({"messages": MSG, "max_tokens": 1},
                                                                         request_id))
    if limits.admit_here(plan) is not None:
        return "here"
    try:
        await limits.admit(plan)
    except GatewayError:
        return "refused"
    return "admitted"


def test_a_burst_shares_the_lease_grants_on_their_way(private_redis):
    """60 requests at once on a key with no lease yet: one store call asks for a lease, the requests
    arriving meanwhile wait for its grant rather than each calling the store, so a handful of script
    calls admit all 60; Redis still counts exactly 60 once the leases are given back."""
    config, store, bucket, tat = _setup(private_redis.url)

    async def run() -> list[str]:
        limits = Limits(config, RedisBackend(private_redis.url))
        try:
            return list(await asyncio.gather(*(_one(limits, config, f"b{i}") for i in range(60))))
        finally:
            await limits.aclose()  # gives back what the leases still hold

    before = _scripts(store)
    outcomes = asyncio.run(run())
    calls = _scripts(store) - before
    assert outcomes.count("refused") == 0 and len(outcomes) == 60
    assert calls <= 8  # one per request, 60, if each went to the store; the give-back is one more
    assert float(store.get(bucket)) == pytest.approx(tat + 60 * WINDOW_S / RPM, abs=1e-4)


def test_an_ask_never_answered_does_not_hold_its_waiters(private_redis, monkeypatch):
    """A request that asked for a lease and never reached the store (its client left at that moment)
    holds the others only for LEASE_WAIT_S: then they go to the store themselves."""
    from proxy.limits import leases

    monkeypatch.setattr(leases, "LEASE_WAIT_S", 0.3)
    config, store, bucket, tat = _setup(private_redis.url)

    async def run() -> tuple[str, float]:
        limits = Limits(config, RedisBackend(private_redis.url))
        try:
            assert await _one(limits, config, "first") == "admitted"  # no lease yet: a store call
            lost = limits.plan(config.keys[0], config.models["m"], chat_request({"messages": MSG}, "lost"))
            assert limits.admit_here(lost) is None and lost.asks  # it asks for a lease, and goes nowhere
            started = time.monotonic()
            outcome = await asyncio.wait_for(_one(limits, config, "waiting"), 10)
            return outcome, time.monotonic() - started
        finally:
            await limits.aclose()

    outcome, took = asyncio.run(run())
    assert outcome == "admitted"
    assert took >= 0.25  # it did wait for the lost ask, then went on by itself
    assert float(store.get(bucket)) == pytest.approx(tat + 2 * WINDOW_S / RPM, abs=1e-4)


def test_near_the_limit_a_refused_ask_is_not_repeated_at_once(private_redis):
    """With five sixths of the window used, the store refuses leases (a quarter must stay free). After
    a refusal the next requests go to the store plainly for a while: no new ask, and nothing to wait
    for, so requests near a limit never queue behind asks that will be refused."""
    config, store, bucket, _ = _setup(private_redis.url)
    now, micros = store.time()
    store.set(bucket, repr(now + micros / 1e6 + 50))  # 50 of the window's 60 s used

    async def run() -> None:
        limits = Limits(config, RedisBackend(private_redis.url))
        key, alias = config.keys[0], config.models["m"]
        try:
            assert await _one(limits, config, "first") == "admitted"  # no lease yet: a plain store call
            second = limits.plan(key, alias, chat_request({"messages": MSG, "max_tokens": 1}, "second"))
            assert limits.admit_here(second) is None and second.asks  # close behind: it asks for a lease
            await limits.admit(second)  # admitted, the lease refused
            assert limits.leases.held() == 0
            third = limits.plan(key, alias, chat_request({"messages": MSG, "max_tokens": 1}, "third"))
            assert limits.admit_here(third) is None
            assert third.asks is None and third.wait is None  # straight to the store, asking nothing
            await limits.admit(third)
        finally:
            await limits.aclose()

    asyncio.run(run())
