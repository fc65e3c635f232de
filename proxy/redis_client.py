"""A minimal Redis client for the limits hot path: one pipelined connection, RESP2, EVALSHA.

A general client costs several times more CPU per script call than the limits can afford on every
request, and the limits need only EVALSHA/EVAL and SET, so this speaks just that: commands are written
back to back on one connection and replies are matched in order. A dropped connection fails the
calls in flight (the limiter then applies [limits] on_store_error) and the next call reconnects.
Redis Cluster works from any node's address: a ``MOVED`` reply moves the client to the node it names
(every key the gateway uses shares one hash tag, so one node serves them all), and an ``ASK`` reply
(a slot being migrated) sends that one command to the importing node after ``ASKING``.
A call unanswered after ``CALL_TIMEOUT_S`` (checked every ``CALL_TIMEOUT_S / 5`` by one timer per
connection, not a timer per call) fails the connection the same way: later replies would mismatch.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

CONNECT_TIMEOUT_S = 0.5
CALL_TIMEOUT_S = 0.5
MAX_REDIRECTS = 3


@functools.cache
def _sha(source: str) -> str:
    """A script's SHA1, as EVALSHA names it: computed once per script."""
    return hashlib.sha1(source.encode()).hexdigest()


class RedisError(Exception):
    """An error reply from the server."""


class _Incomplete(Exception):
    pass


BULK_CACHE_MAX = 4096


class Packer:
    """RESP encoding that remembers the bulk strings of str arguments, which recur call after call."""

    __slots__ = ("bulks",)

    def __init__(self) -> None:
        self.bulks: dict[str, bytes] = {}  # key names, script hashes, limits: encoded once

    def pack(self, args: tuple[Any, ...]) -> bytes:
        """One RESP command. A str argument is taken to recur (a key name, a limit) and its encoding is
        remembered; pass what changes per call (request ids, amounts) as bytes or numbers, and a run of
        arguments sent on every call as one ``Encoded`` (the limits script's per-check constants)."""
        out = [b""]
        count = len(args)
        bulks = self.bulks
        for arg in args:
            if type(arg) is Encoded:
                out.append(arg.data)
                count += arg.count - 1
                continue
            if type(arg) is str:
                bulk = bulks.get(arg)
                if bulk is None:
                    if len(bulks) >= BULK_CACHE_MAX:
                        bulks.clear()
                    data = arg.encode()
                    bulk = bulks[arg] = b"$%d\r\n%s\r\n" % (len(data), data)
                out.append(bulk)
            else:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                size = len(data)
                out += (_BULK_HEADS[size] if size < HEADS_MAX else b"$%d\r\n" % size, data, b"\r\n")
        out[0] = _ARRAY_HEADS[count] if count < HEADS_MAX else b"*%d\r\n" % count
        return b"".join(out)


class Encoded:
    """A run of arguments packed once, for a caller that sends the same ones on call after call (the
    limits' per-check constants): ``pack`` copies them as they are."""

    __slots__ = ("count", "data")

    def __init__(self, *args: Any) -> None:
        self.count = len(args)
        self.data = Packer().pack(args).split(b"\r\n", 1)[1]  # without the array head


