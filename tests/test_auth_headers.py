"""Every header a client SDK names its key in: Authorization (OpenAI), x-api-key (Anthropic), api-key (Azure)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, Running, base_config

BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("header", ["x-api-key", "api-key"])
def test_key_headers_other_than_authorization_are_accepted(gateway: Running, header: str) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={header: GATEWAY_KEY}, json=BODY, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hi"
    models = httpx.get(gateway.url + "/v1/models", headers={header: GATEWAY_KEY}, timeout=10)
    assert models.status_code == 200


@pytest.mark.parametrize("header", ["authorization", "x-api-key", "api-key"])
def test_wrong_key_is_the_same_401_whatever_the_header(gateway: Running, header: str) -> None:
    value = "Bearer sk-wrong" if header == "authorization" else "sk-wrong"
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={header: value}, json=BODY, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["message"] == "Incorrect API key provided."


def test_the_key_header_is_checked_like_authorization(gateway: Running) -> None:
    """The allow-list of the key named in x-api-key applies: the limited key may not use a-ok."""
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"x-api-key": LIMITED_KEY},
                   json={**BODY, "model": "a-ok"}, timeout=10)
    assert r.status_code == 403


def test_no_key_is_todays_401(gateway: Running) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["message"].startswith("Missing API key")


def test_azure_sdk_style_client(gateway: Running) -> None:
    """The OpenAI SDK with its key only in an api-key header, as Azure clients send it."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                           default_headers={"api-key": GATEWAY_KEY, "Authorization": ""})
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "yo"}])
    assert reply.choices[0].message.content == "Echo: yo"


ADMIN_KEY = "sk-admin-headers"


@pytest.mark.parametrize("header", ["authorization", "x-api-key", "api-key"])
def test_usage_api_reads_every_key_header(make_gateway: Any, fake_openai: Running, tmp_path: Path,
                                          header: str) -> None:
    """GET /v1/usage takes the gateway key (its own rows) and the admin key (every row) in any of the
    headers the model routes read, and answers a wrong one with the same 401."""
    toml = base_config(fake_openai.url, tmp_path / "gw.db").replace(
        "require_auth = true", f'require_auth = true\nadmin_key = "{ADMIN_KEY}"')
    gw = make_gateway(toml)
    gw.client().chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    gw.client(LIMITED_KEY).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])

    def usage(key: str) -> httpx.Response:
        value = f"Bearer {key}" if header == "authorization" else key
        return httpx.get(gw.url + "/v1/usage?group_by=key", headers={header: value}, timeout=10)

    deadline = time.monotonic() + 10
    # Rows reach the ledger within a flush interval (the groups and the total are two queries: poll on both).
    while (everyone := usage(ADMIN_KEY)).status_code == 200 and (
            len(everyone.json()["data"]) < 2 or everyone.json()["total"]["requests"] < 2):
        assert time.monotonic() < deadline, everyone.text
        time.sleep(0.1)
    assert everyone.status_code == 200, everyone.text
    assert everyone.json()["key"] is None and {r["group"] for r in everyone.json()["data"]} == {"team", "limited"}
    own = usage(GATEWAY_KEY)
    assert own.status_code == 200, own.text
    assert own.json()["key"] == "team" and [r["group"] for r in own.json()["data"]] == ["team"]
    wrong = usage("sk-wrong")
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "Incorrect API key provided."
    none = httpx.get(gw.url + "/v1/usage", timeout=10)
    assert none.status_code == 401 and none.json()["error"]["message"].startswith("Missing API key")
