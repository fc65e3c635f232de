"""Streams that end early and what their rows say: cut by the server's shutdown (503 gateway_shutdown,
with an error event for the client), or left by the client before the upstream's first byte (499, the
upstream call stopped at once)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import GATEWAY_KEY, ROOT, base_config, ledger_rows
from tests.pg import wait_for
from tests.servers import ServerThread, free_port

SLOW = ('[[models]]\nname = "long-stream"\n'
        'targets = [{ provider = "fake", model = "slow-stream", timeout_s = 60, max_retries = 0 }]\n')


def _serve_with_grace(config: Path, port: int, grace_s: float, cwd: Path) -> subprocess.Popen:
    """`gateway serve` as cli.py runs it (same app factory, protocol and loop), with a short shutdown grace
    (cli.py's is 30 s)."""
    code = ("import uvicorn; uvicorn.run('proxy.app:app_from_env', factory=True, host='127.0.0.1', "
            f"port={port}, loop='uvloop', http='proxy.uvicorn_protocol:GatewayHttpProtocol', access_log=False, "
            f"log_level='info', timeout_graceful_shutdown={grace_s})")
    env = {**os.environ, "GATEWAY_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_stream_cut_at_shutdown_ends_with_an_error_event_and_a_503_row(fake_openai, tmp_path):
    db = tmp_path / "gw.db"
    config = tmp_path / "gateway.toml"
    config.write_text(base_config(fake_openai.url, db, SLOW))
    port = free_port()
    proc = _serve_with_grace(config, port, 1, tmp_path)
    url = f"http://127.0.0.1:{port}"
    rid = f"cut-{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.stream("POST", url + "/v1/chat/completions",
                              headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                              json={"model": "long-stream", "messages": [{"role": "user", "content": "go"}],
                                    "stream": True}, timeout=20) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
        except httpx.HTTPError as e:
            errors.append(e)

    try:
        wait_for(lambda: _ready(url) or proc.poll() is not None, timeout=20)
        assert proc.poll() is None
        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: len(lines) >= 1 or errors or not reader.is_alive(), timeout=10)  # streaming now
        proc.send_signal(signal.SIGTERM)  # the 20 s stream outlives the 1 s grace
        reader.join(timeout=15)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out.decode(errors="replace")
    assert not errors, (errors, log)
    last = json.loads(lines[-1][6:])
    assert last.get("error", {}).get("code") == "gateway_shutdown", (lines[-3:], log)
    rows = ledger_rows(db, "SELECT status, error_type FROM usage_log WHERE request_id LIKE ?", (rid + ".%",))
    assert rows == [(503, "gateway_shutdown")], log


# --- a client that leaves before the upstream's first byte --------------------------------------------------------


class SlowFirstByte:
    """An upstream that sends its response head only after ``delay_s``, or notes that the gateway hung up
    first: what each request saw, and when."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.outcomes: list[tuple[str, float]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        await request.body()
        try:
            async with asyncio.timeout(self.delay_s):
                while (await request.receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            self.outcomes.append(("answered", time.monotonic()))
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "late"}, "finish_reason": "stop"}]}
            body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
            return Response(body, media_type="text/event-stream")
        self.outcomes.append(("gone", time.monotonic()))
        return Response(status_code=499)


def test_a_stream_client_leaving_before_the_first_byte_stops_the_upstream_at_once(make_gateway, tmp_path):
    upstream = SlowFirstByte(delay_s=8)
    server = ServerThread(upstream.app).start()
    try:
        extra = (f'[providers.slowhead]\nkind = "openai"\nbase_url = "{server.url}/v1"\napi_key = "x"\n'
                 '[[models]]\nname = "slow-head"\nkeepalive_s = 30\n'
                 'targets = [{ provider = "slowhead", model = "m", timeout_s = 20, max_retries = 0 }]\n')
        db = tmp_path / "gw.db"
        gw = make_gateway(base_config("http://127.0.0.1:9", db, extra))
        rid = f"early-{uuid.uuid4().hex[:8]}"
        try:  # nothing comes for 8 s: the client gives up after half a second and closes the connection
            with httpx.stream("POST", gw.url + "/v1/chat/completions",
                              headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                              json={"model": "slow-head", "messages": [{"role": "user", "content": "go"}],
                                    "stream": True}, timeout=httpx.Timeout(5, read=0.5)) as r:
                r.read()
        except httpx.ReadTimeout:
            pass
        left = time.monotonic()
        outcome, at = wait_for(lambda: upstream.outcomes and upstream.outcomes[0], timeout=12)
        assert outcome == "gone" and at - left < 3  # the upstream would have answered 7.5 s later
        rows = ledger_rows(db, "SELECT status, error_type, provider FROM usage_log WHERE request_id LIKE ?",
                           (rid + ".%",))
        assert rows == [(499, "client_disconnect", "slowhead")]
    finally:
        server.stop()
