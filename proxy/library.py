"""Library mode: the gateway in-process, with no HTTP server.

``Gateway`` runs the same pipeline as ``gateway serve`` (routing, retries, fallbacks, limits, cache,
hooks, ledger, metrics): it builds the server's app (proxy.app.create_app), runs its lifespan (the
ledger flusher, managed-key polling, limits, cache), and calls ``Pipeline.handle`` with an in-process
``Inbound`` instead of an HTTP request. Answers come back as the dicts the server would send (see
proxy.library_types) and errors as typed exceptions carrying the server's error body.

Where it runs: ``async with gw`` (or ``await gw.astart()``) starts it on the running event loop; ``with
gw`` (or ``gw.start()``, or the first sync call) starts it on an event loop of its own in a background
thread, which the sync methods (``chat``, ``chat_stream``, ``embeddings``) wait on. The async methods
work in either case (from another loop they wait on the gateway's through ``asyncio.wrap_future``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

import orjson

from proxy.config import load_config, parse_config
from proxy.library_analytics import Analytics
from proxy.library_inbound import LibraryInbound, StreamRelay, answer_json
from proxy.library_middleware import install
from proxy.library_types import ChatResponse, EmbeddingsResponse, StreamChunk
from proxy.pipeline.transaction import Answer
from proxy.settings import Config

T = TypeVar("T")

__all__ = ["Gateway"]


class Gateway:
    """The gateway as a Python object. ``Gateway.from_config(path)`` reads a gateway.toml; ``Gateway(
    providers=[...], models=[...], ...)`` takes the same tables as Python values (see ``from_tables``)."""

    def __init__(self, providers: list[dict[str, Any]] | None = None, models: list[dict[str, Any]] | None = None,
                 *, api_key: str | None = None, config: Config | None = None, env: dict[str, str] | None = None,
                 **tables: Any) -> None:
        if config is None:
            config = from_tables(providers or [], models or [], tables, env)
        elif providers or models or tables:
            raise TypeError("Gateway(config=...) takes no providers, models or tables of its own")
        self.config = config
        self.api_key = api_key  # the gateway key library calls present, when the config requires one
        self.middleware: list[Any] = []
        self.analytics = Analytics(lambda: self._state().ledger, self._run, self._arun)
        self._app: Any = None
        self._lifespan: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def from_config(cls, path: str, *, api_key: str | None = None, env: dict[str, str] | None = None) -> Gateway:
        """A gateway.toml, checked as ``gateway serve`` checks it (ConfigError naming file, key and reason)."""
        return cls(config=load_config(path, env), api_key=api_key)

    # lifecycle --------------------------------------------------------------------------------------

    async def astart(self) -> Gateway:
        """Starts the background parts (ledger flusher, key polling, limits) on the running event loop."""
        if self._loop is not None:
            return self
        from proxy.app import create_app  # the server's app: imported late, library users may never start one

        app = create_app(self.config)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        self._app, self._lifespan, self._loop = app, lifespan, asyncio.get_running_loop()
        app.state.on_runtime.append(lambda rt: install(rt, self.middleware))  # a reload's new Runtime too
        install(app.state.runtime, self.middleware)
        return self

    async def aclose(self) -> None:
        """Flushes the ledger (every row of every answered request) and stops the background parts."""
        if self._loop is None:
            return
        if self._thread is not None and asyncio.get_running_loop() is not self._loop:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop(), self._loop))
            self._join()
            return
        await self._stop()
        if self._thread is None:
            self._loop = self._app = None

    def start(self) -> Gateway:
        """Starts the gateway on an event loop of its own, in a daemon thread (what the sync methods use)."""
        with self._start_lock:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="gateway-loop", daemon=True)
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self.astart(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise
            self._thread = thread
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        if self._thread is None:
            raise RuntimeError("this Gateway runs on your event loop: use `await gw.aclose()`")
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result()
        self._join()

    async def _stop(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)

    def _join(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._app = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Gateway:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # the API ----------------------------------------------------------------------------------------

    def add_middleware(self, obj: Any) -> None:
        """An object with ``pre_request(request)`` and/or ``post_response(response)`` (proxy.library_middleware);
        it runs for every later request, the ones ``asgi_app()`` serves included."""
        if not (hasattr(obj, "pre_request") or hasattr(obj, "post_response")):
            raise TypeError("middleware needs a pre_request(request) or post_response(response) method")
        self.middleware.append(obj)

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> ChatResponse:
        """``POST /v1/chat/completions`` in-process: any OpenAI chat parameter as a keyword."""
        return self._run(self._chat(chat_body(model, messages, params)))

    async def achat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> ChatResponse:
        return await self._arun(self._chat(chat_body(model, messages, params)))

    def embeddings(self, model: str, input: str | list[Any], **params: Any) -> EmbeddingsResponse:
        return self._run(self._embeddings({**params, "model": model, "input": input}))

    async def aembeddings(self, model: str, input: str | list[Any], **params: Any) -> EmbeddingsResponse:
        return await self._arun(self._embeddings({**params, "model": model, "input": input}))

    def chat_stream(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Iterator[StreamChunk]:
        """The chunks as the upstream sends them; leaving the loop early stops the upstream call (the row
        says 499, as for a client that hangs up)."""
        body = {**chat_body(model, messages, params), "stream": True}
        loop = self._ensure_started()
        relay = asyncio.run_coroutine_threadsafe(self._relay(body), loop).result()
        try:
            while (raw := asyncio.run_coroutine_threadsafe(relay.next(), loop).result()) is not None:
                yield StreamChunk(raw)
        finally:
            asyncio.run_coroutine_threadsafe(relay.close(), loop).result()

    async def achat_stream(self, model: str, messages: list[dict[str, Any]],
                           **params: Any) -> AsyncIterator[StreamChunk]:
        body = {**chat_body(model, messages, params), "stream": True}
        relay = await self._arun(self._relay(body))
        try:
            while (raw := await self._arun(relay.next())) is not None:
                yield StreamChunk(raw)
        finally:
            await self._arun(relay.close())

    def metrics(self) -> str:
        """The Prometheus exposition text ``GET /metrics`` would answer (the same counters)."""
        body, _ = self._state().metrics.render()
        return body.decode()

    def asgi_app(self) -> Any:
        """An ASGI app serving the gateway's HTTP API (``/v1/chat/completions``, ``/v1/models``, ``/metrics``,
        ...) on this gateway's pipeline, to mount in a Starlette or FastAPI app. Mounted apps get no
        lifespan events: it starts the gateway on the server's loop at its first request (or at the
        lifespan event when it is the top-level app); stop it with ``await gw.aclose()`` at shutdown."""
        return MountedGateway(self)

    # internals --------------------------------------------------------------------------------------

    def _state(self) -> Any:
        if self._app is None:
            raise RuntimeError("the Gateway is not started")
        return self._app.state

    async def _handle(self, endpoint: str, body: dict[str, Any]) -> Answer:
        inbound = LibraryInbound(endpoint, body, self.api_key)
        return await self._state().runtime.pipeline.handle(inbound)

    async def _chat(self, body: dict[str, Any]) -> ChatResponse:
        raw, headers = answer_json(await self._handle("chat", body))
        return ChatResponse(raw, headers)

    async def _embeddings(self, body: dict[str, Any]) -> EmbeddingsResponse:
        raw, headers = answer_json(await self._handle("embeddings", body))
        return EmbeddingsResponse(raw, headers)

    async def _relay(self, body: dict[str, Any]) -> StreamRelay:
        return StreamRelay(await self._handle("chat", body)).start()

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self.start()
        loop = self._loop
        assert loop is not None
        if self._thread is None and _running_loop() is loop:
            raise RuntimeError("this Gateway runs on this event loop: use the async methods (achat, ...)")
        return loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            loop = self._ensure_started()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _arun(self, coro: Awaitable[T]) -> T:
        if self._loop is None:
            await self.astart()
        if asyncio.get_running_loop() is self._loop:
            return await coro
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_await(coro), self._loop))


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def _running_loop() -> asyncio.AbstractEventLoop | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop()
    return None


def chat_body(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "model": model, "messages": messages}


def from_tables(providers: list[dict[str, Any]], models: list[dict[str, Any]], tables: dict[str, Any],
                env: dict[str, str] | None) -> Config:
    """gateway.toml's tables as Python values: ``providers`` a list of ``[providers.NAME]`` tables with
    their ``name``, ``models`` the ``[[models]]`` list, and ``server``, ``storage``, ``limits``, ``cache``,
    ``keys``, ... as keywords. Checked as the file is; with no ``keys`` no key is required."""
    raw: dict[str, Any] = {k: v for k, v in tables.items() if v is not None}
    named: dict[str, Any] = {}
    for i, p in enumerate(providers):
        p = dict(p)
        name = p.pop("name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"providers[{i}] needs a 'name'")
        named[name] = p
    raw["providers"], raw["models"] = named, list(models)
    if not raw.get("keys"):
        raw["server"] = {"require_auth": False, **(raw.get("server") or {})}
    # A program's stdout is its own: the JSON access log only when asked for.
    raw["observability"] = {"access_log": False, **(raw.get("observability") or {})}
    # A round trip through TOML's types: the same checks (and ${VAR} interpolation) as a file gets.
    return parse_config(orjson.loads(orjson.dumps(raw, default=str)), "<Gateway>", dict(os.environ) if env is None
                        else env)


class MountedGateway:
    """``Gateway.asgi_app()``: the server's app, started on the loop that serves it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.lock: asyncio.Lock | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gw = self.gateway
        if scope["type"] == "lifespan":  # the top-level app: start and stop with the server
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await gw.astart()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await gw.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if gw._loop is None:
            self.lock = self.lock or asyncio.Lock()
            async with self.lock:
                await gw.astart()
        if gw._loop is not asyncio.get_running_loop():
            raise RuntimeError("Gateway.asgi_app() must be served on the event loop the Gateway runs on "
                               "(start it with `async with gw` or let the app start it, not with `with gw`)")
        await gw._app(scope, receive, send)
