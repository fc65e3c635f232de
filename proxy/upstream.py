"""Upstream connections: one adapter and keep-alive connection pools per provider, and the two
ways of sending (whole body, or a stream) with the same timeout and error mapping for every kind.

The client is ``proxy.http1`` (see there for why a purpose-built one): a proxy's own CPU cost is
dominated by its HTTP client.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from adapters.base import Adapter, UpstreamError, UpstreamRequest
from proxy import echo
from proxy.http1 import Pool, Response, ResponseTooLarge
from proxy.http1_connect import NotSent, Reach, parse_proxy, tls_context
from proxy.request_target import invalid_model, refusal
from proxy.settings import ConfigError, ProviderConfig

ADAPTER_CLASSES = {
    "openai": "adapters.openai:OpenAIAdapter",
    "echo": "adapters.openai:OpenAIAdapter",  # echo speaks OpenAI, answered in-process
    "anthropic": "adapters.anthropic:AnthropicAdapter",
    "gemini": "adapters.gemini:GeminiAdapter",
    "azure": "adapters.azure:AzureAdapter",
}

TRANSPORT_ERRORS = (OSError, TimeoutError)  # ConnectionError and refused connects are OSErrors
DRAIN_S = 0.5  # after a stream's terminal event: how long to wait for the rest of its response
log = logging.getLogger("gateway")


class UnreachedError(UpstreamError):
    """An attempt whose request never reached the upstream (see proxy.http1_connect.NotSent): nothing
    can have been billed, so dispatch retries it whatever ``retry_on`` says (within ``max_retries``)."""


def provider_reach(provider: ProviderConfig, file: str = "gateway.toml") -> Reach:
    """The provider's proxy, TLS settings and response cap, as the connection pools use them."""
    key = f"providers.{provider.name}"
    try:
        tls = None
        if provider.ca_file or provider.client_cert or not provider.verify_tls:
            tls = tls_context(provider.ca_file, provider.client_cert, provider.client_key, provider.verify_tls)
        proxy = parse_proxy(provider.proxy) if provider.proxy else None
    except (OSError, ValueError) as exc:  # proxy.config checks these first: this is for configs built in code
        raise ConfigError(file, key, str(exc)) from None
    return Reach(tls, proxy, max(1, int(provider.max_response_mb * (1 << 20))))


