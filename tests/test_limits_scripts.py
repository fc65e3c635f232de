"""The limits package itself: its Lua scripts and Python agree on every number they share, and its
modules import without cycles."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import proxy.limits
from proxy.limits.checks import (
    BUDGET_SLACK_USD,
    PARALLEL_RETRY_S,
    PARALLEL_SLOT_TTL_S,
    PREFIX,
    WINDOW_S,
    Check,
)
from proxy.limits.leases import LEASE_FREE_SHARE
from proxy.limits.memory import MemoryBackend
from proxy.limits.redis_backend import BUDGET_KEY_LINGER_S, GCRA_KEY_LINGER_MS, RedisBackend
from proxy.limits.store import SpendUnknown
from tests.redis_util import shared_redis_url

PACKAGE = Path(proxy.limits.__file__).parent


def _keys() -> tuple[str, str, str]:
    """An rpm, a max_parallel and a budget key of this test run's own on the shared Redis."""
    run = f"{PREFIX}test:{uuid.uuid4().hex[:10]}"
    return f"{run}:rpm", f"{run}:inflight", f"{run}:spend"


async def _both(action) -> tuple:
    """``action(backend, keys)`` on the in-process store and on Redis: (memory's result, Redis's)."""
    redis_backend = RedisBackend(shared_redis_url())
    try:
        return await action(MemoryBackend(), _keys()), await action(redis_backend, _keys())
    finally:
        await redis_backend.aclose()


def test_both_stores_agree_on_the_window():
    """A whole window's worth passes at once, leaves nothing and resets in WINDOW_S; one more waits one
    request's step; giving the window back makes it whole again."""
    limit = 60.0

    async def action(backend, keys):
        burst = Check("key", "gcra", keys[0], limit, limit, "requests")
        _, results, _ = await backend.acquire([burst], "a")
        denial, _, _ = await backend.acquire([Check("key", "gcra", keys[0], limit, 1, "requests")], "b")
        await backend.settle([(burst, -limit, "")])
        again, _, _ = await backend.acquire([burst], "c")
        return results, denial.retry_after_s, again

    memory, redis = asyncio.run(_both(action))
    for results, retry, again in (memory, redis):
        assert results[0] == pytest.approx(0, abs=0.01) and results[1] == pytest.approx(WINDOW_S, abs=0.01)
        assert retry == pytest.approx(WINDOW_S / limit, abs=0.05)
        assert again is None


def test_the_store_grants_a_lease_only_while_enough_of_the_window_stays_free():
    limit = 60.0
    room = WINDOW_S * (1 - LEASE_FREE_SHARE) / (WINDOW_S / limit)  # in requests, this one included

    async def grant(ask: float) -> float:
        backend = RedisBackend(shared_redis_url())
        try:
            check = Check("key", "gcra", _keys()[0], limit, 1, "requests")
            _, _, grants = await backend.acquire([check], "a", [ask])
        finally:
            await backend.aclose()
        return grants[0]

    assert asyncio.run(grant(room - 1.5)) == room - 1.5
    assert asyncio.run(grant(room - 0.5)) == 0


def test_both_stores_agree_on_parallel_slots_and_budgets():
    async def action(backend, keys):
        slot = Check("parallel", "parallel", keys[1], 1, 1, "requests", PARALLEL_SLOT_TTL_S)
        await backend.acquire([slot], "a")
        busy, _, _ = await backend.acquire([slot], "b")
        await backend.seed(keys[2], 0.0, 100.0)
        spend = Check("budget", "budget", keys[2], 1.0, 1.0 + BUDGET_SLACK_USD / 2, "usd", 100.0)
        within, _, _ = await backend.acquire([spend], "c")
        over, _, _ = await backend.acquire([Check("budget", "budget", keys[2], 1.0, 1e-6, "usd", 100.0)], "d")
        return busy.retry_after_s, within, over.retry_after_s

    memory, redis = asyncio.run(_both(action))
    assert memory == redis == (PARALLEL_RETRY_S, None, 100.0)


