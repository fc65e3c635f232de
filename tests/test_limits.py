"""Rate limits, concurrency limits and budgets: the same tests on the in-process backend and on real
Redis, plus GCRA window behaviour on a fake clock."""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from proxy.client_request import ClientRequest
from proxy.config import parse_config
from proxy.errors import GatewayError
from proxy.limits import Limits, MemoryBackend, duration
from proxy.pipeline.parse import requested_max_tokens
from proxy.records import UsageRecord
from tests.redis_util import RedisServer, shared_redis_url

MSG = [{"role": "user", "content": "hi"}]  # echo: 1 prompt token, "Echo: hi" = 3 completion tokens


def chat_request(body: dict, request_id: str) -> ClientRequest:
    """A chat request as the parse stage makes it, with a prompt estimate of 1 token."""
    return ClientRequest("chat", "m", body, request_id, request_id, prompt_estimate=1,
                         max_tokens=requested_max_tokens(body))


def limits_config(fake_url: str, redis_url: str, key_extra: str = "", model_extra: str = "", limits: str = "",
                  name: str | None = None) -> tuple[str, str, str]:
    """A config whose key name is unique per test, so Redis state never leaks between tests or runs."""
    name = name or f"k-{uuid.uuid4().hex[:10]}"
    secret = f"sk-{name}"
    text = f"""
[storage]
database_url = "sqlite:///:memory:"
spill_dir = "{Path(tempfile.gettempdir()) / f"spill-{name}"}"
redis_url = "{redis_url}"

[limits]
{limits}

[providers.local]
kind = "echo"

[providers.fake]
kind = "openai"
base_url = "{fake_url}/v1"

[[models]]
name = "m-{name}"
{model_extra}
targets = [{{ provider = "local", model = "echo-1", input_per_mtok = 1000.0, output_per_mtok = 1000.0 }}]

[[models]]
name = "slow-{name}"
targets = [{{ provider = "fake", model = "delay-400" }}]

[[keys]]
name = "{name}"
key = "{secret}"
{key_extra}
"""
    return text, secret, f"m-{name}"


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str:
    return "" if request.param == "memory" else shared_redis_url()


def post(url: str, secret: str, model: str, timeout: float = 10, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": MSG, "max_tokens": 3, **extra}, timeout=timeout)


def burst(url: str, secret: str, model: str, n: int, workers: int = 20) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: post(url, secret, model), range(n)))


def test_rpm_headers_and_rejection(make_gateway, fake_openai, backend):
    text, secret, model = limits_config(fake_openai.url, backend, key_extra="rpm = 3")
    gw = make_gateway(text)
    answers = [post(gw.url, secret, model) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers[:3]] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in answers)
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")
    denied = answers[3]
    err = denied.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert 1 <= int(denied.headers["retry-after"]) <= 20  # the next slot frees in 60/3 = 20 s


def test_tpm_reserves_then_settles_to_real_usage(make_gateway, fake_openai, backend):
    text, secret, model = limits_config(fake_openai.url, backend, key_extra="tpm = 1000")
    gw = make_gateway(text)
    # reserves 1 (prompt estimate) + 500 (max_tokens); the echo really uses 1 + 3 = 4 tokens
    first = post(gw.url, secret, model, max_tokens=500)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "499"
    time.sleep(0.3)  # settling runs after the response
    second = post(gw.url, secret, model, max_tokens=500)
    assert second.status_code == 200
    assert int(second.headers["x-ratelimit-remaining-tokens"]) >= 1000 - 4 - 501
    too_big = post(gw.url, secret, model, max_tokens=5000)
    assert too_big.status_code == 429 and "more than" in too_big.json()["error"]["message"]