def make_adapter(provider: ProviderConfig, file: str = "gateway.toml") -> Adapter:
    module_name, _, class_name = ADAPTER_CLASSES[provider.kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise ConfigError(file, f"providers.{provider.name}.kind",
                          f"kind {provider.kind!r} is not available in this build") from None
    adapter: Adapter = getattr(module, class_name)(provider)
    return adapter


class UpstreamStream(Protocol):
    chunks: AsyncIterator[bytes]
    # Response.push where the bytes come from a socket: the relay's per-read fast path; else None
    push: Callable[[Callable[[bytes], bool]], Awaitable[None]] | None

    def relaying(self) -> None:
        """The first event is out: the rest of the stream is the relay's (bursts may now be paced)."""

    async def aclose(self, finished: bool = False) -> None: ...


class HttpStream:
    def __init__(self, response: Response) -> None:
        self.response = response
        self.chunks: AsyncIterator[bytes] = response.chunks
        self.push: Callable[[Callable[[bytes], bool]], Awaitable[None]] | None = response.push

    def relaying(self) -> None:
        self.response.relayed = True

    async def aclose(self, finished: bool = False) -> None:
        # A stream whose terminal event arrived usually has only the chunked terminator left: read it
        # so the connection is reused. Otherwise the connection is closed at once, so the upstream
        # stops generating (and billing).
        if finished and not self.response.complete:
            await self.response.drain(DRAIN_S)
        self.response.close()


class Upstream:
    """A provider's adapter and connection pools, together."""

    def __init__(self, provider: ProviderConfig, file: str = "gateway.toml") -> None:
        self.provider = provider
        self.adapter = make_adapter(provider, file)
        self.reach = provider_reach(provider, file)
        if not provider.verify_tls:
            log.warning("provider %s: verify_tls = false: the TLS certificate of %s is not checked; anyone on "
                        "the path can read and change its traffic, provider key included", provider.name,
                        urlsplit(provider.base_url).netloc)
        self.pools: dict[str, Pool] = {}  # by origin; made on first use, inside the event loop
        self.routes: dict[str, tuple[Pool, str]] = {}  # url -> (pool, request target), parsed once

    def _route(self, url: str) -> tuple[Pool, str]:
        route = self.routes.get(url)
        if route is None:  # checked once per URL: a cached route has passed
            reason = refusal(url, self.provider.base_url)
            if reason is not None:
                raise invalid_model(self.provider.name, reason)
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            pool = self.pools.get(origin)
            if pool is None:
                pool = self.pools[origin] = Pool(origin, self.reach)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            route = (pool, target)
            if len(self.routes) < 10_000:  # urls are per provider and model: a bounded set
                self.routes[url] = route
        return route

    async def aclose(self) -> None:
        for pool in self.pools.values():
            pool.close()

    async def fetch(self, req: UpstreamRequest, connect_s: float, total_s: float,
                    first_byte_s: float | None = None) -> bytes:
        """Send and read the whole response; a non-2xx answer raises the adapter's UpstreamError.
        ``first_byte_s`` (a target's first_byte_timeout_s) bounds the wait for the response head."""
        pool, target = self._route(req.url)
        response = None
        try:
            # The connection's own timer enforces total_s: cheaper than an asyncio.timeout scope, which is
            # paid only when the head must come sooner than the whole answer.
            if first_byte_s is not None and first_byte_s < total_s:
                head = asyncio.timeout(first_byte_s)
                try:
                    async with head:
                        response = await pool.request(req.method, target, req.headers, req.content, connect_s,
                                                      None, total_s)
                except TimeoutError:
                    if not head.expired():
                        raise  # the connect timeout, reported as such below
                    raise UpstreamError(504, f"upstream {self.provider.name} sent no response head in {first_byte_s}s",
                                        "timeout", "timeout", "upstream_timeout") from None
            else:
                response = await pool.request(req.method, target, req.headers, req.content, connect_s, None, total_s)
            body = await response.read()
        except ResponseTooLarge as exc:
            if response is not None:
                response.close()
            raise self.too_large(exc) from None
        except TRANSPORT_ERRORS as exc:
            if response is not None:
                response.close()
            raise self.transport_error(exc) from None
        except BaseException:
            if response is not None:
                response.close()
            raise
        if response.status >= 300:
            raise self.status_error(response, body)
        return body

    async def open_stream(self, req: UpstreamRequest, connect_s: float, idle_s: float) -> UpstreamStream:
        """Send and wait for the response head; the caller reads ``chunks`` and must ``aclose()``.
        The caller bounds the wait (first-byte timeout); ``idle_s`` bounds each gap between reads."""
        pool, target = self._route(req.url)
        try:
            response = await pool.request(req.method, target, req.headers, req.content, connect_s, idle_s)
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc) from None
        if response.status >= 300:
            try:
                async with asyncio.timeout(idle_s):
                    body = await response.read()
            except ResponseTooLarge as exc:
                raise self.too_large(exc) from None
            except TRANSPORT_ERRORS:
                body = b""
            finally:
                response.close()
            raise self.status_error(response, body)
        return HttpStream(response)

    def status_error(self, response: Response, body: bytes) -> UpstreamError:
        if response.status == 407 and self.reach.proxy is not None:  # the proxy's answer: the provider saw nothing
            return UnreachedError(502, f"the proxy for upstream {self.provider.name} refused the request (407 "
                                  "Proxy Authentication Required)", "connection", "upstream_error",
                                  "upstream_connection_error")
        return self.adapter.error(response.status, body, response.headers)

    def transport_error(self, exc: BaseException) -> UpstreamError:
        name = self.provider.name
        kind = UpstreamError
        if isinstance(exc, NotSent):  # told apart for retries; the client sees what caused it
            kind, exc = UnreachedError, exc.__cause__ or exc
        if isinstance(exc, TimeoutError):
            return kind(504, f"upstream {name} timed out", "timeout", "timeout", "upstream_timeout")
        return kind(502, f"connection to upstream {name} failed ({type(exc).__name__})", "connection",
                    "upstream_error", "upstream_connection_error")

    def too_large(self, exc: ResponseTooLarge) -> UpstreamError:
        """Past max_response_mb: a 502 that is not retried (the next answer would be as big, and billed)."""
        mb = self.provider.max_response_mb
        return UpstreamError(502, f"upstream {self.provider.name} sent a response larger than its "
                             f"max_response_mb ({mb:g} MB); the gateway stopped reading it", "bad_response",
                             "upstream_error", "upstream_response_too_large")


class EchoStream:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.push = None

    def relaying(self) -> None:
        pass

    async def aclose(self, finished: bool = False) -> None:
        pass


class EchoUpstream(Upstream):
    """kind = "echo": the same adapter and code path, answered in-process instead of over a socket."""

    async def fetch(self, req: UpstreamRequest, connect_s: float, total_s: float,
                    first_byte_s: float | None = None) -> bytes:
        status, body = echo.answer(req.url, req.content)
        assert isinstance(body, bytes)
        if status >= 300:
            raise self.adapter.error(status, body, {})
        return body

    async def open_stream(self, req: UpstreamRequest, connect_s: float, idle_s: float) -> UpstreamStream:
        status, body = echo.answer(req.url, req.content)
        if isinstance(body, bytes):
            raise self.adapter.error(status, body, {})
        return EchoStream(body)

    async def aclose(self) -> None:
        pass


def make_upstream(provider: ProviderConfig, file: str = "gateway.toml") -> Upstream:
    return EchoUpstream(provider, file) if provider.kind == "echo" else Upstream(provider, file)


def is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, TRANSPORT_ERRORS)

