"""GET /v1/usage and `gateway usage` / `gateway migrate`: grouping, totals, permissions, CLI output."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from proxy import cli
from proxy.records import UsageRecord
from proxy.storage import open_store
from tests import pg
from tests.conftest import GATEWAY_KEY, LIMITED_KEY
from tests.pg import ledger_config, wait_for

pg_url, database_url = pg.pg_url, pg.database_url  # fixtures

ADMIN = "sk-admin-secret"
DAY1 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


def seed_rows() -> list[UsageRecord]:
    """20 rows on day 1 (latencies 1..20 ms, 2 errors, 5 cache hits), 3 unpriced rows on day 2."""
    out = []
    for i in range(1, 21):
        out.append(UsageRecord(
            request_id=f"a-{i}", created_at=(DAY1 + timedelta(minutes=i * 5)).timestamp(), key_name="team",
            model="alpha", endpoint="chat", stream=False, provider="p1", upstream_model="alpha-1",
            status=500 if i in (3, 7) else 200, error_type="status_5xx" if i in (3, 7) else None,
            prompt_tokens=10 * i, completion_tokens=i, cached_tokens=1 if i % 2 else 0, reasoning_tokens=0,
            cost_usd=i / 1000, latency_ms=float(21 - i), cache_hit=i <= 5, attempts=1,
            cost_saved_usd=0.01 if i <= 5 else None))
    for i in range(3):
        out.append(UsageRecord(
            request_id=f"b-{i}", created_at=(DAY2 + timedelta(minutes=i)).timestamp(), key_name="other",
            model="beta", endpoint="embeddings", stream=False, provider="p2", upstream_model="beta-1", status=200,
            prompt_tokens=7, cost_usd=None, latency_ms=100.0, attempts=1))
    return out


async def _seed(url: str, rows: list[UsageRecord]) -> None:
    store: Any = open_store(url)
    try:
        await store.migrate()
        await store.write(rows)
    finally:
        await store.close()


async def _report(url: str, start: datetime, end: datetime, group_by: str | None, key: str | None = None) -> dict:
    store: Any = open_store(url)
    try:
        return {r.group: r for r in await store.report(start, end, group_by, key)}
    finally:
        await store.close()


def test_report_totals_groups_and_p95_are_the_same_on_both_databases(database_url):
    asyncio.run(_seed(database_url, seed_rows()))
    start, end = DAY1 - timedelta(hours=1), DAY2 + timedelta(hours=1)

    by_model = asyncio.run(_report(database_url, start, end, "model"))
    alpha, beta = by_model["alpha"], by_model["beta"]
    assert (alpha.requests, alpha.errors) == (20, 2)
    assert (alpha.prompt_tokens, alpha.completion_tokens, alpha.cached_tokens) == (2100, 210, 10)
    assert alpha.cost_usd == pytest.approx(0.21)
    assert alpha.avg_latency_ms == pytest.approx(10.5)
    assert alpha.p95_latency_ms == 19.0  # nearest rank: the 19th of 20 sorted latencies
    assert alpha.cache_hit_rate == pytest.approx(0.25)
    assert alpha.cost_saved_usd == pytest.approx(0.05) and beta.cost_saved_usd == 0
    assert alpha.unpriced_requests == 0
    assert (beta.requests, beta.prompt_tokens, beta.cost_usd, beta.unpriced_requests) == (3, 21, None, 3)

    assert set(asyncio.run(_report(database_url, start, end, "key"))) == {"team", "other"}
    assert set(asyncio.run(_report(database_url, start, end, "provider"))) == {"p1", "p2"}
    days = asyncio.run(_report(database_url, start, end, "day"))
    assert {d: r.requests for d, r in days.items()} == {"2026-01-01": 20, "2026-01-02": 3}
    hours = asyncio.run(_report(database_url, start, end, "hour"))
    assert {h: r.requests for h, r in hours.items()} == {
        "2026-01-01T10:00:00Z": 11, "2026-01-01T11:00:00Z": 9, "2026-01-02T03:00:00Z": 3}

    only_team = asyncio.run(_report(database_url, start, end, None, "team"))
    assert only_team["total"].requests == 20
    day2_only = asyncio.run(_report(database_url, DAY2, end, None))
    assert day2_only["total"].requests == 3  # [start, end): day 1 is outside


def _get(url: str, key: str | None, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + "/v1/usage", params=params, headers=headers)


def test_usage_api_groups_and_permissions(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(ledger_config(fake_openai.url, f"sqlite:///{tmp_path / 'u.db'}", server=f'admin_key = "{ADMIN}"'))
    team, limited = gw.client(), gw.client(LIMITED_KEY)
    costs = {"team": 0.0, "limited": 0.0}
    prompt = {"team": 0, "limited": 0}
    for name, client, n in (("team", team, 3), ("limited", limited, 2)):
        for i in range(n):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": f"hello {i} " * (i + 1)}])
            costs[name] += float(raw.headers["x-gateway-cost-usd"])
            prompt[name] += raw.parse().usage.prompt_tokens
    limited.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        team.chat.completions.create(model="a-fail-400", messages=[{"role": "user", "content": "x"}])

    wait_for(lambda: _get(gw.url, ADMIN).json()["total"]["requests"] == 7)

    # The admin key sees everyone.
    body = _get(gw.url, ADMIN, group_by="key").json()
    keys = {g["group"]: g for g in body["data"]}
    assert set(keys) == {"team", "limited"} and body["key"] is None
    assert (keys["team"]["requests"], keys["team"]["errors"]) == (4, 1)
    assert (keys["limited"]["requests"], keys["limited"]["errors"]) == (3, 0)
    assert keys["team"]["cost_usd"] == pytest.approx(costs["team"], abs=1e-9)
    assert keys["team"]["prompt_tokens"] == prompt["team"]
    models = {g["group"]: g["requests"] for g in _get(gw.url, ADMIN).json()["data"]}  # group_by defaults to model
    assert models == {"gpt-test": 5, "a-fail-400": 1, "echo": 1}

    # A gateway key sees only its own rows, whatever it asks for.
    mine = _get(gw.url, GATEWAY_KEY, group_by="key").json()
    assert [g["group"] for g in mine["data"]] == ["team"] and mine["key"] == "team"
    assert mine["total"]["requests"] == 4
    theirs = _get(gw.url, LIMITED_KEY, group_by="model").json()
    assert {g["group"]: g["requests"] for g in theirs["data"]} == {"gpt-test": 2, "echo": 1}
    assert theirs["total"]["cost_usd"] == pytest.approx(costs["limited"], abs=1e-9)

    today = datetime.now(UTC)
    by_day = _get(gw.url, ADMIN, group_by="day").json()["data"]
    assert len(by_day) in (1, 2) and by_day[-1]["group"] == today.strftime("%Y-%m-%d")  # 2 only across midnight
    by_provider = {g["group"]: g["requests"] for g in _get(gw.url, ADMIN, group_by="provider").json()["data"]}
    assert by_provider == {"fake": 6, "local": 1}  # the upstream 400 names the provider that answered

    # An explicit range that ends before the requests: nothing, with zero totals.
    empty = _get(gw.url, ADMIN, start="2020-01-01", end="2020-01-02T00:00:00Z").json()
    assert empty["data"] == [] and empty["total"]["requests"] == 0 and empty["start"] == "2020-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(("key", "params", "status", "param"), [
    (None, {}, 401, None),
    ("sk-wrong", {}, 401, None),
    (ADMIN, {"group_by": "color"}, 400, "group_by"),
    (ADMIN, {"start": "yesterday"}, 400, "start"),
    (ADMIN, {"end": "2026-13-45"}, 400, "end"),
    (ADMIN, {"start": "2026-01-02", "end": "2026-01-01"}, 400, "start"),
])
def test_usage_api_errors_are_openai_shaped(fake_openai, make_gateway, tmp_path, key, params, status, param):
    gw = make_gateway(ledger_config(fake_openai.url, f"sqlite:///{tmp_path / 'u.db'}", server=f'admin_key = "{ADMIN}"'))
    r = _get(gw.url, key, **params)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_open_gateway_needs_the_admin_key_when_one_is_set(fake_openai, make_gateway, tmp_path):
    toml = ledger_config(fake_openai.url, f"sqlite:///{tmp_path / 'u.db'}", server=f'admin_key = "{ADMIN}"')
    gw = make_gateway(toml.replace("require_auth = true", "require_auth = false"))
    assert _get(gw.url, None).status_code == 401
    assert _get(gw.url, GATEWAY_KEY).status_code == 401
    assert _get(gw.url, ADMIN).status_code == 200


# --- CLI -----------------------------------------------------------------------------------------------------------


def _config(tmp_path: Any, url: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[server]\nrequire_auth = false\n[storage]\ndatabase_url = "{url}"\n')
    return str(path)


def test_migrate_command_creates_the_schema_once(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    config = _config(tmp_path, url)
    assert cli.main(["migrate", "--config", config]) == 0
    assert "schema (usage_log, api_keys) at version 5 (applied 1, 2, 3, 4, 5)" in capsys.readouterr().out
    assert cli.main(["migrate", "--config", config]) == 0
    assert "(nothing to apply)" in capsys.readouterr().out
    assert pg.fetch_rows(url) == []


def test_usage_command_prints_the_report_as_a_table(database_url, tmp_path, capsys):
    now = datetime.now(UTC)
    rows = seed_rows()
    for r in rows:  # move the seed into the last day so --since 24h covers it (beta stays 2 days back)
        r.created_at = (now - timedelta(hours=2) + timedelta(seconds=int(r.request_id[2:]))).timestamp() \
            if r.model == "alpha" else (now - timedelta(days=2)).timestamp()
    asyncio.run(_seed(database_url, rows))
    config = _config(tmp_path, database_url)

    assert cli.main(["usage", "--config", config, "--since", "24h", "--by", "model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("usage ") and lines[0].endswith(" by model")
    assert lines[1].split() == ["MODEL", "REQUESTS", "ERRORS", "PROMPT_TOK", "COMPLETION_TOK", "CACHED_TOK",
                                "COST_USD", "AVG_MS", "P95_MS", "CACHE_HIT", "SAVED_USD"]
    assert lines[2].split() == ["alpha", "20", "2", "2100", "210", "10", "0.210000", "10.5", "19.0", "25.0%",
                                "0.050000"]
    assert lines[3].split()[0] == "TOTAL" and lines[3].split()[1:] == lines[2].split()[1:]
    assert len(lines) == 4  # beta is older than 24h

    assert cli.main(["usage", "--config", config, "--since", "3d", "--by", "key"]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert table["team"][1] == "20" and table["other"][1:2] == ["3"]
    assert table["other"][6] == "-"  # no price: no cost, never a made-up one
    assert table["TOTAL"][1] == "23"

    assert cli.main(["usage", "--config", config, "--since", "soon"]) == 2
    assert "since" in capsys.readouterr().err



@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_api_keys_are_in_the_versioned_schema_and_an_old_database_upgrades(database_url, tmp_path, capsys):
    """Gateways before schema version 2 created api_keys on their own: migrating such a database keeps
    its keys, and the keystore reads them."""
    from proxy.keystore import KeyStore
    from proxy.storage import MIGRATIONS

    sqlite = database_url.startswith("sqlite")
    v1 = MIGRATIONS[0].sqlite if sqlite else MIGRATIONS[0].postgres
    old = [  # what a gateway at schema version 1 left behind
        *v1,
        "CREATE TABLE gateway_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)"
        if sqlite else
        "CREATE TABLE gateway_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz "
        "NOT NULL)",
        "INSERT INTO gateway_migrations VALUES (1, 'create usage_log', '2026-01-01T00:00:00Z')",
        "CREATE TABLE api_keys (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, key_prefix TEXT NOT NULL, "
        "settings TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, revoked_at TEXT)",
        "INSERT INTO api_keys VALUES ('old', 'h', 'sk-gw-x', '{}', 't', 't', NULL)",
    ]
    if sqlite:
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            for statement in old:
                conn.execute(statement)
    else:
        asyncio.run(pg._execute(database_url, *old))

    config = _config(tmp_path, database_url)
    assert cli.main(["migrate", "--config", config]) == 0
    assert "at version 5 (applied 2, 3, 4, 5)" in capsys.readouterr().out

    async def names() -> list[str]:
        keys = KeyStore(database_url)
        try:
            return [k.name for k in await keys.all()]
        finally:
            await keys.close()

    assert asyncio.run(names()) == ["old"]


def test_a_fresh_database_gets_api_keys_from_the_migrations_whoever_opens_it_first(tmp_path):
    """The keystore may be the first to open a database (`gateway keys create` before any serve)."""
    import sqlite3

    from proxy.keystore import KeyStore
    from proxy.storage import LATEST

    url = f"sqlite:///{tmp_path / 'k.db'}"

    async def first() -> None:
        keys = KeyStore(url)
        try:
            assert await keys.all() == []
        finally:
            await keys.close()

    asyncio.run(first())
    with sqlite3.connect(tmp_path / "k.db") as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM gateway_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_database_newer_than_the_gateway_is_refused_with_its_version(database_url, tmp_path, capsys):
    from proxy.storage import LATEST

    config = _config(tmp_path, database_url)
    assert cli.main(["migrate", "--config", config]) == 0
    newer = f"INSERT INTO gateway_migrations VALUES ({LATEST + 1}, 'from the future', '2030-01-01T00:00:00Z')"
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(newer)
    else:
        asyncio.run(pg._execute(database_url, newer))
    capsys.readouterr()
    assert cli.main(["migrate", "--config", config]) == 1
    assert f"schema version {LATEST + 1}, newer than this gateway ({LATEST})" in capsys.readouterr().err
