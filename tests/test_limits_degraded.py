"""[limits] on_store_error while Redis stalls: "local" (the default) keeps every limit in-process at this
replica's share and adds what it admitted to Redis's counters when Redis answers again; "allow" and
"deny" behave as before. Each test pauses a redis-server of its own (SIGSTOP), never the shared one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import redis

from proxy.config import ConfigError, load_config, parse_config
from proxy.errors import GatewayError
from proxy.limits import Check, Limits, MemoryBackend, StoreUnavailable, Ticket
from proxy.limits.checks import PREFIX, WINDOW_S
from proxy.limits.store import Settlement, Verdict
from proxy.records import UsageRecord
from tests.redis_util import RedisServer
from tests.test_limits import MSG, chat_request, limits_config

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


def test_a_stall_in_the_middle_of_a_burst_gives_no_more_than_the_allowance(make_gateway, fake_openai, private_redis):
    """The issue's case: 150 requests at rpm = 40 over about 2 s, Redis paused for 1.5 s of them ("allow"
    gave 103). Requests in flight to Redis when it stalls, and the reconciliation while traffic goes on,
    never let the total past the allowance."""
    text, secret, model = limits_config(fake_openai.url, private_redis.url, key_extra="rpm = 40")
    gw = make_gateway(text)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=30)
    assert private_redis.proc is not None
    pid = private_redis.proc.pid

    started = time.monotonic()

    def paced(i: int) -> Answer:
        time.sleep(max(0.0, started + 0.02 * i - time.monotonic()))  # the burst spreads over 3 s
        return _call(client, model)

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = pool.map(paced, range(BURST))
        time.sleep(0.3)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(pid, signal.SIGCONT)
        answers = list(answers)
    elapsed = time.monotonic() - started
    assert {status for status, *_ in answers} <= {200, 429}
    answered = sum(1 for status, *_ in answers if status == 200)
    assert 40 <= answered <= 40 + elapsed * 40 / WINDOW_S + 1, (answered, elapsed)


def test_two_replicas_each_keep_their_share_and_the_sum_stays_within_the_limit(make_gateway, fake_openai,
                                                                                private_redis):
    """rpm = 40 over two gateways with expected_replicas = 2: 5 requests each through Redis, then a
    stall. Each admits its share of 20 less its own 5, so the two together stay within the 40, and
    once Redis answers it holds all 40: neither gateway admits more than the refill after."""
    text, secret, model = limits_config(fake_openai.url, private_redis.url, key_extra="rpm = 40",
                                        limits="expected_replicas = 2")
    name = secret.removeprefix("sk-")
    gateways = [make_gateway(text), make_gateway(text)]
    clients = [openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=30) for gw in gateways]
    started = time.monotonic()
    before = [_call(clients[i % 2], model) for i in range(BEFORE)]
    assert all(status == 200 for status, *_ in before), before
    with paused(private_redis):
        first = [_call(client, model) for client in clients]  # each meets the stall once, then is degraded
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            during = first + list(pool.map(lambda i: _call(clients[i % 2], model), range(BURST - 2)))
        assert [_degraded(gw.url) for gw in gateways] == [1.0, 1.0]
    burst_ended = time.monotonic()
    answered = sum(1 for status, *_ in before + during if status == 200)
    assert 40 <= answered <= 40 + (burst_ended - started) * 40 / WINDOW_S + 1, answered

    deadline = time.monotonic() + 15
    while any(_degraded(gw.url) for gw in gateways):
        assert time.monotonic() < deadline, "a gateway never went back to Redis"
        time.sleep(0.1)
    store = redis.Redis.from_url(private_redis.url)
    assert _used(store, f"{PREFIX}rpm:key:{name}", 40) >= answered - (time.monotonic() - started) * 40 / 60 - 2.5
    after = [_call(clients[i % 2], model)[0] for i in range(10)]
    assert after.count(200) <= 1 + (time.monotonic() - burst_ended) * 40 / WINDOW_S, after


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


# --- the share of each limit, in-process (a store that stalls on demand) ------------------------------


class StallingStore(MemoryBackend):
    """The in-process store's arithmetic behind the remote store's interface, unreachable while ``down``."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def acquire(self, checks: list[Check], request_id: str, asks: list[float] | None = None) -> Verdict:
        if self.down:
            raise StoreUnavailable("stalled")
        return await super().acquire(checks, request_id, asks)

    async def settle(self, entries: list[Settlement]) -> None:
        if self.down:
            raise StoreUnavailable("stalled")
        await super().settle(entries)

    async def renew(self, slots: list[tuple[Check, str]]) -> None:
        if self.down:
            raise StoreUnavailable("stalled")

    async def ping(self) -> bool:
        return not self.down


SHARE_TOML = """
[limits]
expected_replicas = 4
[providers.local]
kind = "echo"
[[models]]
name = "m"
targets = [{ provider = "local", model = "e", input_per_mtok = 1000.0, output_per_mtok = 1000.0 }]
[[keys]]
name = "k"
key = "sk-k"
"""


