"""The in-memory store's bound, the cache key, the [cache] config checks, and the LRU through the gateway."""

from __future__ import annotations

import asyncio
import tomllib
import tracemalloc
import uuid

import httpx
import pytest

from proxy.cache.key import request_key
from proxy.cache.store import MemoryStore
from proxy.config import ConfigError, parse_config
from tests.conftest import GATEWAY_KEY, base_config


def test_memory_stays_within_its_byte_bound_over_100k_distinct_entries():
    store = MemoryStore(1024 * 1024)

    async def fill() -> None:
        for i in range(100_000):
            await store.set(f"{i:064d}", "a", b"x" * (200 + i % 300), 60)
            assert store.bytes <= store.max_bytes

    tracemalloc.start()
    asyncio.run(fill())
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 1000 < len(store.entries) < 5000  # bounded by bytes, not by a count
    assert current < 3 * store.max_bytes  # what the bound counts is what the process holds, overhead included
    assert asyncio.run(store.get(f"{0:064d}")) is None and asyncio.run(store.get(f"{99_999:064d}")) is not None


def test_least_recently_used_goes_first_and_a_read_refreshes():
    store = MemoryStore(3 * (100 + 1 + 160))

    async def run() -> list[bool]:
        for k in "abc":
            await store.set(k, "m", b"v" * 100, 60)
        await store.get("a")  # now b is the least recently used
        await store.set("d", "m", b"v" * 100, 60)
        return [await store.get(k) is not None for k in "abcd"]

    assert asyncio.run(run()) == [True, False, True, True]


def test_an_entry_larger_than_the_whole_store_is_not_kept():
    store = MemoryStore(1000)
    asyncio.run(store.set("k", "m", b"x" * 2000, 60))
    assert store.bytes == 0 and not store.entries


def test_the_key_ignores_what_cannot_change_the_answer():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    same = [{**body, "stream": True, "stream_options": {"include_usage": True}}, {**body, "user": "u"},
            {**body, "metadata": {"a": 1}}, dict(reversed(list(body.items())))]
    key = request_key("chat", "m", body, "full_request", "team")
    assert all(request_key("chat", "m", b, "full_request", "team") == key for b in same)
    assert request_key("chat", "m", {**body, "temperature": 1}, "full_request", "team") != key
    assert request_key("chat", "m", body, "full_request", "other") != key
    assert request_key("chat", "m", {**body, "temperature": 1}, "content+model", "team") == \
        request_key("chat", "m", body, "content+model", "team")
    assert request_key("chat", "m", body, "content+model", "team") != request_key("chat", "n", body, "content+model",
                                                                                  "team")
    assert request_key("chat", "m", body, "content", "team") == request_key("chat", "n", body, "content", "team")


@pytest.mark.parametrize(("table", "key"), [
    ('backend = "disk"', "cache.backend"),
    ('backend = "redis"', "cache.backend"),  # no [storage] redis_url
    ("ttl_s = 0", "cache.ttl_s"),
    ("max_size_mb = -1", "cache.max_size_mb"),
    ('hash_strategy = "prompt"', "cache.hash_strategy"),
    ('scope = "tenant"', "cache.scope"),
    ('deterministic_only = "yes"', "cache.deterministic_only"),
    ("similarity_threshold = 1.5", "cache.similarity_threshold"),
    ('mode = "semantic"\nembedding_model = "missing"', "cache.embedding_model"),
    ("colour = 1", "cache.colour"),
])
def test_bad_cache_config_fails_at_start_naming_the_key(tmp_path, table, key):
    text = base_config("http://127.0.0.1:9", tmp_path / "gw.db", f"\n[cache]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text), "gateway.toml", {})
    assert err.value.key == key and err.value.file == "gateway.toml"


def test_bad_alias_cache_keys_fail_at_start(tmp_path):
    extra = '\n[[models]]\nname = "x"\ncache_ttl_s = 0\ntargets = [{ provider = "local" }]\n'
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(base_config("http://127.0.0.1:9", tmp_path / "gw.db", extra)), "g.toml", {})
    assert err.value.key.endswith("cache_ttl_s")


def test_the_gateway_evicts_least_recently_used_answers_within_max_size_mb(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", '\n[cache]\nbackend = "memory"\n'
                                  "max_size_mb = 0.01\n"))  # about 10 KB: a dozen answers
    tag = uuid.uuid4().hex

    def ask(i: int) -> str:
        return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                          json={"model": "gpt-test", "messages": [{"role": "user", "content": f"{tag} {i}"}]}
                          ).headers["x-gateway-cache"]

    assert [ask(i) for i in range(40)] == ["miss"] * 40
    assert ask(39) == "hit" and ask(0) == "miss"  # the newest is kept, the oldest went
    metrics = httpx.get(gw.url + "/metrics").text
    size = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("gateway_cache_bytes "))
    assert 0 < size <= 0.01 * 1024 * 1024
