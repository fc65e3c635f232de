"""CORS ([server] cors_origins): a real page in headless Chromium, served from another origin than the
gateway, calls it with fetch (a stream included); an origin not in the list gets no CORS headers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.conftest import GATEWAY_KEY, Running, base_config
from tests.servers import ServerThread

CHROMIUM = "/usr/bin/chromium"

# What a browser app would run: the gateway's answer, a few response headers, and a stream's chunks.
CALL = """async ([gateway, key, stream]) => {
  try {
    const r = await fetch(gateway + "/v1/chat/completions", {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                "X-Stainless-Lang": "js", "X-Stainless-Retry-Count": "0", "x-api-key": key},
      body: JSON.stringify({model: "echo", stream: stream,
                            messages: [{role: "user", content: "hello from the browser"}]}),
    });
    const out = {status: r.status, requestId: r.headers.get("x-request-id"),
                 provider: r.headers.get("x-gateway-provider")};
    if (!stream) {
      out.text = (await r.json()).choices[0].message.content;
      return out;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let raw = "", reads = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      reads += 1;
      raw += decoder.decode(value, {stream: true});
    }
    out.reads = reads;
    out.text = raw.split("\\n").filter(l => l.startsWith("data: ") && l !== "data: [DONE]")
      .map(l => JSON.parse(l.slice(6)).choices[0]?.delta?.content || "").join("");
    out.done = raw.includes("data: [DONE]");
    return out;
  } catch (e) {
    return {error: String(e)};
  }
}"""

MODELS = """async ([gateway, key]) => {
  try {
    const r = await fetch(gateway + "/v1/models", {headers: {"Authorization": "Bearer " + key}});
    return {status: r.status, ids: (await r.json()).data.map(m => m.id)};
  } catch (e) {
    return {error: String(e)};
  }
}"""


def page_server() -> ServerThread:
    async def index(request):  # type: ignore[no-untyped-def]
        return HTMLResponse("<!doctype html><title>app</title><p>a browser app</p>")

    return ServerThread(Starlette(routes=[Route("/", index)]))


@pytest.fixture
def sites(make_gateway, fake_openai, tmp_path) -> Iterator[tuple[Running, ServerThread, ServerThread]]:
    """The gateway, a page on an allowed origin and a page on an origin not in cors_origins."""
    allowed, other = page_server(), page_server()
    toml = base_config(fake_openai.url, tmp_path / "gw.db").replace(
        "require_auth = true", f'require_auth = true\ncors_origins = ["{allowed.url}", "https://app.example.com"]')
    gateway = make_gateway(toml)
    allowed.start()
    other.start()
    yield gateway, allowed, other
    allowed.stop()
    other.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_a_page_on_an_allowed_origin_calls_the_gateway(browser, sites):
    gateway, allowed, _ = sites
    page = browser.new_page()
    try:
        page.goto(allowed.url + "/")
        whole = page.evaluate(CALL, [gateway.url, GATEWAY_KEY, False])
        assert whole.get("error") is None, whole
        assert whole["status"] == 200 and whole["text"] == "Echo: hello from the browser"
        assert whole["requestId"] and whole["provider"] == "local"  # exposed to the page's script
        streamed = page.evaluate(CALL, [gateway.url, GATEWAY_KEY, True])
        assert streamed.get("error") is None, streamed
        assert streamed["status"] == 200 and streamed["done"] is True
        assert streamed["text"] == "Echo: hello from the browser" and streamed["requestId"]
        models = page.evaluate(MODELS, [gateway.url, GATEWAY_KEY])
        assert models.get("error") is None and "echo" in models["ids"]
    finally:
        page.close()


def test_a_page_on_another_origin_is_refused_by_the_browser(browser, sites):
    gateway, _, other = sites
    page = browser.new_page()
    try:
        page.goto(other.url + "/")
        out = page.evaluate(CALL, [gateway.url, GATEWAY_KEY, False])
        assert "error" in out and "Failed to fetch" in out["error"]
    finally:
        page.close()


def test_preflight_and_response_headers(sites):
    gateway, allowed, other = sites
    preflight = {"origin": allowed.url, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type,x-stainless-os,x-gateway-tag"}
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/models", "/v1/models/echo"):
        r = httpx.options(gateway.url + path, headers=preflight)
        assert r.status_code == 204, path
        assert r.headers["access-control-allow-origin"] == allowed.url
        assert "POST" in r.headers["access-control-allow-methods"]
        allowed_headers = r.headers["access-control-allow-headers"].split(", ")
        for name in ("authorization", "content-type", "x-api-key", "api-key", "anthropic-version",
                     "x-stainless-os", "x-gateway-tag"):
            assert name in allowed_headers
        assert "Origin" in r.headers["vary"]
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"origin": allowed.url,
                   "authorization": f"Bearer {GATEWAY_KEY}"}, json={"model": "echo", "messages": [
                       {"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed.url
    assert r.headers["vary"] == "Origin"
    exposed = r.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed and "x-gateway-cost-usd" in exposed and "x-ratelimit-remaining-requests" in exposed
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"origin": allowed.url}, json={})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == allowed.url  # errors are readable
    # An origin not in the list, and a request with no Origin at all: no CORS headers whatever the answer.
    r = httpx.options(gateway.url + "/v1/chat/completions", headers={**preflight, "origin": other.url})
    assert r.status_code == 405 and not any(h.startswith("access-control-") for h in r.headers)
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"origin": other.url,
                   "authorization": f"Bearer {GATEWAY_KEY}"}, json={"model": "echo", "messages": [
                       {"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)


def test_no_cors_origins_means_no_cors_headers(gateway):
    r = httpx.options(gateway.url + "/v1/chat/completions",
                      headers={"origin": "https://app.example.com", "access-control-request-method": "POST"})
    assert r.status_code == 405 and not any(h.startswith("access-control-") for h in r.headers)
    r = httpx.get(gateway.url + "/v1/models", headers={"origin": "https://app.example.com",
                                                      "authorization": f"Bearer {GATEWAY_KEY}"})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)


def test_a_bad_origin_fails_at_start(tmp_path, fake_openai):
    import tomllib

    from proxy.config import ConfigError, parse_config

    toml = base_config(fake_openai.url, tmp_path / "gw.db").replace(
        "require_auth = true", 'require_auth = true\ncors_origins = ["https://ok.example", "https://x.example/app/"]')
    with pytest.raises(ConfigError) as e:
        parse_config(tomllib.loads(toml), "gateway.toml", {})
    assert e.value.key == "server.cors_origins[1]" and "not an origin" in e.value.reason