def test_both_stores_report_a_budget_whose_spend_is_missing_and_reserve_nothing():
    """A budget's spend key that is absent (not 0) is reported, with nothing of the request reserved,
    so the limiter can re-read it from the ledger; once seeded the check counts from the seed."""

    async def action(backend, keys):
        rpm = Check("key", "gcra", keys[0], 60.0, 1, "requests")
        spend = Check("budget", "budget", keys[2], 1.0, 0.25, "usd", 100.0)
        with pytest.raises(SpendUnknown) as unknown:
            await backend.acquire([rpm, spend], "a")
        await backend.seed(keys[2], 0.5, 100.0)
        await backend.seed(keys[2], 0.0, 100.0)  # a second seed (another replica's) does not overwrite it
        denial, results, _ = await backend.acquire([rpm, spend], "b")
        return unknown.value.check is spend, denial, results

    memory, redis = asyncio.run(_both(action))
    for same, denial, results in (memory, redis):
        assert same and denial is None
        assert results[0] == pytest.approx(59, abs=0.01)  # the refused try reserved no request
        assert results[2] == pytest.approx(0.25)  # 1.0 - 0.5 seeded - 0.25


def test_slots_not_renewed_expire_and_renewed_ones_stay():
    """A max_parallel slot lives its TTL unless renewed: a dead holder's slot frees by itself."""
    import time

    async def action(backend, keys):
        slot = Check("parallel", "parallel", keys[1], 2, 1, "requests", 0.4)
        await backend.acquire([slot], "kept")
        await backend.acquire([slot], "dropped")
        for _ in range(3):
            await asyncio.sleep(0.2)
            await backend.renew([(slot, "kept")])
        first, _, _ = await backend.acquire([slot], "new")  # "dropped" expired: room for one
        second, _, _ = await backend.acquire([slot], "one-more")  # "kept" and "new" hold both slots
        return first, second is not None

    clock_backend = MemoryBackend(time.monotonic)
    redis_backend = RedisBackend(shared_redis_url())

    async def both():
        try:
            return await action(clock_backend, _keys()), await action(redis_backend, _keys())
        finally:
            await redis_backend.aclose()

    assert asyncio.run(both()) == ((None, True), (None, True))


def test_redis_keys_expire_as_python_says():
    import redis

    async def action() -> tuple[str, str]:
        rpm, _, spend = _keys()
        backend = RedisBackend(shared_redis_url())
        await backend.seed(spend, 0.0, 100.0)
        await backend.acquire([Check("key", "gcra", rpm, 60.0, 60.0, "requests"),
                               Check("budget", "budget", spend, 1.0, 0.5, "usd", 100.0)], "a")
        await backend.aclose()
        return rpm, spend

    rpm, spend = asyncio.run(action())
    store = redis.Redis.from_url(shared_redis_url())
    assert WINDOW_S * 1000 < store.pttl(rpm) <= WINDOW_S * 1000 + GCRA_KEY_LINGER_MS
    assert store.ttl(spend) == pytest.approx(100 + BUDGET_KEY_LINGER_S, abs=2)


def test_the_scripts_hold_no_number_of_their_own():
    """Every number a script shares with Python comes from Python (prepended as Lua locals): what is
    left in the files are ARGV and TIME offsets and unit conversions."""
    allowed = {"0", "1", "2", "3", "4", "5", "1000", "1000000"}
    scripts = sorted(PACKAGE.glob("*.lua"))
    assert [p.name for p in scripts] == ["acquire.lua", "release.lua", "renew.lua", "settle.lua"]
    for path in scripts:
        code = re.sub(r"--[^\n]*", "", path.read_text())  # comments
        code = re.sub(r"'[^']*'", "''", code)  # strings ('%.17g', '-inf')
        numbers = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", code))
        assert numbers <= allowed, f"{path.name}: {sorted(numbers - allowed)}"


def _imports_within_the_package(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy.limits."):
            found.add(node.module.removeprefix("proxy.limits."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("proxy.limits.") for a in node.names if a.name.startswith("proxy.limits.")}
    return found


def test_the_package_modules_import_without_cycles():
    graph = {p.stem: _imports_within_the_package(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert all(target in graph for targets in graph.values() for target in targets)
    done: set[str] = set()
    while len(done) < len(graph):  # take a module whose imports are all taken: none left means a cycle
        ready = [m for m, targets in graph.items() if m not in done and targets <= done]
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done.update(ready)
    for module in graph:  # and each one imports in a fresh interpreter
        subprocess.run([sys.executable, "-c", f"import proxy.limits.{module}"], check=True, timeout=60)


def test_the_package_exports_the_public_names():
    import proxy.limits as limits

    for name in ("Limits", "MemoryBackend", "RedisBackend", "Ticket", "Plan", "duration", "seed_budgets"):
        assert hasattr(limits, name), name
    assert len((PACKAGE / "__init__.py").read_text().splitlines()) < 60  # re-exports, not code
