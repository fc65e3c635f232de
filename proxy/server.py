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

It also tells a request that its client hung up before the response was complete: the app puts a
callable under ``ON_DISCONNECT`` in the request's scope, and the protocol calls it from
``connection_lost``. That costs nothing per request, unlike a task watching ``receive()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

ON_DISCONNECT = "gateway.on_disconnect"  # scope key: called once if the client leaves mid-request


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
    any callback. Only ``ready`` while that is safe; ``send`` stays the way to wait for a slow client
    and to end the response."""

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


def direct_body(send: Any) -> DirectBody | None:
    """A ``DirectBody`` when ``send`` is the ``send`` of a request served by ``GatewayHttpProtocol``
    with no middleware in between, else None: then every chunk goes through ``send``. (A request of
    ours is one whose cycle writes through a ``HeadWithBody``; only that protocol calls the scope's
    ``ON_DISCONNECT`` hook.)"""
    cycle = getattr(send, "__self__", None)
    if isinstance(cycle, RequestResponseCycle) and isinstance(cycle.transport, HeadWithBody):
        return DirectBody(cycle)
    return None


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