def test_alias_and_global_scopes(make_gateway, fake_openai, backend):
    text, secret, model = limits_config(fake_openai.url, backend, model_extra="rpm = 2")
    gw = make_gateway(text)
    assert [post(gw.url, secret, model).status_code for _ in range(3)] == [200, 200, 429]
    if backend:  # the global scope is shared by every test on this Redis: check it in-process only
        return
    text, secret, model = limits_config(fake_openai.url, backend, limits="rpm = 2")
    gw = make_gateway(text)
    answers = [post(gw.url, secret, model) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert "global" in answers[2].json()["error"]["message"]


def test_max_parallel(make_gateway, fake_openai, backend):
    text, secret, _ = limits_config(fake_openai.url, backend, key_extra="max_parallel = 2")
    gw = make_gateway(text)
    name = secret.removeprefix("sk-")
    answers = burst(gw.url, secret, f"slow-{name}", 3, workers=3)
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    time.sleep(0.3)
    assert post(gw.url, secret, f"slow-{name}").status_code == 200  # slots are released after each request


def test_budget_stops_at_the_limit(make_gateway, fake_openai, backend):
    # each request costs (1 + 3) tokens x $1000/Mtok = $0.004; $0.02 buys exactly five
    text, secret, model = limits_config(fake_openai.url, backend, key_extra="budget_usd = 0.02")
    gw = make_gateway(text)
    answers = burst(gw.url, secret, model, 12)
    assert sorted(r.status_code for r in answers).count(200) == 5
    denied = [r for r in answers if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in denied)
    assert all(r.json()["error"]["type"] == "insufficient_quota" for r in denied)


def test_expired_key_is_refused(make_gateway, fake_openai):
    text, secret, model = limits_config(fake_openai.url, "", key_extra='expires_at = "2020-01-01T00:00:00Z"')
    gw = make_gateway(text)
    r = post(gw.url, secret, model)
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_sdk_sees_rate_limit_error(make_gateway, fake_openai):
    text, secret, model = limits_config(fake_openai.url, "", key_extra="rpm = 1")
    client = make_gateway(text).client(key=secret)
    client.chat.completions.create(model=model, messages=MSG)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=model, messages=MSG)


# --- window behaviour on a fake clock ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(toml: str) -> tuple[Limits, Clock]:
    import tomllib

    config = parse_config(tomllib.loads(toml), "t.toml", {})
    clock = Clock()
    return Limits(config, MemoryBackend(clock)), clock


GCRA_TOML = """
[providers.local]
kind = "echo"
[[models]]
name = "m"
targets = [{ provider = "local", model = "e", input_per_mtok = 1.0, output_per_mtok = 1.0 }]
[[keys]]
name = "k"
key = "sk-k"
rpm = 60
tpm = 600
"""


def test_gcra_burst_then_steady_refill():
    limits, clock = _limits(GCRA_TOML)
    key, alias = limits.config.keys[0], limits.config.models["m"]
    body = {"messages": MSG, "max_tokens": 1}

    async def take(n: int) -> list[bool]:
        out = []
        for i in range(n):
            try:
                await limits.acquire(key, alias, chat_request(body, f"r{clock.now}-{i}"))
                out.append(True)
            except Exception:
                out.append(False)
        return out

    assert asyncio.run(take(61)).count(True) == 60  # the whole minute's allowance at once, not more
    clock.now += 0.5
    assert asyncio.run(take(1)) == [False]  # one request per second refills, not per half second
    clock.now += 0.5
    assert asyncio.run(take(2)) == [True, False]
    clock.now += 30
    assert asyncio.run(take(31)).count(True) == 30
    clock.now += 60
    assert asyncio.run(take(61)).count(True) == 60  # fully refilled after a quiet minute


def test_tpm_settle_gives_back_unused_tokens():
    limits, clock = _limits(GCRA_TOML.replace("rpm = 60\n", ""))
    key, alias = limits.config.keys[0], limits.config.models["m"]

    async def run() -> tuple[str, str]:
        ticket = await limits.acquire(key, alias, chat_request({"messages": MSG, "max_tokens": 499}, "a"))
        before = ticket.headers()["x-ratelimit-remaining-tokens"]
        limits.settle(ticket, UsageRecord("a", 0, "k", "m", "chat", False, prompt_tokens=1, completion_tokens=9))
        await limits.flush()
        ticket = await limits.acquire(key, alias, chat_request({"messages": MSG, "max_tokens": 1}, "b"))
        return before, ticket.headers()["x-ratelimit-remaining-tokens"]

    before, after = asyncio.run(run())
    assert before == "100"  # 600 - (1 + 499)
    assert after == "588"  # 600 - 10 used - 2 reserved


