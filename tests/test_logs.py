"""Access log: one JSON line per request on stdout with the request's numbers, never a secret and never
the prompt unless log_bodies is on; startup and config errors are human-readable lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, PROVIDER_KEY, Running, base_config

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "my confidential prompt text"
MSGS = [{"role": "user", "content": PROMPT}]
ADMIN_KEY = "adm-log-secret-789"
SECRETS = (PROVIDER_KEY, GATEWAY_KEY, LIMITED_KEY, ADMIN_KEY, "Bearer ")


def log_lines(capfd: pytest.CaptureFixture[str], gw: Running, prefix: str, count: int) -> list[dict[str, Any]]:
    """The access-log lines of requests whose id starts with ``prefix``, read once all ``count`` requests
    have finished: a line is written in the same step that counts the request in /metrics (a stream's
    just after its last byte), and reading the capture while the server writes could drop a line."""
    deadline = time.monotonic() + 5
    while _finished(gw) < count:
        assert time.monotonic() < deadline, "requests never finished"
        time.sleep(0.02)
    time.sleep(0.1)  # lines are batched for up to 50 ms
    out = capfd.readouterr().out
    for raw in out.splitlines():
        for secret in SECRETS:
            assert secret not in raw, f"a secret in the access log: {raw}"
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line is JSON
    return [line for line in lines if line["request_id"].startswith(prefix)]


def _finished(gw: Running) -> float:
    text = httpx.get(gw.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "gateway_requests"
               for s in f.samples if s.name == "gateway_requests_total")


def test_one_line_per_request_with_its_numbers(make_gateway, fake_openai, tmp_path, capfd):
    config = base_config(fake_openai.url, tmp_path / "gw.db").replace("[server]\n",
                                                                       f'[server]\nadmin_key = "{ADMIN_KEY}"\n')
    gw = make_gateway(config)
    client = gw.client()
    run = "log-" + os.urandom(4).hex()
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MSGS,
                                                           extra_headers={"x-request-id": f"{run}-1"})
    resp = raw.parse()
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MSGS, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_headers={"x-request-id": f"{run}-2"}))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="a-fail-500", messages=MSGS, extra_headers={"x-request-id": f"{run}-3"})
    with pytest.raises(openai.InternalServerError):  # the upstream refuses, echoing the provider key
        client.chat.completions.create(model="a-leak-key", messages=MSGS, extra_headers={"x-request-id": f"{run}-4"})
    with pytest.raises(openai.PermissionDeniedError):
        gw.client(LIMITED_KEY).chat.completions.create(model="a-fail-500", messages=MSGS,
                                                       extra_headers={"x-request-id": f"{run}-5"})

    # The gateway keeps the client's id as a prefix and makes it unique with a suffix.
    lines = {line["request_id"][len(run) + 1:].split(".")[0]: line for line in log_lines(capfd, gw, run, 5)}
    assert sorted(lines) == ["1", "2", "3", "4", "5"]

    ok = lines["1"]
    assert ok["request_id"].startswith(raw.headers["x-request-id"] + ".")  # the usage row's id
    assert (ok["key"], ok["model"], ok["provider"], ok["upstream_model"]) == ("team", "gpt-test", "fake", "ok")
    assert (ok["endpoint"], ok["stream"], ok["status"], ok["attempts"], ok["error_type"]) == ("chat", False, 200, 1,
                                                                                              None)
    assert ok["prompt_tokens"] == resp.usage.prompt_tokens and ok["completion_tokens"] == resp.usage.completion_tokens
    assert ok["cached_tokens"] == resp.usage.prompt_tokens_details.cached_tokens
    assert ok["reasoning_tokens"] == resp.usage.completion_tokens_details.reasoning_tokens
    assert ok["cost_usd"] == pytest.approx(float(raw.headers["x-gateway-cost-usd"]))
    assert ok["overhead_ms"] == pytest.approx(float(raw.headers["x-gateway-overhead-ms"]), abs=0.002)
    assert ok["latency_ms"] > 0 and ok["ttft_ms"] is None
    assert ok["time"].endswith("Z") and abs(time.time() - _epoch(ok["time"])) < 60

    stream = lines["2"]
    assert stream["stream"] is True and stream["status"] == 200
    assert stream["completion_tokens"] == chunks[-1].usage.completion_tokens
    assert 0 < stream["ttft_ms"] <= stream["latency_ms"]

    failed = lines["3"]
    assert (failed["status"], failed["error_type"], failed["attempts"]) == (502, "status_5xx", 2)
    assert lines["4"]["status"] == 502 and lines["4"]["error_type"] == "auth_refused"
    refused = lines["5"]
    assert (refused["key"], refused["status"], refused["provider"], refused["attempts"]) == ("limited", 403, None, 0)
    for line in lines.values():
        assert PROMPT not in json.dumps(line) and "request_body" not in line


def test_log_bodies_adds_the_request_body(make_gateway, fake_openai, tmp_path, capfd):
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db") + "\n[observability]\nlog_bodies = true\n")
    run = "body-" + os.urandom(4).hex()
    gw.client().chat.completions.create(model="gpt-test", messages=MSGS, extra_headers={"x-request-id": run})
    list(gw.client().chat.completions.create(model="gpt-test", messages=MSGS, stream=True,
                                             extra_headers={"x-request-id": run + "-s"}))
    lines = log_lines(capfd, gw, run, 2)
    assert len(lines) == 2
    for line in lines:
        assert line["request_body"]["messages"] == MSGS and line["request_body"]["model"] == "gpt-test"


def test_access_log_can_be_turned_off(make_gateway, fake_openai, tmp_path, capfd):
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db") + "\n[observability]\naccess_log = false\n")
    gw.client().chat.completions.create(model="gpt-test", messages=MSGS)
    time.sleep(0.1)
    assert capfd.readouterr().out == ""


def test_config_errors_are_one_human_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(base_config("http://127.0.0.1:9", tmp_path / "gw.db") + '\n[observability]\naccess_log = "yes"\n')
    for command in ("serve", "check"):
        done = subprocess.run([sys.executable, "-m", "proxy.cli", command, "--config", str(bad)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"error: {bad}:observability.access_log: expected a boolean, got a string\n"
    bad.write_text(base_config("http://127.0.0.1:9", tmp_path / "gw.db").replace(
        "[server]\n", "[server]\nmetrics_require_admin = true\n"))
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stderr == f"error: {bad}:server.metrics_require_admin: needs server.admin_key to be set\n"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
