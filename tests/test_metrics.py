"""GET /metrics after real traffic through the OpenAI SDK: values match what was sent, the text parses
with prometheus_client and passes `promtool check metrics`; the metrics port and admin restriction;
`gateway serve --workers 2` reports the sum; the Grafana dashboard only queries exported metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, PROVIDER_KEY, base_config
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
MSGS = [{"role": "user", "content": "tell me about Paris"}]
PRICE_IN, PRICE_OUT = 1.0, 2.0  # gpt-test's prices in base_config (USD per million tokens)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, set[str]]:
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def scrape(url: str, **kwargs: Any) -> tuple[str, Samples]:
    r = httpx.get(url + "/metrics", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text, parse(r.text)[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def usage_cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE_IN + completion * PRICE_OUT) / 1_000_000


def test_metrics_match_the_traffic_sent(make_gateway, fake_openai, tmp_path):
    extra = ('[[models]]\nname = "capped"\nrpm = 2\n'
             'targets = [{ provider = "fake", model = "ok", input_per_mtok = 1.0, output_per_mtok = 2.0 }]\n')
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    client = gw.client()
    tokens = {"prompt": 0, "completion": 0, "cached": 0, "reasoning": 0}
    cost = 0.0

    def count(usage: Any) -> None:
        nonlocal cost
        tokens["prompt"] += usage.prompt_tokens
        tokens["completion"] += usage.completion_tokens
        tokens["cached"] += usage.prompt_tokens_details.cached_tokens
        tokens["reasoning"] += usage.completion_tokens_details.reasoning_tokens

    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MSGS)
        count(raw.parse().usage)
        cost += float(raw.headers["x-gateway-cost-usd"])
    for _ in range(2):
        chunks = list(client.chat.completions.create(model="gpt-test", messages=MSGS, stream=True,
                                                     stream_options={"include_usage": True}))
        count(chunks[-1].usage)
        cost += usage_cost(chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="a-fail-500", messages=MSGS)  # 2 attempts (max_retries = 1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="a-fail-400", messages=MSGS)  # the client's fault: no upstream error
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="a-cut-stream", messages=MSGS, stream=True))
    for _ in range(2):
        client.chat.completions.create(model="capped", messages=MSGS)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="capped", messages=MSGS)
    secret_model = "no-such-model-" + os.urandom(4).hex()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=secret_model, messages=MSGS)
    emb = client.embeddings.create(model="gpt-test", input="one two three")
    tokens["prompt"] += emb.usage.prompt_tokens
    cost += usage_cost(emb.usage.prompt_tokens, 0)
    client.chat.completions.create(model="a-ok", messages=MSGS)  # its target has no price
    wrong_key = "sk-wrong-" + os.urandom(4).hex()
    for _ in range(2):
        with pytest.raises(openai.AuthenticationError):
            gw.client(key=wrong_key).chat.completions.create(model="gpt-test", messages=MSGS)
    with pytest.raises(openai.AuthenticationError):
        gw.client(key=wrong_key).models.list()

    text, s = scrape(gw.url)  # no gateway key needed
    promtool_check(text)

    chat_ok = {"endpoint": "chat", "model": "gpt-test", "provider": "fake", "status": "200"}
    assert value(s, "gateway_requests_total", **chat_ok) == 5
    assert value(s, "gateway_requests_total", endpoint="embeddings", model="gpt-test", status="200") == 1
    assert value(s, "gateway_requests_total", model="a-fail-500", status="502") == 1
    assert value(s, "gateway_requests_total", model="a-fail-400", status="400") == 1
    assert value(s, "gateway_requests_total", model="capped", status="200") == 2
    assert value(s, "gateway_requests_total", model="capped", status="429") == 1
    assert value(s, "gateway_requests_total", model="unknown", status="404") == 1
    assert secret_model not in text  # client text is never a label value
    assert value(s, "gateway_requests_total", model="a-ok", status="200") == 1
    assert value(s, "gateway_requests_total") == 14
    assert value(s, "gateway_unpriced_requests_total", model="a-ok", provider="fake") == 1
    assert value(s, "gateway_unpriced_requests_total", model="a-cut-stream") == 1  # estimated tokens, no price
    assert value(s, "gateway_unpriced_requests_total") == 2  # priced models and token-less failures: none

    assert value(s, "gateway_request_duration_seconds_count", endpoint="chat", model="gpt-test") == 5
    assert value(s, "gateway_request_duration_seconds_bucket", model="gpt-test", endpoint="chat", le="+Inf") == 5
    assert value(s, "gateway_time_to_first_token_seconds_count", model="gpt-test", provider="fake") == 2
    assert value(s, "gateway_overhead_seconds_count", endpoint="chat") == 13
    assert value(s, "gateway_overhead_seconds_count", endpoint="embeddings") == 1
    # attempts: 5 + 1 embeddings + 2 (fail-500) + 1 (fail-400) + 1 (cut-stream) + 2 capped + 1 a-ok
    assert value(s, "gateway_upstream_duration_seconds_count", provider="fake") == 13
    assert value(s, "gateway_upstream_errors_total", provider="fake", reason="status_5xx") == 2
    assert value(s, "gateway_upstream_errors_total", provider="fake", reason="bad_response") == 1  # cut mid-stream
    assert value(s, "gateway_upstream_errors_total") == 3

    for kind, n in tokens.items():
        assert value(s, "gateway_tokens_total", model="gpt-test", provider="fake", type=kind) == n, kind
    assert value(s, "gateway_cost_usd_total", model="gpt-test", provider="fake", key="team") == pytest.approx(cost)
    assert value(s, "gateway_ratelimited_total", scope="model") == 1
    assert value(s, "gateway_ratelimited_total", scope="key") == 0  # exported before the first refusal
    assert value(s, "gateway_auth_failures_total", code="invalid_api_key") == 3  # no rows, but counted
    assert value(s, "gateway_auth_failures_total", code="expired_api_key") == 0
    assert wrong_key not in text
    assert value(s, "gateway_inflight_requests") == 0
    assert ("gateway_usage_queue_rows", ()) in s
    assert ("gateway_usage_spilled_rows_total", ()) in s
    assert value(s, "gateway_circuit_open", provider="fake", target="fake/ok") == 0
    assert value(s, "process_cpu_seconds_total") > 0  # the client library's process metrics
    assert PROVIDER_KEY not in text and GATEWAY_KEY not in text


def test_inflight_and_circuit_are_read_at_scrape_time(make_gateway, fake_openai, tmp_path):
    extra = ('[[models]]\nname = "fragile"\n'
             'targets = [{ provider = "fake", model = "fail-503", max_retries = 0, failure_threshold = 1, '
             'cooldown_s = 60 }]\n'
             '[[models]]\nname = "sleepy"\ntargets = [{ provider = "fake", model = "delay-600" }]\n')
    gw = make_gateway(base_config(fake_openai.url, tmp_path / "gw.db", extra))
    client = gw.client()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fragile", messages=MSGS)
    _, s = scrape(gw.url)
    assert value(s, "gateway_circuit_open", provider="fake", target="fake/fail-503") == 1
    assert value(s, "gateway_circuit_open", provider="fake", target="fake/ok") == 0

    import threading

    slow = threading.Thread(target=lambda: client.chat.completions.create(model="sleepy", messages=MSGS))
    slow.start()
    deadline = time.monotonic() + 5
    while value(scrape(gw.url)[1], "gateway_inflight_requests") != 1:
        assert time.monotonic() < deadline, "the in-flight request never showed"
        time.sleep(0.02)
    slow.join()
    assert value(scrape(gw.url)[1], "gateway_inflight_requests") == 0


def test_metrics_port_and_admin_key(make_gateway, fake_openai, tmp_path):
    port = free_port()
    config = base_config(fake_openai.url, tmp_path / "gw.db").replace(
        "[server]\n", f'[server]\nmetrics_port = {port}\nmetrics_require_admin = true\nadmin_key = "adm-secret"\n')
    gw = make_gateway(config)
    gw.client().chat.completions.create(model="gpt-test", messages=MSGS)
    main = httpx.get(gw.url + "/metrics", headers={"authorization": "Bearer adm-secret"})
    assert main.status_code == 404  # kept off the public port when a metrics port is set
    assert main.json()["error"]["code"] == "unknown_url"
    url = f"http://127.0.0.1:{port}"
    refused = httpx.get(url + "/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/metrics", headers={"authorization": f"Bearer {GATEWAY_KEY}"}).status_code == 401
    assert httpx.get(url + "/other", headers={"authorization": "Bearer adm-secret"}).status_code == 404
    text, s = scrape(url, headers={"authorization": "Bearer adm-secret"})
    assert value(s, "gateway_requests_total", model="gpt-test", status="200") == 1
    om = httpx.get(url + "/metrics", headers={"authorization": "Bearer adm-secret",
                                              "accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")


def test_main_port_metrics_can_require_the_admin_key(make_gateway, fake_openai, tmp_path):
    config = base_config(fake_openai.url, tmp_path / "gw.db").replace(
        "[server]\n", '[server]\nmetrics_require_admin = true\nadmin_key = "adm-secret"\n')
    gw = make_gateway(config)
    assert httpx.get(gw.url + "/metrics").status_code == 401
    assert httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {LIMITED_KEY}"}).status_code == 401
    scrape(gw.url, headers={"authorization": "Bearer adm-secret"})


def test_metrics_survive_a_reload(fake_openai, tmp_path):
    """A reload builds a new Runtime: the observer carries over, so counters keep counting."""
    import asyncio

    from proxy.app import create_app
    from proxy.config import load_config
    from proxy.reload import reload
    from tests.conftest import Running
    from tests.servers import ServerThread

    path = tmp_path / "gw.toml"
    path.write_text(base_config(fake_openai.url, tmp_path / "gw.db"))
    app = create_app(load_config(path))
    server = ServerThread(app).start()
    try:
        gw = Running(server, app)
        client = gw.client()
        client.chat.completions.create(model="gpt-test", messages=MSGS)
        alias = '[[models]]\nname = "new-alias"\ntargets = [{ provider = "fake", model = "ok" }]\n'
        path.write_text(base_config(fake_openai.url, tmp_path / "gw.db", alias))
        loop = server.server.servers[0].get_loop()
        assert asyncio.run_coroutine_threadsafe(reload(app), loop).result(10) is True
        client.chat.completions.create(model="gpt-test", messages=MSGS)
        client.chat.completions.create(model="new-alias", messages=MSGS)
        _, s = scrape(gw.url)
    finally:
        server.stop()
    assert value(s, "gateway_requests_total", model="gpt-test", status="200") == 2
    assert value(s, "gateway_requests_total", model="new-alias", status="200") == 1  # a label once configured


# --- several workers -------------------------------------------------------------------------------------


def _worker_counts(metrics_dir: Path) -> dict[int, int]:
    out = {}
    for path in metrics_dir.glob("worker-*.json"):
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out[snap["pid"]] = sum(row[5] for row in snap["series"])
    return out


def test_workers_add_up(fake_openai, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(base_config(fake_openai.url, tmp_path / "gw.db"))
    metrics_dir = tmp_path / "metrics"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GATEWAY_METRICS_DIR": str(metrics_dir), "PYTHONPATH": str(ROOT)}
    env.pop("GATEWAY_CONFIG", None)
    out, err = (tmp_path / "stdout.log").open("wb"), (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port",
                             str(port), "--workers", "2"], cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while len(_worker_counts(metrics_dir)) < 2:  # both workers started and published
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
            time.sleep(0.1)
        # A new connection per request, so the kernel spreads them over both workers.
        client = openai.OpenAI(base_url=url + "/v1", api_key=GATEWAY_KEY, max_retries=0,
                               http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)))
        sent, prompt = 0, 0
        deadline = time.monotonic() + 20  # snapshots are published every second: bound by time, not count
        while sent < 20 or (sum(1 for n in _worker_counts(metrics_dir).values() if n) < 2
                            and time.monotonic() < deadline):
            prompt += client.chat.completions.create(model="gpt-test", messages=MSGS).usage.prompt_tokens
            sent += 1
        per_worker = _worker_counts(metrics_dir)
        assert sum(1 for n in per_worker.values() if n) == 2, per_worker  # both served some

        deadline = time.monotonic() + 5
        while True:  # other workers publish every second
            text, s = scrape(url)
            if value(s, "gateway_requests_total") == sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(s, "gateway_requests_total", model="gpt-test", status="200") == sent
        assert value(s, "gateway_request_duration_seconds_count", model="gpt-test") == sent
        assert value(s, "gateway_tokens_total", model="gpt-test", type="prompt") == prompt
        assert value(s, "gateway_inflight_requests") == 0
        assert value(s, "process_resident_memory_bytes") > 0 and value(s, "process_cpu_seconds_total") > 0
        promtool_check(text)
        totals = [value(scrape(url)[1], "gateway_requests_total") for _ in range(6)]
        assert totals == [sent] * 6  # whichever worker answers, the same sums
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    lines = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    assert len(lines) == sent and {line["status"] for line in lines} == {200}  # one access-log line per request


# --- dashboard and Prometheus config -----------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, ranges, strings and
    grouping clauses that are not function calls or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if m.group(2) or m.group(1).lower() in _PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def dashboard_queries(node: Any) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            elif k == "query" and isinstance(v, str | dict):  # template variables
                q = v if isinstance(v, str) else v.get("query", "")
                m = re.match(r"\s*label_values\(\s*([^,)]+)", q)
                if m:
                    out.append(m.group(1))
                elif q and not q.startswith(("label_values", "prometheus")):
                    out.append(q)
            else:
                out.extend(dashboard_queries(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(dashboard_queries(v))
    return out


def test_dashboard_queries_only_exported_metrics(gateway):
    gateway.client().chat.completions.create(model="gpt-test", messages=MSGS)
    text, _ = scrape(gateway.url)
    exported = exported_names(text)
    dashboard = json.loads((ROOT / "deploy/grafana/gateway-dashboard.json").read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 12
    used = set().union(*(promql_metrics(q) for q in queries))
    assert {"gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_overhead_seconds_bucket",
            "gateway_time_to_first_token_seconds_bucket", "gateway_tokens_total", "gateway_cost_usd_total",
            "gateway_ratelimited_total", "gateway_circuit_open", "gateway_usage_queue_rows"} <= used
    assert used <= exported, f"not exported by the gateway: {sorted(used - exported)}"
    assert promql_metrics('sum by (model) (rate(gateway_nope_total{a="b"}[5m])) / on() x_y') == {"gateway_nope_total",
                                                                                              "x_y"}


def test_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed")
    done = subprocess.run([promtool, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_usage_ledger_gauges_while_the_database_is_down(make_gateway, fake_openai, tmp_path):
    config = base_config(fake_openai.url, None, storage=(
        f'database_url = "postgresql://u:p@127.0.0.1:{free_port()}/db"\nqueue_max_rows = 2\n'
        f'spill_dir = "{tmp_path / "spill"}"'))
    gw = make_gateway(config)
    for _ in range(5):
        gw.client().chat.completions.create(model="gpt-test", messages=MSGS)
    deadline = time.monotonic() + 5
    while True:  # every row is queued (at most 2) or spilled to disk: none is written, none lost
        _, s = scrape(gw.url)
        queued, spilled = value(s, "gateway_usage_queue_rows"), value(s, "gateway_usage_spilled_rows_total")
        # (the last rows may wait one journal tick, counted as queued, before the flusher spills them)
        if (queued <= 2 and queued + spilled == 5) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert queued <= 2 and queued + spilled == 5
    assert value(s, "gateway_usage_write_errors_total") >= 1  # at least the failed connect at start
