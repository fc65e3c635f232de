"""[limits] on_store_error while Redis stalls: "local" (the default) keeps every limit in-process at this
replica's share and adds what it admitted to Redis's counters when Redis answers again; "allow" and
"deny" behave as before. Each test pauses a redis-server of its own (SIGSTOP), never the shared one."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import redis

from proxy.limits.checks import PREFIX, WINDOW_S
from tests.redis_util import RedisServer
from tests.test_limits import MSG, limits_config

BURST = 150
BEFORE = 10  # requests answered through Redis before it stalls


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


Answer = tuple[int, int, float, str]  # status, tokens used, cost in USD, error code


def _call(client: openai.OpenAI, model: str) -> Answer:
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=3)
    except openai.APIStatusError as e:
        code = e.body.get("code", "") if isinstance(e.body, dict) else ""
        return e.status_code, 0, 0.0, str(code)
    reply = raw.parse()
    assert reply.usage is not None
    return 200, reply.usage.total_tokens, float(raw.headers["x-gateway-cost-usd"]), ""


def _burst(client: openai.OpenAI, model: str, n: int) -> list[Answer]:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        return list(pool.map(lambda _: _call(client, model), range(n)))


def _degraded(url: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("gateway_limits_degraded "):
            return float(line.split()[1])
    raise AssertionError("gateway_limits_degraded is not exported")


def _used(r: redis.Redis, key: str, limit: float) -> float:
    """Units an rpm/tpm counter holds now (GCRA: its theoretical arrival time past Redis's clock)."""
    seconds, micros = r.time()
    tat = float(r.get(key) or 0)
    return max(0.0, tat - (seconds + micros / 1e6)) * limit / WINDOW_S


@pytest.mark.parametrize("case", ["rpm", "tpm", "budget"])
def test_a_redis_stall_keeps_each_limit_in_process_and_reconciles(make_gateway, fake_openai, private_redis, case):
    """A burst while Redis is paused gets no more than the limit's allowance over the run (what Redis
    admitted before counts), and once Redis answers it holds the requests admitted meanwhile, so the
    requests that follow are still limited."""
    extra = {"rpm": "rpm = 40", "tpm": "tpm = 400", "budget": 'budget_usd = 0.2\nbudget_period = "total"'}[case]
    text, secret, model = limits_config(fake_openai.url, private_redis.url, key_extra=extra)
    name = secret.removeprefix("sk-")
    gw = make_gateway(text)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=30)
    store = redis.Redis.from_url(private_redis.url)

    started = time.monotonic()
    before = [_call(client, model) for _ in range(BEFORE)]
    assert all(status == 200 for status, *_ in before), before
    with paused(private_redis):
        # one request meets the stall first, so at most its check can reach Redis when it resumes (and
        # count twice, there and here); the burst's requests are then checked in-process at once
        during = [_call(client, model)] + _burst(client, model, BURST - 1)
        assert _degraded(gw.url) == 1.0
    burst_ended = time.monotonic()
    assert {status for status, *_ in during} <= {200, 429}, during
    answered = [r for r in before + during if r[0] == 200]

    deadline = time.monotonic() + 15
    while _degraded(gw.url) != 0.0:  # back on Redis once the locally admitted requests are in its counters
        assert time.monotonic() < deadline, "the gateway never went back to Redis"
        time.sleep(0.1)

    after = _burst(client, model, 10)
    refill_s = time.monotonic() - started
    if case == "rpm":
        allowance = 40 + refill_s * 40 / WINDOW_S  # GCRA refills continuously
        assert 40 <= len(answered) <= allowance + 1, (len(answered), refill_s)
        # Redis holds what was admitted, less what drained since: about a full bucket
        assert _used(store, f"{PREFIX}rpm:key:{name}", 40) >= 40 - (time.monotonic() - burst_ended) * 40 / 60 - 1.5
    elif case == "tpm":
        tokens = sum(used for _, used, _, _ in answered)
        per_request = max(used for _, used, _, _ in answered)
        allowance = 400 + refill_s * 400 / WINDOW_S
        assert 400 - 2 * per_request <= tokens <= allowance + per_request, (tokens, refill_s)
        assert _used(store, f"{PREFIX}tpm:key:{name}", 400) >= tokens - (time.monotonic() - started) * 400 / 60 - 40
    else:
        spent = sum(cost for _, _, cost, _ in answered)
        assert 0.15 <= spent <= 0.2 + 1e-6, spent
        # every cent admitted is in Redis; more only by the stalled request's reservation and a correction
        # lost in the stall (each at most about a request's cost)
        most = max(cost for _, _, cost, _ in answered)
        assert spent - 1e-9 <= float(store.get(f"{PREFIX}spend:key:{name}:total") or 0) <= spent + 3 * most
    # the requests that follow see the reconciled counters: a full bucket refills by refill time only
    again = [a for a in after if a[0] == 200]
    since = time.monotonic() - burst_ended
    if case == "rpm":
        assert len(again) <= 1 + since * 40 / WINDOW_S, after
    elif case == "tpm":
        assert sum(used for _, used, _, _ in again) <= per_request + since * 400 / WINDOW_S, after
    else:
        assert again == [], after


@pytest.mark.parametrize("mode", ["allow", "deny"])
def test_allow_and_deny_behave_as_before_during_a_stall(make_gateway, fake_openai, private_redis, mode):
    """"allow" serves every request while Redis is paused (no limit holds); "deny" answers 503."""
    text, secret, model = limits_config(fake_openai.url, private_redis.url, key_extra="rpm = 40",
                                        limits=f'on_store_error = "{mode}"')
    gw = make_gateway(text)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=30)
    assert [_call(client, model)[0] for _ in range(BEFORE)] == [200] * BEFORE
    with paused(private_redis):
        during = _burst(client, model, 60)
        assert _degraded(gw.url) == 0.0
    if mode == "allow":
        assert [status for status, *_ in during] == [200] * 60
    else:
        assert {(status, code) for status, _, _, code in during} == {(503, "limits_unavailable")}
