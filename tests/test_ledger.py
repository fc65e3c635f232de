"""The usage ledger end to end: concurrent mixed requests through a real gateway leave exactly one
row each, with the tokens the client saw and costs from the prices, on SQLite and on Postgres."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests import pg
from tests.conftest import GATEWAY_KEY
from tests.fakes.openai_server import usage_for
from tests.pg import ledger_config, rows_by_id, wait_for

pg_url, database_url = pg.pg_url, pg.database_url  # fixtures

# USD per million tokens; per_request in USD.
IN, OUT, CACHED, PER_REQUEST = 3.0, 15.0, 0.3, 0.0005
MODELS = f"""
[[models]]
name = "priced"
targets = [{{ provider = "fake", model = "ok", input_per_mtok = {IN}, output_per_mtok = {OUT}, \
cached_input_per_mtok = {CACHED}, per_request = {PER_REQUEST} }}]

[[models]]
name = "unpriced"
targets = [{{ provider = "fake", model = "mystery-model" }}]

# One attempt and no circuit breaker in the way, so every client sees the upstream's own status.
[[models]]
name = "fail-500-once"
targets = [{{ provider = "fake", model = "fail-500", max_retries = 0, failure_threshold = 1000 }}]

[[models]]
name = "fail-429-once"
targets = [{{ provider = "fake", model = "fail-429", max_retries = 0, failure_threshold = 1000 }}]
"""


def expected_cost(prompt: int, completion: int, cached: int) -> float:
    """The price arithmetic written out independently of proxy/cost.py."""
    return ((prompt - cached) * IN + cached * CACHED + completion * OUT) / 1e6 + PER_REQUEST


def fake_usage(text: str) -> dict[str, int]:
    """What the fake upstream reports for one user message (its own documented formula)."""
    u = usage_for([{"role": "user", "content": text}], "Hello " + text)
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "cached_tokens": 2, "reasoning_tokens": 1}


class Mixed:
    """Sends one request of a kind and returns what the row must say (None: no row expected)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=20)

    def send(self, kind: str, i: int) -> dict[str, Any] | None:
        rid = f"t-{kind}-{i}-{uuid.uuid4().hex[:8]}"
        text = f"number {i} " + "word " * (i % 4)
        messages = [{"role": "user", "content": text}]
        h = {"x-request-id": rid}
        c = self.client.chat.completions
        base = {"request_id": rid, "key_name": "team", "provider": "fake", "endpoint": "chat", "stream": False,
                "usage_estimated": False, "status": 200, "error_type": None}
        if kind == "chat":
            raw = c.with_raw_response.create(model="priced", messages=messages, extra_headers=h)
            u = raw.parse().usage
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "cached_tokens": u.prompt_tokens_details.cached_tokens,
                     "reasoning_tokens": u.completion_tokens_details.reasoning_tokens}
            return {**base, **usage, "model": "priced", "upstream_model": "ok",
                    "header_cost": float(raw.headers["x-gateway-cost-usd"])}
        if kind == "stream-usage":
            raw = c.with_raw_response.create(model="priced", messages=messages, stream=True,
                                             stream_options={"include_usage": True}, extra_headers=h)
            chunks = list(raw.parse())
            u = chunks[-1].usage
            assert u is not None
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "cached_tokens": u.prompt_tokens_details.cached_tokens,
                     "reasoning_tokens": u.completion_tokens_details.reasoning_tokens}
            return {**base, **usage, "model": "priced", "upstream_model": "ok", "stream": True}
        if kind == "stream-plain":  # the client did not ask for usage; the gateway still records it
            chunks = list(c.create(model="priced", messages=messages, stream=True, extra_headers=h))
            assert all(ch.usage is None for ch in chunks)
            return {**base, **fake_usage(text), "model": "priced", "upstream_model": "ok", "stream": True}
        if kind == "embeddings":
            raw = self.client.embeddings.with_raw_response.create(model="priced", input=[text, "two words"],
                                                                  extra_headers=h)
            tokens = raw.parse().usage.prompt_tokens
            return {**base, "prompt_tokens": tokens, "completion_tokens": 0, "cached_tokens": 0,
                    "reasoning_tokens": 0, "model": "priced", "upstream_model": "ok", "endpoint": "embeddings",
                    "header_cost": float(raw.headers["x-gateway-cost-usd"])}
        if kind == "unpriced":
            resp = c.create(model="unpriced", messages=messages, extra_headers=h)
            assert resp.usage is not None
            return {**base, "prompt_tokens": resp.usage.prompt_tokens,
                    "completion_tokens": resp.usage.completion_tokens, "cached_tokens": 2, "reasoning_tokens": 1,
                    "model": "unpriced", "upstream_model": "mystery-model"}
        if kind in ("fail-500", "fail-429"):
            with pytest.raises(openai.APIStatusError) as err:
                c.create(model=f"{kind}-once", messages=messages, extra_headers=h)
            status = err.value.status_code
            assert status == (502 if kind == "fail-500" else 429)
            return {**base, **_zero(), "model": f"{kind}-once", "upstream_model": kind, "status": status,
                    "error_type": "status_5xx" if kind == "fail-500" else "status_429"}
        if kind == "not-found":  # a client error after authentication still leaves its row
            with pytest.raises(openai.NotFoundError):
                c.create(model="no-such-model", messages=messages, extra_headers=h)
            return {**base, **_zero(), "model": "no-such-model", "provider": None, "upstream_model": None,
                    "status": 404, "error_type": "model_not_found"}
        if kind == "disconnect":
            stream = c.create(model="a-slow-stream", messages=messages, stream=True, extra_headers=h)
            for n, _ in enumerate(stream):
                if n == 3:
                    break
            stream.close()
            return {**base, "model": "a-slow-stream", "upstream_model": "slow-stream", "stream": True,
                    "status": 499, "error_type": "client_disconnect", "usage_estimated": True}
        if kind == "cut-stream":  # the upstream stops mid-way: no usage ever arrives
            seen = 0
            with pytest.raises(openai.APIError):
                for chunk in c.create(model="a-cut-stream", messages=messages, stream=True, extra_headers=h):
                    seen += bool(chunk.choices and chunk.choices[0].delta.content)
            return {**base, "model": "a-cut-stream", "upstream_model": "cut-stream", "stream": True,
                    "status": 502, "error_type": "bad_response", "usage_estimated": True, "deltas_seen": seen}
        if kind == "unauthenticated":
            r = httpx.post(self.url + "/v1/chat/completions", headers={**h, "authorization": "Bearer wrong"},
                           json={"model": "priced", "messages": messages})
            assert r.status_code == 401
            return None
        raise AssertionError(kind)


