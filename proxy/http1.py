"""A minimal HTTP/1.1 client for upstream calls: keep-alive pool, httptools parser, one write per request.

Why not a general-purpose client: most of a proxy's own CPU goes to its HTTP client, and this one
does only what an upstream LLM API needs: POST a body, read a JSON body or a stream, reuse
connections, honour timeouts, and close the connection when the caller abandons a stream.

Failures raise ``OSError`` subclasses: ``NotSent`` when no byte of the request reached the upstream
(connect refused or timed out, proxy or TLS handshake failed; the cause is chained), ``ConnectionError``
for disconnects and malformed answers after that, ``TimeoutError`` for a silent upstream, and
``ResponseTooLarge`` for a whole body past the provider's cap. Proxies and TLS settings: proxy.http1_connect.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from proxy.http1_connect import NotSent, Reach, decoder, default_tls, open_tunnel
from proxy.http1_upload import request_streamed

IDLE_KEEP_S = 30.0  # drop pooled connections idle for longer (servers often close at 5-75 s)
MAX_IDLE = 1000  # pooled connections per host
HIGH_WATER = 1 << 20  # pause reading a stream once this much is buffered and unread (not a whole-body read)
# Each relayed piece costs a read and a write whatever its size, so a burst (a read holding more than
# one of the upstream's chunks, or coming less than BURST_GAP_S after the previous one) is relayed in
# fewer, larger pieces: the connection rests BURST_REST_S before reading again. The chunk count
# catches a burst on a busy loop, whose reads come further apart than the gap. A real model's tokens
# come milliseconds apart and never wait; neither do a stream's first event (pacing starts at
# HttpStream.relaying) and whole-body answers; an event of a burst waits at most BURST_REST_S.
BURST_GAP_S = 0.0003
BURST_REST_S = 0.001  # the shortest rest: the loop's timers have 1 ms resolution


class UpstreamClosed(ConnectionError):
    pass


class ResponseTooLarge(ConnectionError):
    """A body read whole went past the pool's ``max_response_bytes`` (decoded size): the connection is closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


class InvalidTarget(ValueError):
    """A request target that is not an origin-form path of visible ASCII: never sent."""


# origin-form: a path of visible ASCII, so no space, CR, LF, NUL or non-ASCII can split the request line
_TARGET = re.compile(r"/[\x21-\x7e]*")


