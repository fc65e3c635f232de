"""The serving protocol: a response's head leaves with its first body bytes, never later than one
event-loop step after it was written, and never after a close."""

from __future__ import annotations

import asyncio
import socket

from proxy.server import HeadWithBody

MSGS = [{"role": "user", "content": "hello"}]


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_head_and_body_written_together() -> None:
    async def main() -> list[bytes]:
        rec = Recorder()
        out = HeadWithBody(rec)  # type: ignore[arg-type]
        out.write(b"HEAD")
        out.write(b"BODY")
        out.write(b"MORE")
        await asyncio.sleep(0)
        return rec.writes

    assert asyncio.run(main()) == [b"HEADBODY", b"MORE"]


def test_head_alone_goes_out_at_the_end_of_the_step() -> None:
    async def main() -> tuple[list[bytes], list[bytes], list[bytes]]:
        rec = Recorder()
        out = HeadWithBody(rec)  # type: ignore[arg-type]
        out.write(b"HEAD")
        held = list(rec.writes)
        await asyncio.sleep(0.01)  # a stream whose first chunk is not ready yet
        waiting = list(rec.writes)
        out.write(b"CHUNK")
        return held, waiting, rec.writes

    held, waiting, final = asyncio.run(main())
    assert held == [] and waiting == [b"HEAD"] and final == [b"HEAD", b"CHUNK"]


def test_close_flushes_the_head_first() -> None:
    async def main() -> Recorder:
        rec = Recorder()
        out = HeadWithBody(rec)  # type: ignore[arg-type]
        out.write(b"HEAD")
        out.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to write
        return rec

    rec = asyncio.run(main())
    assert rec.writes == [b"HEAD"] and rec.closed


def test_keep_alive_responses_through_the_protocol(gateway) -> None:
    """Several responses, stream and not, on one connection: each is framed whole and in order."""
    client = gateway.client()
    for _ in range(3):
        assert client.chat.completions.create(model="gpt-test", messages=MSGS).choices[0].message.content
        chunks = list(client.chat.completions.create(model="gpt-test", messages=MSGS, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)  # pipelined
        data = b""
        while data.count(b'{"status":"ok"}') < 2:
            part = sock.recv(65536)
            assert part, data
            data += part
    assert data.count(b"HTTP/1.1 200 OK") == 2
