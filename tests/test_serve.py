"""`gateway serve` on the shipped gateway.toml: the README's first-run path, as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_serves_with_no_environment(tmp_path):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(ROOT / "gateway.toml"),
                             "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-gateway-dev", max_retries=0)
        resp = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert resp.model == "gpt-4o-mini" and resp.choices[0].message.content == "Echo: hi"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    # uvicorn finishes the graceful shutdown, then re-raises SIGTERM so the exit status tells why it ended
    assert proc.returncode in (0, -signal.SIGTERM), out.decode()
    assert b"Application shutdown complete" in out


def test_serve_with_uvloop_through_a_real_upstream(tmp_path, fake_openai):
    """The production server (uvloop + httptools) in front of a real HTTP upstream, streams included."""
    from tests.conftest import GATEWAY_KEY, base_config
    from tests.procs import GatewayProcess

    path = tmp_path / "gateway.toml"
    path.write_text(base_config(fake_openai.url, tmp_path / "gw.db"))
    gw = GatewayProcess(path, tmp_path)
    try:
        client = OpenAI(base_url=gw.url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
        for _ in range(3):  # the second and third reuse pooled upstream connections
            full = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
            assert full.choices[0].message.content == "Hello hi" and full.model == "gpt-test"
            chunks = list(client.chat.completions.create(model="a-split-stream", stream=True,
                                                         messages=[{"role": "user", "content": "hi"}]))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello hi"
    finally:
        gw.stop()
    assert "Traceback" not in gw.output()