def test_settlements_sent_together_add_up():
    """Token corrections of several requests go out in one batch, summed per limit: the bucket ends
    where settling them one by one would have left it."""
    limits, _ = _limits(GCRA_TOML.replace("rpm = 60\n", ""))
    key, alias = limits.config.keys[0], limits.config.models["m"]

    async def run() -> str:
        tickets = [await limits.acquire(key, alias, chat_request({"messages": MSG, "max_tokens": 99}, f"r{i}"))
                   for i in range(3)]  # 3 x 100 reserved
        for i, ticket in enumerate(tickets):
            limits.settle(ticket, UsageRecord(f"r{i}", 0, "k", "m", "chat", False, prompt_tokens=1,
                                              completion_tokens=i))
        assert len(limits.settlements.owed) == 1  # one entry for the one tpm bucket
        await limits.flush()
        ticket = await limits.acquire(key, alias, chat_request({"messages": MSG, "max_tokens": 1}, "last"))
        return ticket.headers()["x-ratelimit-remaining-tokens"]

    assert asyncio.run(run()) == "592"  # 600 - (1 + 2 + 3) used - 2 reserved


def test_a_key_given_new_limits_is_checked_by_them_at_once():
    """Checks are built once per set of limits and reused; a key whose limits change (the admin API, a
    reload) must be checked by the new ones from its next request, and a key without limits not at all."""
    import dataclasses

    limits, clock = _limits(GCRA_TOML.replace("tpm = 600\n", "").replace("rpm = 60", "rpm = 2"))
    key, alias = limits.config.keys[0], limits.config.models["m"]
    body = {"messages": MSG, "max_tokens": 1}

    async def codes(k, n: int) -> list[int]:
        out = []
        for i in range(n):
            try:
                await limits.acquire(k, alias, chat_request(body, f"r{i}"))
                out.append(200)
            except GatewayError as e:
                out.append(e.status)
        return out

    assert asyncio.run(codes(key, 3)) == [200, 200, 429]
    clock.now += 60  # a quiet minute: the bucket is full again
    assert asyncio.run(codes(dataclasses.replace(key, rpm=5), 6)) == [200] * 5 + [429]
    assert limits.plan(dataclasses.replace(key, rpm=None), alias, chat_request(body, "x")) is None


def test_reset_duration_format():
    assert duration(0.5) == "0.5s" and duration(1) == "1s" and duration(360) == "6m0s" and duration(61.2) == "1m1s"


# --- leases: steady traffic admitted from room taken ahead -------------------------------------------


def _lease_setup(rpm: int, tpm: int | None = None) -> tuple:
    """A config with a key of its own (rpm, tpm) on the shared Redis, and that Redis."""
    import tomllib

    import redis

    name = f"k-{uuid.uuid4().hex[:10]}"
    text = GCRA_TOML.replace('"k"', f'"{name}"').replace("rpm = 60", f"rpm = {rpm}")
    text = text.replace("tpm = 600", f"tpm = {tpm}") if tpm else text.replace("tpm = 600\n", "")
    config = parse_config(tomllib.loads(text), "t.toml", {})
    return config, redis.Redis.from_url(shared_redis_url()), name


def _ahead(store, bucket: str, seconds: float) -> float:
    """Set a GCRA bucket as if `seconds` of its window were used just now; its TAT, then, is fixed
    until requests move it (refilling only ever shows against the clock). Compared with abs=1e-5: each
    update rounds the TAT (about 1.8e9) to its last bit, 2.4e-7 s; a request's step here is 6e-4 s."""
    now, micros = store.time()
    tat = now + micros / 1e6 + seconds
    store.set(bucket, repr(tat))
    return tat


async def _through(limits: Limits, key, alias, body: dict, n: int, prefix: str = "r",
                   used: int | None = None) -> tuple[int, int, list[dict[str, str]]]:
    """n requests one after another, as the endpoint runs them: (admitted, of them from leases, headers);
    with `used`, each settles to that many completion tokens."""
    admitted = local = 0
    headers = []
    for i in range(n):
        plan = limits.plan(key, alias, chat_request(body, f"{prefix}{i}"))
        ticket = limits.admit_here(plan)
        if ticket is not None:
            local += 1
        else:
            try:
                ticket = await limits.admit(plan)
            except GatewayError:
                continue
        admitted += 1
        headers.append(ticket.headers())
        if used is not None:
            limits.settle(ticket, UsageRecord(f"{prefix}{i}", 0, key.name, "m", "chat", False, prompt_tokens=1,
                                              completion_tokens=used))
    return admitted, local, headers


