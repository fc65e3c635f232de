"""The response cache through the official SDK against the fake upstream: hits, misses, streams replayed
and stored, per-request control, scope, TTL and the usage rows of hits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, Running, base_config, ledger_rows, start_gateway

CACHE = '\n[cache]\nbackend = "memory"\nttl_s = 60\n'


@pytest.fixture(scope="module")
def cached(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    db = tmp_path_factory.mktemp("cache") / "gw.db"
    running = start_gateway(base_config(fake_openai.url, db, CACHE))
    yield running, db
    running.server.stop()


def calls(fake: Running, text: str) -> int:
    """Upstream requests whose last message says ``text``."""
    return sum(1 for r in fake.app.state.fake.requests
               if (r["body"].get("messages") or [{}])[-1].get("content") == text)


def ask(gw: Running, text: str, model: str = "gpt-test", key: str = GATEWAY_KEY, headers: dict | None = None,
        **kwargs: object) -> tuple[httpx.Headers, object]:
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], extra_headers=headers or {}, **kwargs)
    return raw.headers, raw.parse()


def unique(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex[:8]}"


def test_a_repeated_request_is_answered_from_the_cache(cached, fake_openai):
    gw, db = cached
    text = unique("repeat")
    h1, first = ask(gw, text, extra_body={"user": "alice"})
    h2, second = ask(gw, text, extra_body={"user": "bob"})  # user does not change the answer
    assert (h1["x-gateway-cache"], h2["x-gateway-cache"]) == ("miss", "hit")
    assert "age" not in h1 and int(h2["age"]) >= 0
    assert second.model_dump() == first.model_dump()
    assert calls(fake_openai, text) == 1
    assert h2.get("x-gateway-cost-usd") == f"{0.0:.10f}"
    rows = ledger_rows(db, "SELECT cache_hit, cost_usd, cost_saved_usd, prompt_tokens, completion_tokens FROM "
                       "usage_log WHERE request_id IN (?, ?) ORDER BY cache_hit",
                       (h1["x-request-id"], h2["x-request-id"]), at_least=2)
    miss, hit = rows
    assert miss[0] == 0 and miss[1] > 0 and miss[2] is None
    assert hit[0] == 1 and hit[1] == 0 and hit[2] == pytest.approx(miss[1]) and hit[3:] == miss[3:]


def test_key_order_and_stream_share_one_entry(cached, fake_openai):
    gw, _ = cached
    text = unique("order")
    body = {"temperature": 0, "model": "gpt-test", "messages": [{"content": text, "role": "user"}]}
    reordered = {"messages": [{"role": "user", "content": text}], "model": "gpt-test", "temperature": 0}
    auth = {"authorization": f"Bearer {GATEWAY_KEY}"}
    r1 = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth)
    r2 = httpx.post(gw.url + "/v1/chat/completions", json=reordered, headers=auth)
    assert (r1.headers["x-gateway-cache"], r2.headers["x-gateway-cache"]) == ("miss", "hit")
    stream = gw.client().chat.completions.create(model="gpt-test", temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": text}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        r1.json()["choices"][0]["message"]["content"]
    assert calls(fake_openai, text) == 1


def test_a_stream_hit_replays_what_the_stream_said(cached, fake_openai):
    gw, db = cached
    text = unique("stream")

    ids = []

    def run(include_usage: bool) -> tuple[str, list]:
        with gw.client().chat.completions.with_streaming_response.create(
                model="gpt-test", messages=[{"role": "user", "content": text}], stream=True,
                stream_options={"include_usage": include_usage}) as raw:
            chunks = list(raw.parse())
            ids.append(raw.headers["x-request-id"])
            return raw.headers["x-gateway-cache"], chunks

    verdict1, first = run(True)
    verdict2, again = run(True)
    verdict3, plain = run(False)
    assert (verdict1, verdict2, verdict3) == ("miss", "hit", "hit")
    content = "".join(c.choices[0].delta.content or "" for c in first if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == content
    assert [c.choices[0].finish_reason for c in again if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert first[-1].usage is not None and again[-1].usage == first[-1].usage
    assert all(c.usage is None for c in plain)
    _, whole = ask(gw, text)  # the stored stream answers a whole-body request too
    assert whole.choices[0].message.content == content and whole.usage == first[-1].usage
    assert calls(fake_openai, text) == 1
    rows = ledger_rows(db, "SELECT stream, cache_hit, status, completion_tokens, cost_usd, cost_saved_usd FROM "
                       "usage_log WHERE request_id IN (?, ?, ?)", tuple(ids), at_least=3)
    miss = [r for r in rows if not r[1]]
    hits = [r for r in rows if r[1]]
    assert len(miss) == 1 and len(hits) == 2 and miss[0][4] > 0
    assert all(h[2] == 200 and h[3] == miss[0][3] and h[4] == 0 and h[5] == pytest.approx(miss[0][4])
               for h in hits)


def test_tool_calls_are_stored_from_a_stream_and_replayed(cached):
    gw, _ = cached
    text = unique("tools")

    def run() -> tuple[str, list]:
        with gw.client().chat.completions.with_streaming_response.create(
                model="a-tools", messages=[{"role": "user", "content": text}], stream=True) as raw:
            return raw.headers["x-gateway-cache"], list(raw.parse())

    (v1, first), (v2, again) = run(), run()
    assert (v1, v2) == ("miss", "hit")

    def tool(chunks: list) -> tuple[str, str, str]:
        calls_ = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
        return (next(t.id for t in calls_ if t.id), next(t.function.name for t in calls_ if t.function.name),
                "".join(t.function.arguments or "" for t in calls_))

    assert tool(again) == tool(first)
    _, whole = ask(gw, text, model="a-tools")
    call = whole.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == tool(first)
    assert whole.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", ["a-error-stream", "a-cut-stream"])
def test_a_failed_stream_is_not_stored(cached, fake_openai, model):
    gw, _ = cached
    text = unique("broken")
    for _ in range(2):
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                       json={"model": model, "stream": True, "messages": [{"role": "user", "content": text}]})
        assert r.headers["x-gateway-cache"] == "miss"
    assert calls(fake_openai, text) == 2


def test_one_key_never_sees_another_keys_answer(cached, fake_openai):
    gw, _ = cached
    text = unique("scope")
    assert ask(gw, text)[0]["x-gateway-cache"] == "miss"
    assert ask(gw, text, key=LIMITED_KEY)[0]["x-gateway-cache"] == "miss"
    assert ask(gw, text, key=LIMITED_KEY)[0]["x-gateway-cache"] == "hit"
    assert calls(fake_openai, text) == 2


def test_global_scope_shares_answers_between_keys(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", CACHE + 'scope = "global"\n'))
    text = unique("global")
    assert ask(gw, text)[0]["x-gateway-cache"] == "miss"
    assert ask(gw, text, key=LIMITED_KEY)[0]["x-gateway-cache"] == "hit"


def test_no_cache_skips_the_lookup_but_stores_and_no_store_does_neither(cached, fake_openai):
    gw, _ = cached
    text = unique("control")
    assert ask(gw, text, headers={"cache-control": "no-store"})[0]["x-gateway-cache"] == "bypass"
    assert ask(gw, text)[0]["x-gateway-cache"] == "miss"  # no-store kept nothing
    h, _ = ask(gw, text, headers={"cache-control": "no-cache"})
    assert h["x-gateway-cache"] == "miss"  # looked nothing up though an entry was there
    assert calls(fake_openai, text) == 3
    other = unique("control2")
    ask(gw, other, headers={"cache-control": "no-cache"})
    assert ask(gw, other)[0]["x-gateway-cache"] == "hit"  # what no-cache fetched was kept


def test_entries_expire_after_their_ttl(cached, fake_openai):
    gw, _ = cached
    text = unique("ttl")
    ask(gw, text, headers={"x-gateway-cache-ttl": "0.5"})
    assert ask(gw, text)[0]["x-gateway-cache"] == "hit"
    deadline = time.monotonic() + 10
    while ask(gw, text, headers={"x-gateway-cache-ttl": "0.5"})[0]["x-gateway-cache"] == "hit":
        assert time.monotonic() < deadline, "the entry never expired"
        time.sleep(0.1)


def test_a_bad_ttl_header_is_a_400_naming_it(cached):
    gw, _ = cached
    r = httpx.post(gw.url + "/v1/chat/completions",
                   headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-gateway-cache-ttl": "soon"},
                   json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-gateway-cache-ttl"


def test_an_alias_with_cache_false_bypasses(fake_openai, make_gateway, tmp_path):
    extra = CACHE + '\n[[models]]\nname = "nocache"\ncache = false\ntargets = [{ provider = "fake", model = "ok" }]\n'
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    text = unique("nocache")
    assert [ask(gw, text, model="nocache")[0]["x-gateway-cache"] for _ in range(2)] == ["bypass", "bypass"]


def test_deterministic_only_keeps_only_temperature_zero_or_seeded(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", CACHE + "deterministic_only = true\n"))
    text = unique("det")
    assert ask(gw, text, temperature=0.7)[0]["x-gateway-cache"] == "bypass"
    assert ask(gw, text, seed=7)[0]["x-gateway-cache"] == "miss"
    assert ask(gw, text, seed=7)[0]["x-gateway-cache"] == "hit"


def test_a_glob_alias_keeps_each_forwarded_models_answers_apart(fake_openai, make_gateway, tmp_path):
    extra = CACHE + '\n[[models]]\nname = "up/*"\ntargets = [{ provider = "fake" }]\n'
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    text = unique("glob")
    h1, one = ask(gw, text, model="up/model-one")
    h2, two = ask(gw, text, model="up/model-two")
    h3, again = ask(gw, text, model="up/model-one")
    assert (h1["x-gateway-cache"], h2["x-gateway-cache"], h3["x-gateway-cache"]) == ("miss", "miss", "hit")
    assert (one.model, two.model, again.model) == ("up/model-one", "up/model-two", "up/model-one")
