"""End users within a key (the request's ``user`` or ``x-gateway-end-user``): [limits] per_user_rpm /
per_user_tpm, per key user_rpm / user_tpm / user_budget_usd, exact across replicas like the other
limits; the usage row's ``end_user`` and ``/v1/usage?group_by=end_user``."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import storage_table
from tests.redis_util import shared_redis_url
from tests.test_limits import backend, limits_config, post  # noqa: F401 - backend is a fixture
from tests.test_replicas import _replicas


def test_per_user_rpm_limits_each_end_user_of_a_key(make_gateway, fake_openai, backend):  # noqa: F811
    text, secret, model = limits_config(fake_openai.url, backend, limits="per_user_rpm = 3")
    gw = make_gateway(text)
    assert [post(gw.url, secret, model, user="alice").status_code for _ in range(3)] == [200] * 3
    refused = post(gw.url, secret, model, user="alice")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "user scope" in refused.json()["error"]["message"] and refused.headers["retry-after"]
    assert post(gw.url, secret, model, user="bob").status_code == 200  # another end user: a limit of their own
    # the header names the end user over the body's `user`
    headers = {"authorization": f"Bearer {secret}", "x-gateway-end-user": "carol"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "user": "alice"}
    assert httpx.post(gw.url + "/v1/chat/completions", headers=headers, json=body, timeout=10).status_code == 200
    assert post(gw.url, secret, model).status_code == 200  # no end user: no per-user limit
    too_long = post(gw.url, secret, model, user="x" * 300)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "user"


def test_a_keys_user_settings_override_the_global_ones(make_gateway, fake_openai, backend):  # noqa: F811
    text, secret, model = limits_config(fake_openai.url, backend, limits="per_user_rpm = 2", key_extra="user_rpm = 4")
    gw = make_gateway(text)
    assert [post(gw.url, secret, model, user="dave").status_code for _ in range(5)] == [200] * 4 + [429]


def test_user_budget_stops_one_end_user_only(make_gateway, fake_openai, backend):  # noqa: F811
    # each request reserves (and costs) about 0.004 at this model's prices: 0.02 is 5 of them per end user
    text, secret, model = limits_config(fake_openai.url, backend, key_extra="user_budget_usd = 0.02")
    gw = make_gateway(text)
    codes = [post(gw.url, secret, model, user="frank").status_code for _ in range(8)]
    assert codes.count(200) == 5 and codes[5:] == [429] * 3, codes
    refused = post(gw.url, secret, model, user="frank").json()["error"]
    assert refused["code"] == "insufficient_quota" and "end user" in refused["message"]
    assert post(gw.url, secret, model, user="grace").status_code == 200
    assert post(gw.url, secret, model).status_code == 200  # the key itself has no budget


@pytest.mark.parametrize("extra,expected,refill_s", [("user_rpm = 40", 40, 1.5), ("user_tpm = 40", 10, 6.0),
                                                    ("user_budget_usd = 0.04", 10, None)])
def test_exact_across_three_replicas(tmp_path, fake_openai, extra, expected, refill_s):
    text, secret, model = limits_config(fake_openai.url, shared_redis_url(), key_extra=extra)
    with _replicas(tmp_path, text) as replicas:
        urls = [r.url for r in replicas]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(lambda i: post(urls[i % 3], secret, model, user="alice"), range(150)))
        elapsed = time.monotonic() - started
        other = post(urls[0], secret, model, user="bob")
    ok = sum(1 for a in answers if a.status_code == 200)
    limited = [a for a in answers if a.status_code == 429]
    allowance = expected + (int(elapsed / refill_s) if refill_s else 0)
    assert expected <= ok <= allowance and ok + len(limited) == 150, (ok, elapsed)
    assert all(a.headers.get("retry-after") for a in limited)
    if refill_s is None:
        assert limited[0].json()["error"]["code"] == "insufficient_quota"
        assert "end user" in limited[0].json()["error"]["message"]
    assert other.status_code == 200  # alice's limit is hers alone


def test_rows_record_the_end_user_and_usage_groups_by_it(make_gateway, fake_openai, tmp_path: Path):
    text, secret, model = limits_config(fake_openai.url, "", limits="")
    text = text.replace(text[text.index("[storage]"):text.index("[limits]")], storage_table(tmp_path) + "\n")
    gw = make_gateway(text)
    for user in ("alice", "alice", "bob", None):
        extra = {"user": user} if user else {}
        assert post(gw.url, secret, model, **extra).status_code == 200
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(gw.url + "/v1/usage", params={"group_by": "end_user"},
                      headers={"authorization": f"Bearer {secret}"}, timeout=10)
        assert r.status_code == 200, r.text
        groups = {row["group"]: row["requests"] for row in r.json()["data"]}
        if sum(groups.values()) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert groups == {"alice": 2, "bob": 1, None: 1}
    assert r.json()["group_by"] == "end_user"
