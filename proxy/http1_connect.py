"""How a ``proxy.http1`` pool reaches its origin: directly or through an HTTP forward proxy, with a
provider's TLS settings; and the gzip/deflate decoder for its bodies. Everything here is decided once
per provider or per new connection, never per request, so a plain direct request pays nothing for it.

Proxy rules (the curl/requests conventions):
  - ``https_proxy``/``HTTPS_PROXY`` for https origins, ``http_proxy``/``HTTP_PROXY`` for http ones
    (lowercase first); a value without a scheme is taken as ``http://``; only http:// proxies.
  - ``no_proxy``/``NO_PROXY``: comma- or space-separated; ``*`` = every host; ``example.com`` or
    ``.example.com`` = that host and its subdomains; ``host:port`` = only that port; an IP address or
    CIDR block (``10.0.0.0/8``) matches IP-literal hosts (no DNS lookup is made to match).
  - https goes through a ``CONNECT host:port`` tunnel with TLS to the origin inside it; plain http is
    sent to the proxy in absolute form. Userinfo in the proxy URL becomes Proxy-Authorization: Basic.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_CONNECT_HEAD = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers


class NotSent(ConnectionError):
    """No byte of the request reached the upstream (connect refused or timed out, proxy refused the
    tunnel, TLS handshake failed): nothing can have been billed, so another try is always safe.
    The original error is ``__cause__``."""


@dataclass(frozen=True, slots=True)
class ProxyServer:
    host: str
    port: int
    authorization: str  # the Proxy-Authorization header's value, or ""

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"  # never the credentials


@dataclass(frozen=True, slots=True)
class Reach:
    """A provider's way to its origins: TLS context for https, proxy (or None), body cap."""

    tls: ssl.SSLContext | None = None  # None = the shared default context
    proxy: ProxyServer | None = None
    max_response_bytes: int = 64 << 20


def parse_proxy(url: str) -> ProxyServer:
    """``http://[user:pass@]host[:port]``; ValueError naming what is wrong."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise ValueError(f"proxy scheme {parts.scheme!r} is not supported (only http://)")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("proxy port is not a number in 1-65535") from None
    if not parts.hostname:
        raise ValueError("proxy URL has no host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("proxy URL must be only scheme, host and port")
    authorization = ""
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return ProxyServer(parts.hostname, port, authorization)


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name.lower()) or env.get(name.upper()) or ""


def env_proxy(url: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The proxy the environment says ``url`` goes through: (proxy URL or "", the variable's name)."""
    parts = urlsplit(url)
    name = "https_proxy" if parts.scheme == "https" else "http_proxy"
    proxy = _env(env, name).strip()
    if not proxy:
        return "", name.upper()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if no_proxy_matches(parts.hostname or "", port, _env(env, "no_proxy")):
        return "", "NO_PROXY"
    return proxy, name.upper()


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port = None
        if entry.startswith("["):  # [v6]:port or [v6]
            inner, _, rest = entry[1:].partition("]")
            entry, entry_port = inner, rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:  # name:port or v4:port (a bare v6 address has several colons)
            entry, entry_port = entry.split(":")
        if entry_port is not None and entry_port != str(port):
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip("*").lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


@functools.cache
def default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # once, on first https use: loading the trust store takes ms


def decoder(encoding: str, first: bytes) -> Any:
    """A zlib decompressor for a gzip or deflate body (deflate: zlib-wrapped, or raw as some servers send it)."""
    if encoding.strip().lower() != "deflate":
        return zlib.decompressobj(31)
    zlib_header = len(first) > 1 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.decompressobj(15 if zlib_header else -15)


def no_password() -> str:
    return ""  # an encrypted key fails to load instead of OpenSSL prompting on the terminal


def tls_context(ca_file: str = "", client_cert: str = "", client_key: str = "",
                verify: bool = True) -> ssl.SSLContext:
    """A provider's TLS context. ``ca_file`` replaces the system's trust store for that provider (as
    curl's --cacert does); OSError or ssl.SSLError when a file is missing or not PEM."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None, password=no_password)
    return context


class _TunnelHead(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; nothing else arrives before our TLS handshake starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head = bytearray()
        self.done: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if not self.done.done():
            if end >= 0:
                self.done.set_result(bytes(self.head[:end]))
            elif len(self.head) > MAX_CONNECT_HEAD:
                self.done.set_exception(ConnectionError("proxy sent an oversized answer to CONNECT"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("proxy closed the connection during CONNECT"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: ProxyServer, host: str,
                      port: int) -> asyncio.Transport:
    """A TCP connection through ``proxy`` to host:port, CONNECT answered with 2xx; the caller starts TLS."""
    transport, head = await loop.create_connection(lambda: _TunnelHead(loop), proxy.host, proxy.port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
        if proxy.authorization:
            request += f"proxy-authorization: {proxy.authorization}\r\n"
        transport.write((request + "\r\n").encode("latin-1"))
        answer = await head.done
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].startswith("2"):
            hint = " (proxy authentication required)" if len(fields) > 1 and fields[1] == "407" else ""
            raise ConnectionError(f"proxy {proxy.label} refused CONNECT {authority}: {status_line[:100]!r}{hint}")
        return transport  # type: ignore[return-value]
    except BaseException:
        transport.abort()
        raise
