"""uvicorn's httptools protocol, with each response's head sent together with its first body bytes,
and two ASGI scope extensions that let the gateway's responses skip the per-message ASGI work.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and the
body with the next message: two writes, and two wake-ups for the client. Here each request cycle
writes through a ``HeadWithBody`` that holds the head until the first body write joins it; a head
whose body is not ready within the same event-loop step (a stream still waiting on its upstream) goes
out alone at the end of that step, so nothing waits on it.

Every request's scope carries two extensions, the way a server advertises ``http.response.pathsend``:

``scope["extensions"]["gateway.direct_write"]``: a weak reference to the request's uvicorn
``RequestResponseCycle``, opaque to the app (weak, because the cycle holds the scope: a reference loop
would leave every request's objects to the garbage collector). Through it ``write_whole`` sends a
whole answer in one write, ``start_chunked`` starts a stream, and ``direct_body`` writes a stream's
bytes from any callback (an upstream connection's data callback), none of them through ``send``. It
is only valid with the server's own ``send``: a middleware that wraps ``send`` must remove it
(``NoDirectWrites`` does), or the response would bypass that middleware.

``scope["extensions"]["gateway.on_disconnect"]``: a ``ClientLeft``. ``on_disconnect`` registers a
callable with it that the protocol calls from ``connection_lost`` if the client hangs up before the
response is complete, which costs nothing per request, unlike a task waiting on ``receive()``. It stays
valid behind any middleware.

Under any other server neither extension is there and the helpers say so (None or False): the
responses then go through ``send``, and a hang-up is noticed through ``receive()``.

The helpers copy what uvicorn's ``send`` does with its internals, so pyproject.toml pins the uvicorn
versions they were checked against (tests/test_server_protocol.py fails if one goes missing).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from proxy.connection_limits import (
    ConnectionLimits,
    body_timeout,
    error_body,
    header_timeout,
    invalid_http,
    too_many_connections,
)

DIRECT_WRITE = "gateway.direct_write"  # extension: a weak reference to the request's uvicorn cycle
ON_DISCONNECT = "gateway.on_disconnect"  # extension: a ClientLeft, to be told of a hang-up

# Translation tables that keep every byte uvicorn's HEADER_RE (names) and HEADER_VALUE_RE (values) let
# through and change every byte they refuse: a header passes if translating leaves it as it was. Names
# must also be lowercase already (ours are), so they are written as they are; uvicorn lowers the rest.
_NAME_OK = bytes(c if c >= 0x20 and c != 0x7F and chr(c) not in '()<>@,;:[]={} \t\\"' and not 0x41 <= c <= 0x5A
                 else c ^ 1 for c in range(256))
_VALUE_OK = bytes(c if (c >= 0x20 or c == 0x09) and c != 0x7F else c ^ 1 for c in range(256))
_FRAMING_BYTES = (b"content-length", b"transfer-encoding", b"connection")  # headers that change uvicorn's framing


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
    any callback, so a relay can forward an upstream's bytes from that connection's data callback
    without a coroutine and a message per chunk. Only ``ready`` while that is safe; ``send`` stays the
    way to wait for a slow client. ``end`` ends the response with its last piece; a response not ended
    that way ends with ``send``."""

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
        ``send`` with ``more_body`` False would, which saves the client a wake-up for an empty final
        message. (Nothing is written if the client is gone.)"""
        c = self.cycle
        if c.disconnected:
            return
        c.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
        c.response_complete = True
        c.message_event.set()
        if not c.keep_alive:
            c.transport.close()
        c.on_response()


class ClientLeft:
    """The ``gateway.on_disconnect`` extension of one request: ``left`` once the client hung up before
    the response was complete, and the callable to tell then (see ``on_disconnect``)."""

    __slots__ = ("callback", "left")

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None
        self.left = False

    def client_left(self) -> None:
        """Called by the protocol when the connection is lost mid-request; calls the callback once."""
        self.left = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


def on_disconnect(scope: Any, callback: Callable[[], None] | None) -> bool:
    """Have the server call ``callback`` once if the client hangs up before the response is complete
    (at once if it already has); it replaces any callback registered before for this request, and
    None withdraws it. False if the server offers no such hook: then only ``receive()`` tells of a
    hang-up."""
    extensions = scope.get("extensions")
    hook = extensions.get(ON_DISCONNECT) if extensions else None
    if hook is None:
        return False
    if not hook.left:
        hook.callback = callback
    elif callback is not None:
        callback()
    return True


def _cycle(scope: Any) -> RequestResponseCycle | None:
    extensions = scope.get("extensions")
    ref = extensions.get(DIRECT_WRITE) if extensions else None
    return ref() if ref is not None else None


def direct_body(scope: Any) -> DirectBody | None:
    """A ``DirectBody`` when the request's scope has the ``gateway.direct_write`` extension, else
    None: then every chunk goes through ``send``."""
    cycle = _cycle(scope)
    return DirectBody(cycle) if cycle is not None else None


def _startable(scope: Any, status: int) -> RequestResponseCycle | None:
    """The request cycle of the ``gateway.direct_write`` extension if the response can start now
    with a head built here, else None."""
    cycle = _cycle(scope)
    if cycle is None:
        return None
    if (cycle.response_started or cycle.disconnected or cycle.flow.write_paused or cycle.access_log
            or cycle.scope["method"] == "HEAD" or status < 200 or status in (204, 304)):
        return None
    if any(name.lower() in _FRAMING_BYTES for name, _ in cycle.default_headers):
        return None
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
    defaults = b"".join([name.lower() + b": " + value + b"\r\n" for name, value in cycle.default_headers])
    head = [STATUS_LINE[status], defaults]  # uvicorn's own lines (server, date): _startable checked them
    if headers:  # the lines joined in C, not one f-string each
        head.append(("\r\n".join(map(": ".join, headers.items())) + "\r\n").encode(encoding))
    head.append(framing)
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    return b"".join(head)


def write_whole(scope: Any, status: int, headers: dict[str, str], content_type: str, body: bytes) -> bool:
    """Send a complete response (``headers`` plus content-length and content-type) in one write and
    end the request cycle, exactly as uvicorn's ``send`` would for Starlette's ``Response``, when the
    scope has the ``gateway.direct_write`` extension and the response can start now; else False, and
    nothing was done (the caller then goes through ``send``, which also raises uvicorn's errors for a
    header it refuses). Building the head from the dict here skips the per-header work of the ASGI
    path: Starlette's bytes pairs and uvicorn's two regex searches per header."""
    cycle = _startable(scope, status)
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


def start_chunked(scope: Any, status: int, headers: dict[str, str]) -> bool:
    """Start a chunked response (a stream) with ``headers`` (UTF-8, as ``SSEResponse`` encodes them),
    as uvicorn's ``send`` of ``http.response.start`` would, when the scope has the
    ``gateway.direct_write`` extension and the response can start now; else False, and nothing was
    done. The body then goes through ``send`` or a ``DirectBody``; the head waits in ``HeadWithBody``
    for its first bytes."""
    cycle = _startable(scope, status)
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


class NoDirectWrites:
    """ASGI middleware for the outside of a stack whose middleware wrap ``send``: it removes the
    ``gateway.direct_write`` extension, so every response goes through them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        extensions = scope.get("extensions")
        if extensions and DIRECT_WRITE in extensions:
            scope = {**scope, "extensions": {k: v for k, v in extensions.items() if k != DIRECT_WRITE}}
        await self.app(scope, receive, send)


