"""Corrections after requests reach Redis even when the gateway shuts down while a batch of them is
being sent: on a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from proxy.config import parse_config
from proxy.limits import Limits, RedisBackend
from proxy.limits.checks import WINDOW_S
from proxy.records import UsageRecord
from tests.redis_util import RedisServer
from tests.test_limits import GCRA_TOML, MSG, chat_request

TPM = 10_000_000


class TakenNotYetSent(RedisBackend):
    """The real Redis store, whose settle calls hold their batch until ``gate`` opens: a batch taken
    from the pending corrections that has not reached Redis yet (redis-py can wait on its connection
    before it writes a call)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = asyncio.Event()
        self.taken = asyncio.Event()

    async def settle(self, entries) -> None:
        self.taken.set()
        await self.gate.wait()
        await super().settle(entries)


@pytest.fixture
def private_redis():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_correction_being_sent_at_shutdown_still_reaches_redis(private_redis):
    """One request reserves 1 prompt + 9 max_tokens and uses 1 + 3: its correction of -6 tokens is
    in a batch on its way when the gateway shuts down, and the bucket still ends 4 tokens on."""
    import tomllib

    text = GCRA_TOML.replace("rpm = 60\n", "").replace("tpm = 600", f"tpm = {TPM}")
    config = parse_config(tomllib.loads(text), "t.toml", {})
    store = redis.Redis.from_url(private_redis.url)
    bucket = "{llm-gateway}:tpm:key:k"
    now, micros = store.time()
    tat = now + micros / 1e6 + 10  # 10 s of the window used: the TAT stays put until requests move it
    store.set(bucket, repr(tat))

    async def run() -> None:
        backend = TakenNotYetSent(private_redis.url)
        limits = Limits(config, backend)
        request = chat_request({"messages": MSG, "max_tokens": 9}, "r1")
        ticket = await limits.acquire(config.keys[0], config.models["m"], request)
        limits.settle(ticket, UsageRecord("r1", 0, "k", "m", "chat", False, prompt_tokens=1, completion_tokens=3))
        await asyncio.wait_for(backend.taken.wait(), 5)  # the batch is taken and on its way
        closing = asyncio.ensure_future(limits.aclose())
        await asyncio.sleep(0.05)  # shutdown has begun while the batch is still being sent
        assert not closing.done()  # it waits for that batch
        backend.gate.set()
        await asyncio.wait_for(closing, 5)

    asyncio.run(run())
    assert float(store.get(bucket)) == pytest.approx(tat + 4 * WINDOW_S / TPM, abs=1e-5)  # one token is 6e-6 s



def test_a_budget_check_that_timed_out_gives_back_what_it_reserved_once_redis_answers():
    """Redis stalls (DEBUG SLEEP 1.5) while a budgeted request is checked: the gateway's call times out
    after 0.5 s and the request is refused (on_store_error = "deny"), but the script runs once Redis
    wakes and reserves the request's worst-case cost. When the store answers again, that reservation
    is taken back: the budget's spend ends as the requests that really ran left it."""
    import threading
    import tomllib
    from datetime import UTC, datetime

    from proxy.errors import GatewayError
    from proxy.limits.checks import period_of
    from proxy.limits.planner import budget_key

    server = RedisServer("--enable-debug-command", "yes").start()
    try:
        text = GCRA_TOML.replace("rpm = 60\ntpm = 600\n", "budget_usd = 10.0\n")
        text += '\n[limits]\non_store_error = "deny"\n'
        config = parse_config(tomllib.loads(text), "t.toml", {})
        key, alias = config.keys[0], config.models["m"]
        store = redis.Redis.from_url(server.url)

        async def run() -> tuple[float, float]:
            limits = Limits(config, RedisBackend(server.url))
            await limits.seed_budgets({"k": 0.0}, config.keys)
            spend_key = budget_key("k", period_of(key.budget_period, datetime.now(UTC))[0])
            body = {"messages": MSG, "max_tokens": 9}
            assert await limits.acquire(key, alias, chat_request(body, "first")) is not None  # scripts loaded
            before = float(store.get(spend_key))
            stall = threading.Thread(target=lambda: redis.Redis.from_url(server.url).execute_command(
                "DEBUG", "SLEEP", "1.5"))
            stall.start()
            await asyncio.sleep(0.2)  # Redis is asleep now
            with pytest.raises(GatewayError) as refused:
                await limits.acquire(key, alias, chat_request(body, "timed-out"))
            assert refused.value.status == 503
            await asyncio.get_running_loop().run_in_executor(None, stall.join)
            phantom = float(store.get(spend_key)) - before  # the refused request's script ran after all
            ticket = await limits.acquire(key, alias, chat_request(body, "later"))  # the store answers again
            assert ticket is not None
            deadline = time.monotonic() + 10
            while float(store.get(spend_key)) > before + ticket.reserved_cost + 1e-12:
                assert time.monotonic() < deadline, f"spend stayed at {float(store.get(spend_key))}"
                await asyncio.sleep(0.1)
            left = float(store.get(spend_key)) - before
            await limits.aclose()
            return phantom, left

        phantom, left = asyncio.run(run())
        assert phantom > 0  # the fault did happen: a reservation nobody would settle
        assert left == pytest.approx(phantom)  # the later request reserved as much as the refused one
    finally:
        server.stop()
