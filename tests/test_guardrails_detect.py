"""The detectors, the injection score on the labelled set, and placeholders held back in streams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.guardrails.detect import Finder
from proxy.guardrails.injection import score
from proxy.guardrails.state import GuardState
from proxy.guardrails.stream import StreamFilter
from proxy.guardrails.vault import Vault
from proxy.records import UsageRecord
from proxy.settings import PII_ENTITIES
from proxy.storage import open_store
from tests import pg

FIND = Finder(PII_ENTITIES)


ENTITIES = [
    ("mail jane.roe@example.com today", "email", "jane.roe@example.com"),
    ("call (650) 253-0000 please", "phone", "(650) 253-0000"),
    ("ruf +49 30 901820 an", "phone", "+49 30 901820"),
    ("card 4111-1111-1111-1111 ok", "credit_card", "4111-1111-1111-1111"),
    ("IBAN GB82 WEST 1234 5698 7654 32.", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("ssn 123-45-6789.", "us_ssn", "123-45-6789"),
    ("host 192.168.1.20 is down", "ip_address", "192.168.1.20"),
    ("v6 fe80::1ff:fe23:4567:890a here", "ip_address", "fe80::1ff:fe23:4567:890a"),
    ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "secret", "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"),
    ("aws AKIAIOSFODNN7EXAMPLE", "secret", "AKIAIOSFODNN7EXAMPLE"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "secret",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc", "secret", "Bearer eyJhbGciOiJIUzI1NiJ9.abc"),
]


@pytest.mark.parametrize("text, entity, value", ENTITIES)
def test_each_entity_is_found(text, entity, value):
    assert [(text[s:e], k) for s, e, k in FIND.spans(text)] == [(value, entity)]


@pytest.mark.parametrize("text, entity, value", ENTITIES)
def test_each_entity_is_found_in_non_ascii_text(text, entity, value):
    """ASCII text is scanned through a class map, other text with Unicode patterns: both find the same."""
    text = f"Grüße — {text} — 谢谢"
    assert [(text[s:e], k) for s, e, k in FIND.spans(text)] == [(value, entity)]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # fails Luhn
    "IBAN GB82 WEST 1234 5698 7654 33",  # fails mod 97
    "version 1.2.3.4.5 and 999.1.1.1",  # not addresses
    "ssn 000-12-3456",  # not issued
    "order 48213 shipped on 2024-03-01",
    "call 123",
])
def test_lookalikes_are_left_alone(text):
    assert FIND.spans(text) == []


def test_labelled_injection_set_rates():
    rows = [orjson.loads(line) for line in (Path(__file__).parent / "data" / "injection_set.jsonl")
            .read_text(encoding="utf-8").splitlines()]
    attacks = [r for r in rows if r["label"] == "attack"]
    benign = [r for r in rows if r["label"] == "benign"]
    assert len(attacks) >= 100 and len(benign) >= 300
    assert {"code", "support", "multilingual"} <= {r["kind"] for r in benign}
    detected = sum(score(r["text"], r.get("tool", False)) >= 0.5 for r in attacks) / len(attacks)
    false = sum(score(r["text"], r.get("tool", False)) >= 0.5 for r in benign) / len(benign)
    assert detected >= 0.9 and false <= 0.02  # README: 97.0% and 0.0% at threshold 0.5


def test_vault_holds_back_only_a_possible_placeholder_start():
    v = Vault()
    assert v.placeholder("email", "a@b.co") == "[EMAIL_1]" and v.placeholder("email", "a@b.co") == "[EMAIL_1]"
    assert v.held_from("write to [EMA") == len("write to ")
    assert v.held_from("array[0] = x") == len("array[0] = x")  # not a placeholder's start
    assert v.held_from("see [") == len("see ")
    assert v.restore_json(b'{"c":"to [EMAIL_1]"}') == b'{"c":"to a@b.co"}'


def _chunk(text: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                     "choices": [{"index": 0, "delta": {"content": text},
                                                  "finish_reason": finish}]}) + b"\n\n"


def test_stream_filter_restores_across_every_split():
    original = "mail [EMAIL_1] and [EMAIL_1]!"
    for size in range(1, 8):
        state = GuardState()
        state.vault.placeholder("email", 'x"y@z.io')
        state.restore = True
        f = StreamFilter(state, [])
        out = b"".join(f.feed(_chunk(original[i:i + size])) for i in range(0, len(original), size))
        out += f.feed(_chunk("", "stop")) + f.feed(b"data: [DONE]\n\n")
        text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
                       for line in out.split(b"\n\n") if line.startswith(b"data: {"))
        assert text == 'mail x"y@z.io and x"y@z.io!'


pg_url, database_url = pg.pg_url, pg.database_url  # fixtures


def test_guardrail_actions_column_on_both_databases(database_url):
    actions = '[{"guardrail": "pii", "on": "input", "action": "redact", "count": 2}]'
    rows = [UsageRecord(request_id=f"g-{i}", created_at=time.time(), key_name="team", model="m", endpoint="chat",
                        stream=False, status=200, guardrail_actions=actions if i else None) for i in range(2)]

    async def roundtrip() -> list[dict]:
        store: Any = open_store(database_url)
        try:
            await store.migrate()
            assert await store.write(rows) == 2
            return await store.fetch_all()
        finally:
            await store.close()

    got = {r["request_id"]: r["guardrail_actions"] for r in asyncio.run(roundtrip())}
    assert got["g-0"] is None
    assert orjson.loads(got["g-1"]) == orjson.loads(actions)
