"""The response cache in Redis: shared by replicas, and a Redis outage is a counted bypass, never an error."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import GATEWAY_KEY, Running, base_config
from tests.redis_util import RedisServer, shared_redis_url


def config(fake_url: str, tmp: Path, redis_url: str, name: str) -> str:
    storage = (f'database_url = "sqlite:///{tmp / (name + ".db")}"\nspill_dir = "{tmp / (name + "-spill")}"\n'
               f'redis_url = "{redis_url}"')
    return base_config(fake_url, None, '\n[cache]\nbackend = "redis"\n', storage=storage)


def chat(gw: Running, text: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "gpt-test", "messages": [{"role": "user", "content": text}]}, timeout=30)


def test_two_replicas_share_one_redis_cache(fake_openai, make_gateway, tmp_path):
    url = shared_redis_url()
    a = make_gateway(config(fake_openai.url, tmp_path, url, "a"))
    b = make_gateway(config(fake_openai.url, tmp_path, url, "b"))
    text = f"shared {uuid.uuid4().hex}"
    first = chat(a, text)
    second = chat(b, text)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.json() == first.json()
    stream = b.client().chat.completions.create(model="gpt-test", stream=True,
                                                messages=[{"role": "user", "content": text}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        first.json()["choices"][0]["message"]["content"]
    emb = a.client().embeddings.create(model="a-ok", input=[text, "other " + text])
    again = b.client().embeddings.with_raw_response.create(model="a-ok", input=["other " + text])
    assert again.headers["x-gateway-cache"] == "hit" and again.parse().data[0].embedding == emb.data[1].embedding


def test_redis_down_means_bypass_and_it_recovers(fake_openai, make_gateway, tmp_path):
    server = RedisServer().start()
    try:
        gw = make_gateway(config(fake_openai.url, tmp_path, server.url, "gw"))
        text = f"outage {uuid.uuid4().hex}"
        assert chat(gw, text).headers["x-gateway-cache"] == "miss"
        assert chat(gw, text).headers["x-gateway-cache"] == "hit"
        admin_url = gw.url + "/metrics"
        server.stop()
        down = [chat(gw, text) for _ in range(3)]
        assert [(r.status_code, r.headers["x-gateway-cache"]) for r in down] == [(200, "bypass")] * 3
        errors = [line for line in httpx.get(admin_url).text.splitlines()
                  if line.startswith('gateway_cache_requests_total{alias="gpt-test",result="error"}')]
        assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 3
        server.start()
        deadline = time.monotonic() + 15
        while chat(gw, text).headers["x-gateway-cache"] == "bypass":  # past the short circuit, Redis is used again
            assert time.monotonic() < deadline, "the cache never came back after Redis did"
            time.sleep(0.2)
    finally:
        server.stop()


def test_a_corrupt_entry_is_a_counted_bypass(fake_openai, make_gateway, tmp_path):
    import redis

    url = shared_redis_url()
    gw = make_gateway(config(fake_openai.url, tmp_path, url, "gw"))
    text = f"corrupt {uuid.uuid4().hex}"
    chat(gw, text)
    client = redis.Redis.from_url(url)
    names = [n for n in client.scan_iter(match="gateway:cache:e:*", count=1000)
             if client.get(n) and text.encode() in client.get(n)]
    assert len(names) == 1
    client.set(names[0], b"\x00garbage")
    r = chat(gw, text)
    assert (r.status_code, r.headers["x-gateway-cache"]) == (200, "bypass")
    assert chat(gw, text).headers["x-gateway-cache"] == "hit"  # the bypass's answer replaced the bad entry


def test_the_cache_works_on_a_redis_cluster(fake_openai, make_gateway, tmp_path):
    """Entries spread over the slots of three masters: a batch of embeddings reads them across nodes."""
    from tests.redis_util import RedisCluster

    cluster = RedisCluster(tmp_path).start()
    try:
        gw = make_gateway(config(fake_openai.url, tmp_path, f"redis://127.0.0.1:{cluster.ports[0]}/0", "gw"))
        texts = [f"cluster {i} {uuid.uuid4().hex}" for i in range(12)]
        first = gw.client().embeddings.create(model="a-ok", input=texts)
        again = gw.client().embeddings.with_raw_response.create(model="a-ok", input=texts)
        assert again.headers["x-gateway-cache"] == "hit"
        assert [d.embedding for d in again.parse().data] == [d.embedding for d in first.data]
        holders = [p for p in cluster.ports if int(cluster.run(p, "DBSIZE") or 0) > 0]
        assert len(holders) > 1, "twelve entries all landed on one node: not spread over the cluster"
        assert chat(gw, texts[0]).headers["x-gateway-cache"] == "miss"
        assert chat(gw, texts[0]).headers["x-gateway-cache"] == "hit"
    finally:
        cluster.stop()
