"""Semantic mode with the echo provider's embeddings: the same prompt text sent differently is a
semantic hit, another prompt or other parameters a miss; the embedding call has its own usage row."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.conftest import GATEWAY_KEY, Running, base_config, ledger_rows
from tests.redis_util import shared_redis_url

SEMANTIC = """
[cache]
backend = "{backend}"
mode = "semantic"
embedding_model = "embed"
similarity_threshold = 0.95

[[models]]
name = "embed"
targets = [{{ provider = "local", model = "echo-embed" }}]
"""


def config(tmp: Path, backend: str = "memory", redis_url: str = "", name: str = "gw") -> str:
    storage = f'database_url = "sqlite:///{tmp / (name + ".db")}"\nspill_dir = "{tmp / (name + "-spill")}"\n'
    if redis_url:
        storage += f'redis_url = "{redis_url}"\n'
    return base_config("http://127.0.0.1:9", None, SEMANTIC.format(backend=backend), storage=storage)


def chat(gw: Running, content: object, **extra: object) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "echo", "messages": [{"role": "user", "content": content}], **extra}, timeout=30)


def parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def test_similar_prompts_hit_and_others_miss(make_gateway, tmp_path):
    gw = make_gateway(config(tmp_path))
    text = f"What is the capital of France? {uuid.uuid4().hex}"
    first = chat(gw, text)
    assert first.headers["x-gateway-cache"] == "miss"
    same_text = chat(gw, parts(text))  # another request body (no exact hit), the same prompt text
    assert same_text.headers["x-gateway-cache"] == "hit-semantic"
    assert float(same_text.headers["x-gateway-cache-similarity"]) >= 0.95
    assert same_text.json() == first.json()
    other = chat(gw, parts(f"Something else entirely {uuid.uuid4().hex}"))
    assert other.headers["x-gateway-cache"] == "miss" and "x-gateway-cache-similarity" not in other.headers
    assert chat(gw, parts(text), temperature=0.5).headers["x-gateway-cache"] == "miss"  # other parameters
    with gw.client().chat.completions.with_streaming_response.create(
            model="echo", stream=True, messages=[{"role": "user", "content": parts(text)}]) as raw:
        assert raw.headers["x-gateway-cache"] == "hit-semantic"
        streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert streamed == first.json()["choices"][0]["message"]["content"]
    rows = ledger_rows(tmp_path / "gw.db", "SELECT endpoint, model, key_name FROM usage_log WHERE endpoint = ?",
                       ("embeddings",), at_least=4)
    assert {(e, m, k) for e, m, k in rows} == {("embeddings", "embed", "team")}  # each lookup's embedding


def test_semantic_index_is_shared_through_redis(make_gateway, tmp_path):
    url = shared_redis_url()
    a = make_gateway(config(tmp_path, "redis", url, "a"))
    b = make_gateway(config(tmp_path, "redis", url, "b"))
    text = f"Shared semantic prompt {uuid.uuid4().hex}"
    first = chat(a, text)
    assert first.headers["x-gateway-cache"] == "miss"
    hit = chat(b, parts(text))
    assert hit.headers["x-gateway-cache"] == "hit-semantic" and hit.json() == first.json()


def test_the_semantic_index_is_bounded(make_gateway, tmp_path):
    gw = make_gateway(config(tmp_path).replace('similarity_threshold = 0.95', 'similarity_threshold = 0.95\n'
                                                                                'semantic_max_entries = 3'))
    texts = [f"bounded {i} {uuid.uuid4().hex}" for i in range(6)]
    for t in texts:
        assert chat(gw, t).headers["x-gateway-cache"] == "miss"
    index = gw.app.state.cache.semantic
    assert len(index.vectors) == 3
    assert chat(gw, parts(texts[-1])).headers["x-gateway-cache"] == "hit-semantic"
    assert chat(gw, parts(texts[0])).headers["x-gateway-cache"] == "miss"  # its vector was dropped
