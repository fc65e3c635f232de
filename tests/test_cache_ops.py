"""The response cache's accounting and operations: coalesced misses, embeddings per item, limits on
hits, metrics, /v1/usage, the admin API and `gateway cache`."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from proxy import cli
from tests.conftest import GATEWAY_KEY, Running, base_config, ledger_rows

ADMIN = "sk-admin-cache"
EXTRA = """
[cache]
backend = "memory"

[[models]]
name = "slowish"
targets = [{ provider = "fake", model = "delay-300", input_per_mtok = 1.0, output_per_mtok = 2.0 }]

[[models]]
name = "emb"
targets = [{ provider = "fake", model = "text-embedding-3-small", input_per_mtok = 0.02, output_per_mtok = 0.0 }]

[[keys]]
name = "tight-rpm"
key = "sk-tight-rpm"
rpm = 3

[[keys]]
name = "tight-tpm"
key = "sk-tight-tpm"
tpm = 60
"""


def config(fake_url: str, tmp: Path, extra: str = EXTRA) -> str:
    return base_config(fake_url, tmp / "gw.db", extra).replace("require_auth = true",
                                                               f'require_auth = true\nadmin_key = "{ADMIN}"')


def chat(gw: Running, text: str, model: str = "gpt-test", key: str = GATEWAY_KEY, **extra: object) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": text}], **extra})


def calls(fake: Running, text: str) -> int:
    return sum(1 for r in fake.app.state.fake.requests
               if (r["body"].get("messages") or [{}])[-1].get("content") == text)


def test_fifty_identical_concurrent_misses_make_one_upstream_call(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai.url, tmp_path))
    text = f"coalesce {uuid.uuid4().hex}"
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: chat(gw, text, "slowish"), range(50)))
    assert [r.status_code for r in answers] == [200] * 50
    assert calls(fake_openai, text) == 1
    assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1
    verdicts = sorted(r.headers["x-gateway-cache"] for r in answers)
    assert verdicts == ["hit"] * 49 + ["miss"]


def test_coalesced_requests_call_the_upstream_themselves_when_the_leader_keeps_nothing(fake_openai, make_gateway,
                                                                                       tmp_path):
    gw = make_gateway(config(fake_openai.url, tmp_path, EXTRA + "\n"))
    text = f"leader-fails {uuid.uuid4().hex}"
    with ThreadPoolExecutor(5) as pool:  # the upstream refuses: nothing is stored, every request tries itself
        answers = list(pool.map(lambda _: chat(gw, text, "a-fail-400"), range(5)))
    assert [r.status_code for r in answers] == [400] * 5
    assert calls(fake_openai, text) == 5


def test_embeddings_are_cached_per_input_and_answered_in_order(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai.url, tmp_path))
    client = gw.client()
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"a{tag}", f"bb{tag}", f"ccc{tag}"  # the fake's vectors depend on the text's length
    sent = fake_openai.app.state.fake.requests

    first = client.embeddings.with_raw_response.create(model="emb", input=[a, b])
    assert first.headers["x-gateway-cache"] == "miss" and sent[-1]["body"]["input"] == [a, b]
    alone = {t: e.embedding for t, e in zip([a, b], first.parse().data, strict=True)}
    before = len(sent)
    second = client.embeddings.with_raw_response.create(model="emb", input=[b, c, a])
    assert second.headers["x-gateway-cache"] == "miss"
    assert len(sent) == before + 1 and sent[-1]["body"]["input"] == [c]  # only the new input went upstream
    data = second.parse().data
    assert [d.index for d in data] == [0, 1, 2]
    assert data[0].embedding == alone[b] and data[2].embedding == alone[a] and data[1].embedding != alone[a]
    third = client.embeddings.with_raw_response.create(model="emb", input=[c, a])
    assert third.headers["x-gateway-cache"] == "hit" and len(sent) == before + 1
    assert [d.embedding for d in third.parse().data] == [data[1].embedding, alone[a]]
    single = client.embeddings.with_raw_response.create(model="emb", input=b)
    assert single.headers["x-gateway-cache"] == "hit" and single.parse().data[0].embedding == alone[b]


def test_a_hit_counts_against_rpm_but_not_tpm(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai.url, tmp_path))
    text = f"limits {uuid.uuid4().hex}"
    statuses = [chat(gw, text, key="sk-tight-rpm", max_tokens=5).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    tokens = chat(gw, text, key="sk-tight-tpm", max_tokens=5)
    used = tokens.json()["usage"]["total_tokens"]
    assert tokens.status_code == 200 and used > 0
    # Far more tokens than the key's tpm would allow if hits were counted (60 a minute).
    hits = [chat(gw, text, key="sk-tight-tpm", max_tokens=5) for _ in range(3 * 60 // used + 3)]
    assert {(r.status_code, r.headers.get("x-gateway-cache")) for r in hits} == {(200, "hit")}


def metric(gw: Running, line_start: str) -> float:
    body = httpx.get(gw.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(line_start))


def test_metrics_usage_admin_api_and_cli(fake_openai, make_gateway, tmp_path, capsys):
    gw = make_gateway(config(fake_openai.url, tmp_path))
    text = f"ops {uuid.uuid4().hex}"
    first = chat(gw, text)
    hits = [chat(gw, text) for _ in range(3)]
    assert [r.headers["x-gateway-cache"] for r in hits] == ["hit"] * 3
    rows = ledger_rows(tmp_path / "gw.db", "SELECT cost_saved_usd FROM usage_log WHERE cache_hit = 1", (), 3)
    saved = sum(r[0] for r in rows)
    assert saved == pytest.approx(3 * float(first.headers["x-gateway-cost-usd"]))

    assert metric(gw, 'gateway_cache_requests_total{alias="gpt-test",result="hit"}') >= 3
    assert metric(gw, 'gateway_cache_requests_total{alias="gpt-test",result="miss"}') == 1
    assert metric(gw, "gateway_cache_saved_usd_total") == pytest.approx(saved)
    assert metric(gw, "gateway_cache_entries ") >= 1 and metric(gw, "gateway_cache_bytes ") > len(text)

    usage = httpx.get(gw.url + "/v1/usage", headers={"authorization": f"Bearer {ADMIN}"}).json()["total"]
    assert usage["cost_saved_usd"] == pytest.approx(saved) and usage["cache_hit_rate"] > 0.5

    admin = {"authorization": f"Bearer {ADMIN}"}
    stats = httpx.get(gw.url + "/admin/cache", headers=admin).json()
    assert stats["backend"] == "memory" and stats["entries"] >= 1 and stats["bytes"] > 0
    assert httpx.delete(gw.url + "/admin/cache", headers={"authorization": f"Bearer {GATEWAY_KEY}"}).status_code == 403
    missing = httpx.delete(gw.url + "/admin/cache", params={"alias": "nope"}, headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "alias"
    other = chat(gw, f"other {text}", "a-ok")
    assert other.headers["x-gateway-cache"] == "miss"
    cleared = httpx.delete(gw.url + "/admin/cache", params={"alias": "gpt-test"}, headers=admin).json()
    assert cleared["deleted"] == 1
    assert chat(gw, text).headers["x-gateway-cache"] == "miss"  # gpt-test's entry is gone
    assert chat(gw, f"other {text}", "a-ok").headers["x-gateway-cache"] == "hit"  # a-ok's is not

    toml = tmp_path / "gateway.toml"
    toml.write_text(config(fake_openai.url, tmp_path))
    assert cli.main(["cache", "stats", "--config", str(toml), "--url", gw.url]) == 0
    assert "backend memory (exact): 2 entries" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--config", str(toml), "--url", gw.url]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert chat(gw, f"other {text}", "a-ok").headers["x-gateway-cache"] == "miss"


def test_entries_survive_a_reload_and_the_new_config_applies(fake_openai, tmp_path):
    import asyncio

    from proxy.app import create_app
    from proxy.config import load_config
    from proxy.reload import reload
    from tests.servers import ServerThread

    path = tmp_path / "gw.toml"
    path.write_text(config(fake_openai.url, tmp_path))
    app = create_app(load_config(path))
    server = ServerThread(app).start()
    try:
        gw = Running(server, app)
        text = f"reload {uuid.uuid4().hex}"
        assert chat(gw, text).headers["x-gateway-cache"] == "miss"
        path.write_text(config(fake_openai.url, tmp_path, EXTRA.replace('name = "emb"', 'name = "emb"\ncache = false')))
        loop = server.server.servers[0].get_loop()
        assert asyncio.run_coroutine_threadsafe(reload(app), loop).result(10) is True
        assert chat(gw, text).headers["x-gateway-cache"] == "hit"  # the entry outlived the old Runtime
        emb = httpx.post(gw.url + "/v1/embeddings", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                         json={"model": "emb", "input": text})
        assert emb.headers["x-gateway-cache"] == "bypass"  # the new config's alias setting is in force
    finally:
        server.stop()


def test_a_failed_leader_lets_its_followers_go_at_once_in_process(fake_openai, tmp_path):
    """In-process callers may run many requests in one task: a leader that fails must not leave the next
    identical request waiting coalesce_wait_s for an answer that will never come."""
    import asyncio
    import time as clock

    from proxy.app import create_app
    from proxy.config import load_config
    from proxy.pipeline import ClientWatch

    path = tmp_path / "gw.toml"
    path.write_text(config(fake_openai.url, tmp_path, EXTRA.replace("[cache]", "[cache]\ncoalesce_wait_s = 20")))
    app = create_app(load_config(path))
    text = f"in-process {uuid.uuid4().hex}"

    class Local:
        endpoint, client_request_id, cache_control = "chat", None, None
        api_headers = session_id = end_user = None

        def __init__(self) -> None:
            self.authorization = f"Bearer {GATEWAY_KEY}"
            self.watch = ClientWatch()

        async def json(self, limit: int) -> dict:
            return {"model": "a-fail-400", "messages": [{"role": "user", "content": text}]}

    async def scenario() -> tuple[list[int], float]:
        async with app.router.lifespan_context(app):
            pipeline = app.state.runtime.pipeline
            started = clock.monotonic()
            statuses = []
            for _ in range(3):
                answer = await pipeline.handle(Local())
                answer.after()
                statuses.append(answer.status)
            return statuses, clock.monotonic() - started

    statuses, seconds = asyncio.run(scenario())
    assert statuses == [400, 400, 400] and seconds < 10
