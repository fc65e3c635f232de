"""A client that goes away mid-stream makes the gateway close the upstream request at once."""

from __future__ import annotations

import time

import httpx

from tests.conftest import GATEWAY_KEY


def test_client_disconnect_closes_upstream(gateway, fake_openai):
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "a-slow-stream", "messages": [{"role": "user", "content": "go"}],
                            "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen == 3:
                break
    started = time.monotonic()
    # The full stream would take 20 s; the upstream must see the hang-up within a second or two.
    while len(outcomes) == before and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert outcomes[before:] == ["client_gone"]
    assert time.monotonic() - started < 3
