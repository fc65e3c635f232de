"""The audit log: every admin action (key created, changed, revoked; config reloaded; cache cleared) is an
append-only row, read through GET /admin/audit with filters, on SQLite and Postgres; secrets never in it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import pg
from tests.conftest import GATEWAY_KEY, Running
from tests.pg import ledger_config

pg_url, database_url = pg.pg_url, pg.database_url  # fixtures
ADMIN = "sk-admin-audit"


def admin(gw: Any, method: str, path: str, key: str = ADMIN, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {key}"}, timeout=10, **kwargs)


def gateway_text(fake_url: str, database_url: str, tmp: Path) -> str:
    return ledger_config(fake_url, database_url, storage=f'spill_dir = "{tmp / "spill"}"',
                         server=f'admin_key = "{ADMIN}"', extra='[cache]\nbackend = "memory"\n')


def test_key_changes_and_cache_clears_are_recorded_without_secrets(fake_openai, make_gateway, database_url,
                                                                      tmp_path):
    gw = make_gateway(gateway_text(fake_openai.url, database_url, tmp_path))
    created = admin(gw, "POST", "/admin/keys", json={"name": "ops", "budget_usd": 5, "models": ["gpt-*"]})
    assert created.status_code == 201
    secret = created.json()["key"]
    assert admin(gw, "PATCH", "/admin/keys/ops", json={"rpm": 10}).status_code == 200
    assert admin(gw, "DELETE", "/admin/keys/ops").status_code == 200
    assert admin(gw, "DELETE", "/admin/cache?alias=gpt-test").status_code == 200
    assert admin(gw, "PATCH", "/admin/keys/nope", json={"rpm": 1}).status_code == 404  # failed: not recorded

    body = admin(gw, "GET", "/admin/audit").json()
    entries = body["data"]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("cache.cleared", "gpt-test"), ("key.revoked", "ops"), ("key.updated", "ops"), ("key.created", "ops")]
    assert entries[3]["change"] == {"models": ["gpt-*"], "budget_usd": 5, "budget_period": "month", "metadata": {}}
    assert entries[2]["change"] == {"rpm": 10}
    assert all(e["principal"] == "admin" and e["client"] == "127.0.0.1" and e["created_at"].endswith("Z")
               for e in entries)
    assert secret not in httpx.get(gw.url + "/admin/audit", headers={"authorization": f"Bearer {ADMIN}"}).text

    # filters and paging
    only = admin(gw, "GET", "/admin/audit?action=key.revoked").json()["data"]
    assert [e["target"] for e in only] == ["ops"]
    assert [e["action"] for e in admin(gw, "GET", "/admin/audit?target=ops&limit=2").json()["data"]] == [
        "key.revoked", "key.updated"]
    page = admin(gw, "GET", "/admin/audit?limit=2").json()
    assert page["has_more"] is True
    older = admin(gw, "GET", f"/admin/audit?limit=2&before={page['data'][-1]['id']}").json()
    assert [e["action"] for e in older["data"]] == ["key.updated", "key.created"] and older["has_more"] is False
    assert admin(gw, "GET", "/admin/audit?start=2999-01-01").json()["data"] == []
    assert len(admin(gw, "GET", "/admin/audit?start=2000-01-01&end=2999-01-01").json()["data"]) == 4


def test_the_audit_api_is_admin_only_and_checks_its_parameters(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(gateway_text(fake_openai.url, f"sqlite:///{tmp_path / 'gw.db'}", tmp_path))
    assert admin(gw, "GET", "/admin/audit", GATEWAY_KEY).status_code == 403
    assert admin(gw, "GET", "/admin/audit", "sk-nobody").status_code == 401
    for query, param in (("action=nope", "action"), ("limit=0", "limit"), ("limit=x", "limit"),
                         ("start=yesterday", "start"), ("before=-1", "before")):
        r = admin(gw, "GET", f"/admin/audit?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query


def test_a_config_reload_is_recorded_and_rows_cannot_be_changed(fake_openai, tmp_path):
    from proxy.app import create_app
    from proxy.config import load_config
    from proxy.reload import reload
    from tests.servers import ServerThread

    path = tmp_path / "gw.toml"
    db = tmp_path / "gw.db"
    path.write_text(gateway_text(fake_openai.url, f"sqlite:///{db}", tmp_path))
    app = create_app(load_config(path))
    server = ServerThread(app).start()
    try:
        gw = Running(server, app)
        loop = server.server.servers[0].get_loop()
        assert asyncio.run_coroutine_threadsafe(reload(app), loop).result(10) is True
        path.write_text("[server\n")
        assert asyncio.run_coroutine_threadsafe(reload(app), loop).result(10) is False
        entries = admin(gw, "GET", "/admin/audit").json()["data"]
        assert [(e["action"], e["principal"], e["target"]) for e in entries] == [
            ("config.reload_failed", "signal", str(path)), ("config.reloaded", "signal", str(path))]
        assert entries[1]["change"]["models"] >= 3
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:  # append-only: the database refuses edits
        for statement in ("UPDATE audit_log SET principal = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)


def test_postgres_refuses_edits_of_the_audit_log(pg_url):
    import asyncpg

    from proxy.console.audit import AuditLog
    from proxy.console.db import ConsoleDB

    async def run() -> None:
        db = ConsoleDB(pg_url)
        try:
            await AuditLog(db).record("admin", "key.created", "k", {"key": "sk-secret", "rpm": 1}, None)
            rows = await db.fetch("SELECT change FROM audit_log")
            assert rows == [('{"rpm":1}',)]
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await db.run("DELETE FROM audit_log")
        finally:
            await db.close()

    asyncio.run(run())


def test_keys_changed_from_the_command_line_are_recorded(fake_openai, tmp_path, capsys):
    from proxy import cli

    path = tmp_path / "gw.toml"
    db = tmp_path / "gw.db"
    path.write_text(gateway_text(fake_openai.url, f"sqlite:///{db}", tmp_path))
    assert cli.main(["keys", "create", "cli-key", "--rpm", "5", "--config", str(path)]) == 0
    secret = capsys.readouterr().out.strip()
    assert cli.main(["keys", "revoke", "cli-key", "--config", str(path)]) == 0
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT principal, action, target, change, client FROM audit_log ORDER BY id").fetchall()
    assert [r[:3] for r in rows] == [("cli", "key.created", "cli-key"), ("cli", "key.revoked", "cli-key")]
    assert '"rpm":5' in rows[0][3] and secret not in rows[0][3] and rows[0][4] is None
