"""Response bodies from the upstream: the max_response_mb cap on a body read whole (a 502 naming the
provider, never unbounded memory), and gzip/deflate bodies decoded, streams incrementally."""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from tests.conftest import GATEWAY_KEY, storage_table
from tests.fakes.raw_http import CHAT, CHAT_BODY, RawUpstream, answer


def config(tmp: Path, url: str, provider_extra: str = "", target_extra: str = "") -> str:
    return f"""
[server]
require_auth = true
{storage_table(tmp)}
[providers.up]
kind = "openai"
base_url = "{url}/v1"
api_key = "sk-x"
timeout_s = 5
{provider_extra}

[[models]]
name = "m"
targets = [{{ provider = "up", model = "ok", max_retries = 2{target_extra} }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


def chunked(*pieces: bytes) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces if p)


@pytest.fixture
def raw() -> Iterator[list[RawUpstream]]:
    started: list[RawUpstream] = []
    yield started
    for server in started:
        server.stop()


def serve(raw: list[RawUpstream], reply: bytes) -> RawUpstream:
    async def handler(conn, n, head, body, writer):
        writer.write(reply)
        return True

    server = RawUpstream(handler).start()
    raw.append(server)
    return server


def big_chat(size: int) -> bytes:
    return orjson.dumps({**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant",
                                                                                 "content": "x" * size}}]})


def ask(gw) -> str:
    return gw.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]
                                               ).choices[0].message.content


@pytest.mark.parametrize("framing", ["content-length", "chunked", "gzip-bomb"])
def test_a_body_past_max_response_mb_is_a_502_naming_the_provider(make_gateway, tmp_path, raw, framing):
    if framing == "content-length":
        reply = answer(big_chat(200_000))
    elif framing == "chunked":  # no length said up front: counted as it arrives
        body = big_chat(200_000)
        reply = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                 + chunked(*(body[i:i + 8192] for i in range(0, len(body), 8192))) + b"0\r\n\r\n")
    else:  # 20 MB of JSON in 20 kB of gzip: the decoded size is what counts
        bomb = orjson.dumps({**CHAT, "pad": " " * 20_000_000})
        reply = answer(zlib.compress(bomb, 9, wbits=31), "content-type: application/json\r\ncontent-encoding: gzip\r\n")
    server = serve(raw, reply)
    gw = make_gateway(config(tmp_path, server.url, "max_response_mb = 0.1"))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw)
    error = info.value
    assert error.status_code == 502 and error.code == "upstream_response_too_large"
    assert "upstream up" in error.message and "max_response_mb (0.1 MB)" in error.message
    assert server.requests == 1  # answered (and billed) once: not asked again for the same big answer
    small = serve(raw, answer(big_chat(50_000)))
    assert len(ask(make_gateway(config(tmp_path / "b", small.url, "max_response_mb = 0.1")))) == 50_000


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_bodies_are_decoded(make_gateway, tmp_path, raw, encoding):
    wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
    name = "gzip" if encoding == "gzip" else "deflate"
    server = serve(raw, answer(zlib.compress(CHAT_BODY, 6, wbits=wbits),
                               f"content-type: application/json\r\ncontent-encoding: {name}\r\n"))
    assert ask(make_gateway(config(tmp_path, server.url))) == "raw hello"


def sse(content: str, finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_a_gzip_stream_is_decoded_as_it_comes(make_gateway, tmp_path, raw):
    """The first event reaches the client while the upstream still holds back the rest: decoding
    does not wait for (or buffer) the whole stream."""
    released = threading.Event()
    held_back: list[bool] = []

    async def handler(conn, n, head, body, writer):
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
                     b"transfer-encoding: chunked\r\n\r\n" + chunked(z.compress(sse("A")) + z.flush(zlib.Z_SYNC_FLUSH)))
        await writer.drain()
        held_back.append(await asyncio.get_running_loop().run_in_executor(None, released.wait, 20))
        rest = sse("B") + sse("C", "stop") + b"data: [DONE]\n\n"
        writer.write(chunked(z.compress(rest) + z.flush()) + b"0\r\n\r\n")
        return True

    server = RawUpstream(handler).start()
    raw.append(server)
    gw = make_gateway(config(tmp_path, server.url))
    stream = gw.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            released.set()
    assert "".join(pieces) == "ABC"
    assert held_back == [True]  # released by the client's first piece, not by the 20 s wait running out
