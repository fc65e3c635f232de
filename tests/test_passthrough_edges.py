"""Pass-through edges: Azure's URLs, fallbacks for JSON bodies, an upload the client abandons, an
audio answer the upstream cuts, and the multipart scanner fed a byte at a time."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from proxy.passthrough.multipart import Scanner
from tests.conftest import GATEWAY_KEY, ledger_rows
from tests.fakes.openai_media import SPEECH_PIECE, AzureStyle, make_app
from tests.servers import ServerThread


def storage(tmp: Path) -> str:
    return f'[storage]\ndatabase_url = "sqlite:///{tmp / "gw.db"}"\nspill_dir = "{tmp / "spill"}"\n'


KEYS = f'[[keys]]\nname = "team"\nkey = "{GATEWAY_KEY}"\n'
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


@pytest.fixture
def media():
    app = make_app()
    server = ServerThread(app).start()
    yield server.url, app.state.media
    server.stop()


@pytest.mark.parametrize("api_version", ["2024-10-21", ""])
def test_azure_urls_and_api_key(make_gateway, tmp_path, api_version):
    fake = AzureStyle()
    server = ServerThread(fake).start()
    try:
        gw = make_gateway(f"""
{storage(tmp_path)}
[providers.az]
kind = "azure"
base_url = "{server.url}"
api_key = "azure-secret-key"
api_version = "{api_version}"

[[models]]
name = "dalle"
targets = [{{ provider = "az", model = "my-dalle" }}]

{KEYS}""")
        client = gw.client()
        assert len(client.images.generate(model="dalle", prompt="a fox").data) == 1
        audio = os.urandom(50_000)
        client.audio.transcriptions.create(model="dalle", file=("a.wav", audio))
        created = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
        assert client.files.retrieve(created.id).id == created.id
        if api_version:
            assert fake.paths[:3] == [
                f"/openai/deployments/my-dalle/images/generations?api-version={api_version}",
                f"/openai/deployments/my-dalle/audio/transcriptions?api-version={api_version}",
                f"/openai/files?api-version={api_version}"]
            assert fake.paths[3] == f"/openai/files/{created.id}?api-version={api_version}"
        else:
            assert fake.paths == ["/openai/v1/images/generations", "/openai/v1/audio/transcriptions",
                                  "/openai/v1/files", f"/openai/v1/files/{created.id}"]
        assert all(r["headers"]["api-key"] == "azure-secret-key" for r in fake.state.requests)
        assert fake.state.last("/v1/audio/transcriptions")["files"]["file"]["sha256"] == \
            hashlib.sha256(audio).hexdigest()
    finally:
        server.stop()


def test_json_bodies_fall_back_to_the_next_target(make_gateway, tmp_path, media):
    url, state = media
    gw = make_gateway(f"""
{storage(tmp_path)}
[providers.media]
kind = "openai"
base_url = "{url}/v1"

[[models]]
name = "images"
targets = [{{ provider = "media", model = "fail-500", max_retries = 0 }}, {{ provider = "media", model = "dall-e-3" }}]

{KEYS}""")
    r = gw.client().images.with_raw_response.generate(model="images", prompt="x")
    assert r.headers["x-gateway-attempts"] == "2" and r.headers["x-gateway-upstream-model"] == "dall-e-3"
    assert [q["body"]["model"] for q in state.requests] == ["fail-500", "dall-e-3"]


def test_an_upload_the_client_abandons_leaves_a_499_row(make_gateway, tmp_path, media):
    url, state = media
    gw = make_gateway(f"""
{storage(tmp_path)}
[providers.media]
kind = "openai"
base_url = "{url}/v1"

[[models]]
name = "whisper"
targets = [{{ provider = "media", model = "whisper-1" }}]

{KEYS}""")
    boundary = "xyz"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n').encode()
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                     + GATEWAY_KEY.encode() + b"\r\nx-request-id: gone-1\r\ncontent-type: multipart/form-data; "
                     b"boundary=xyz\r\ncontent-length: 10000000\r\n\r\n" + head + bytes(100_000))
        time.sleep(0.3)
    rows = ledger_rows(tmp_path / "gw.db", "SELECT status, error_type, model FROM usage_log WHERE request_id LIKE ?",
                       ("gone-1.%",))
    assert rows == [(499, "client_disconnect", "whisper")]
    deadline = time.monotonic() + 10
    while not state.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    # The upstream saw the upload begin, then the gateway close it: never a whole request to bill.
    assert [(r["path"], r.get("abandoned")) for r in state.requests] == [("/v1/audio/transcriptions", True)]


def test_speech_cut_by_the_upstream_is_not_a_whole_answer(make_gateway, tmp_path):
    async def cut(scope, receive, send):  # an upstream that promises more audio than it sends, then hangs up
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"audio/mpeg"), (b"content-length", b"100000")]})
        await send({"type": "http.response.body", "body": SPEECH_PIECE, "more_body": True})
        raise RuntimeError("upstream died mid-answer")

    server = ServerThread(cut).start()
    try:
        gw = make_gateway(f"""
{storage(tmp_path)}
[providers.media]
kind = "openai"
base_url = "{server.url}/v1"

[[models]]
name = "tts"
targets = [{{ provider = "media", model = "tts-1" }}]

