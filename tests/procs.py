"""Run `gateway serve` as a real process (a replica), for tests across processes and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port


class GatewayProcess:
    def __init__(self, config_path: Path, cwd: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"gateway-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("GATEWAY_CONFIG", None)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path),
                                          "--port", str(self.port)], cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # a process that is up but never ready must not outlive the failed start
                raise RuntimeError(f"gateway did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
