"""Load and timing: wrk phases charged with the CPU they cost, and a raw-socket client for TTFT."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_procs import Server, http_get

WRK_LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = [{"role": "user", "content": "Say hello."}]
NONSTREAM = json.dumps({"model": "fast", "messages": MESSAGES, "max_tokens": 16}, separators=(",", ":"))
STREAM5 = json.dumps({"model": "fast-5", "messages": MESSAGES, "stream": True,
                      "stream_options": {"include_usage": True}}, separators=(",", ":"))
STREAM200 = STREAM5.replace('"fast-5"', '"fast-200"')
# Streams whose events arrive 2 ms apart, one per read as from a real model: their difference over
# 45 events is the gateway's CPU per chunk when it cannot batch reads.
PACED5 = STREAM5.replace('"fast-5"', '"fast-5-paced"')
PACED50 = STREAM5.replace('"fast-5"', '"fast-50-paced"')
PACED_EXTRA_CHUNKS = 45
FIRST_READ = 64  # bytes per read until the first `data:` byte is in
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 does not name it
CMSG_SPACE = socket.CMSG_SPACE(16)  # one struct timespec
EMBED = json.dumps({"model": "fast-embed", "input": "hello"}, separators=(",", ":"))


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_s: float = 0.0
    upstream_cpu_s: float = 0.0
    server_reads: int = 0  # the server's read and write system calls meanwhile (see bench_procs.io_calls)
    server_writes: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_us(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def upstream_us(self) -> float:
        return self.upstream_cpu_s / self.requests * 1e6 if self.requests else float("nan")


def wrk(url: str, conns: int, seconds: int, auth: str | None, bodies: list[str],
        paths: list[str] | None = None, headers: dict[str, str] | None = None) -> Load:
    """A closed loop of `conns` connections for `seconds` (wrk -d: bounded in time, so in count too).
    Several bodies are sent in turn; `paths`, if given, is the path for each body (default: the URL's).
    `headers`: more request headers (a peer that routes by header, as Portkey does)."""
    env = {**os.environ, "BENCH_AUTH": auth or "",
           "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())}
    if len(bodies) == 1 and not paths:
        env["BENCH_BODY"] = bodies[0]
    else:
        env.update({f"BENCH_BODY_{i + 1}": b for i, b in enumerate(bodies)})
        env.update({f"BENCH_PATH_{i + 1}": p for i, p in enumerate(paths or [])})
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_LUA), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-300:]} {out.stderr[-300:]}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return Load(r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1000, r["p99_us"] / 1000, errors)


def measured(server: Server, upstream: Server, run: Callable[[], Load]) -> Load:
    """Run a load and charge the CPU the server and the upstream spent meanwhile, and the server's
    read and write calls, to it."""
    s0, u0, (r0, w0) = server.cpu(), upstream.cpu(), server.io_calls()
    load = run()
    load.server_cpu_s, load.upstream_cpu_s = server.cpu() - s0, upstream.cpu() - u0
    r1, w1 = server.io_calls()
    load.server_reads, load.server_writes = r1 - r0, w1 - w0
    return load


def phase(url: str, conns: int, seconds: int, auth: str | None, bodies: list[str], min_requests: int,
          cap_s: int, headers: dict[str, str] | None = None) -> Load:
    """wrk for `seconds`; if the server is so slow that it served fewer than min_requests, one more run sized
    from the rate seen, up to cap_s in all. Requests cut off when wrk stops bias CPU/request upwards by about
    conns/2 over the count: the count must stay high."""
    load = wrk(url, conns, seconds, auth, bodies, headers=headers)
    if load.requests >= min_requests or seconds >= cap_s:
        return load
    rate = max(load.requests / load.seconds, 0.5)
    extra = int(min(cap_s - seconds, max(1, (min_requests - load.requests) / rate + 1)))
    more = wrk(url, conns, extra, auth, bodies, headers=headers)
    longer = more if more.requests >= load.requests else load  # percentiles: the longer run's
    return Load(load.requests + more.requests, load.seconds + more.seconds, longer.p50_ms, longer.p99_ms,
                load.errors + more.errors)


def settle() -> None:
    """Let a server finish the requests wrk cut off, outside any measurement window."""
    time.sleep(0.5)


class RawClient:
    """One keep-alive HTTP/1.1 connection on a raw socket: times the first SSE `data:` byte exactly.

    The first byte's time is the kernel's receive timestamp of the segment that carried it (SO_TIMESTAMPNS),
    not the moment this client got to run and read it. On two cores this client shares one with a busy
    process (the gateway relaying the rest of the stream, or the fake upstream writing it), and when it
    runs depends on that process's time slice: measured here, that added 0.3-0.7 ms to a gateway's
    first byte. A client on a machine of its own reads the byte when it arrives."""

    def __init__(self, port: int, auth: str | None, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.auth = auth
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock: socket.socket | None = None
        self.arrived_ns = 0  # kernel receive time (CLOCK_REALTIME) of the last segment read

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, path: str, body: str) -> tuple[int, float, bytes]:
        """(status, seconds to the first `data:` byte or to the whole answer, decoded body)."""
        data = body.encode()
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
        if self.auth:
            head += f"Authorization: Bearer {self.auth}\r\n"
        head += self.headers + f"Content-Length: {len(data)}\r\n\r\n"
        sock = self._connect()
        started, started_ns = time.perf_counter(), time.time_ns()
        sock.sendall(head.encode() + data)
        buf, first = b"", None
        while b"\r\n\r\n" not in buf:
            buf += self._recv(sock, FIRST_READ)
        header, _, rest = buf.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            if b"data:" in rest:
                first = (self.arrived_ns - started_ns) / 1e9
            while first is None and not rest.endswith(b"\r\n0\r\n\r\n"):
                rest += self._recv(sock, FIRST_READ)  # small reads: the stamp is of the segment holding `data:`
                if b"data:" in rest:
                    first = (self.arrived_ns - started_ns) / 1e9
            while not rest.endswith(b"\r\n0\r\n\r\n") and rest != b"0\r\n\r\n":
                rest += self._recv(sock)
            payload = dechunk(rest)
        else:
            length = int(fields.get("content-length", "0"))
            while len(rest) < length:
                rest += self._recv(sock)
            payload = rest[:length]
        total = time.perf_counter() - started
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, first if first is not None else total, payload

    def _recv(self, sock: socket.socket, size: int = 262144) -> bytes:
        chunk, ancillary, _, _ = sock.recvmsg(size, CMSG_SPACE)
        if not chunk:
            self.close()
            raise ConnectionError("server closed the connection mid-response")
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                self.arrived_ns = seconds * 1_000_000_000 + nanoseconds
        return chunk


def dechunk(raw: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


def ttft(port: int, auth: str | None, body: str, n: int, cap_s: float,
         headers: dict[str, str] | None = None) -> list[float]:
    """Seconds to the first `data:` line of a stream, concurrency 1, at most n streams and cap_s."""
    client, out = RawClient(port, auth, headers), []
    deadline = time.monotonic() + cap_s
    try:
        for _ in range(n):
            status, first, _ = client.post(CHAT, body)
            if status != 200:
                raise RuntimeError(f"stream answered {status}")
            out.append(first)
            if time.monotonic() > deadline:
                break
    finally:
        client.close()
    return out


def sanity(port: int, auth: str | None, headers: dict[str, str] | None = None) -> None:
    """One answer of each kind, checked, before any load: a broken setup must not produce numbers."""
    client = RawClient(port, auth, headers)
    try:
        status, _, body = client.post(CHAT, NONSTREAM)
        if status != 200 or not json.loads(body).get("choices"):
            raise RuntimeError(f"chat answered {status}: {body[:300]!r}")
        for payload, chunks in ((STREAM5, 5), (STREAM200, 200)):
            status, _, body = client.post(CHAT, payload)
            events = [ln for ln in body.split(b"\n") if ln.startswith(b"data:")]
            if status != 200 or events[-1:] != [b"data: [DONE]"] or len(events) < chunks + 1:
                raise RuntimeError(f"stream answered {status} with {len(events)} events: {body[:300]!r}")
        status, _, body = client.post(EMBEDDINGS, EMBED)
        if status != 200 or not json.loads(body).get("data"):
            raise RuntimeError(f"embeddings answered {status}: {body[:300]!r}")
    finally:
        client.close()


def upstream_requests(upstream: Server) -> int:
    return json.loads(http_get(upstream.url + "/stats")[1])["requests"]
