"""The serving protocol: a response's head leaves with its first body bytes, never later than one
event-loop step after it was written, and never after a close."""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, RequestResponseCycle

from proxy.endpoints import AccountedResponse
from proxy.sse_response import SSEResponse
from proxy.uvicorn_protocol import (
    _NAME_OK,
    _VALUE_OK,
    DIRECT_WRITE,
    ON_DISCONNECT,
    ClientLeft,
    DirectBody,
    HeadWithBody,
    start_chunked,
    write_whole,
)

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


def _uvicorn_lacks() -> list[str]:
    """What proxy/uvicorn_protocol.py relies on in uvicorn and the installed version lacks."""
    import inspect

    from uvicorn.protocols.http import httptools_impl

    lacks = [f"httptools_impl.{name}" for name in ("STATUS_LINE", "HttpToolsProtocol", "RequestResponseCycle",
                                                   "HEADER_RE", "HEADER_VALUE_RE")
             if not hasattr(httptools_impl, name)]
    if lacks:
        return lacks
    params = ["scope", "transport", "flow", "logger", "access_logger", "access_log", "default_headers",
              "message_event", "expect_100_continue", "keep_alive", "on_response"]
    if list(inspect.signature(RequestResponseCycle.__init__).parameters)[1:] != params:
        return [f"RequestResponseCycle({', '.join(params)})"]
    for method in ("on_headers_complete", "connection_lost", "on_response_complete", "on_message_begin",
                   "on_message_complete", "send_400_response", "data_received", "connection_made"):
        if not hasattr(httptools_impl.HttpToolsProtocol, method):
            lacks.append(f"HttpToolsProtocol.{method}")
    cycle, transport = _cycle(keep_alive=False)
    for name in ("scope", "transport", "flow", "access_log", "default_headers", "message_event", "on_response",
                 "disconnected", "keep_alive", "waiting_for_100_continue", "response_started", "response_complete",
                 "chunked_encoding"):
        if not hasattr(cycle, name):
            lacks.append(f"RequestResponseCycle.{name}")
    if not hasattr(cycle.flow, "write_paused"):
        lacks.append("FlowControl.write_paused")
    if not lacks:
        async def start() -> None:
            cycle.scope.update(type="http", headers=[], http_version="1.1", path="/")  # type: ignore[typeddict-item]
            await cycle.send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[arg-type]
            cycle.transport.flush()  # type: ignore[attr-defined]

        asyncio.run(start())
        if b"connection: close\r\n" not in b"".join(transport.writes):
            lacks.append("send writing 'connection: close' for a request cycle that is not keep-alive (as since 0.53)")
    return lacks


def test_installed_uvicorn_has_what_the_protocol_relies_on() -> None:
    """GatewayHttpProtocol and the direct writes use uvicorn internals, not its public API: a uvicorn
    outside the range pinned in pyproject.toml may lack them."""
    import uvicorn

    lacks = _uvicorn_lacks()
    assert not lacks, (f"uvicorn {uvicorn.__version__} lacks what proxy/uvicorn_protocol.py relies on: "
                       f"{'; '.join(lacks)}. Use a uvicorn in the range pinned in pyproject.toml, or adapt "
                       "the module to this version and widen the range.")


def _serve_one(app, request: bytes = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", leave: bool = False) -> FakeTransport:
    """``request`` through a GatewayHttpProtocol on a fake connection, served by ``app`` until it
    returns; with ``leave``, the client hangs up once the app has started."""
    import uvicorn
    from uvicorn.server import ServerState

    from proxy.uvicorn_protocol import GatewayHttpProtocol

    async def main() -> FakeTransport:
        config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning", access_log=False)
        protocol = GatewayHttpProtocol(config, ServerState(), {})
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request)
        await asyncio.sleep(0)
        if leave:
            protocol.connection_lost(None)
        await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)
        if not leave:
            protocol.connection_lost(None)
        return transport

    return asyncio.run(main())