def test_steady_traffic_is_admitted_from_leases_and_counted_exactly():
    """Requests close together take leases and are then mostly admitted without a round trip; every
    request is still counted once in Redis, and unused lease units (and unused reserved tokens) go
    back: the buckets end exactly where one script per request would have left them."""
    from proxy.limits import RedisBackend

    config, store, name = _lease_setup(rpm=100_000, tpm=10_000_000)
    key, alias = config.keys[0], config.models["m"]
    rpm_bucket, tpm_bucket = f"{{llm-gateway}}:rpm:key:{name}", f"{{llm-gateway}}:tpm:key:{name}"
    rpm_tat, tpm_tat = _ahead(store, rpm_bucket, 10), _ahead(store, tpm_bucket, 10)
    n = 600

    async def run() -> tuple[int, int, list[dict[str, str]]]:
        limits = Limits(config, RedisBackend(shared_redis_url()))
        # each reserves 1 prompt + 9 max_tokens and settles to 1 + 3 used
        result = await _through(limits, key, alias, {"messages": MSG, "max_tokens": 9}, n, used=3)
        assert limits.leases.held() > 0  # some room still held
        await limits.aclose()  # gives it back
        return result

    admitted, local, headers = asyncio.run(run())
    assert admitted == n
    assert local > n * 0.8  # after the first few, leases carry the traffic
    # within half of one request's step for rpm (600 µs) and two tokens for tpm (12 µs): float rounding.
    # A batch of corrections cut off at shutdown once left runs 6 tokens (one request's -6) high.
    assert float(store.get(rpm_bucket)) == pytest.approx(rpm_tat + n * 60 / 100_000, abs=3e-4)
    assert float(store.get(tpm_bucket)) == pytest.approx(tpm_tat + n * 4 * 60 / 10_000_000, abs=1.2e-5)
    # what the headers show falls by one per request, leased or not (10 s of the window were used; it
    # refills by 1,667 a second, which a request that went to Redis shows: up to a second's refill
    # between two requests, so a loaded machine's pause does not fail the run)
    remaining = [int(h["x-ratelimit-remaining-requests"]) for h in headers]
    assert remaining[0] == pytest.approx(50 * 100_000 / 60 - 1, abs=50)
    assert all(-1 <= b - a <= 1_700 for a, b in zip(remaining, remaining[1:], strict=False))
    assert remaining[-1] < remaining[0] - n / 2


def test_leases_left_unused_go_back_after_a_while(monkeypatch):
    from proxy.limits import RedisBackend, leases

    monkeypatch.setattr(leases, "LEASE_HOLD_S", 0.05)
    config, store, name = _lease_setup(rpm=100_000)
    key, alias = config.keys[0], config.models["m"]
    bucket = f"{{llm-gateway}}:rpm:key:{name}"
    tat = _ahead(store, bucket, 10)

    async def run() -> float:
        limits = Limits(config, RedisBackend(shared_redis_url()))
        admitted, local, _ = await _through(limits, key, alias, {"messages": MSG, "max_tokens": 1}, 50)
        assert admitted == 50 and local > 0
        held = float(store.get(bucket))
        await asyncio.sleep(0.3)  # past LEASE_HOLD_S and the settle batch, with the replica still up
        assert limits.leases.held() == 0
        await limits.backend.aclose()
        return held

    held = asyncio.run(run())
    assert held > tat + 50 * 60 / 100_000 + 1e-6  # while held, the lease counted in Redis too
    assert float(store.get(bucket)) == pytest.approx(tat + 50 * 60 / 100_000, abs=1e-5)


def test_near_its_limit_a_key_is_checked_request_by_request():
    """No lease is granted that would leave less than LEASE_FREE_SHARE of the window free: near a
    limit, every request goes to Redis, so other replicas are not refused early for room held here."""
    from proxy.limits import RedisBackend
    from proxy.limits.checks import WINDOW_S
    from proxy.limits.leases import LEASE_FREE_SHARE

    config, store, name = _lease_setup(rpm=100_000)
    key, alias = config.keys[0], config.models["m"]
    # 0.5 s of the window, 833 requests, left before leases stop
    _ahead(store, f"{{llm-gateway}}:rpm:key:{name}", WINDOW_S * (1 - LEASE_FREE_SHARE) - 0.5)

    async def run() -> tuple[int, int]:
        limits = Limits(config, RedisBackend(shared_redis_url()))
        admitted, local, _ = await _through(limits, key, alias, {"messages": MSG, "max_tokens": 1}, 1500)
        await limits.aclose()
        return admitted, local

    admitted, local = asyncio.run(run())
    assert admitted == 1500
    assert local < 833  # leases while the room lasted, none after


