"""Secrets in errors: whatever an upstream echoes back, no provider credential, admin key or client key
reaches the client (raw bytes, whole or streamed), the access log or the usage row; and a model name
cannot steer a provider key to another upstream URL."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

from proxy.request_target import refusal
from tests.conftest import GATEWAY_KEY, Running, ledger_rows, start_gateway
from tests.fakes.anthropic_server import make_app as make_anthropic
from tests.fakes.azure_server import API_KEY as AZURE_KEY
from tests.fakes.azure_server import FakeAzure
from tests.fakes.gemini_server import make_app as make_gemini
from tests.fakes.openai_server import make_app as make_openai
from tests.servers import ServerThread

OPENAI_KEY = "sk-oai-provider-secret-31337"
EXTRA_HEADER = "hdr-extra-api-secret-4242"  # a secret-looking configured header of the openai provider
ANTHROPIC_KEY = "sk-ant-provider-secret-2718"
GEMINI_KEY = "AIzaSy-gemini-provider-secret-1618"
RELAY_TOKEN = "relay-token-secret-5150"  # a configured header of the anthropic and gemini providers
ADMIN_KEY = "adm-gateway-secret-8080"
SECRETS = (OPENAI_KEY, EXTRA_HEADER, ANTHROPIC_KEY, GEMINI_KEY, RELAY_TOKEN, AZURE_KEY, ADMIN_KEY, GATEWAY_KEY)
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
# The client's text, which the fakes repeat in their errors: the admin key and the client's own key.
PROMPT = f"admin {ADMIN_KEY} mine {GATEWAY_KEY}"
MSGS = [{"role": "user", "content": "tell me about Paris"}]
PROVIDERS = {"oai": "openai", "az": "azure", "claude": "anthropic", "gem": "gemini"}


def forms(secret: str) -> list[bytes]:
    """How a secret could show: as is, lower-cased, percent-encoded, base64-encoded."""
    return [f.encode() for f in (secret, secret.lower(), quote(secret, safe=""),
                                 base64.b64encode(secret.encode()).decode().rstrip("="))]


def assert_clean(data: bytes | str, where: str) -> None:
    low = (data.encode() if isinstance(data, str) else data).lower()
    for secret in SECRETS:
        for form in forms(secret):
            assert form.lower() not in low, f"{secret!r} ({form!r}) in {where}: {low[:3000]!r}"


class Fakes:
    def __init__(self) -> None:
        self.openai = make_openai()
        self.anthropic = make_anthropic(ANTHROPIC_KEY)
        self.gemini = make_gemini(GEMINI_KEY)
        self.azure = FakeAzure()
        self.servers = {name: ServerThread(app).start() for name, app in (
            ("oai", self.openai), ("claude", self.anthropic), ("gem", self.gemini), ("az", self.azure))}

    def seen(self) -> int:
        """Requests the fakes have received so far, all of them."""
        return (len(self.openai.state.fake.requests) + len(self.anthropic.state.fake.requests)
                + len(self.gemini.state.fake.requests) + len(self.azure.paths))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def config(fakes: Fakes, tmp: Path) -> str:
    urls = {name: server.url for name, server in fakes.servers.items()}
    target = "failure_threshold = 10000, max_retries = 0"
    models = "".join(f'[[models]]\nname = "{p}-{m}"\ntargets = [{{ provider = "{p}", model = "{m}", {target} }}]\n\n'
                     for p in PROVIDERS for m in ("leakall-400", "leakall-429", "leakall-500", "leakall-stream"))
    return f"""
[server]
admin_key = "{ADMIN_KEY}"

[storage]
database_url = "sqlite:///{tmp / "gw.db"}"
spill_dir = "{tmp / "spill"}"

[providers.oai]
kind = "openai"
base_url = "{urls["oai"]}/v1"
api_key = "{OPENAI_KEY}"
headers = {{ "x-extra-api-key" = "{EXTRA_HEADER}", "x-org" = "org-visible" }}

[providers.az]
kind = "azure"
base_url = "{urls["az"]}"
api_key = "{AZURE_KEY}"
api_version = "2024-10-21"

[providers.claude]
kind = "anthropic"
base_url = "{urls["claude"]}"
api_key = "{ANTHROPIC_KEY}"
headers = {{ "x-relay-token" = "Bearer {RELAY_TOKEN}" }}

[providers.gem]
kind = "gemini"
base_url = "{urls["gem"]}"
api_key = "{GEMINI_KEY}"
headers = {{ "x-relay-token" = "Bearer {RELAY_TOKEN}" }}

{models}
[[models]]
name = "gem-leakall-bare"
targets = [{{ provider = "gem", model = "leakall-bare", {target} }}]

[[models]]
name = "gem-*"
targets = [{{ provider = "gem" }}]