def test_the_protocol_puts_its_extensions_in_each_scope() -> None:
    """Fed a request, GatewayHttpProtocol hands the app a scope with both extensions, whose cycle
    writes through a HeadWithBody, and tells the registered callback of a hang-up."""
    from proxy.uvicorn_protocol import on_disconnect

    seen: list = []

    async def app(scope, receive, send) -> None:
        left = asyncio.Event()
        on_disconnect(scope, left.set)
        cycle = scope["extensions"][DIRECT_WRITE]()
        seen.extend([type(cycle), type(cycle.transport), type(scope["extensions"][ON_DISCONNECT])])
        await asyncio.wait_for(left.wait(), 5)  # the client leaves before an answer
        seen.append("left")

    _serve_one(app, leave=True)
    assert seen == [RequestResponseCycle, HeadWithBody, ClientLeft, "left"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_served_request_leaves_no_reference_loop(stream: bool) -> None:
    """The scope's extensions do not keep its request cycle alive: once served, a request's objects
    go when the last reference does, not at the garbage collector's next pass."""
    import gc

    from proxy.uvicorn_protocol import direct_body

    cycles: list = []

    class Relay:  # keeps its DirectBody, as StreamRelay does
        direct: DirectBody | None = None

        async def events(self, body: DirectBody | None):
            assert body is not None
            self.direct = body
            yield b"data: 1\n\n"
            body.end(b"data: [DONE]\n\n")

    async def on_close(disconnected: bool) -> None:
        pass

    async def app(scope, receive, send) -> None:
        cycles.append(weakref.ref(scope["extensions"][DIRECT_WRITE]()))
        if stream:
            assert direct_body(scope) is not None
            await SSEResponse({}, Relay().events, on_close)(scope, receive, send)
        else:
            assert write_whole(scope, 200, {"x-a": "1"}, "application/json", b"{}")

    gc.disable()
    try:
        transport = _serve_one(app, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert transport.closed and transport.writes[-1].endswith(b"0\r\n\r\n" if stream else b"\r\n\r\n{}")
        assert len(cycles) == 1 and cycles[0]() is None
    finally:
        gc.enable()


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


def test_header_checks_refuse_exactly_the_bytes_uvicorn_refuses() -> None:
    """Names: also uppercase letters, which uvicorn would lower (such a head goes through uvicorn)."""
    for c in range(256):
        one = bytes([c])
        assert (one.translate(_NAME_OK) == one) == (HEADER_RE.search(one) is None and not one.isupper()), c
        assert (one.translate(_VALUE_OK) == one) == (HEADER_VALUE_RE.search(one) is None), c


class FakeTransport(Recorder):
    def get_extra_info(self, name: str) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(method: str = "POST", keep_alive: bool = True, defaults: list[tuple[bytes, bytes]] | None = None,
           expect_100: bool = False, on_response=lambda: None) -> tuple[RequestResponseCycle, FakeTransport]:
    """A request cycle of uvicorn's, writing through HeadWithBody as GatewayHttpProtocol sets it up."""
    transport = FakeTransport()
    log = logging.getLogger("test")
    cycle = RequestResponseCycle({"method": method}, HeadWithBody(transport),  # type: ignore[arg-type]
                                 FlowControl(transport), log, log, False, defaults or [],  # type: ignore[arg-type]
                                 asyncio.Event(), expect_100, keep_alive, on_response)
    return cycle, transport


def _scope(cycle: RequestResponseCycle) -> dict:
    """The scope GatewayHttpProtocol gives the app for ``cycle``: with both extensions."""
    return {"type": "http", "extensions": {DIRECT_WRITE: weakref.ref(cycle), ON_DISCONNECT: ClientLeft()}}


def _answer(direct: bool, keep_alive: bool, status: int, headers: dict[str, str]) -> tuple:
    """What the client gets for one AccountedResponse, and the state the request cycle is left in:
    through write_whole (``direct``: the scope has the extensions), or through uvicorn's ``send`` as
    under any other server."""
    async def main() -> tuple:
        done: list[str] = []
        cycle, transport = _cycle(keep_alive=keep_alive, on_response=lambda: done.append("next request"),
                                  defaults=[(b"server", b"uvicorn"), (b"date", b"Wed, 02 Dec 2026 02:30:00 GMT")])

        response = AccountedResponse(lambda: done.append("accounted"), b'{"ok":true}', status, dict(headers))
        scope = _scope(cycle) if direct else {"type": "http"}
        try:
            await response(scope, None, cycle.send)  # type: ignore[arg-type]
        except (RuntimeError, UnicodeEncodeError) as exc:
            done.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(0)
        return (b"".join(transport.writes), transport.closed, cycle.response_complete, cycle.keep_alive,
                cycle.message_event.is_set(), done)

    return asyncio.run(main())


ANSWERS = [
    (True, 200, {"x-request-id": "req_1", "x-gateway-provider": "fake", "x-ratelimit-remaining-tokens": "99"}),
    (False, 200, {"x-request-id": "req_2"}),  # an HTTP/1.0 client: connection: close, and the connection closes
    (True, 200, {}),
    (True, 200, {"x-1": "a", "x-2": ""}),  # no cased letter in the names; an empty value
    (True, 429, {"retry-after": "1", "X-RateLimit-Limit-Requests": "5"}),  # names are lowercased
    (True, 200, {"x-gateway-upstream-model": "caf\u00e9\tv2"}),  # Latin-1 and a tab are fine in a value
    (True, 200, {"x-gateway-upstream-model": "\u6a21\u578b"}),  # not Latin-1: Starlette's own error
    (True, 200, {"x-gateway-upstream-model": "a\r\nx-injected: 1"}),  # uvicorn's own error
    (True, 200, {"x-bad name": "1"}),  # uvicorn's own error
]


@pytest.mark.parametrize("keep_alive,status,headers", ANSWERS)
def test_a_whole_answer_written_directly_is_what_uvicorn_would_write(keep_alive, status, headers) -> None:
    direct = _answer(True, keep_alive, status, headers)
    assert direct == _answer(False, keep_alive, status, headers)
    assert "accounted" in direct[-1]


def test_write_whole_takes_the_answers_it_can_write_and_leaves_the_rest() -> None:
    async def main() -> list[bool]:
        out = []
        for method, headers in [("POST", {"x-a": "1"}), ("HEAD", {"x-a": "1"}), ("POST", {"connection": "close"}),
                                ("POST", {"x-a": "\x00"})]:
            cycle, transport = _cycle(method)
            taken = write_whole(_scope(cycle), 200, headers, "application/json", b"{}")
            out.append(taken)
            assert (transport.writes == [b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n"
                                         b"content-type: application/json\r\n\r\n{}"]) == taken
        return out

    assert asyncio.run(main()) == [True, False, False, False]


def test_a_whole_answer_follows_a_held_100_continue() -> None:
    """A client that sent `Expect: 100-continue` gets uvicorn's interim answer (written, and held, when the
    app reads the body) before the final one, never after it."""
    async def main() -> list[bytes]:
        cycle, transport = _cycle(expect_100=True)
        cycle.body, cycle.more_body = bytearray(b"{}"), False
        cycle.message_event.set()
        await cycle.receive()  # writes "100 Continue" through HeadWithBody, which holds it
        assert write_whole(_scope(cycle), 200, {}, "application/json", b"{}")
        await asyncio.sleep(0)  # the held bytes' flush finds nothing left
        return transport.writes

    assert b"".join(asyncio.run(main())) == (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                                            b"content-type: application/json\r\n\r\n{}")


def test_start_chunked_takes_the_streams_it_can_start_and_leaves_the_rest() -> None:
    async def main() -> list[tuple[bool, bool | None, list[bytes]]]:
        out = []
        cases = [("POST", {"x-a": "1"}), ("HEAD", {"x-a": "1"}), ("POST", {"transfer-encoding": "gzip"})]
        for method, headers in cases:
            cycle, transport = _cycle(method)
            taken = start_chunked(_scope(cycle), 200, headers)
            await asyncio.sleep(0)  # a head alone goes out at the end of the step
            out.append((taken, cycle.chunked_encoding, transport.writes))
        return out

    assert asyncio.run(main()) == [(True, True, [b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"]),
                                   (False, None, []), (False, None, [])]


def _stream(direct: bool, keep_alive: bool, headers: dict[str, str], ends_itself: bool = False) -> tuple:
    """What the client gets for one SSEResponse of two events, and the state the request cycle is
    left in: with the head built by start_chunked (``direct``), or through uvicorn's ``send``. With
    ``ends_itself`` the body writes its last event with ``DirectBody.end`` where it can."""
    async def main() -> tuple:
        closed: list[bool | str] = []
        cycle, transport = _cycle(keep_alive=keep_alive, defaults=[(b"server", b"uvicorn")],
                                  on_response=lambda: closed.append("next request"))

        async def never() -> dict:
            await asyncio.Event().wait()
            return {}

        async def events(body: DirectBody | None):
            yield b"data: 1\n\n"
            if ends_itself and body is not None and body.ready():
                body.end(b"data: [DONE]\n\n")
            else:
                yield b"data: [DONE]\n\n"

        async def on_close(disconnected: bool) -> None:
            closed.append(disconnected)

        response = SSEResponse(dict(headers), events, on_close)
        try:
            scope = _scope(cycle) if direct else {"type": "http"}
            await response(scope, never, cycle.send)  # type: ignore[arg-type]
        except RuntimeError as exc:
            closed.append(str(exc))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return b"".join(transport.writes), transport.closed, cycle.response_complete, closed

    return asyncio.run(main())


@pytest.mark.parametrize("keep_alive,headers", [
    (True, {"x-request-id": "req_1", "x-gateway-overhead-ms": "0.100", "x-ratelimit-reset-tokens": "0s"}),
    (False, {"x-request-id": "req_2"}),
    (True, {"x-gateway-upstream-model": "caf\u00e9 \u6a21\u578b"}),  # the SSE response sends values as UTF-8
    (True, {"x-gateway-upstream-model": "a\r\nx-injected: 1"}),  # uvicorn's own error
])
def test_a_stream_head_written_directly_is_what_uvicorn_would_write(keep_alive, headers) -> None:
    direct = _stream(True, keep_alive, headers)
    assert direct == _stream(False, keep_alive, headers)
    if "x-request-id" in headers:
        assert direct[0].count(b"transfer-encoding: chunked") == 1 and direct[0].endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_stream_ended_by_its_last_piece_is_what_uvicorn_would_write(keep_alive) -> None:
    """DirectBody.end writes the last piece with the terminator and completes the request cycle
    exactly as a last piece and a final empty message through ``send`` do."""
    headers = {"x-request-id": "req_1"}
    ended = _stream(True, keep_alive, headers, ends_itself=True)
    assert ended == _stream(False, keep_alive, headers, ends_itself=True)
    assert ended == _stream(True, keep_alive, headers)
    assert ended[0].endswith(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n") and ended[-1] == ["next request", False]


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
