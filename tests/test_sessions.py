"""Server-side sessions (/v1/sessions and chat requests with a session_id) on SQLite and Postgres:
history prepended, both messages kept, images stored once, paging newest last, ownership, deletion."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import pg
from tests.conftest import GATEWAY_KEY, LIMITED_KEY
from tests.pg import ledger_config

pg_url, database_url, throwaway_pg = pg.pg_url, pg.database_url, pg.throwaway_pg  # fixtures
ADMIN = "sk-admin-secret"
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()


@pytest.fixture
def gw(fake_openai, make_gateway, database_url, tmp_path):
    storage = f'spill_dir = "{tmp_path / "spill"}"'
    return make_gateway(ledger_config(fake_openai.url, database_url, storage=storage,
                                      server=f'admin_key = "{ADMIN}"'))


def api(gw: Any, method: str, path: str, key: str = GATEWAY_KEY, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {key}"}, timeout=10, **kwargs)


def new_session(gw: Any, key: str = GATEWAY_KEY, **body: Any) -> str:
    r = api(gw, "POST", "/v1/sessions", key, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["object"] == "session"
    return r.json()["id"]


def sent_messages(fake_openai: Any) -> list[dict[str, Any]]:
    return fake_openai.app.state.fake.last()["body"]["messages"]


def test_history_is_prepended_and_both_messages_kept(gw, fake_openai):
    sid = new_session(gw, title="trip")
    client = gw.client()
    first = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "one"}],
                                           extra_body={"session_id": sid})
    assert first.choices[0].message.content == "Hello one"
    assert "session_id" not in fake_openai.app.state.fake.last()["body"]  # never forwarded to the provider
    # The header works as the body field does; a system prompt is sent but is not part of the history.
    second = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "two"}],
        extra_headers={"x-gateway-session-id": sid})
    assert second.choices[0].message.content == "Hello two"
    assert [(m["role"], m["content"]) for m in sent_messages(fake_openai)] == [
        ("system", "be brief"), ("user", "one"), ("assistant", "Hello one"), ("user", "two")]

    body = api(gw, "GET", f"/v1/sessions/{sid}").json()
    assert body["title"] == "trip"
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "one"), ("assistant", "Hello one"), ("user", "two"), ("assistant", "Hello two")]
    raw = api(gw, "POST", "/v1/chat/completions", json={"model": "gpt-test", "session_id": sid,
                                                         "messages": [{"role": "user", "content": "three"}]})
    assert raw.headers["x-gateway-session-id"] == sid
    body = api(gw, "GET", f"/v1/sessions/{sid}?limit=4").json()
    meta = body["messages"][-3]["meta"]
    assert meta["provider"] == "fake" and meta["model"] == "gpt-test"
    assert meta["usage"]["completion_tokens"] == 2 and meta["cost_usd"] > 0 and meta["latency_ms"] > 0


def test_a_streamed_answer_is_kept_too(gw, fake_openai):
    sid = new_session(gw)
    stream = gw.client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "streamed words"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"session_id": sid})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello streamed words"
    messages = api(gw, "GET", f"/v1/sessions/{sid}").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "streamed words"), ("assistant", text)]
    assert messages[1]["meta"]["usage"]["completion_tokens"] == 3
    # the next turn carries it
    gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "next"}],
                                        extra_body={"session_id": sid})
    assert [m["content"] for m in sent_messages(fake_openai)] == ["streamed words", text, "next"]


def test_images_are_stored_once_and_come_back_as_data_urls(gw, fake_openai, database_url):
    sid = new_session(gw)
    url = f"data:image/png;base64,{PNG}"
    image = {"role": "user", "content": [{"type": "text", "text": "what is it"},
                                         {"type": "image_url", "image_url": {"url": url}}]}
    for _ in range(2):
        gw.client().chat.completions.create(model="gpt-test", messages=[image], extra_body={"session_id": sid})
    sent = sent_messages(fake_openai)
    assert sent[0]["content"][1]["image_url"]["url"] == url  # history sent to the model with the image itself
    messages = api(gw, "GET", f"/v1/sessions/{sid}").json()["messages"]
    assert [m["content"][1]["image_url"]["url"] for m in messages if m["role"] == "user"] == [url, url]
    if database_url.startswith("sqlite"):
        db = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM session_images").fetchone()[0] == 1
            stored = [r[0] for r in conn.execute("SELECT message FROM session_messages WHERE role = 'user'")]
        assert all(PNG not in text and "gateway-image:" in text for text in stored)


def test_messages_are_paged_newest_last(gw):
    sid = new_session(gw)
    for i in range(5):
        gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": f"m{i}"}],
                                            extra_body={"session_id": sid})
    page = api(gw, "GET", f"/v1/sessions/{sid}?limit=4").json()
    assert [m["content"] for m in page["messages"]] == ["m3", "Hello m3", "m4", "Hello m4"]
    assert page["has_more"] is True
    older = api(gw, "GET", f"/v1/sessions/{sid}?limit=4&before={page['first_id']}").json()
    assert [m["content"] for m in older["messages"]] == ["m1", "Hello m1", "m2", "Hello m2"]
    rest = api(gw, "GET", f"/v1/sessions/{sid}?limit=4&before={older['first_id']}").json()
    assert [m["content"] for m in rest["messages"]] == ["m0", "Hello m0"] and rest["has_more"] is False
    bad = api(gw, "GET", f"/v1/sessions/{sid}?limit=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_sessions_belong_to_their_key(gw):
    mine = new_session(gw, title="mine")
    theirs = new_session(gw, LIMITED_KEY, title="theirs")
    assert [s["id"] for s in api(gw, "GET", "/v1/sessions").json()["data"]] == [mine]
    assert api(gw, "GET", f"/v1/sessions/{theirs}").status_code == 404
    assert api(gw, "DELETE", f"/v1/sessions/{theirs}").status_code == 404
    with pytest.raises(openai.NotFoundError) as info:
        gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}],
                                            extra_body={"session_id": theirs})
    assert info.value.body["code"] == "session_not_found" and info.value.body["param"] == "session_id"
    # the admin key sees every session (the console), and cannot make one of its own
    listed = api(gw, "GET", "/v1/sessions", ADMIN).json()["data"]
    assert {(s["id"], s["key"]) for s in listed} == {(mine, "team"), (theirs, "limited")}
    assert api(gw, "POST", "/v1/sessions", ADMIN, json={}).status_code == 403
    assert api(gw, "GET", "/v1/sessions", "sk-wrong").status_code == 401


def test_deleting_a_session_removes_it(gw):
    sid = new_session(gw)
    gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}],
                                        extra_body={"session_id": sid})
    r = api(gw, "DELETE", f"/v1/sessions/{sid}")
    assert r.json() == {"id": sid, "object": "session.deleted", "deleted": True}
    assert api(gw, "GET", f"/v1/sessions/{sid}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}],
                                            extra_body={"session_id": sid})


def test_bad_session_requests_name_the_parameter(gw):
    for body, param in (({"title": 5}, "title"), ({"other": 1}, "other"), ({"metadata": []}, "metadata")):
        r = api(gw, "POST", "/v1/sessions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}],
                                            extra_body={"session_id": 7})
    assert info.value.body["param"] == "session_id"
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().embeddings.create(model="gpt-test", input="x", extra_body={"session_id": "sess_x"})
    assert info.value.body["param"] == "session_id"


def test_retention_prunes_unused_sessions(tmp_path: Path):
    import asyncio

    from proxy.console.db import ConsoleDB
    from proxy.console.sessions import SessionStore

    async def run() -> tuple[int, int, int]:
        db = ConsoleDB(f"sqlite:///{tmp_path / 'r.db'}")
        store = SessionStore(db)
        try:
            old, fresh = await store.create("k", None, {}), await store.create("k", None, {})
            image = {"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": f"data:image/png;base64,{PNG}"}}]}
            await store.append(old.id, [(image, None)])
            await db.run("UPDATE sessions SET updated_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", old.id)
            removed = await store.prune(30)
            images = (await db.fetch("SELECT COUNT(*) FROM session_images"))[0][0]
            left = len(await store.list("k", 10, None))
            assert (await store.get(fresh.id, "k")) is not None
            return removed, images, left
        finally:
            await db.close()

    assert asyncio.run(run()) == (1, 0, 1)


def test_a_database_outage_is_a_503_in_the_apis_shape_and_the_chat_without_a_session_goes_on(
        fake_openai, make_gateway, throwaway_pg, tmp_path):
    import asyncio
    import uuid

    schema = f"sessions_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg._execute(throwaway_pg.url, f"CREATE SCHEMA {schema}"))
    url = f"{throwaway_pg.url}?search_path={schema}"
    gw = make_gateway(ledger_config(fake_openai.url, url, storage=f'spill_dir = "{tmp_path / "spill"}"',
                                    server=f'admin_key = "{ADMIN}"'))
    sid = new_session(gw)
    throwaway_pg.stop()
    try:
        with pytest.raises(openai.InternalServerError) as info:
            gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}],
                                                extra_body={"session_id": sid})
        assert info.value.status_code == 503 and info.value.body["code"] == "sessions_unavailable"
        for path in ("/v1/sessions", f"/v1/sessions/{sid}"):
            r = api(gw, "GET", path)
            assert r.status_code == 503 and r.json()["error"]["code"] == "sessions_unavailable", path
        assert api(gw, "GET", "/admin/audit", ADMIN).json()["error"]["code"] == "audit_unavailable"
        answer = gw.client().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "y"}])
        assert answer.choices[0].message.content == "Hello y"
    finally:
        throwaway_pg.start()