class AnswerErrors:
    """The app as GatewayHttpProtocol runs it: an exception never costs the client its connection.

    uvicorn closes the connection when the app raises, even after a complete answer (Starlette's error
    middleware re-raises once it has sent its 500), which drops any pipelined request behind it; and
    for an app that raises or returns before answering it writes a text/plain 500 with
    ``connection: close``. Here a complete answer keeps the connection, and a missing one becomes an
    OpenAI-shaped 500 on a connection that stays open. Only an answer cut mid-way, whose framing is
    broken, still closes it (uvicorn does that)."""

    __slots__ = ("app", "logger")

    def __init__(self, app: Any, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            cycle = _cycle(scope)
            if cycle is None or (cycle.response_started and not cycle.response_complete and not cycle.disconnected):
                raise
            self.logger.error("Exception in ASGI application", exc_info=exc)
            if not cycle.response_started and not cycle.disconnected:
                await _send_500(send)
            return
        cycle = _cycle(scope)
        if cycle is not None and not cycle.response_started and not cycle.disconnected:
            self.logger.error("ASGI callable returned without starting response.")
            await _send_500(send)


async def _send_500(send: Any) -> None:
    body = error_body("The gateway hit an internal error.", "server_error", "internal_error")
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GatewayHttpProtocol(HttpToolsProtocol):
    """``uvicorn --http`` for ``gateway serve``: httptools, with ``HeadWithBody`` per request cycle
    and the ``gateway.direct_write`` and ``gateway.on_disconnect`` extensions in each scope.

    It also holds clients to ``ConnectionLimits`` (``limits``; ``gateway serve`` passes [server]'s),
    which uvicorn does not: a connection past ``max_connections`` is answered 503 and closed at once
    (uvicorn's ``limit_concurrency`` still keeps such sockets open); one that sends nothing is closed
    after ``idle_timeout_s`` (uvicorn's keep-alive timeout only starts after a first response, and is
    set to the same value here); a request's headers must be complete within ``header_timeout_s`` of
    its first byte and its body within ``body_timeout_s`` of the headers, else a 408 ends the
    connection. One timer at a time does all three, since the phases follow each other on the wire.
    Malformed HTTP and app errors are answered in OpenAI's error format (``AnswerErrors``)."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.access_log is False:  # uvicorn asks the logger instead, which others may give handlers
            self.access_log = False
        self.limits = limits or ConnectionLimits()
        self.timeout_keep_alive = self.limits.idle_timeout_s  # type: ignore[assignment]
        self.app = AnswerErrors(self.app, self.logger)
        self.deadline: asyncio.TimerHandle | None = None
        # The part of a request still due (headers or body): when, and what to do if it is late. Its timer
        # is armed only when a read ends with the part still missing, so a request that arrives in one
        # read (the usual case) costs no timer at all.
        self.due: tuple[float, Callable[[], None]] | None = None
        self.refused = False

    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        self.due = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expect(self, seconds: float, expired: Callable[[], None]) -> None:
        """The request's next part must arrive within ``seconds`` (armed by ``data_received`` if it has not)."""
        self._disarm()
        self.due = (self.loop.time() + seconds, expired)

    def _answering(self) -> bool:
        """Whether a response on this connection is still being written (the app is on it)."""
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.refused = True  # never joins ``connections``: its descriptor is released right away
            self.transport = transport
            transport.write(too_many_connections(self.limits.max_connections))
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self.limits.idle_timeout_s, self._idle_expired)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)
        due = self.due
        if due is not None and self.deadline is None and not self.transport.is_closing():
            self.deadline = self.loop.call_at(*due)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        hook = None
        if cycle is not None and not cycle.response_complete:
            extensions = cycle.scope.get("extensions")
            hook = extensions.get(ON_DISCONNECT) if extensions else None
        super().connection_lost(exc)
        if hook is not None:  # after uvicorn marked the cycle disconnected: sends are dropped from now on
            hook.client_left()

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        if self._answering():  # a bad request behind one in progress: that one finishes, then the connection ends
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(invalid_http(msg))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect(self.limits.header_timeout_s, self._headers_expired)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()  # builds the cycle and creates its task, which has not run yet
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new cycle, not an upgrade's
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]
            scope: Any = cycle.scope
            ours = {DIRECT_WRITE: weakref.ref(cycle), ON_DISCONNECT: ClientLeft()}
            extensions = scope.get("extensions")
            scope["extensions"] = {**extensions, **ours} if extensions else ours
            if not (self.pipeline and self.pipeline[0][0] is cycle):  # a queued one's clock starts with it
                self._expect(self.limits.body_timeout_s, self._body_expired)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        queued = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        if queued is not None and queued.more_body and not self.transport.is_closing():
            self._arm(self.limits.body_timeout_s, self._body_expired)  # it started: its body may come now

    def _idle_expired(self) -> None:
        self.deadline = self.due = None
        if not self._answering():
            self.transport.close()

    def _headers_expired(self) -> None:
        self.deadline = self.due = None
        if self._answering():  # the partial request behind it is dropped once that answer is out
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(header_timeout(self.limits.header_timeout_s))
        self.transport.close()

    def _body_expired(self) -> None:
        self.deadline = self.due = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()  # answered already (say a 401 before the body): no reason to wait for it
            return
        if cycle.response_started:
            cycle.keep_alive = False  # the answer under way finishes, then the connection ends
            self.flow.pause_reading()
            return
        # The app is waiting in receive(): it sees a disconnect (its row says 499), and writes nothing more.
        cycle.response_started = True
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.write(body_timeout(self.limits.body_timeout_s))
        self.transport.close()
