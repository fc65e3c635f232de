"""The upstream client through real forward proxies (tinyproxy) and against real TLS upstreams whose
certificates the test makes (trustme): HTTPS_PROXY/HTTP_PROXY/NO_PROXY, per-provider proxy, CONNECT,
proxy basic auth, ca_file, mTLS, verify_tls = false; all through the gateway with the OpenAI SDK."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trustme
import uvicorn

from proxy.config import ConfigError, parse_config
from proxy.http1_connect import no_proxy_matches
from tests.conftest import GATEWAY_KEY, storage_table
from tests.fakes.openai_server import make_app
from tests.fakes.raw_http import Tinyproxy
from tests.servers import ServerThread

PROVIDER_KEY = "sk-upstream-tls-secret"


class Certs:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = tmp / "server.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_cert))
        client = self.ca.issue_cert("gateway@example.test")
        self.client_cert = tmp / "client-cert.pem"
        self.client_key = tmp / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def tls_server(certs: Certs, require_client_cert: bool = False) -> ServerThread:
    """The fake OpenAI app under uvicorn with TLS (and, if asked, client certificates from the CA only)."""
    app = make_app()
    thread = ServerThread(app)
    extra = {"ssl_ca_certs": str(certs.ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED} if require_client_cert else {}
    thread.server = uvicorn.Server(uvicorn.Config(app, loop="asyncio", log_level="critical", lifespan="on",
                                                  access_log=False, ssl_certfile=str(certs.server_cert), **extra))
    thread.url = f"https://127.0.0.1:{thread.port}"
    thread.app = app  # type: ignore[attr-defined]
    return thread.start()


@pytest.fixture(scope="module")
def tls_upstream(certs: Certs) -> Iterator[ServerThread]:
    server = tls_server(certs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_upstream(certs: Certs) -> Iterator[ServerThread]:
    server = tls_server(certs, require_client_cert=True)
    yield server
    server.stop()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(tmp_path)
    yield proxy
    proxy.stop()


def config(tmp: Path, base_url: str, provider_extra: str = "") -> str:
    return f"""
[server]
require_auth = true
{storage_table(tmp)}
[providers.up]
kind = "openai"
base_url = "{base_url}/v1"
api_key = "{PROVIDER_KEY}"
timeout_s = 5
{provider_extra}

[[models]]
name = "m"
targets = [{{ provider = "up", model = "ok", max_retries = 0 }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


def chat(gw) -> str:
    reply = gw.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "proxy"}])
    return reply.choices[0].message.content


def failed_chat(gw) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        chat(gw)
    return info.value


# --- proxies ---------------------------------------------------------------------------------------


def test_https_goes_through_the_proxy_in_a_connect_tunnel(make_gateway, tmp_path, certs, tls_upstream, tinyproxy):
    env = {"HTTPS_PROXY": tinyproxy.url}
    gw = make_gateway(config(tmp_path, tls_upstream.url, f'ca_file = "{certs.ca_file}"'), env)
    assert chat(gw) == "Hello proxy"
    assert chat(gw) == "Hello proxy"
    tunnels = [r for r in tinyproxy.requests() if r.startswith(f"CONNECT 127.0.0.1:{tls_upstream.port} ")]
    assert len(tunnels) == 1, tinyproxy.requests()  # the second request reused the tunnel's connection
    assert not [r for r in tinyproxy.requests() if not r.startswith("CONNECT")]  # nothing in clear text


def test_plain_http_goes_to_the_proxy_in_absolute_form(make_gateway, tmp_path, fake_openai, tinyproxy):
    gw = make_gateway(config(tmp_path, fake_openai.url), {"http_proxy": tinyproxy.url})
    assert chat(gw) == "Hello proxy"
    assert f"POST {fake_openai.url}/v1/chat/completions HTTP/1.1" in tinyproxy.requests()
    assert fake_openai.app.state.fake.last()["headers"]["host"] == fake_openai.url.removeprefix("http://")


def test_no_proxy_bypasses_the_proxy(make_gateway, tmp_path, certs, tls_upstream, tinyproxy):
    env = {"HTTPS_PROXY": tinyproxy.url, "NO_PROXY": f"example.com, 127.0.0.0/8:{tls_upstream.port}"}
    gw = make_gateway(config(tmp_path, tls_upstream.url, f'ca_file = "{certs.ca_file}"'), env)
    assert chat(gw) == "Hello proxy"
    assert tinyproxy.requests() == []


def test_a_provider_proxy_overrides_the_environment(make_gateway, tmp_path, fake_openai, tinyproxy):
    dead = "http://127.0.0.1:9"  # nothing listens: a request through it would fail
    gw = make_gateway(config(tmp_path, fake_openai.url, 'proxy = ""'), {"HTTP_PROXY": dead})
    assert chat(gw) == "Hello proxy"
    gw2 = make_gateway(config(tmp_path / "b", fake_openai.url, f'proxy = "{tinyproxy.url}"'),
                       {"HTTP_PROXY": dead, "NO_PROXY": "*"})
    assert chat(gw2) == "Hello proxy"
    assert len(tinyproxy.requests()) == 1


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_proxy_basic_auth_from_the_url(make_gateway, tmp_path, certs, tls_upstream, fake_openai, scheme):
    proxy = Tinyproxy(tmp_path, basic_auth=("gwuser", "s3cret-proxy-pw"))
    try:
        upstream, ca = (fake_openai.url, "") if scheme == "http" else (tls_upstream.url,
                                                                        f'ca_file = "{certs.ca_file}"\n')
        base = proxy.url.removeprefix("http://")
        gw = make_gateway(config(tmp_path, upstream, ca + f'proxy = "http://gwuser:s3cret-proxy-pw@{base}"'))
        assert chat(gw) == "Hello proxy"
        denied = make_gateway(config(tmp_path / "b", upstream, ca + f'proxy = "{proxy.url}"'))
        error = failed_chat(denied)  # the proxy's 407, never passed on as if it were the provider's
        assert error.status_code == 502 and error.code == "upstream_connection_error"
        assert "s3cret" not in str(error.body)
    finally:
        proxy.stop()


