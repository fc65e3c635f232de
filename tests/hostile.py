"""A raw HTTP/1.1 client for tests that must send what an HTTP library would refuse to (pipelined
requests, control characters, trickled bytes) and see exactly what comes back, over real sockets."""

from __future__ import annotations

import select
import socket
import time

import orjson


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()

    def json(self) -> object:
        return orjson.loads(self.body)


class Closed(Exception):
    """The server closed the connection before a whole response arrived."""


class RawConnection:
    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed(self.buffer[:200])
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_response(self) -> Response:
        status_line = self._line()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                chunk = self._take(size)
                self._take(2)
                if size == 0:
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return Response(status, headers, body)

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within ``seconds`` (what it sends meanwhile is kept)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.buffer += data
        return False


def close_all(conns: list[RawConnection], seconds: float, trickle: bytes = b"") -> list[RawConnection]:
    """Wait up to ``seconds`` for the server to close every connection, reading what it sends, and
    sending ``trickle`` on each still-open one every 0.3 s (a slow client); the ones still open."""
    open_ = {c.sock: c for c in conns}
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline:
        if trickle:
            for sock in list(open_):
                try:
                    sock.sendall(trickle)
                except OSError:
                    del open_[sock]  # reset by the server: it has closed
        round_end = min(deadline, time.monotonic() + 0.3)
        while open_ and time.monotonic() < round_end:
            readable, _, _ = select.select(list(open_), [], [], max(0.0, round_end - time.monotonic()))
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    open_[sock].buffer += data
                else:
                    del open_[sock]
    return list(open_.values())


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            key: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    if key:
        lines.append(f"authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_openai_error(response: Response) -> dict:
    """The body is OpenAI's error shape: {"error": {"message": str, "type": str, "param", "code"}}."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
    assert {"param", "code"} <= set(error), error
    return error
