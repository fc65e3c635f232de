"""Run an ASGI app on a real loopback port in a background thread (uvicorn, own event loop)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn

from proxy.uvicorn_protocol import GatewayHttpProtocol


class ServerThread:
    """Serves with the protocol `gateway serve` uses (httptools, head and body in one send), or with
    ``http`` as uvicorn's ``--http`` takes it ("h11", "httptools": a server without our extensions)."""

    def __init__(self, app: Any, port: int = 0, http: Any = GatewayHttpProtocol) -> None:
        # proto=IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections (no 40 ms delayed-ACK stalls)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # No access log, as under `gateway serve`: with one, uvicorn must log each response's start,
        # so the protocol's direct writes stand aside and the tests would not exercise them.
        config = uvicorn.Config(app, loop="asyncio", http=http, log_level="warning", lifespan="on",
                                access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
