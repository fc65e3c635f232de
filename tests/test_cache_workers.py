"""A memory cache under `gateway serve --workers 2`: each worker has its own, and DELETE /admin/cache,
which reaches one of them, clears both (read through /metrics, which sums the workers' cache gauges)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx

from tests.conftest import GATEWAY_KEY
from tests.servers import free_port
from tests.test_cache_ops import ADMIN, config
from tests.test_metrics import ROOT, scrape, value


def test_a_clear_reaches_every_workers_memory_cache(fake_openai, tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(config(fake_openai.url, tmp_path))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GATEWAY_METRICS_DIR": str(tmp_path / "metrics"), "PYTHONPATH": str(ROOT)}
    env.pop("GATEWAY_CONFIG", None)
    err = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), "--port", str(port),
                             "--workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    admin = {"authorization": f"Bearer {ADMIN}"}
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": f"cached {uuid.uuid4().hex}"}]}
    try:
        deadline = time.monotonic() + 30
        while True:  # both workers up
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
            time.sleep(0.1)

        def entries() -> float:
            return value(scrape(url, headers=admin)[1], "gateway_cache_entries")

        # The same request on new connections until each worker has answered it once (and kept it):
        # the kernel spreads new connections over both workers' accepts.
        deadline = time.monotonic() + 30
        while entries() < 2:
            assert time.monotonic() < deadline, "the request never reached both workers"
            with httpx.Client(headers={"authorization": f"Bearer {GATEWAY_KEY}"}) as client:
                assert client.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
            time.sleep(0.05)  # the other worker's gauge is at most a second old

        cleared = httpx.delete(url + "/admin/cache", headers=admin, timeout=10)
        assert cleared.status_code == 200 and cleared.json()["deleted"] == 1  # the answering worker's one entry
        deadline = time.monotonic() + 10
        while entries() > 0:  # the other worker clears its own within a poll, and says so within a second
            assert time.monotonic() < deadline, "the other worker's cache was not cleared"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
