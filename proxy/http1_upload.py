"""Request bodies streamed to the upstream as the client uploads them (multipart files, audio), for
``proxy.http1.Pool.request`` when its body is an async iterable rather than bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http1 import Pool, Response, _Conn


async def send_body(conn: _Conn, body: AsyncIterable[bytes], chunked: bool) -> None:
    """Write a streamed request body after its head, as fast as the upstream takes it; each piece
    written counts as activity for ``read_timeout`` (the upstream is silent while it receives)."""
    assert conn.transport is not None
    conn.reusable = False  # until the body is all sent: an answer that comes before closes the connection
    async for piece in body:
        if conn.closed or (conn.response is not None and conn.response.complete) or conn.response is None:
            return  # answered (or gone) before the body was all sent
        if piece:
            conn.transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            conn.last_read = conn.loop.time()
        if conn.writable is not None:
            await conn.writable
    if chunked and not conn.closed:
        conn.transport.write(b"0\r\n\r\n")
    conn.reusable = True


async def request_streamed(pool: Pool, method: str, target: str, headers: Mapping[str, str],
                           body: AsyncIterable[bytes], connect_timeout: float | None,
                           read_timeout: float | None, total_timeout: float | None) -> Response:
    """A request whose body is written piece by piece as ``body`` yields it: with the
    ``content-length`` the caller put in ``headers``, else ``transfer-encoding: chunked``. Always on a
    fresh connection (a pooled one the server closed could not be retried: the body is consumed).
    An error ``body`` raises (the client's upload failed) closes the connection and is raised here;
    an answer that comes before the body is all sent stops the sending."""
    chunked = not any(name.lower() == "content-length" for name in headers)
    head = [f"{method} {pool.target_prefix}{target} HTTP/1.1\r\nhost: {pool.host_header}\r\n{pool.proxy_head}"]
    if chunked:
        head.append("transfer-encoding: chunked\r\n")
    for name, value in headers.items():
        head.append(f"{name}: {value}\r\n")
    head.append("\r\n")
    conn = await pool._connect(connect_timeout)
    answered = conn.start("".join(head).encode("latin-1"), read_timeout, total_timeout)
    try:
        sender = asyncio.ensure_future(send_body(conn, body, chunked))
        try:
            await asyncio.wait((answered, sender), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sender.done():  # answered early, or cancelled: the rest of the body is not sent
                sender.cancel()
                await asyncio.wait((sender,))
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
        return await answered
    except BaseException:
        if not answered.done():
            answered.cancel()  # nobody will wait for this head: no "exception never retrieved"
        elif not answered.cancelled():
            answered.exception()  # seen: a failed head behind the body's own error is not logged
        conn.abort(None)
        raise