def test_a_bad_proxy_fails_at_start_naming_the_key(tmp_path):
    import tomllib

    text = config(tmp_path, "https://api.example.com", 'proxy = "socks5://127.0.0.1:1080"')
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "gw.toml", {})
    assert "gw.toml:providers.up.proxy" in str(info.value) and "socks5" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(config(tmp_path, "https://api.example.com")), "gw.toml",
                     {"HTTPS_PROXY": "https://proxy:3128"})
    assert "HTTPS_PROXY" in str(info.value)


@pytest.mark.parametrize(("host", "port", "no_proxy", "bypass"), [
    ("api.openai.com", 443, "*", True),
    ("api.openai.com", 443, "openai.com", True),
    ("api.openai.com", 443, ".openai.com", True),
    ("api.openai.com", 443, "*.openai.com", True),
    ("notopenai.com", 443, "openai.com", False),
    ("api.openai.com", 443, "openai.com:8443", False),
    ("api.openai.com", 8443, "openai.com:8443", True),
    ("10.1.2.3", 443, "10.0.0.0/8", True),
    ("11.1.2.3", 443, "10.0.0.0/8", False),
    ("10.1.2.3", 443, "10.1.2.3", True),
    ("::1", 443, "[::1]:443", True),
    ("::1", 443, "::1", True),
    ("api.openai.com", 443, "", False),
    ("API.OpenAI.com.", 443, " other.org  openai.com ", True),
])
def test_no_proxy_rules(host, port, no_proxy, bypass):
    assert no_proxy_matches(host, port, no_proxy) is bypass


# --- TLS ---------------------------------------------------------------------------------------------


def test_ca_file_trusts_a_private_ca(make_gateway, tmp_path, certs, tls_upstream):
    untrusted = make_gateway(config(tmp_path, tls_upstream.url))
    error = failed_chat(untrusted)
    assert error.status_code == 502 and error.code == "upstream_connection_error"
    trusted = make_gateway(config(tmp_path / "b", tls_upstream.url, f'ca_file = "{certs.ca_file}"'))
    assert chat(trusted) == "Hello proxy"


def test_mtls_needs_the_client_certificate(make_gateway, tmp_path, certs, mtls_upstream):
    ca = f'ca_file = "{certs.ca_file}"\n'
    without = make_gateway(config(tmp_path, mtls_upstream.url, ca))
    assert failed_chat(without).status_code == 502
    with_cert = make_gateway(config(tmp_path / "b", mtls_upstream.url,
                                    ca + f'client_cert = "{certs.client_cert}"\nclient_key = "{certs.client_key}"'))
    assert chat(with_cert) == "Hello proxy"


def test_verify_tls_false_accepts_an_untrusted_certificate_and_warns(make_gateway, tmp_path, tls_upstream, caplog):
    with caplog.at_level(logging.WARNING, logger="gateway"):
        gw = make_gateway(config(tmp_path, tls_upstream.url, "verify_tls = false"))
    warnings = [r.getMessage() for r in caplog.records if "verify_tls = false" in r.getMessage()]
    assert warnings and "provider up" in warnings[0]
    assert chat(gw) == "Hello proxy"


def test_https_proxy_with_mtls_inside_the_tunnel(make_gateway, tmp_path, certs, mtls_upstream, tinyproxy):
    extra = f'ca_file = "{certs.ca_file}"\nclient_cert = "{certs.client_cert}"\nclient_key = "{certs.client_key}"'
    gw = make_gateway(config(tmp_path, mtls_upstream.url, extra), {"https_proxy": tinyproxy.url})
    assert chat(gw) == "Hello proxy"
    assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{mtls_upstream.port} HTTP/1.1"]


@pytest.mark.parametrize(("extra", "key", "reason"), [
    ('ca_file = "missing-ca.pem"', "providers.up.ca_file", "no such file"),
    ('client_key = "{key}"', "providers.up.client_key", "needs client_cert"),
    ('client_cert = "{key}"', "providers.up.client_cert", "do not load"),
    ('ca_file = "{key}"', "providers.up.ca_file", "not a usable PEM CA bundle"),
    ('ca_file = "{ca}"\nverify_tls = false', "providers.up.ca_file", "verify_tls = false"),
    ("max_response_mb = 0", "providers.up.max_response_mb", "must be >="),
])
def test_bad_tls_settings_fail_at_start(tmp_path, certs, extra, key, reason):
    import tomllib

    text = config(tmp_path, "https://api.example.com", extra.format(key=certs.client_key, ca=certs.ca_file))
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), str(tmp_path / "gw.toml"), {})
    assert time.monotonic() - start < 5  # an encrypted or wrong key never waits for a password prompt
    assert f"gw.toml:{key}" in str(info.value) and reason in str(info.value)
