"""uvicorn's httptools protocol, with each response's head sent together with its first body bytes.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and the
body with the next message: two sends, two TCP segments and, on the client's side, two wake-ups per
response (measured: 5-7% of the gateway's CPU per proxied request, and 0.1-0.4 ms of a stream's time
to first token on this machine). Here each request cycle writes through a ``HeadWithBody`` that
holds the head until the first body write joins it; a head whose body is not ready within the same
event-loop step (a stream still waiting on its upstream) goes out alone at the end of that step, so
nothing waits on it.

For streams, ``DirectBody`` writes body bytes without an ASGI ``send`` (a coroutine, a message dict
and uvicorn's checks per chunk), so a relay can forward an upstream's bytes from the upstream
connection's own data callback.

A whole-body answer of the proxy endpoints goes out through ``write_whole``: its head is built from the
header dict in one pass and written with the body in one write, where the ASGI path turns each header
into a bytes pair (Starlette) and then checks each with two regex searches (uvicorn). Measured by
instruction count (callgrind, c=16): each response header cost about 9,000 instructions that way, and
a governed answer carries 16.

It also tells a request that its client hung up before the response was complete: the app puts a
callable under ``ON_DISCONNECT`` in the request's scope, and the protocol calls it from
``connection_lost``. That costs nothing per request, unlike a task watching ``receive()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

ON_DISCONNECT = "gateway.on_disconnect"  # scope key: called once if the client leaves mid-request

# Translation tables that keep every byte uvicorn's HEADER_RE (names) and HEADER_VALUE_RE (values) let
# through and change every byte they refuse: a header passes if translating leaves it as it was. Names
# must also be lowercase already (ours are), so they are written as they are; uvicorn lowers the rest.
_NAME_OK = bytes(c if c >= 0x20 and c != 0x7F and chr(c) not in '()<>@,;:[]={} \t\\"' and not 0x41 <= c <= 0x5A
                 else c ^ 1 for c in range(256))
_VALUE_OK = bytes(c if (c >= 0x20 or c == 0x09) and c != 0x7F else c ^ 1 for c in range(256))
_FRAMING_BYTES = (b"content-length", b"transfer-encoding", b"connection")  # headers that change uvicorn's framing
# The last default-header list seen to hold none of them, and its lines as written.
_plain_defaults: list[Any] = [None, b""]


class HeadWithBody:
    """What a request cycle writes through: the real transport, but the first write (the head) is
    held until the next write or the end of the current event-loop step, whichever comes first."""

    __slots__ = ("transport", "head", "started")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.started = False

    def write(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self.head = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        self.transport.write(data)

    def write_all(self, data: bytes) -> None:
        """A whole response (head and body) at once, after anything still held (a "100 Continue"
        that uvicorn wrote when the app read the body goes first)."""
        self.started = True
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        self.transport.write(data)

    def flush(self) -> None:
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class DirectBody:
    """Body bytes of a started chunked response, written as uvicorn's ``send`` would write them but from
    any callback. Only ``ready`` while that is safe; ``send`` stays the way to wait for a slow client.
    ``end`` ends the response with its last piece; a response not ended that way ends with ``send``."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

    def ready(self) -> bool:
        c = self.cycle
        return (c.response_started and c.chunked_encoding is True and not c.response_complete
                and not c.disconnected and not c.flow.write_paused)

    def write(self, data: bytes) -> bool:
        """Write one piece now (dropped if the client is gone); whether the client takes more now."""
        c = self.cycle
        if c.disconnected:
            return False
        c.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return not c.flow.write_paused

    def end(self, data: bytes) -> None:
        """Write the last piece and the chunked terminator in one write and complete the response, as
        ``send`` with ``more_body`` False would: one write and one client wake-up less per stream
        than a last piece and an empty final message. (Nothing is written if the client is gone.)"""
        c = self.cycle
        if c.disconnected:
            return
        c.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
        c.response_complete = True
        c.message_event.set()
        if not c.keep_alive:
            c.transport.close()
        c.on_response()


def direct_body(send: Any) -> DirectBody | None:
    """A ``DirectBody`` when ``send`` is the ``send`` of a request served by ``GatewayHttpProtocol``
    with no middleware in between, else None: then every chunk goes through ``send``. (A request of
    ours is one whose cycle writes through a ``HeadWithBody``; only that protocol calls the scope's
    ``ON_DISCONNECT`` hook.)"""
    cycle = getattr(send, "__self__", None)
    if isinstance(cycle, RequestResponseCycle) and isinstance(cycle.transport, HeadWithBody):
        return DirectBody(cycle)
    return None


