"""A client that reads a stream slowly: the relay switches between pushing bytes from the upstream's
data callback and waiting on the client, and must lose, reorder and hoard nothing."""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import GATEWAY_KEY, base_config, ledger_rows, stream_data

CHUNKS = 30_000  # about 36 MB of events: more than the kernel's socket buffers hold on this path


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _dechunk(raw: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


def test_a_slow_reader_gets_every_event_in_order_and_holds_the_upstream_back(make_gateway, fake_openai, tmp_path):
    db = tmp_path / "gw.db"
    alias = f'[[models]]\nname = "big"\ntargets = [{{ provider = "fake", model = "big-stream-{CHUNKS}" }}]\n'
    gw = make_gateway(base_config(fake_openai.url, db, alias))
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    rid = f"slow-reader-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"model": "big", "messages": [{"role": "user", "content": "go"}], "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, set before connecting
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                 b"authorization: Bearer " + GATEWAY_KEY.encode() + b"\r\nx-request-id: " + rid.encode() +
                 b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    rss_before = _rss_mb()
    time.sleep(2.0)  # not reading: longer than the provider's stream idle timeout (1.5 s), too
    rss_paused = _rss_mb()
    # The gateway, the fake upstream and this client share this process: had the relay kept pushing
    # into a client that does not read, the 36 MB would sit in the gateway's write buffer by now.
    assert outcomes[before:] == [], "the upstream was not held back by the slow client"
    assert rss_paused - rss_before < 12, f"RSS grew {rss_paused - rss_before:.1f} MB while the client paused"

    raw = bytearray()
    reads = 0
    while not raw.endswith(b"0\r\n\r\n"):
        piece = sock.recv(65536)
        assert piece, "the gateway closed the stream early"
        raw += piece
        reads += 1
        if reads % 200 == 0:
            time.sleep(0.01)  # stall now and then: the relay goes back and forth between its two paths
    sock.close()
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    events = [line[6:] for line in _dechunk(rest).split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    texts = [t for t in contents if t]
    assert len(texts) == CHUNKS
    assert all(t.startswith(f"{i}:") for i, t in enumerate(texts)), "an event was lost or reordered"
    assert {c["model"] for c in chunks} == {"big"}
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert outcomes[before:] == ["completed"]

    rows = ledger_rows(db, "SELECT status, error_type, completion_tokens FROM usage_log WHERE request_id LIKE ?",
                       (rid + ".%",))
    assert rows == [(200, None, chunks[-1]["usage"]["completion_tokens"])]


def test_an_upstream_that_drops_mid_stream_ends_the_relay_with_an_error_and_a_502_row(make_gateway, fake_openai,
                                                                                      tmp_path):
    """The chunks came one read at a time (pushed from the data callback); then the upstream's
    connection drops: the client gets what was sent, then an OpenAI error event, and the row says so."""
    db = tmp_path / "gw.db"
    alias = '[[models]]\nname = "dropper"\ntargets = [{ provider = "fake", model = "drop-stream" }]\n'
    gw = make_gateway(base_config(fake_openai.url, db, alias))
    rid = f"dropped-{uuid.uuid4().hex[:8]}"
    events = stream_data(gw.url, "dropper", rid)
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert [c for c in contents if c] == ["w0 ", "w1 ", "w2 "]
    assert json.loads(events[-1])["error"]["code"] == "upstream_connection_error"
    rows = ledger_rows(db, "SELECT status, error_type, completion_tokens FROM usage_log WHERE request_id LIKE ?",
                       (rid + ".%",))
    assert rows == [(502, "connection", len(events) - 1)]  # one token per chunk it relayed, estimated


class _Socket:
    """The transport side of an upstream connection: what the client did to its reading."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_a_burst_is_read_in_rests_and_paced_events_never_wait() -> None:
    """Reads of a relayed stream that come faster than BURST_GAP_S apart, or that hold more than one
    chunk of the upstream's body, make the connection rest BURST_REST_S before reading on, so a burst
    is relayed in fewer pieces; reads spaced like a real model's tokens are never held, and neither is
    a whole-body answer (or a stream still looking for its first event) however fast its reads come."""
    import asyncio
    from types import SimpleNamespace

    from proxy.http1 import BURST_GAP_S, BURST_REST_S, _Conn
    from proxy.upstream import HttpStream

    def event(i: int) -> bytes:
        data = b"data: {\"n\":%d}\n\n" % i
        return b"%x\r\n%b\r\n" % (len(data), data)

    def connection(loop: asyncio.AbstractEventLoop) -> tuple[_Conn, _Socket]:
        conn = _Conn(SimpleNamespace(loop=loop, forget=lambda c: None, release=lambda c: None))  # type: ignore[arg-type]
        sock = _Socket()
        conn.connection_made(sock)  # type: ignore[arg-type]
        conn.start(b"POST / HTTP/1.1\r\n\r\n", None, None)
        conn.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        return conn, sock

    async def main() -> tuple[list[str], ...]:
        loop = asyncio.get_running_loop()
        conn, sock = connection(loop)
        assert conn.response is not None
        got: list[bytes] = []
        HttpStream(conn.response).relaying()  # the first event is out: the relay has the stream
        taken = asyncio.ensure_future(conn.response.push(lambda data: got.append(data) is None))
        await asyncio.sleep(0)  # pushing from here on
        conn.data_received(event(0))
        conn.data_received(event(1))  # right after: a burst
        burst = list(sock.calls)
        await asyncio.sleep(BURST_REST_S * 5)
        rested = list(sock.calls)
        for i in range(2, 5):  # spaced out, as tokens are
            await asyncio.sleep(BURST_GAP_S * 4)
            conn.data_received(event(i))
        paced = sock.calls[len(rested):]
        await asyncio.sleep(BURST_GAP_S * 4)
        conn.data_received(event(5) + event(6))  # spaced out, but two chunks at once: the loop fell behind
        piled = sock.calls[len(rested):]
        await asyncio.sleep(BURST_REST_S * 5)
        conn.data_received(b"0\r\n\r\n")
        await taken
        events = [json.loads(line[6:])["n"] for g in got for line in g.split(b"\n\n") if line]
        assert events == list(range(7))  # each read delivered at once, in order

        whole, whole_sock = connection(loop)  # read with read(): never relayed
        for i in range(5):
            whole.data_received(event(i))
        return burst, rested, paced, piled, whole_sock.calls

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # no other thread (the suite's servers) gets in between the two reads of the burst
    try:
        burst, rested, paced, piled, whole = asyncio.run(main())
    finally:
        sys.setswitchinterval(interval)
    assert burst == ["pause"]
    assert rested == ["pause", "resume"]
    assert paced == []
    assert piled == ["pause"]
    assert whole == []


def test_a_connection_paused_by_its_last_read_is_pooled_reading() -> None:
    """The read that completes a response may also take its unread body over HIGH_WATER, which pauses
    the connection; going back to the pool it must read again, or the next request on it waits for
    an answer it never reads. And a whole-body read() is never paused, however big the body."""
    import asyncio
    from types import SimpleNamespace

    from proxy.http1 import HIGH_WATER, _Conn
    from proxy.http1_connect import Reach

    body = b"x" * (HIGH_WATER + 1)
    framed = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n" % (len(body), body)

    async def main() -> tuple[list[str], list[str], list[str]]:
        loop = asyncio.get_running_loop()
        pooled: list[_Conn] = []
        pool = SimpleNamespace(loop=loop, forget=lambda c: None, release=pooled.append, reach=Reach())
        calls = []
        for ending in (b"0\r\n\r\n", b""):
            conn = _Conn(pool)  # type: ignore[arg-type]
            sock = _Socket()
            conn.connection_made(sock)  # type: ignore[arg-type]
            head = conn.start(b"GET / HTTP/1.1\r\n\r\n", None, None)
            conn.data_received(framed + ending)  # a stream nobody has read from yet
            response = await head
            if not ending:  # over HIGH_WATER and not complete: paused until read() wants it all
                paused = list(sock.calls)
                conn.data_received(b"0\r\n\r\n")
                assert len(await asyncio.wait_for(response.read(), 2)) == len(body)
                calls.append(paused)
            calls.append(sock.calls)
        return calls[0], calls[1], calls[2]

    completed, paused, read_whole = asyncio.run(main())
    assert completed == ["pause", "resume"]  # paused by the last read, resumed before pooling
    assert paused == ["pause"]
    assert read_whole == ["pause", "resume"]