def test_a_lease_serves_only_the_limit_it_was_taken_under():
    """A key whose limit is lowered (a reload, the admin API) is checked by the new limit at once, not
    admitted from room leased under the old one."""
    import dataclasses

    from proxy.limits import RedisBackend

    config, store, name = _lease_setup(rpm=100_000)
    key, alias = config.keys[0], config.models["m"]
    body = {"messages": MSG, "max_tokens": 1}

    async def run() -> tuple[int, int]:
        limits = Limits(config, RedisBackend(shared_redis_url()))
        admitted, local, _ = await _through(limits, key, alias, body, 50)
        assert admitted == 50 and local > 0 and limits.leases.held() > 0
        admitted, local, _ = await _through(limits, dataclasses.replace(key, rpm=3), alias, body, 6, prefix="n")
        await limits.aclose()
        return admitted, local

    admitted, local = asyncio.run(run())
    assert local == 0
    assert admitted in (2, 3)  # 3 a minute, less the few ms the bucket is ahead from the first 50


def test_a_busy_key_is_served_from_leases_and_counted_exactly(make_gateway, fake_openai, monkeypatch):
    """Through the gateway: a burst on a key with large limits makes far fewer script calls than
    requests, every response still carries the rate-limit headers, and once the gateway has shut down
    Redis holds exactly what the requests used. On a redis-server of its own: script calls are
    counted server-wide, and other tests' scripts must not count. The burst counts as busy at 50 ms
    between requests, not 5, and leases cover 200 ms of demand, not 20: on a loaded 2-core machine
    eight threads' requests come slower and further apart, and the test is about what leases save,
    not about the production thresholds."""
    from proxy.limits import leases, settlements

    monkeypatch.setattr(leases, "LEASE_AFTER_S", 0.05)
    monkeypatch.setattr(leases, "LEASE_HORIZON_S", 0.2)  # leases sized on 200 ms of demand, not 20
    monkeypatch.setattr(settlements, "SETTLE_BATCH_S", 0.05)  # settlements of a slow burst go together too
    server = RedisServer().start()
    try:
        _busy_key_through_the_gateway(make_gateway, fake_openai, server.url)
    finally:
        server.stop()


def _busy_key_through_the_gateway(make_gateway, fake_openai, url: str) -> None:
    import redis

    text, secret, model = limits_config(fake_openai.url, url, key_extra="rpm = 100000\ntpm = 1000000")
    name = secret.removeprefix("sk-")
    store = redis.Redis.from_url(url)
    rpm_bucket, tpm_bucket = f"{{llm-gateway}}:rpm:key:{name}", f"{{llm-gateway}}:tpm:key:{name}"
    rpm_tat, tpm_tat = _ahead(store, rpm_bucket, 10), _ahead(store, tpm_bucket, 10)
    gw = make_gateway(text)

    def scripts() -> int:
        stats = store.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    before = scripts()
    with httpx.Client(headers={"authorization": f"Bearer {secret}"}) as http, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:  # keep-alive: requests close together
        responses = list(pool.map(lambda _: http.post(gw.url + "/v1/chat/completions", json={
            "model": model, "messages": MSG, "max_tokens": 3}), range(300)))
    calls = scripts() - before
    assert [r.status_code for r in responses] == [200] * 300
    assert all(int(r.headers["x-ratelimit-remaining-requests"]) > 80_000 for r in responses)
    assert calls < 100  # without leases: one script per request, and settlements besides
    gw.server.stop()  # gives back what its leases hold
    # Within a sixth of one request's step: the TATs are epoch seconds, and the leases' many additions
    # round at about 2e-7 each, so an exact float match is not to be had, but one request more or less is.
    assert float(store.get(rpm_bucket)) == pytest.approx(rpm_tat + 300 * 60 / 100_000, abs=1e-4)
    # each echo request uses 1 prompt + 3 completion tokens
    assert float(store.get(tpm_bucket)) == pytest.approx(tpm_tat + 300 * 4 * 60 / 1_000_000, abs=4e-5)