def _startable(send: Any, status: int) -> RequestResponseCycle | None:
    """The request cycle behind ``send`` if it is one of ``GatewayHttpProtocol``'s whose response can
    start now with a head built here, else None."""
    cycle = getattr(send, "__self__", None)
    if not (isinstance(cycle, RequestResponseCycle) and isinstance(cycle.transport, HeadWithBody)):
        return None
    if (cycle.response_started or cycle.disconnected or cycle.flow.write_paused or cycle.access_log
            or cycle.scope["method"] == "HEAD" or status < 200 or status in (204, 304)):
        return None
    if cycle.default_headers is not _plain_defaults[0]:  # uvicorn's list: a new one each second (date)
        if any(name.lower() in _FRAMING_BYTES for name, _ in cycle.default_headers):
            return None
        _plain_defaults[:] = cycle.default_headers, b"".join(
            [name.lower() + b": " + value + b"\r\n" for name, value in cycle.default_headers])
    return cycle


def _head(cycle: RequestResponseCycle, status: int, headers: dict[str, str], encoding: str,
          framing: bytes) -> bytes | None:
    """The head uvicorn would write for ``headers`` (encoded as the ASGI side would have: Starlette
    uses Latin-1, our SSE response UTF-8), ``framing`` before the blank line; None if a header is one
    this cannot vouch for."""
    try:
        names = "".join(headers).encode(encoding)
        values = "".join(headers.values()).encode(encoding)
    except UnicodeEncodeError:
        return None
    if (names.translate(_NAME_OK) != names or values.translate(_VALUE_OK) != values
            or "content-length" in headers or "transfer-encoding" in headers or "connection" in headers):
        return None  # an uppercase name, a refused byte, or a framing header (uvicorn would frame by it)
    head = [STATUS_LINE[status], _plain_defaults[1]]  # this cycle's default lines: _startable just checked
    if headers:  # the lines joined in C, not one f-string each
        head.append(("\r\n".join(map(": ".join, headers.items())) + "\r\n").encode(encoding))
    head.append(framing)
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    return b"".join(head)


def write_whole(send: Any, status: int, headers: dict[str, str], content_type: str, body: bytes) -> bool:
    """Send a complete response (``headers`` plus content-length and content-type) and end the request
    cycle, exactly as uvicorn's ``send`` would for Starlette's ``Response``, when ``send`` is a cycle of
    ``GatewayHttpProtocol`` that can take it now; else False, and nothing was done (the caller then
    goes through ``send``, which also raises uvicorn's errors for a header it refuses)."""
    cycle = _startable(send, status)
    if cycle is None or content_type.startswith("text/"):  # Starlette would add a charset
        return False
    framing = b"content-length: %d\r\ncontent-type: %s\r\n" % (len(body), content_type.encode("latin-1"))
    head = _head(cycle, status, headers, "latin-1", framing)
    if head is None:
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = False
    cycle.transport.write_all(head + b"\r\n" + body)
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def start_chunked(send: Any, status: int, headers: dict[str, str]) -> bool:
    """Start a chunked response (a stream) with ``headers`` (UTF-8, as ``SSEResponse`` encodes them),
    as uvicorn's ``send`` of ``http.response.start`` would, when ``send`` is a cycle of
    ``GatewayHttpProtocol`` that can take it now; else False, and nothing was done. The body then goes
    through ``send`` or a ``DirectBody``; the head waits in ``HeadWithBody`` for its first bytes."""
    cycle = _startable(send, status)
    if cycle is None:
        return False
    head = _head(cycle, status, headers, "utf-8", b"")
    if head is None:
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = True
    cycle.transport.write(head + b"transfer-encoding: chunked\r\n\r\n")
    return True


class GatewayHttpProtocol(HttpToolsProtocol):
    """``uvicorn --http`` for ``gateway serve``: httptools, with ``HeadWithBody`` per request cycle
    and the scope's ``ON_DISCONNECT`` hook."""

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        hook = cycle.scope.pop(ON_DISCONNECT, None) if cycle is not None and not cycle.response_complete else None
        super().connection_lost(exc)
        if hook is not None:
            hook()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]