[[models]]
name = "az-*"
targets = [{{ provider = "az" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    running = Fakes()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gw(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    tmp = tmp_path_factory.mktemp("secrets")
    running = start_gateway(config(fakes, tmp))
    yield running, tmp / "gw.db"
    running.server.stop()


def request_id() -> str:
    return "sec-" + os.urandom(6).hex()


def assert_row_and_log_clean(db: Path, rid: str, capfd: pytest.CaptureFixture[str]) -> tuple[Any, ...]:
    rows = ledger_rows(db, "SELECT * FROM usage_log WHERE request_id LIKE ?", (rid + "%",))
    assert len(rows) == 1
    assert_clean(repr(rows[0]), "the usage row")
    out, deadline = "", time.monotonic() + 5
    while rid not in out and time.monotonic() < deadline:  # access log lines are batched for up to 50 ms
        time.sleep(0.05)
        out += capfd.readouterr().out
    assert rid in out  # the access log line is there...
    assert_clean(out, "the access log")  # ...and holds no secret
    return rows[0]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status,client_status", [(400, 400), (429, 429), (500, 502)])
def test_whole_body_errors_hide_every_secret(gw, capfd, provider, status, client_status):
    """The upstream's error body repeats its credentials (and the prompt: the admin key and the client's key)
    in message, type, code, param, nested and unknown members and encoded: none of it reaches the client."""
    running, db = gw
    rid = request_id()
    r = httpx.post(running.url + "/v1/chat/completions", headers={**AUTH, "x-request-id": rid}, timeout=10,
                   json={"model": f"{provider}-leakall-{status}", "messages": [{"role": "user", "content": PROMPT}]})
    assert r.status_code == client_status, r.text
    assert_clean(r.content, "the error body")
    assert_clean(repr(r.headers.raw), "the response headers")
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    row = assert_row_and_log_clean(db, rid, capfd)
    assert row[8] == client_status  # status

    with pytest.raises(openai.APIStatusError) as info:  # the official SDK sees the same scrubbed error
        running.client().chat.completions.create(model=f"{provider}-leakall-{status}",
                                                 messages=[{"role": "user", "content": PROMPT}])
    assert info.value.status_code == client_status
    assert_clean(str(info.value) + repr(info.value.body), "the SDK's error")


@pytest.mark.parametrize("alias", [f"{p}-leakall-stream" for p in PROVIDERS] + ["gem-leakall-bare"])
def test_streamed_error_events_hide_every_secret(gw, capfd, alias):
    """An error that arrives in-band after the stream started, relayed as an OpenAI error event."""
    running, db = gw
    rid = request_id()
    with httpx.stream("POST", running.url + "/v1/chat/completions", headers={**AUTH, "x-request-id": rid},
                      json={"model": alias, "messages": MSGS, "stream": True},
                      timeout=10) as r:
        assert r.status_code == 200
        data = b"".join(r.iter_raw())
    assert b'"error"' in data  # the error event itself is relayed...
    assert_clean(data, "the stream")  # ...without any secret
    assert_row_and_log_clean(db, rid, capfd)

    with pytest.raises(openai.APIError) as info:
        for _ in running.client().chat.completions.create(model=alias, stream=True, messages=MSGS):
            pass
    assert_clean(str(info.value) + repr(info.value.body), "the SDK's error")


@pytest.mark.parametrize("model", ["gem-x/../../../v1/models?", "az-x/../../../v1/models?",
                                   "az-x/%2e%2e/%2e%2e/v1", "gem-x/..%2F..%2Fv1"])
@pytest.mark.parametrize("stream", [False, True])
def test_model_name_cannot_steer_the_upstream_url(gw, fakes, model, stream):
    """A glob alias forwards the client's model name, which Gemini and Azure put in the URL path: a name
    that would leave the model's path segment is a 400 naming `model`, and nothing is sent."""
    running, _ = gw
    before = fakes.seen()
    r = httpx.post(running.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "model", r.text
    assert fakes.seen() == before, "the upstream got the request"


def test_a_model_name_with_odd_characters_still_goes_out_escaped(gw, fakes):
    """Escaped as one path segment, an unusual (but harmless) name reaches the upstream, which answers it."""
    running, _ = gw
    before = len(fakes.gemini.state.fake.requests)
    r = httpx.post(running.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                   json={"model": "gem-a b/c", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert len(fakes.gemini.state.fake.requests) == before + 1


@pytest.mark.parametrize("url,ok", [
    ("https://h/v1/chat/completions", True),
    ("https://h/v1beta/models/gem%2Fx:streamGenerateContent?alt=sse", True),
    ("https://h/openai/deployments/d/chat/completions?api-version=2024-10-21", True),
    ("https://other/v1/chat/completions", False),  # another origin
    ("https://h/v1x/chat", False),  # beside the base path, not under it
    ("https://h/v1/models/x/../../../secret", False),
    ("https://h/v1/models/x%2F..%2F..%2Fsecret:generateContent", False),  # decoded by some servers
    ("https://h/v1/models/x%252F..%252Fsecret", False),  # decoded twice
    ("https://h/v1/models/.", False),
    ("https://h/v1/models/x?:generateContent", False),  # a query the adapter did not write
    ("https://h/v1/models/x?alt=sse?b=c", False),
    ("https://h/v1/models/x#frag", False),
    ("https://h/v1/models/a b", False),
    ("https://h/v1/models/a\r\nHost: evil", False),
    ("https://h/v1/models/a%00b", False),
    ("https://h/v1/models/\u00e9", False),
])
def test_request_target_check(url, ok):
    assert (refusal(url, "https://h/v1beta" if "v1beta" in url else
                    "https://h" if "/openai/" in url else "https://h/v1") is None) == ok