def _zero() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}


KINDS = ["chat", "stream-usage", "stream-plain", "embeddings", "unpriced", "fail-500", "fail-429", "not-found",
         "disconnect", "cut-stream", "unauthenticated"]


def test_concurrent_mixed_requests_leave_exactly_one_exact_row_each(fake_openai, make_gateway, database_url,
                                                                     tmp_path):
    gw = make_gateway(ledger_config(fake_openai.url, database_url, f'spill_dir = "{tmp_path / "spill"}"',
                                    extra=MODELS))
    mixed = Mixed(gw.url)
    jobs = [(kind, i) for i in range(5) for kind in KINDS]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: mixed.send(*job), jobs))
    expected = {e["request_id"]: e for e in results if e is not None}
    assert len(expected) == 50

    rows = rows_by_id(database_url, len(expected))
    assert rows.keys() == expected.keys()
    for rid, want in expected.items():
        row = rows[rid]
        for name in ("key_name", "model", "provider", "upstream_model", "endpoint", "status", "error_type"):
            assert want[name] == row[name], (rid, name, row[name], want[name])
        assert bool(row["stream"]) is want["stream"], rid
        assert bool(row["usage_estimated"]) is want["usage_estimated"], rid
        assert bool(row["cache_hit"]) is False
        assert row["latency_ms"] > 0 and row["attempts"] >= (0 if want["status"] == 404 else 1)
        if want["usage_estimated"]:
            # No usage arrived: estimated from the request text (about 4 characters a token) and
            # one token per content delta relayed to the client.
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= want.get("deltas_seen", 3) > 0, row
            assert row["cost_usd"] is None and row["ttft_ms"] is not None
            continue
        for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
            assert row[name] == want[name], (rid, name, row[name], want[name])
        if want["model"] == "priced":
            cost = expected_cost(want["prompt_tokens"], want["completion_tokens"], want["cached_tokens"])
            assert row["cost_usd"] == pytest.approx(cost, rel=1e-12), rid
            if "header_cost" in want:
                assert row["cost_usd"] == pytest.approx(want["header_cost"], abs=1e-10)
        else:
            assert row["cost_usd"] is None, rid  # no price: null, never a made-up number
        if want["stream"] and want["status"] == 200:
            assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]
        else:
            assert row["ttft_ms"] is None

    # Exact sums across everything (what a bill is made of).
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        assert sum(r[name] for r in rows.values() if not r["usage_estimated"]) == \
            sum(e[name] for e in expected.values() if not e["usage_estimated"])
    priced = [e for e in expected.values() if e["model"] == "priced"]
    assert sum(r["cost_usd"] for r in rows.values() if r["cost_usd"] is not None) == pytest.approx(
        sum(expected_cost(e["prompt_tokens"], e["completion_tokens"], e["cached_tokens"]) for e in priced))

    ledger = gw.app.state.ledger
    wait_for(lambda: ledger.written_rows_total == 50, timeout=2)  # counted just after the commit the rows show
    assert ledger.duplicate_rows_total == 0
    assert ledger.spilled_rows_total == 0 and ledger.write_errors_total == 0 and ledger.queue_depth == 0
    assert ledger.unpriced_requests_total["fake/mystery-model"] == 5


def test_unpriced_model_is_named_at_start(fake_openai, make_gateway, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gateway"):
        make_gateway(ledger_config(fake_openai.url, f"sqlite:///{tmp_path / 'u.db'}", extra=MODELS))
    warned = [r.getMessage() for r in caplog.records if "no price for" in r.getMessage()]
    assert any("unpriced -> fake/mystery-model" in m for m in warned)
    assert not any("priced -> fake/ok" in m and "unpriced" not in m for m in warned)  # priced targets: no warning
    assert not any("echo" in m for m in warned)  # the local echo provider has nothing to price


def test_rows_written_before_shutdown_without_waiting_for_the_timer(fake_openai, make_gateway, tmp_path):
    """A gateway stopped right after answering still writes every row (the lifespan shutdown flushes)."""
    url = f"sqlite:///{tmp_path / 'quick.db'}"
    gw = make_gateway(ledger_config(fake_openai.url, url, f'flush_interval_ms = 600000\nspill_dir = "{tmp_path}"',
                                    extra=MODELS))
    client = gw.client()
    for i in range(7):
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": f"hi {i}"}])
    # The row is queued just after the answer is sent, so the client can be a moment ahead of it.
    # Nothing is flushed meanwhile: the timer is ten minutes, so the queue only grows to 7.
    wait_for(lambda: gw.app.state.ledger.queue_depth == 7, timeout=2)
    gw.server.stop()
    assert len(rows_by_id(url, 7, timeout=2)) == 7
    assert not list(tmp_path.glob("usage-spill-*"))  # all went to the database, nothing spilled
