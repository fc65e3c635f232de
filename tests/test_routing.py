"""Routing and resilience through the OpenAI SDK: strategies, retries, fallbacks, circuit breaking,
timeouts, hedging, stream keep-alives. Each test configures its own aliases over the fake upstream."""

from __future__ import annotations

import collections
import concurrent.futures
import socket
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests import test_metrics
from tests.conftest import GATEWAY_KEY, ledger_rows, storage_table

MSGS = [{"role": "user", "content": "route me"}]


@pytest.fixture(scope="module")
def blackhole():
    """A loopback port whose accept queue is full: connecting to it hangs until the connect timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.socket()
    filler.connect(("127.0.0.1", port))
    yield port
    filler.close()
    server.close()


def config(fake_url: str, tmp: Path, models: str, blackhole_port: int = 9) -> str:
    """Aliases over the fake upstream; the ledger (tmp/gw.db) and spill dir in the test's ``tmp``."""
    return f"""
{storage_table(tmp)}
[providers.fake]
kind = "openai"
base_url = "{fake_url}/v1"
api_key = "sk-p"
timeout_s = 3

[providers.other]
kind = "openai"
base_url = "{fake_url}/v1"
api_key = "sk-p"
timeout_s = 3

[providers.refused]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[providers.blackhole]
kind = "openai"
base_url = "http://127.0.0.1:{blackhole_port}/v1"
connect_timeout_s = 0.3

{models}

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


def alias(name: str, targets: list[str], **options: object) -> str:
    lines = [f'[[models]]\nname = "{name}"']
    for key, value in options.items():
        lines.append(f"{key} = {_toml(value)}")
    lines.append("targets = [\n  " + ",\n  ".join("{ " + t + " }" for t in targets) + "\n]\n")
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def tag() -> str:
    return uuid.uuid4().hex[:8]


def served_by(raw) -> tuple[str, str, int]:
    h = raw.headers
    return h["x-gateway-provider"], h["x-gateway-upstream-model"], int(h["x-gateway-attempts"])


@pytest.fixture
def route(make_gateway, fake_openai, blackhole, tmp_path):
    def start(models: str):
        return make_gateway(config(fake_openai.url, tmp_path, models, blackhole))
    return start


# fallbacks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ['provider = "fake", model = "fail-500"', 'provider = "fake", model = "fail-503"',
                                   'provider = "fake", model = "fail-529"', 'provider = "fake", model = "fail-429"',
                                   'provider = "fake", model = "fail-429x"', 'provider = "refused", model = "m"',
                                   'provider = "blackhole", model = "m"'])
@pytest.mark.parametrize("stream", [False, True])
def test_fallback_to_next_target(route, first, stream):
    gw = route(alias("a", [first + ", max_retries = 0", 'provider = "other", model = "ok"']))
    client = gw.client()
    if stream:
        with client.chat.completions.with_streaming_response.create(model="a", messages=MSGS, stream=True) as raw:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            assert served_by(raw) == ("other", "ok", 2)
    else:
        raw = client.chat.completions.with_raw_response.create(model="a", messages=MSGS)
        text = raw.parse().choices[0].message.content
        assert served_by(raw) == ("other", "ok", 2)
    assert text == "Hello route me"


def test_first_byte_timeout_falls_back_and_closes_the_slow_stream(route, fake_openai):
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    gw = route(alias("a", ['provider = "fake", model = "stall-3000", max_retries = 0, first_byte_timeout_s = 0.3',
                           'provider = "other", model = "ok"']))
    started = time.monotonic()
    with gw.client().chat.completions.with_streaming_response.create(model="a", messages=MSGS, stream=True) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert served_by(raw)[:2] == ("other", "ok")
    assert text == "Hello route me" and time.monotonic() - started < 2
    deadline = time.monotonic() + 3
    while len(outcomes) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcomes[before:] == ["client_gone"]


@pytest.mark.parametrize("status,exc", [(400, openai.BadRequestError), (404, openai.NotFoundError)])
def test_no_fallback_on_client_errors(route, fake_openai, status, exc):
    gw = route(alias("a", [f'provider = "fake", model = "fail-{status}"', 'provider = "other", model = "ok"']))
    seen = len(fake_openai.app.state.fake.requests)
    with pytest.raises(exc) as e:
        gw.client().chat.completions.create(model="a", messages=MSGS)
    assert e.value.status_code == status
    assert e.value.response.headers["x-gateway-attempts"] == "1"
    assert len(fake_openai.app.state.fake.requests) == seen + 1


def test_a_provider_refusing_its_credentials_falls_back(route, fake_openai):
    """A 401 from a provider is its credentials' fault, not the request's: the next target may serve it."""
    gw = route(alias("a", ['provider = "fake", model = "fail-401"', 'provider = "other", model = "ok"']))
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw) == ("other", "ok", 2)


def test_retries_the_same_target_before_falling_back(route):
    flaky = f"flaky-1-{tag()}"
    gw = route(alias("a", [f'provider = "fake", model = "{flaky}", max_retries = 1',
                           'provider = "other", model = "ok"']))
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw) == ("fake", flaky, 2)


def test_fallback_on_narrows_when_to_move_on(route):
    gw = route(alias("a", ['provider = "fake", model = "fail-500", max_retries = 0',
                           'provider = "other", model = "ok"'], fallback_on=["rate_limit"]))
    with pytest.raises(openai.InternalServerError):
        gw.client().chat.completions.create(model="a", messages=MSGS)


def test_long_retry_after_moves_on_without_waiting(route):
    # fail-429 says Retry-After: 7, above the 5 s cap: no wait, straight to the next target
    gw = route(alias("a", ['provider = "fake", model = "fail-429", max_retries = 3',
                           'provider = "other", model = "ok"']))
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw) == ("other", "ok", 2) and time.monotonic() - started < 2


def test_all_targets_fail_returns_last_error(route):
    gw = route(alias("a", ['provider = "fake", model = "fail-500", max_retries = 0',
                           'provider = "refused", model = "m", max_retries = 0']))
    with pytest.raises(openai.InternalServerError) as e:
        gw.client().chat.completions.create(model="a", messages=MSGS)
    assert e.value.status_code == 502 and e.value.response.headers["x-gateway-attempts"] == "2"


def test_context_window_fallback(route):
    gw = route(alias("a", ['provider = "fake", model = "ctx-limit", context_window = 1000',
                           'provider = "other", model = "small", context_window = 500',
                           'provider = "other", model = "ok", context_window = 100000']))
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw)[:2] == ("other", "ok")  # skipped the smaller window
    gw = route(alias("b", ['provider = "fake", model = "ctx-limit", context_window = 1000',
                           'provider = "other", model = "ok", context_window = 1000']))
    with pytest.raises(openai.BadRequestError, match="context length"):
        gw.client().chat.completions.create(model="b", messages=MSGS)


def test_max_cost_per_request(route):
    gw = route(alias("a", ['provider = "fake", model = "expensive", input_per_mtok = 100.0, output_per_mtok = 400.0',
                           'provider = "other", model = "ok", input_per_mtok = 0.1, output_per_mtok = 0.4'],
                     max_cost_per_request=0.01))
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS, max_tokens=100)
    assert served_by(raw)[:2] == ("other", "ok")
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(model="a", messages=MSGS, max_tokens=1_000_000)
    assert e.value.code == "cost_limit_exceeded"


# streams --------------------------------------------------------------------------------------------


def test_stream_error_after_first_byte_is_an_error_event_not_a_fallback(route):
    gw = route(alias("a", ['provider = "fake", model = "cut-stream"', 'provider = "other", model = "ok"']))
    with pytest.raises(openai.APIError, match="ended before"):
        for _ in gw.client().chat.completions.create(model="a", messages=MSGS, stream=True):
            pass


def test_keepalive_comments_while_waiting_for_first_token(route):
    gw = route(alias("a", ['provider = "fake", model = "stall-700"'], keepalive_s=0.2))
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "a", "messages": MSGS, "stream": True}, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    text = "".join(c.choices[0].delta.content or "" for c in
                   gw.client().chat.completions.create(model="a", messages=MSGS, stream=True) if c.choices)
    assert text == "Hello route me"


def test_keepalive_then_final_failure_is_an_error_event(route):
    gw = route(alias("a", ['provider = "fake", model = "stall-2000", first_byte_timeout_s = 0.6, max_retries = 0'],
                     keepalive_s=0.2))
    with pytest.raises(openai.APIError, match="no first byte"):
        for _ in gw.client().chat.completions.create(model="a", messages=MSGS, stream=True):
            pass


# circuit breaker -----------------------------------------------------------------------------------


def test_circuit_opens_skips_probes_and_closes(route, fake_openai):
    flaky = f"flaky-3-{tag()}"  # fails three times, then recovers
    gw = route(alias("a", [f'provider = "fake", model = "{flaky}", max_retries = 0, failure_threshold = 2, '
                           'cooldown_s = 0.5', 'provider = "other", model = "ok"']))
    client = gw.client()
    counts = fake_openai.app.state.fake.counts

    def attempts() -> tuple[str, int]:
        raw = client.chat.completions.with_raw_response.create(model="a", messages=MSGS)
        _, model, n = served_by(raw)
        return model, n

    assert attempts() == ("ok", 2) and attempts() == ("ok", 2)  # two failures: circuit opens
    assert attempts() == ("ok", 1) and counts[flaky] == 2  # skipped while open
    time.sleep(0.6)
    assert attempts() == ("ok", 2) and counts[flaky] == 3  # one probe, failed: open again
    assert attempts() == ("ok", 1) and counts[flaky] == 3
    time.sleep(0.6)
    assert attempts() == (flaky, 1)  # the probe succeeds: closed
    assert attempts() == (flaky, 1) and counts[flaky] == 5


def test_circuit_opens_on_an_error_rate_that_never_makes_a_streak(route, fake_openai):
    """A target failing every other attempt never reaches failure_threshold consecutive failures; with
    failure_rate it opens once the window holds failure_min_requests attempts at that share."""
    half = f"alternate-{tag()}"
    gw = route(alias("a", [f'provider = "fake", model = "{half}", max_retries = 0, failure_threshold = 3, '
                           'failure_rate = 0.5, failure_window_s = 30, failure_min_requests = 4, cooldown_s = 30',
                           'provider = "other", model = "ok"']))
    client = gw.client()
    counts = fake_openai.app.state.fake.counts
    served = [served_by(client.chat.completions.with_raw_response.create(model="a", messages=MSGS))[1:]
              for _ in range(8)]
    # attempts 1-4 alternate fail/ok (2 of 4 failed: not yet judged on a success); the 5th fails: 3 of 5
    assert served[:5] == [("ok", 2), (half, 1), ("ok", 2), (half, 1), ("ok", 2)]
    assert served[5:] == [("ok", 1)] * 3 and counts[half] == 5  # open: skipped
    text = httpx.get(gw.url + "/metrics").text
    assert f'gateway_circuit_open{{provider="fake",target="fake/{half}"}} 1.0' in text


def test_without_failure_rate_alternating_failures_keep_the_circuit_closed(route, fake_openai):
    half = f"alternate-{tag()}"
    gw = route(alias("a", [f'provider = "fake", model = "{half}", max_retries = 0, failure_threshold = 3',
                           'provider = "other", model = "ok"']))
    client = gw.client()
    served = [served_by(client.chat.completions.with_raw_response.create(model="a", messages=MSGS))[1:]
              for _ in range(8)]
    assert served == [("ok", 2), (half, 1)] * 4  # every other attempt still goes to the failing target


# hedging -------------------------------------------------------------------------------------------


def test_hedging_picks_the_faster_target(route):
    gw = route(alias("a", ['provider = "fake", model = "delay-1500"', 'provider = "other", model = "ok"'],
                     hedge_after_ms=100))
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw)[:2] == ("other", "ok") and time.monotonic() - started < 1.0


def test_a_hedged_target_that_fails_leaves_the_race_to_the_other(route, fake_openai):
    """The first target fails (after the hedge started); the hedge carries on and answers. A target
    that failed is not a hedge loser: it was not cancelled, and failures bill nothing."""
    gw = route(alias("a", ['provider = "fake", model = "late-500-200", max_retries = 0',
                           'provider = "other", model = "delay-400"'], hedge_after_ms=50))
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="a", messages=MSGS)
    assert served_by(raw) == ("other", "delay-400", 2)
    assert 0.4 < time.monotonic() - started < 1.5  # waited for the hedge, not a retry of the first


@pytest.mark.parametrize("stream", [False, True])
def test_a_hedge_loser_that_reached_its_upstream_gets_its_own_usage_row(make_gateway, fake_openai, tmp_path, stream):

    db = tmp_path / "gw.db"  # where config() puts the ledger
    slow = "stall-1500" if stream else "delay-1500"
    models = alias("a", [f'provider = "fake", model = "{slow}", input_per_mtok = 1000.0, '
                         'output_per_mtok = 1000.0',
                         'provider = "other", model = "ok"'], hedge_after_ms=100)
    gw = make_gateway(config(fake_openai.url, tmp_path, models))
    rid = f"hedge-{tag()}"
    client = gw.client()
    if stream:
        with client.chat.completions.with_streaming_response.create(model="a", messages=MSGS, stream=True,
                                                                      extra_headers={"x-request-id": rid}) as raw:
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        client.chat.completions.create(model="a", messages=MSGS, extra_headers={"x-request-id": rid})
    rows = ledger_rows(db, "SELECT request_id, provider, upstream_model, status, error_type, usage_estimated, "
                           "prompt_tokens, completion_tokens, cost_usd FROM usage_log WHERE request_id LIKE ? "
                           "ORDER BY request_id", (rid + "%",), at_least=2)
    winner, loser = rows
    assert winner[1:5] == ("other", "ok", 200, None)
    assert loser[0] == winner[0] + "-hedge"
    assert loser[1:6] == ("fake", slow, 499, "hedge_lost", 1)  # cancelled in flight: its prompt, estimated
    assert loser[6] > 0 and loser[7] == 0 and loser[8] == pytest.approx(loser[6] * 1000 / 1e6)
    # The metrics count what the ledger counts: the loser's tokens and cost, under its own provider.
    _, samples = test_metrics.scrape(gw.url)
    assert test_metrics.value(samples, "gateway_tokens_total", provider="fake", type="prompt") == loser[6]
    assert test_metrics.value(samples, "gateway_cost_usd_total", provider="fake") == pytest.approx(loser[8])
    assert test_metrics.value(samples, "gateway_requests_total", provider="fake") == 0  # not a request of its own


def test_hedged_stream_cancels_the_loser(route, fake_openai):
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    gw = route(alias("a", ['provider = "fake", model = "stall-1500"', 'provider = "other", model = "ok"'],
                     hedge_after_ms=100))
    with gw.client().chat.completions.with_streaming_response.create(model="a", messages=MSGS, stream=True) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert served_by(raw)[:2] == ("other", "ok")
    assert text == "Hello route me"
    deadline = time.monotonic() + 3
    while len(outcomes) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcomes[before:] == ["client_gone"]


# strategies ----------------------------------------------------------------------------------------


def _picks(gw, n: int, model: str = "a") -> collections.Counter:
    client = gw.client()
    return collections.Counter(served_by(client.chat.completions.with_raw_response.create(
        model=model, messages=MSGS))[1] for _ in range(n))


def test_weighted(route):
    gw = route(alias("a", ['provider = "fake", model = "ok", weight = 3',
                           'provider = "other", model = "w1", weight = 1'], strategy="weighted"))
    picks = _picks(gw, 300)
    assert 0.65 < picks["ok"] / 300 < 0.85


def test_round_robin(route):
    gw = route(alias("a", ['provider = "fake", model = "r1"', 'provider = "other", model = "r2"',
                           'provider = "other", model = "r3"'], strategy="round_robin"))
    client = gw.client()
    order = [served_by(client.chat.completions.with_raw_response.create(model="a", messages=MSGS))[1]
             for _ in range(6)]
    assert order[:3] == order[3:] and sorted(order[:3]) == ["r1", "r2", "r3"]


def test_latency_prefers_the_faster_target(route):
    gw = route(alias("a", ['provider = "fake", model = "delay-80"', 'provider = "other", model = "ok"'],
                     strategy="latency"))
    picks = _picks(gw, 40)
    assert picks["ok"] >= 30  # after measuring each once, the fast one wins (bar exploration)


def test_cost_picks_the_cheapest(route):
    gw = route(alias("a", ['provider = "fake", model = "pricey", input_per_mtok = 5.0, output_per_mtok = 15.0',
                           'provider = "other", model = "cheap", input_per_mtok = 0.1, output_per_mtok = 0.4',
                           'provider = "other", model = "unpriced"'], strategy="cost"))
    assert _picks(gw, 10) == {"cheap": 10}


def test_least_busy_spreads_concurrent_requests(route):
    gw = route(alias("a", ['provider = "fake", model = "delay-400"', 'provider = "other", model = "delay-401"'],
                     strategy="least_busy"))
    client = gw.client()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.chat.completions.with_raw_response.create, model="a", messages=MSGS)
                   for _ in range(6)]
        picks = collections.Counter(served_by(f.result())[1] for f in futures)
    assert picks == {"delay-400": 3, "delay-401": 3}


def test_glob_alias_forwards_the_requested_name(route, fake_openai):
    gw = route(alias("claude-*", ['provider = "fake"']))
    resp = gw.client().chat.completions.create(model="claude-sonnet-x", messages=MSGS)
    assert resp.model == "claude-sonnet-x"
    assert fake_openai.app.state.fake.last()["body"]["model"] == "claude-sonnet-x"


def test_fuzzy_model_names_only_when_enabled(make_gateway, fake_openai, tmp_path):
    from tests.conftest import base_config

    text = base_config(fake_openai.url, tmp_path / "f.db")
    strict = make_gateway(text)
    with pytest.raises(openai.NotFoundError):
        strict.client().chat.completions.create(model="gpt-tset", messages=MSGS)
    fuzzy = make_gateway(text.replace("require_auth = true", "require_auth = true\nfuzzy_models = true"))
    raw = fuzzy.client().chat.completions.with_raw_response.create(model="gpt-tset", messages=MSGS)
    assert raw.headers["x-gateway-model-resolved"] == "gpt-test" and raw.parse().model == "gpt-test"
    with pytest.raises(openai.NotFoundError):
        fuzzy.client().chat.completions.create(model="something-else", messages=MSGS)
