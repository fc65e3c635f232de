"""Limits that survive their store losing state: a budget's spend re-read from the ledger after Redis lost
its data, max_parallel slots freed within seconds of a replica's death, and a Redis outage logged once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from proxy.config import parse_config
from proxy.limits import Limits, RedisBackend, Ticket
from tests.conftest import ledger_rows
from tests.procs import GatewayProcess
from tests.redis_util import RedisServer
from tests.servers import free_port
from tests.test_limits import GCRA_TOML, MSG, chat_request, limits_config, post

FREED_WITHIN_S = 16.0  # a dead replica's slots: the slot TTL (6 s), a new replica's start, room for a slow machine


def _spend_in_ledger(db: Path, name: str) -> float:
    with sqlite3.connect(db) as conn:
        sql = "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_log WHERE key_name = ?"
        return conn.execute(sql, (name,)).fetchone()[0]


def _post_past_outage(url: str, secret: str, model: str, deadline_s: float = 10) -> httpx.Response:
    """A request's answer once the gateway reaches Redis again (under on_store_error = "deny", a 503 until then)."""
    deadline = time.monotonic() + deadline_s
    while True:
        answer = post(url, secret, model)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_a_spent_total_budget_stays_spent_after_redis_loses_its_data(make_gateway, fake_openai, tmp_path):
    """A key spent to its 429 is still refused after FLUSHDB and after a Redis restart without
    persistence: the gateway notices the spend is missing (not zero) and re-reads it from the ledger.
    On a redis-server of the test's own: it is flushed and restarted."""
    server = RedisServer().start()
    try:
        db = tmp_path / "gw.db"
        text, secret, model = limits_config(fake_openai.url, server.url, limits='on_store_error = "deny"',
                                            key_extra='budget_usd = 0.02\nbudget_period = "total"')
        text = text.replace("sqlite:///:memory:", f"sqlite:///{db}")
        name = secret.removeprefix("sk-")
        spend_key = f"{{llm-gateway}}:spend:key:{name}:total"
        store = redis.Redis.from_url(server.url)
        gw = make_gateway(text)
        # each request costs (1 + 3) tokens x $1000/Mtok = $0.004: five fit in $0.02
        codes = [post(gw.url, secret, model).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        assert len(ledger_rows(db, "SELECT 1 FROM usage_log WHERE key_name = ? AND status = 200", (name,),
                               at_least=5)) == 5

        store.flushdb()
        refused = post(gw.url, secret, model)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        assert abs(float(store.get(spend_key)) - _spend_in_ledger(db, name)) < 1e-9  # re-read from the ledger

        server.stop()
        server.start()  # empty: no persistence
        refused = _post_past_outage(gw.url, secret, model)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        assert abs(float(store.get(spend_key)) - _spend_in_ledger(db, name)) < 1e-9
        assert abs(_spend_in_ledger(db, name) - 0.02) < 1e-9  # nothing was spent past the budget
    finally:
        server.stop()


def test_a_budget_whose_spend_cannot_be_read_follows_on_store_error(make_gateway, fake_openai, tmp_path):
    """A lost spend and a ledger that cannot be read: under "deny" the request is refused with 503,
    not admitted against a spend of zero."""
    server = RedisServer().start()
    try:
        text, secret, model = limits_config(fake_openai.url, server.url, limits='on_store_error = "deny"',
                                            key_extra='budget_usd = 0.02\nbudget_period = "total"')
        # a database that cannot be opened: a directory where the SQLite file should be
        (tmp_path / "not-a-db").mkdir()
        text = text.replace("sqlite:///:memory:", f"sqlite:///{tmp_path / 'not-a-db'}")
        gw = make_gateway(text)
        redis.Redis.from_url(server.url).flushdb()
        answer = post(gw.url, secret, model)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "limits_unavailable"
    finally:
        server.stop()


def _parallel_config(tmp_path: Path, fake_url: str, redis_url: str, name: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[storage]
database_url = "sqlite:///{tmp_path / 'gw.db'}"
spill_dir = "{tmp_path / 'spill'}"
redis_url = "{redis_url}"

[providers.local]
kind = "echo"

[providers.fake]
kind = "openai"
base_url = "{fake_url}/v1"
timeout_s = 60

[[models]]
name = "fast"
targets = [{{ provider = "local", model = "echo-1" }}]

[[models]]
name = "slow"
targets = [{{ provider = "fake", model = "delay-20000" }}]

[[keys]]
name = "{name}"
key = "sk-{name}"
max_parallel = 5
""")
    return path


def test_a_killed_replica_frees_its_max_parallel_slots_within_seconds(fake_openai, tmp_path):
    """kill -9 with 5 requests in flight on a key with max_parallel = 5: a new replica admits the key's
    requests again within the slot TTL (a few seconds), not after the killed replica's slots go stale."""
    server = RedisServer().start()
    name = f"k-{uuid.uuid4().hex[:10]}"
    secret = f"sk-{name}"
    path = _parallel_config(tmp_path, fake_openai.url, server.url, name)
    first = GatewayProcess(path, tmp_path)
    second = None
    pool = concurrent.futures.ThreadPoolExecutor(5)
    try:
        def slow(_: int) -> int:
            while True:  # a probe below can take a slot for a moment: a slow request refused then tries again
                try:
                    status = post(first.url, secret, "slow", timeout=30).status_code
                except httpx.HTTPError:
                    return 0  # the replica was killed under it
                if status != 429:
                    return status
                time.sleep(0.05)

        for i in range(5):
            pool.submit(slow, i)
        deadline = time.monotonic() + 15
        while True:  # all five slots taken: the key is refused for max_parallel
            answer = post(first.url, secret, "fast")
            if answer.status_code == 429 and "max_parallel" in answer.json()["error"]["message"]:
                break
            assert time.monotonic() < deadline, "the five slow requests never held the key's slots"
            time.sleep(0.1)

        first.proc.kill()  # kill -9: no shutdown, no slot released
        first.proc.wait(timeout=10)
        killed_at = time.monotonic()
        second = GatewayProcess(path, tmp_path)
        deadline = killed_at + FREED_WITHIN_S
        while True:
            answer = post(second.url, secret, "fast")
            if answer.status_code == 200:
                break
            assert answer.status_code == 429, answer.text
            assert time.monotonic() < deadline, "the killed replica's slots were still held"
            time.sleep(0.2)
        assert time.monotonic() - killed_at <= FREED_WITHIN_S
    finally:
        first.stop()
        if second is not None:
            second.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        server.stop()


@pytest.mark.parametrize("mode", ["allow", "local"])
def test_a_redis_outage_is_logged_once_not_per_request(caplog, mode):
    """Requests while Redis is unreachable: one warning for the outage, not one per request."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    toml = GCRA_TOML.replace("tpm = 600\n", "") + f'[limits]\non_store_error = "{mode}"\n'
    config = parse_config(tomllib.loads(toml), "t.toml", {})
    key, alias = config.keys[0], config.models["m"]

    async def run() -> list[object]:
        limits = Limits(config, RedisBackend(url))
        out = [await limits.acquire(key, alias, chat_request({"messages": MSG}, f"r{i}")) for i in range(20)]
        await limits.aclose()
        return out

    with caplog.at_level(logging.WARNING, logger="gateway.limits"):
        tickets = asyncio.run(run())
    if mode == "allow":
        assert tickets == [None] * 20
    else:  # admitted in-process, within the key's rpm = 60
        assert all(isinstance(t, Ticket) for t in tickets)
    warnings = [r for r in caplog.records if r.name == "gateway.limits" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()