async def _tries(limits: Limits, n: int, tag: str, body: dict | None = None) -> list[Ticket]:
    config = limits.config
    admitted = []
    for i in range(n):
        try:
            ticket = await limits.acquire(config.keys[0], config.models["m"],
                                          chat_request(body or {"messages": MSG, "max_tokens": 1}, f"{tag}{i}"))
        except GatewayError as e:
            assert e.status == 429, e.body()
            continue
        assert ticket is not None
        admitted.append(ticket)
    return admitted


def _row(ticket: Ticket, tokens: int = 0, cost: float = 0.0) -> UsageRecord:
    return UsageRecord(ticket.request_id, time.time(), "k", "m", "chat", False, prompt_tokens=tokens, cost_usd=cost)


async def _back(limits: Limits) -> None:
    deadline = time.monotonic() + 10
    while limits.degraded.active:
        assert time.monotonic() < deadline, "never went back to the store"
        await asyncio.sleep(0.05)


def test_each_replica_admits_its_share_of_an_rpm_less_its_own_use_and_reconciles():
    """rpm = 40 over expected_replicas = 4: a share of 10 a minute; 4 already taken through the store
    leave 6 for the stall, and the store then holds all 10."""
    config = parse_config(tomllib.loads(SHARE_TOML + "rpm = 40\n"), "t.toml", {})
    store = StallingStore()
    limits = Limits(config, store)

    async def run() -> tuple[int, int, float, float]:
        started = time.monotonic()
        before = await _tries(limits, 4, "a")
        store.down = True
        during = await _tries(limits, 20, "b")
        store.down = False
        await _back(limits)
        now = time.monotonic()
        held = (store.values[f"{PREFIX}rpm:key:k"] - now) * 40 / WINDOW_S
        await limits.aclose()
        return len(before), len(during), held, now - started

    before, during, held, elapsed = asyncio.run(run())
    assert (before, during) == (4, 6)
    assert 10 - elapsed * 40 / WINDOW_S - 1e-6 <= held <= 10 + 1e-6  # less only what drained meanwhile


def test_a_budget_stall_spends_a_share_of_what_was_left_and_reconciles():
    """budget_usd = 0.1 over 4 replicas: a stall may spend a quarter of what was left when it began.
    A request reserves 2 tokens at $0.001 ($0.002); settled at 1 token it costs $0.001."""
    config = parse_config(tomllib.loads(SHARE_TOML + "budget_usd = 0.1\n"), "t.toml", {})
    store = StallingStore()
    limits = Limits(config, store)
    key = f"{PREFIX}spend:key:k:"

    async def run() -> tuple[int, int, float, float]:
        first = await _tries(limits, 20, "a")  # $0.04 reserved: 0.06 left, of which a stall may spend 0.015
        spent = next(v for k, v in store.values.items() if k.startswith(key))
        store.down = True
        during = await _tries(limits, 20, "b")
        for ticket in during:  # settled while still stalled: 1 token used of the 2 reserved
            limits.settle(ticket, _row(ticket, tokens=1, cost=0.001))
        store.down = False
        await _back(limits)
        after = next(v for k, v in store.values.items() if k.startswith(key))
        await limits.aclose()
        return len(first), len(during), spent, after

    first, during, spent, after = asyncio.run(run())
    assert first == 20 and spent == pytest.approx(0.04)
    assert during == 7  # 7 x $0.002 = 0.014 <= 0.015 < 0.016
    assert after == pytest.approx(0.04 + 7 * 0.001)  # the stall's real spend, not its reservations


def test_max_parallel_counts_this_replicas_running_requests():
    """max_parallel = 8 over 4 replicas: 2 in flight per replica, counting one the store admitted."""
    config = parse_config(tomllib.loads(SHARE_TOML + "max_parallel = 8\n"), "t.toml", {})
    store = StallingStore()
    limits = Limits(config, store)

    async def run() -> tuple[int, int, int]:
        running = await _tries(limits, 1, "a")
        store.down = True
        during = await _tries(limits, 5, "b")
        for ticket in during:
            limits.settle(ticket, _row(ticket))
        again = await _tries(limits, 5, "c")
        await limits.aclose()
        return len(running), len(during), len(again)

    assert asyncio.run(run()) == (1, 1, 1)


@pytest.mark.parametrize("text,expected", [
    ("[limits]\nexpected_replicas = 0\n", "gw.toml:limits.expected_replicas: must be >= 1"),
    ("[limits]\nexpected_replicas = 2.5\n", "gw.toml:limits.expected_replicas: expected an integer, got a number"),
    ('[limits]\non_store_error = "open"\n', "gw.toml:limits.on_store_error: must be 'local', 'allow' or 'deny'"),
])
def test_limits_keys_are_checked_at_start(tmp_path, text, expected):
    path = tmp_path / "gw.toml"
    path.write_text(text + SHARE_TOML.replace("[limits]\nexpected_replicas = 4\n", ""))
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert expected in str(e.value)
    path.write_text(SHARE_TOML.replace("[limits]\nexpected_replicas = 4\n", ""))
    defaults = load_config(path, env={}).limits
    assert (defaults.on_store_error, defaults.expected_replicas) == ("local", 1)