class Response:
    """A response whose head has arrived; the body is read with ``read()`` or iterated with ``chunks``."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.error: BaseException | None = None
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], bool] | None = None  # while pushing: where body bytes go at once
        self.relayed = False  # a stream past its first event (HttpStream.relaying): its bursts are paced
        self._whole = False  # read() wants the body to its end: never paused for being unread
        self._limit = HIGH_WATER  # buffered past this: a stream pauses, a whole read fails (then the cap)
        self._sink_error: Exception | None = None
        self._decoder: Any = None  # Content-Encoding: gzip or deflate (zlib's decompressor)

    # fed by the protocol
    def _take(self, parts: list[bytes]) -> None:
        """The body pieces one socket read held (one per chunk of a chunked body)."""
        self._buffer.extend(parts)
        if self._sink is not None:
            return  # delivered once the whole read is parsed: one socket read, one sink call
        self._buffered += sum(map(len, parts))
        if self._buffered > self._limit:
            if self._whole:
                self.conn.abort(ResponseTooLarge(self._limit))
            else:
                self.conn.pause()
        self._wake()

    def _decode(self, encoding: str) -> None:
        """A compressed body: decoded as it arrives (streams too), so the cap counts decoded bytes."""
        if encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
            self._take = self._take_decoded  # type: ignore[method-assign]  # plain bodies keep the plain path

    def _take_decoded(self, parts: list[bytes]) -> None:
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        cap = self.conn.pool.reach.max_response_bytes
        try:
            if self._decoder is None:
                self._decoder = decoder(self.headers.get("content-encoding", ""), data)
            out = self._decoder.decompress(data, cap + 1)
        except zlib.error as exc:
            self.conn.abort(UpstreamClosed(f"undecodable compressed body from upstream: {exc}"))
            return
        if self._decoder.unconsumed_tail or len(out) > cap:  # one read inflating past the cap: a bomb
            self.conn.abort(ResponseTooLarge(cap))
            return
        Response._take(self, [out] if out else [])

    def _deliver(self) -> None:
        """While pushing: give what the last read brought to the sink, in one piece."""
        buffer = self._buffer
        data = b"".join(buffer) if len(buffer) > 1 else buffer[0]
        buffer.clear()
        try:
            if self._sink(data):  # type: ignore[misc]
                return
        except Exception as exc:  # never into the protocol's callback: the pushing task raises it
            self._sink_error = exc
        self._sink = None
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if self.complete:  # failed already (e.g. past the cap while its last read was parsed)
            return
        if self._sink is not None and self._buffer and error is None:
            self._deliver()
        self.complete = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # for the caller
    async def read(self) -> bytes:
        self._whole = True
        self._limit = cap = self.conn.pool.reach.max_response_bytes
        if not self.complete:
            length = self.headers.get("content-length", "")
            if self._buffered > cap or (length.isdigit() and int(length) > cap):
                self.conn.abort(ResponseTooLarge(cap))  # said up front: not read at all
            else:
                self.conn.resume()  # paused for HIGH_WATER before read() was called
        while not self.complete:
            await self._wait()
        if self.error is not None:
            raise self.error
        return b"".join(self._buffer)  # already decoded, if it was compressed (see _decode)

    @property
    def chunks(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            if self._buffer:
                data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
                self._buffer.clear()
                self._buffered = 0
                if not self.complete:  # else the connection is no longer this response's
                    self.conn.resume()
                yield data
                continue
            if self.complete:
                if self.error is not None:
                    raise self.error
                return
            await self._wait()

    async def push(self, sink: Callable[[bytes], bool]) -> None:
        """Hand body bytes to ``sink`` straight from the connection's data callback: no task switch,
        future or generator step per read. Returns once ``sink`` returned False (it has taken that
        piece) or raised (raised here), or the body ended or failed; reading then goes on with
        ``chunks``, which also sees the end or the failure."""
        if self._buffer or self.complete:
            return
        self._sink = sink
        try:
            while self._sink is not None and not self.complete:
                await self._wait()
        finally:
            self._sink = None
        error, self._sink_error = self._sink_error, None
        if error is not None:
            raise error

    async def drain(self, limit_s: float) -> None:
        """Read and drop what is left (e.g. the chunked terminator after [DONE]), so the connection
        can go back to the pool instead of being closed; gives up after ``limit_s``."""
        try:
            async with asyncio.timeout(limit_s):
                while not self.complete:
                    self._buffer.clear()
                    self._buffered = 0
                    self.conn.resume()
                    await self._wait()
        except TimeoutError:
            pass

    def close(self) -> None:
        """Done with the response: a finished one leaves its connection pooled, an unfinished one
        closes it, so the upstream stops generating (and billing)."""
        if not self.complete:
            self.conn.abort(UpstreamClosed("response abandoned"))


class _Conn(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.head: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = True  # False while a streamed request body is being sent: answered then, it is closed
        self.reused = False
        self.got_bytes = False
        self.idle_since = 0.0
        self.read_timeout: float | None = None
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # by flow control: the client is slower than the upstream
        self.resting = False  # between the reads of a burst (see BURST_GAP_S)
        self.relayed_at = 0.0  # perf_counter of the last read of a relayed stream
        # httptools calls on_body once per chunk of a chunked body: a bound list.append makes that a C
        # call, not a Python frame. The pieces go to the response once per read, before it completes.
        self.parts: list[bytes] = []
        self.writable: asyncio.Future[None] | None = None  # set while the transport asks us to stop writing
        self.on_body = self.parts.append
        self.parser = httptools.HttpResponseParser(self)  # after on_body: the parser looks it up once

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.parts.clear()
            self.abort(UpstreamClosed(f"malformed HTTP response from upstream: {exc}"))
            return
        response = self.response
        chunks = len(self.parts)
        if chunks:
            if response is not None:
                response._take(self.parts)
            self.parts.clear()
        if response is not None and response._sink is not None and response._buffer:
            response._deliver()
        if response is not None and response.relayed and self.response is response:  # not yet complete
            self._pace(chunks)

    def _pace(self, chunks: int) -> None:
        now = time.perf_counter()
        burst = chunks > 1 or now - self.relayed_at < BURST_GAP_S
        if burst and not (self.resting or self.paused or self.closed):
            self.resting = True
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.loop.call_later(BURST_REST_S, self._rested)
        self.relayed_at = now

    def _rested(self) -> None:
        self.resting = False
        if not (self.paused or self.closed) and self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()  # a body sender waiting to write sees the close
        self._cancel_timer()
        self.pool.forget(self)
        response = self.response
        if (response is not None and not response.complete and self.head is not None and self.head.done()
                and "content-length" not in response.headers
                and "chunked" not in response.headers.get("transfer-encoding", "").lower()):
            # A body with neither a length nor chunking ends with the connection (RFC 9112 6.3).
            # (httptools has no feed_eof to say so: the close itself completes the response.)
            self.response = None
            response._finish()
        self._fail(UpstreamClosed("upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        encoding = response.headers.get("content-encoding")
        if encoding is not None:
            response._decode(encoding)
        if self.head is not None and not self.head.done():
            self.head.set_result(response)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        keep = self.parser.should_keep_alive()
        if self.parts:
            response._take(self.parts)
            self.parts.clear()
        self.response = None
        self.parser = httptools.HttpResponseParser(self)
        self._cancel_timer()
        response._finish()
        if keep and not self.closed and self.reusable:
            self.resume()  # the last read may have paused it (HIGH_WATER): pooled, it must read again
            self.pool.release(self)
        else:
            self.abort(None)

    # control
    def _fail(self, error: BaseException) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        if self.response is not None and not self.response.complete:
            self.response._finish(error)
        self.response = None

    def abort(self, error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def start(self, request: bytes, read_timeout: float | None,
              total_timeout: float | None) -> asyncio.Future[Response]:
        """Send; ``read_timeout`` bounds each silence, ``total_timeout`` the whole exchange."""
        assert self.transport is not None
        self.response = Response(self)
        self.head = self.loop.create_future()
        self.got_bytes = False
        self.relayed_at = 0.0
        self.read_timeout = read_timeout
        self.last_read = self.loop.time()
        if total_timeout:
            self.timer = self.loop.call_later(total_timeout, self._expire, total_timeout)
        elif read_timeout:
            self.timer = self.loop.call_later(read_timeout, self._check_idle)
        self.transport.write(request)
        return self.head

    def _expire(self, total_timeout: float) -> None:
        self.timer = None
        self.abort(TimeoutError(f"no complete answer from upstream within {total_timeout}s"))

    def _check_idle(self) -> None:
        # One timer per idle period rather than one per read: re-armed for the time still allowed.
        assert self.read_timeout is not None
        if self.paused:  # we stopped reading (the client is slow): the silence is not the upstream's
            self.last_read = self.loop.time()
        left = self.last_read + self.read_timeout - self.loop.time()
        if left <= 0:
            self.timer = None
            self.abort(TimeoutError(f"no data from upstream for {self.read_timeout}s"))
        else:
            self.timer = self.loop.call_later(left, self._check_idle)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, url: str, reach: Reach | None = None) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.reach = reach = reach or Reach()
        self.ssl = (reach.tls or default_tls()) if self.tls else None
        proxy = reach.proxy
        # Plain http through a proxy: each request goes to the proxy in absolute form (RFC 9112 3.2.2);
        # https goes through a CONNECT tunnel, where requests are as if direct.
        self.dial = (proxy.host, proxy.port) if proxy and not self.tls else (self.host, self.port)
        self.target_prefix = f"http://{self.host_header}" if proxy and not self.tls else ""
        self.proxy_head = (f"proxy-authorization: {proxy.authorization}\r\n"
                           if proxy and proxy.authorization and not self.tls else "")
        self.idle: list[_Conn] = []
        self.loop = asyncio.get_running_loop()

    def forget(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def release(self, conn: _Conn) -> None:
        conn.idle_since = self.loop.time()
        conn.reused = True
        if len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.abort(None)

    async def _connect(self, connect_timeout: float | None) -> _Conn:
        """A new connection, TLS handshake done; NotSent (cause chained) if that failed."""
        try:
            async with asyncio.timeout(connect_timeout):
                if self.reach.proxy is not None and self.tls:
                    return await self._tunnel()
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self), *self.dial, ssl=self.ssl, server_hostname=self.host if self.tls else None)
                return conn
        except OSError as exc:  # refused, unreachable, timed out (TimeoutError), ssl.SSLError, proxy refusal
            where = f" via proxy {self.reach.proxy.label}" if self.reach.proxy else ""
            raise NotSent(f"connecting to {self.host}:{self.port}{where} failed: {exc}") from exc

    async def _tunnel(self) -> _Conn:
        assert self.reach.proxy is not None and self.ssl is not None
        raw = await open_tunnel(self.loop, self.reach.proxy, self.host, self.port)
        conn = _Conn(self)
        try:
            transport = await self.loop.start_tls(raw, conn, self.ssl, server_hostname=self.host)
        except BaseException:
            raw.abort()
            raise
        if transport is None:
            raise ConnectionError("TLS inside the proxy tunnel did not start")
        conn.connection_made(transport)
        return conn

    def _pooled(self) -> _Conn | None:
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()  # most recently used first: likeliest to be alive
            if not conn.closed and now - conn.idle_since < IDLE_KEEP_S:
                return conn
            conn.abort(None)
        return None

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes | AsyncIterable[bytes], connect_timeout: float | None,
                      read_timeout: float | None, total_timeout: float | None = None) -> Response:
        """Send; return once the response head is in. The caller reads the body and calls close().
        ``read_timeout`` bounds each silence (streams), ``total_timeout`` the exchange after connecting.
        ``body`` may be an async iterable of bytes (see ``_request_streamed``)."""
        if not _TARGET.fullmatch(target):  # proxy.request_target vets URLs; this keeps any caller honest
            raise InvalidTarget(f"refusing to send request target {target!r}")
        if not isinstance(body, bytes):
            return await request_streamed(self, method, target, headers, body, connect_timeout, read_timeout,
                                          total_timeout)
        head = [f"{method} {self.target_prefix}{target} HTTP/1.1\r\nhost: {self.host_header}\r\n{self.proxy_head}"
                f"content-length: {len(body)}\r\n"]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        conn = self._pooled()
        if conn is None:
            conn = await self._connect(connect_timeout)
        try:
            return await conn.start(request, read_timeout, total_timeout)
        except UpstreamClosed:
            # A pooled connection the server closed just as we reused it: nothing reached the
            # server's application, so one fresh connection is a safe second try.
            if not (conn.reused and not conn.got_bytes):
                raise
        except BaseException:
            conn.abort(None)  # cancelled or failed mid-exchange: the connection's state is unknown
            raise
        conn = await self._connect(connect_timeout)
        try:
            return await conn.start(request, read_timeout, total_timeout)
        except BaseException:
            conn.abort(None)
            raise

    def close(self) -> None:
        for conn in self.idle:
            conn.abort(None)
        self.idle.clear()