HEADS_MAX = 256
_ARRAY_HEADS = tuple(b"*%d\r\n" % n for n in range(HEADS_MAX))  # formatted once: cheaper than per call
_BULK_HEADS = tuple(b"$%d\r\n" % n for n in range(HEADS_MAX))


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b"+":
        return bytes(line), pos
    if kind == b"-":
        return RedisError(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise RedisError(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MiniRedis, address: tuple[str, int]) -> None:
        self.client = client
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (reply, answer-by loop time)
        self.closed = False
        self.outgoing: list[bytes] = []  # commands of this loop iteration, written together
        self.watchdog: asyncio.TimerHandle | None = None
        self.retired = False  # replaced after a MOVED: closes once its replies are in

    def send(self, data: bytes) -> None:
        # Requests that reach the limits check in the same loop iteration share one write syscall.
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._write)
        self.outgoing.append(data)

    def _write(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._watch()

    def _watch(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if self.waiting and self.waiting[0][1] <= loop.time():
            self.fail(TimeoutError("redis did not answer in time"))
            return
        self.watchdog = loop.call_later(CALL_TIMEOUT_S / 5, self._watch)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf) and self.waiting:
                value, pos = _parse(buf, pos)
                fut = self.waiting.popleft()[0]
                if not fut.done():
                    fut.set_result(value)
        except _Incomplete:
            pass
        del buf[:pos]
        if self.retired and not self.waiting:
            self.fail(ConnectionError("connection retired"))

    def retire(self) -> None:
        self.retired = True
        if not self.waiting:
            self.fail(ConnectionError("connection retired"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("redis connection lost"))

    def fail(self, error: BaseException) -> None:
        self.closed = True
        if self.client.protocol is self:
            self.client.protocol = None
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


def _redirect(error: RedisError, current_host: str) -> tuple[str, str, int] | None:
    """("MOVED" or "ASK", host, port) from a Redis Cluster redirection such as ``MOVED 3999 10.0.0.5:6379``;
    an empty host means the node's own. None for any other error."""
    parts = str(error).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return parts[0], host or current_host, int(port)


class MiniRedis:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (use redis://)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        self.db = int(parts.path.lstrip("/") or 0)
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Future[_Protocol] | None = None
        self.packer = Packer()

    async def _connect(self, host: str, port: int) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, protocol = await loop.create_connection(lambda: _Protocol(self, (host, port)), host, port)
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for command in setup:
            reply = await self._send(protocol, command)
            if isinstance(reply, RedisError):
                protocol.fail(reply)
                raise reply
        return protocol

    async def _ready(self) -> _Protocol:
        while True:
            protocol = self.protocol
            if protocol is not None and not protocol.closed:
                return protocol
            if self.connecting is None:  # one connect for all concurrent callers
                self.connecting = asyncio.ensure_future(self._connect(self.host, self.port))
            connecting = self.connecting
            try:
                protocol = await asyncio.shield(connecting)
            finally:
                if self.connecting is connecting and connecting.done():
                    self.connecting = None
            if protocol.address == (self.host, self.port):
                self.protocol = protocol
                return protocol
            protocol.retire()  # a MOVED came while this connect was under way: connect where it points

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append((fut, loop.time() + CALL_TIMEOUT_S))
        protocol.send(self.packer.pack(args))
        return await fut

    async def call(self, *args: Any) -> Any:
        for _ in range(MAX_REDIRECTS):
            reply = await self._send(await self._ready(), args)
            if not isinstance(reply, RedisError):
                return reply
            redirect = _redirect(reply, self.host)
            if redirect is None:
                raise reply
            kind, host, port = redirect
            if kind == "ASK":
                return await self._asking(host, port, args)
            self._move(host, port)
        raise RedisError(f"more than {MAX_REDIRECTS} cluster redirections for {args[0]}")

    def _move(self, host: str, port: int) -> None:
        """The cluster serves the gateway's slot elsewhere: every later command goes there."""
        if (host, port) == (self.host, self.port):
            return  # another call in flight followed the same redirection first
        self.host, self.port = host, port
        old, self.protocol = self.protocol, None
        if old is not None:
            old.retire()

    async def _asking(self, host: str, port: int, args: tuple[Any, ...]) -> Any:
        """A slot mid-migration: this one command goes to the importing node, on a connection of its own."""
        protocol = await self._connect(host, port)
        try:
            await self._send(protocol, ("ASKING",))
            reply = await self._send(protocol, args)
        finally:
            protocol.fail(ConnectionError("connection closed"))
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.call("EVALSHA", _sha(source), len(keys), *keys, *args)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", source, len(keys), *keys, *args)  # also caches it server-side

    async def aclose(self) -> None:
        if self.protocol is not None:
            self.protocol.fail(ConnectionError("client closed"))
