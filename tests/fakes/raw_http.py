"""Upstreams for the HTTP client's tests: servers whose every byte a test scripts, and a real forward
proxy (Debian's tinyproxy) whose log shows what went through it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

CHAT = {"id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "raw hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
CHAT_BODY = orjson.dumps(CHAT)

# (connection number from 1, request number on that connection from 1, request head, body, writer) -> keep open?
Handler = Callable[[int, int, bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


def answer(body: bytes, headers: str = "content-type: application/json\r\n", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}content-length: {len(body)}\r\n\r\n".encode() + body


class RawUpstream:
    """An HTTP/1.1 server in its own thread; counts connections (``accepted``) and requests (``requests``).
    ``on_accept`` returning False closes a connection before reading anything."""

    def __init__(self, handler: Handler, on_accept: Callable[[int], bool] = lambda n: True) -> None:
        self.handler = handler
        self.on_accept = on_accept
        self.accepted = 0
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, sock=self.sock))
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if not self.on_accept(number):
                return
            for on_conn in range(1, 1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests += 1
                if not await self.handler(number, on_conn, head, body, writer):
                    return
                await writer.drain()
        finally:
            writer.transport.abort()
            self.tasks.discard(task)

    def start(self) -> RawUpstream:
        self.thread.start()
        return self

    async def _shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tinyproxy:
    """A tinyproxy process on a free port (``-d``: in the foreground, its log on stdout into ``log``)."""

    def __init__(self, tmp: Path, basic_auth: tuple[str, str] | None = None) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("tinyproxy is not installed (.ci/run installs Debian's tinyproxy)")
            pytest.skip("tinyproxy is not installed (apt-get install tinyproxy)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"tinyproxy-{self.port}.log"
        conf = tmp / f"tinyproxy-{self.port}.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Info", "MaxClients 50"]
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        self.out = self.log.open("wb")
        self.proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tinyproxy did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    def requests(self) -> list[str]:
        """The request lines the proxy received (e.g. ``CONNECT 127.0.0.1:4443 HTTP/1.1``)."""
        self.out.flush()
        return [line.split("): ", 1)[1] for line in self.log.read_text(errors="replace").splitlines()
                if line.startswith("CONNECT") and "Request (file descriptor" in line]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