{KEYS}""")
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("POST", gw.url + "/v1/audio/speech", headers={**AUTH, "x-request-id": "cut-1"},
                              json={"model": "tts", "voice": "alloy", "input": "hi"}, timeout=10) as r:
                assert r.status_code == 200
                r.read()
        rows = ledger_rows(tmp_path / "gw.db", "SELECT status, error_type FROM usage_log WHERE request_id LIKE ?",
                           ("cut-1.%",))
        assert rows == [(502, "connection")]
    finally:
        server.stop()


def test_the_scanner_finds_the_model_however_the_body_is_split():
    body = (b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na hat\r\n'
            b'--B\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n--B- not a delimiter\r\n'
            b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e\r\n--B--\r\n')
    for step in (1, 2, 3, 7, len(body)):
        scanner, buf = Scanner(b"B"), bytearray()
        for at in range(0, len(body), step):
            buf += body[at:at + step]
            scanner.feed(buf)
        assert scanner.model_span is not None and bytes(buf[slice(*scanner.model_span)]) == b"dall-e"
        assert scanner.fields == {"prompt": "a hat", "model": "dall-e"} and scanner.ended


def test_files_model_must_name_an_alias_with_an_openai_kind_target(tmp_path):
    import tomllib

    from proxy.config import ConfigError, parse_config

    base = f"""{storage(tmp_path)}
[providers.local]
kind = "echo"

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "e" }}]

{KEYS}"""
    for files, reason in (('model = "nope"', "not an alias"), ('model = "echo"', "no target of kind")):
        with pytest.raises(ConfigError) as err:
            parse_config(tomllib.loads(base + f"\n[files]\n{files}\n"), "gw.toml", {})
        assert err.value.key == "files.model" and reason in err.value.reason


def test_a_prices_file_may_price_a_media_model_by_the_unit_only(tmp_path):
    import tomllib

    from proxy.config import parse_config

    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"openai/dall-e-3": {"per_image": 0.04}, '
                      '"whisper-1": {"input_per_mtok": 1, "output_per_mtok": 1, "per_second": 0.0001}}}')
    config = parse_config(tomllib.loads(f"""{storage(tmp_path)}prices_file = "{prices}"
[providers.oa]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "dalle"
targets = [{{ provider = "oa", model = "dall-e-3" }}]

[[models]]
name = "whisper"
targets = [{{ provider = "oa", model = "whisper-1", per_second = 0.0002 }}]

{KEYS}"""), str(tmp_path / "gw.toml"), {})
    assert config.models["dalle"].targets[0].per_image == 0.04
    assert config.models["whisper"].targets[0].per_second == 0.0002  # gateway.toml's own price wins


def test_http1_stops_sending_a_streamed_body_the_upstream_answered_early_and_does_not_pool_it():
    import asyncio

    from proxy.http1 import Pool

    async def run() -> None:
        async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the head only: the answer comes before the body is read
            writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 2\r\n\r\nno")
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        server = await asyncio.start_server(early, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sent: list[int] = []
        release = asyncio.Event()

        async def body():
            for i in range(1000):
                sent.append(i)
                yield b"x" * 1000
                if i == 0:
                    await release.wait()  # the rest would follow only after the answer is in

        pool = Pool(f"http://127.0.0.1:{port}")
        task = asyncio.ensure_future(pool.request("POST", "/upload", {}, body(), 5, 5))
        response = await asyncio.wait_for(task, 5)
        release.set()
        assert response.status == 413 and await response.read() == b"no"
        assert len(sent) == 1 and pool.idle == []  # the body was cut short: that connection is not reused
        pool.close()
        server.close()

    asyncio.run(run())


def test_a_budget_reserves_the_images_and_characters_a_request_asks_for(make_gateway, tmp_path, media):
    """A budget of $0.10 with images at $0.04: two images are reserved ($0.08) and admitted; a third
    would pass the budget, so it is refused before the upstream is called (429 insufficient_quota),
    not found out when its row is written. Speech is reserved by the characters of its input."""
    url, state = media
    gw = make_gateway(f"""
{storage(tmp_path)}
[providers.media]
kind = "openai"
base_url = "{url}/v1"

[[models]]
name = "dalle"
targets = [{{ provider = "media", model = "dall-e-3", per_image = 0.04 }}]

[[models]]
name = "tts"
targets = [{{ provider = "media", model = "tts-1", per_character = 0.01 }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
budget_usd = 0.10
""")
    post = lambda path, body: httpx.post(gw.url + "/v1" + path, json=body, headers=AUTH, timeout=10)  # noqa: E731
    assert post("/images/generations", {"model": "dalle", "prompt": "a fox", "n": 2}).status_code == 200
    sent = len(state.requests)
    refused = post("/images/generations", {"model": "dalle", "prompt": "a fox", "n": 1})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert len(state.requests) == sent  # never sent: the upstream would have billed it
    # $0.02 left: 3 characters ($0.03) are refused up front, 2 ($0.02) pass
    assert post("/audio/speech", {"model": "tts", "input": "abc", "voice": "alloy"}).status_code == 429
    assert len(state.requests) == sent
    assert post("/audio/speech", {"model": "tts", "input": "ab", "voice": "alloy"}).status_code == 200