def test_replicas_with_leases_never_admit_more_than_the_limit():
    """Two replicas take turns on one key near its limit: together they admit at most the limit (plus
    what refills meanwhile), and at most their last leases fewer."""
    from proxy.limits import RedisBackend
    from proxy.limits.leases import LEASE_LIMIT_SHARE

    rpm = 3000
    config, store, name = _lease_setup(rpm=rpm)
    key, alias = config.keys[0], config.models["m"]
    body = {"messages": MSG, "max_tokens": 1}

    async def run() -> tuple[int, int, float]:
        replicas = [Limits(config, RedisBackend(shared_redis_url())) for _ in range(2)]
        started = time.monotonic()
        admitted = local = 0
        for turn in range(rpm * 12 // 100):  # 10 requests a turn, 20% more than the limit in all
            got, here, _ = await _through(replicas[turn % 2], key, alias, body, 10, prefix=f"t{turn}-")
            admitted, local = admitted + got, local + here
        took = time.monotonic() - started
        for limits in replicas:
            await limits.aclose()
        return admitted, local, took

    admitted, local, took = asyncio.run(run())
    refilled = took * rpm / 60 + 1
    assert local > 0  # leases were in play
    assert admitted <= rpm + refilled
    assert admitted >= rpm - 2 * LEASE_LIMIT_SHARE * rpm


def test_a_check_that_finds_its_script_gone_sends_it_again_and_counts_once():
    """After a Redis restart or SCRIPT FLUSH the cached script is gone (NOSCRIPT): the check sends it
    in full and the request is still checked and counted, once. On a redis-server of its own, since
    SCRIPT FLUSH empties the script cache of every client."""
    import tomllib

    import redis

    from proxy.limits import RedisBackend

    server = RedisServer().start()
    config = parse_config(tomllib.loads(GCRA_TOML.replace("rpm = 60", "rpm = 1000").replace("tpm = 600\n", "")),
                          "t.toml", {})
    key, alias = config.keys[0], config.models["m"]
    store = redis.Redis.from_url(server.url)
    bucket = "{llm-gateway}:rpm:key:k"
    body = {"messages": MSG, "max_tokens": 1}

    async def run() -> str:
        limits = Limits(config, RedisBackend(server.url))
        await limits.acquire(key, alias, chat_request(body, "first"))  # acquire: no leases asked for
        first = float(store.get(bucket))
        store.script_flush()
        ticket = await limits.acquire(key, alias, chat_request(body, "second"))
        assert float(store.get(bucket)) == pytest.approx(first + 60 / 1000, abs=1e-3)  # counted, once
        await limits.aclose()
        return ticket.headers()["x-ratelimit-remaining-requests"]

    try:
        # 998 within one request's step (60 ms at rpm 1000) of the first request, 999 on a slow machine
        assert asyncio.run(run()) in ("998", "999")
    finally:
        server.stop()


def test_a_redis_url_with_user_password_and_database_is_honoured(make_gateway, fake_openai):
    """redis://user:password@host:port/db: the client authenticates (ACL user) and selects the database;
    a wrong password is a store outage, not a crash."""
    from urllib.parse import urlsplit

    import redis

    base = urlsplit(shared_redis_url())
    admin = redis.Redis(host=base.hostname, port=base.port or 6379)
    user = f"gw-{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(user, enabled=True, passwords=["+s3cret pass"], keys=["*"], commands=["+@all"])
    try:
        url = f"redis://{user}:s3cret%20pass@{base.hostname}:{base.port or 6379}/5"
        text, secret, model = limits_config(fake_openai.url, url, key_extra="rpm = 1000")
        name = secret.removeprefix("sk-")
        gw = make_gateway(text)
        assert post(gw.url, secret, model).status_code == 200
        bucket = f"{{llm-gateway}}:rpm:key:{name}"
        assert redis.Redis(host=base.hostname, port=base.port or 6379, db=5).exists(bucket)
        assert not admin.exists(bucket)  # not in database 0

        bad = url.replace("s3cret%20pass", "wrong")
        text, secret, model = limits_config(fake_openai.url, bad, key_extra="rpm = 1000",
                                            limits='on_store_error = "deny"')
        gw = make_gateway(text)
        r = post(gw.url, secret, model)
        assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    finally:
        admin.acl_deluser(user)


def test_budget_periods_start_and_end_in_utc():
    from datetime import UTC, datetime

    from proxy.limits import period_of

    now = datetime(2026, 12, 31, 18, 0, tzinfo=UTC)
    assert period_of("day", now) == ("d2026-12-31", datetime(2026, 12, 31, tzinfo=UTC), 6 * 3600)
    assert period_of("month", now) == ("m2026-12", datetime(2026, 12, 1, tzinfo=UTC), 6 * 3600)  # into January
    assert period_of("total", now) == ("total", None, 0.0)
