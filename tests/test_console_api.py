"""The API the console reads: /v1/usage time buckets, filters, p50 and CSV; the request log
(/admin/requests) and live target health (/admin/health); /ui served with its security headers."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import httpx
import pytest

from tests import pg
from tests.conftest import GATEWAY_KEY
from tests.pg import ledger_config
from tests.test_usage_api import _seed, seed_rows

pg_url, database_url = pg.pg_url, pg.database_url  # fixtures
ADMIN = "sk-admin-console"
RANGE = "start=2026-01-01&end=2026-01-03"


@pytest.fixture
def gw(fake_openai, make_gateway, database_url, tmp_path):
    asyncio.run(_seed(database_url, seed_rows()))
    return make_gateway(ledger_config(fake_openai.url, database_url, storage=f'spill_dir = "{tmp_path / "spill"}"',
                                      server=f'admin_key = "{ADMIN}"'))


def get(gw: Any, path: str, key: str = ADMIN) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"authorization": f"Bearer {key}"}, timeout=10)


def test_usage_in_time_buckets_by_group_with_filters_and_csv(gw):
    body = get(gw, f"/v1/usage?{RANGE}&bucket=day&group_by=model").json()
    assert body["bucket"] == "day"
    assert [(r["bucket"], r["group"], r["requests"]) for r in body["data"]] == [
        ("2026-01-01", "alpha", 20), ("2026-01-02", "beta", 3)]
    alpha = body["data"][0]
    assert alpha["p50_latency_ms"] == 10.0 and alpha["p95_latency_ms"] == 19.0  # nearest rank of 1..20
    hours = get(gw, f"/v1/usage?{RANGE}&bucket=hour&group_by=provider&provider=p1").json()
    assert {r["group"] for r in hours["data"]} == {"p1"}
    assert [r["bucket"] for r in hours["data"]] == ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"]
    assert sum(r["requests"] for r in hours["data"]) == hours["total"]["requests"] == 20
    assert get(gw, f"/v1/usage?{RANGE}&model=beta").json()["total"]["requests"] == 3
    assert get(gw, f"/v1/usage?{RANGE}&key=team").json()["total"]["requests"] == 20

    exported = get(gw, f"/v1/usage?{RANGE}&bucket=day&group_by=key&format=csv")
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["bucket"], r["group"], r["requests"]) for r in rows] == [("2026-01-01", "team", "20"),
                                                                         ("2026-01-02", "other", "3")]
    for query, param in (("bucket=week", "bucket"), ("format=xml", "format")):
        r = get(gw, f"/v1/usage?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_gateway_key_cannot_filter_its_way_to_other_keys(gw):
    body = get(gw, f"/v1/usage?{RANGE}&key=other", GATEWAY_KEY).json()
    assert body["key"] == "team" and body["total"]["requests"] == 20  # its own rows, whatever it asked


def test_request_log_lists_filters_and_shows_one_row(gw):
    rows = get(gw, f"/admin/requests?{RANGE}&limit=5").json()
    assert [r["request_id"] for r in rows["data"]] == ["b-2", "b-1", "b-0", "a-20", "a-19"] and rows["has_more"]
    errors = get(gw, "/admin/requests?status=error&start=2026-01-01").json()["data"]
    assert sorted(r["request_id"] for r in errors) == ["a-3", "a-7"]
    assert [r["request_id"] for r in get(gw, "/admin/requests?model=beta&key=other&start=2026-01-01&limit=1")
            .json()["data"]] == ["b-2"]
    detail = get(gw, "/admin/requests/a-5").json()
    assert detail["object"] == "usage.row" and detail["cost_usd"] == pytest.approx(0.005)
    assert detail["cache_hit"] is True and detail["created_at"] == "2026-01-01T10:25:00.000000Z"
    # a gateway key sees only its own rows
    assert {r["key_name"] for r in get(gw, "/admin/requests?start=2026-01-01", GATEWAY_KEY).json()["data"]} == {
        "team"}
    assert get(gw, "/admin/requests/b-1", GATEWAY_KEY).status_code == 404
    assert get(gw, "/admin/requests?status=bad").json()["error"]["param"] == "status"


def test_health_shows_every_target_with_its_circuit_and_recent_latency(gw):
    client = gw.client()
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    deadline = 50
    while deadline:
        body = get(gw, "/admin/health").json()
        target = next(a for a in body["data"] if a["alias"] == "gpt-test")["targets"][0]
        if target["requests"]:
            break
        deadline -= 1
        __import__("time").sleep(0.1)
    assert target["provider"] == "fake" and target["kind"] == "openai" and target["circuit"] == "closed"
    assert target["requests"] == 1 and target["p50_latency_ms"] > 0 and target["error_rate"] == 0
    assert next(a for a in body["data"] if a["alias"] == "gpt-test")["strategy"] == "priority"
    assert get(gw, "/admin/health", GATEWAY_KEY).status_code == 403


def test_the_console_is_served_with_a_strict_policy_and_can_be_turned_off(fake_openai, make_gateway, tmp_path):
    text = ledger_config(fake_openai.url, f"sqlite:///{tmp_path / 'u.db'}", server=f'admin_key = "{ADMIN}"')
    gw = make_gateway(text)
    for path in ("/ui", "/ui/", "/ui/keys"):
        page = httpx.get(gw.url + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    script = httpx.get(gw.url + "/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(gw.url + "/ui/nothing.js").status_code == 404
    assert httpx.get(gw.url + "/ui/..%2f..%2fapp.py").status_code == 404
    off = make_gateway(text.replace("[server]\n", "[server]\nui = false\n", 1))
    assert httpx.get(off.url + "/ui").status_code == 404


def test_the_console_source_has_no_inline_code_and_builds_no_html_from_text():
    """What the CSP enforces in the browser, checked in the files too; and text only ever goes in as text."""
    import re
    from pathlib import Path

    static = Path(__file__).resolve().parent.parent / "proxy" / "console" / "static"
    for page in static.rglob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page  # every script is a file
        assert not re.search(r"\s(style|on\w+)\s*=", html), page
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), page  # nothing from elsewhere
    ours = [p for p in static.rglob("*.js") if "vendor" not in p.parts]
    assert len(ours) >= 8
    for script in ours:
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{script.name} uses {sink}"
        assert not re.search(r"""import[^;]*from\s+["']https?:""", text), script
