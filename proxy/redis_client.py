"""The limits' connection to Redis through redis-py (asyncio, hiredis): one client per URL, built lazily.

Which client a URL needs is decided here: ``redis://`` and ``rediss://`` (TLS) name a node, and the
first connect asks it ``INFO cluster``: a Redis Cluster node gets a cluster client (a real slot map;
every key the gateway uses shares one hash tag, so one node serves them all), any other a plain one.
``unix:///path/to/redis.sock`` is a unix socket; ``redis+sentinel://host:port[,host:port]/service[/db]``
asks those Sentinels for the master of ``service``. Every call fails fast, with no retries: a connect
or a reply that takes longer than ``CALL_TIMEOUT_S`` raises (the limiter applies ``[limits]
on_store_error``) and the connection is dropped, so the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

CALL_TIMEOUT_S = 0.5  # a connect or a reply slower than this fails the call: the limits must not stall requests
SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
# What a failed call raises: redis-py's errors, OSError, TimeoutError, and from a server that answers
# what redis-py does not expect, anything; the caller turns each into StoreUnavailable.
ERRORS = (Exception,)


@dataclass(frozen=True, slots=True)
class RedisTLS:
    """Files for a ``rediss://`` connection: the CA bundle that signs the server, and a client certificate."""

    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""


@dataclass(frozen=True, slots=True)
class Sentinels:
    nodes: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> Sentinels:
    """``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]``; raises ValueError saying why."""
    rest = url[len("redis+sentinel://"):]
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {node!r} must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("needs the master's service name as its path: redis+sentinel://host:port/mymaster")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} after the service name must be a number")
    return Sentinels(nodes, unquote(service), int(db or 0), unquote(username) or None, unquote(password) or None)


def check_url(url: str) -> None:
    """Raises ValueError saying why the gateway cannot use ``url`` (checked at start, with no I/O)."""
    if not url.startswith(SCHEMES):
        raise ValueError("must start with " + ", ".join(SCHEMES))
    if url.startswith("redis+sentinel://"):
        parse_sentinel_url(url)
        return
    from redis.asyncio.connection import parse_url

    parts = urlsplit(url)
    if url.startswith("unix://"):
        if not parts.path:
            raise ValueError("unix:// needs the socket's path, e.g. unix:///run/redis/redis.sock")
    elif not parts.hostname:
        raise ValueError("needs a host, e.g. redis://127.0.0.1:6379/0")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    query = parse_qs(parts.query)
    for name in query:  # redis-py would pass any other through to its connections (and fail there)
        if name != "db":
            raise ValueError(f"unknown option {name!r} in the query (only db= is read)")
    db = query.get("db", [parts.path.strip("/") if not url.startswith("unix://") else "0"])[0]
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} must be a number")
    parse_url(url)  # redis-py's own reading: the same errors it would raise at the first connect


def _options(tls: RedisTLS | None) -> dict[str, Any]:
    """What every connection of every client is given: fail fast, never retry in the client."""
    # RESP2: no HELLO round trip at connect, and replies in the shapes the scripts' readers expect.
    options: dict[str, Any] = {"socket_timeout": CALL_TIMEOUT_S, "socket_connect_timeout": CALL_TIMEOUT_S,
                               "retry": Retry(NoBackoff(), 0), "protocol": 2}
    if tls is not None:
        options.update(ssl_ca_certs=tls.ca_file or None, ssl_certfile=tls.client_cert or None,
                       ssl_keyfile=tls.client_key or None)
    return options


class RedisClient:
    """One redis-py client (so one connection pool) for one URL, made at the first call; scripts run by
    EVALSHA, sent with EVAL's source only when the server answers NOSCRIPT (redis-py's ``Script``)."""

    def __init__(self, url: str, tls: RedisTLS | None = None) -> None:
        check_url(url)
        self.url = url
        self.tls = tls if url.startswith("rediss://") else None
        self.client: Any = None  # redis.asyncio.Redis or RedisCluster, once connected
        self.connecting: asyncio.Future[Any] | None = None
        self.scripts: dict[str, AsyncScript] = {}  # source -> its Script on self.client
        self.cluster = False
        self.sentinel: Sentinel | None = None  # its clients of the Sentinels themselves, closed with ours

    def _make(self) -> Any:
        options = _options(self.tls)
        if self.url.startswith("redis+sentinel://"):
            spec = parse_sentinel_url(self.url)
            sentinel = self.sentinel = Sentinel(spec.nodes, min_other_sentinels=0, sentinel_kwargs=_options(None),
                                                **_options(None))
            return sentinel.master_for(spec.service, db=spec.db, username=spec.username, password=spec.password,
                                       **_options(None))
        if self.url.startswith("unix://"):
            options = _options(None)
        return Redis.from_url(self.url, **options)

    async def _connect(self) -> Any:
        client = self._make()
        if not self.url.startswith(("redis://", "rediss://")):
            return client
        try:
            info = await client.info("cluster")
        except ResponseError:  # INFO not permitted to this ACL user: a single node it is
            return client
        except BaseException:
            await client.aclose()
            raise
        if not info.get("cluster_enabled"):
            return client
        await client.aclose()
        self.cluster = True
        return RedisCluster.from_url(self.url, **_options(self.tls))

    async def _ready(self) -> Any:
        client = self.client
        if client is not None:
            return client
        if self.connecting is None:  # one connect for every caller waiting on it
            self.connecting = asyncio.ensure_future(self._connect())
        connecting = self.connecting
        try:
            client = await asyncio.shield(connecting)
        finally:
            if self.connecting is connecting and connecting.done():
                self.connecting = None
        self.client = client
        return client

    async def connection(self) -> Any:
        """The redis-py client itself (``Redis`` or ``RedisCluster``), connected: for callers that need
        more than scripts, such as the response cache."""
        return self.client or await self._ready()

    async def call(self, *args: Any) -> Any:
        client = self.client or await self._ready()
        return await client.execute_command(*args)

    async def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        client = self.client or await self._ready()
        script = self.scripts.get(source)
        if script is None:
            script = self.scripts[source] = client.register_script(source)
        return await script(keys, args)

    async def aclose(self) -> None:
        client, self.client, self.scripts = self.client, None, {}
        sentinels = self.sentinel.sentinels if self.sentinel is not None else []
        for each in [client, *sentinels] if client is not None else sentinels:
            with contextlib.suppress(*ERRORS):
                await each.aclose()
