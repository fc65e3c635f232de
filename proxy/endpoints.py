"""The OpenAI-compatible HTTP endpoints: each turns a Starlette request into the pipeline's ``Inbound``
and the pipeline's ``Answer`` into a response. The request's path itself is in proxy.pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import GatewayError
from proxy.pipeline import Answer, ClientWatch, WholeAnswer
from proxy.requests import read_json
from proxy.runtime import Runtime
from proxy.sse_response import SSEResponse
from proxy.uvicorn_protocol import on_disconnect, write_whole

JSON = "application/json"


async def chat_completions(request: Request) -> Response | SSEResponse:
    return await _serve(request, "chat")


async def embeddings(request: Request) -> Response | SSEResponse:
    return await _serve(request, "embeddings")


class HttpInbound:
    """One HTTP request as the pipeline reads it."""

    __slots__ = ("request", "endpoint", "authorization", "client_request_id", "watch", "hooked", "watcher",
                 "cache_control")

    def __init__(self, request: Request, endpoint: str) -> None:
        headers = request.headers
        self.request = request
        self.endpoint = endpoint
        self.authorization = headers.get("authorization")
        self.client_request_id = headers.get("x-request-id")
        control, ttl = headers.get("cache-control"), headers.get("x-gateway-cache-ttl")
        self.cache_control = (control, ttl) if control is not None or ttl is not None else None
        self.watch = ClientWatch()
        self.hooked = on_disconnect(request.scope, self.watch)  # our protocol calls it on a hang-up
        self.watcher: asyncio.Task[None] | None = None

    async def json(self, limit: int) -> dict[str, Any]:
        body = await read_json(self.request, limit)
        if not self.hooked:  # another server: only receive() tells of a hang-up, once the body is read
            self.watcher = asyncio.ensure_future(self._watch_receive())
        return body

    async def _watch_receive(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        self.watch()

    def answered(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()  # the response takes over from here (SSEResponse watches on its own)


async def _serve(request: Request, endpoint: str) -> Response | SSEResponse:
    runtime: Runtime = request.app.state.runtime
    inbound = HttpInbound(request, endpoint)
    try:
        return respond(await runtime.pipeline.handle(inbound))
    finally:
        inbound.answered()


def respond(answer: Answer) -> Response | SSEResponse:
    if isinstance(answer, WholeAnswer):
        return AccountedResponse(answer.after, answer.body, answer.status, answer.headers)
    return SSEResponse(answer.headers, answer.chunks, answer.finish, answer.cut)


class AccountedResponse(Response):
    """A whole JSON answer that runs its bookkeeping (in the event loop) after sending, and even if
    sending fails (the client is gone): a usage row is never lost to a broken connection.

    Served by GatewayHttpProtocol, head and body are written by ``write_whole`` straight from the
    header dict; Starlette's raw headers are only built for any other server."""

    def __init__(self, after: Callable[[], None], body: bytes, status: int, headers: dict[str, str]) -> None:
        # Not Response.__init__: its init_headers work is done by write_whole or, failing that, in __call__.
        self.after = after
        self.body = body
        self.status_code = status
        self.media_type = JSON
        self.background = None
        self.fields = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if not write_whole(scope, self.status_code, self.fields, JSON, self.body):
                self.init_headers(self.fields)
                await super().__call__(scope, receive, send)
        finally:
            self.after()


# models ---------------------------------------------------------------------------------------------


def _model_object(runtime: Runtime, name: str) -> dict:
    alias = runtime.config.models[name]
    return {"id": name, "object": "model", "created": runtime.created, "owned_by": alias.targets[0].provider}


async def list_models(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        key = runtime.authenticate(request.headers.get("authorization"))
    except GatewayError as e:
        runtime.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    data = [_model_object(runtime, m.name) for m in runtime.allowed_models(key)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def get_model(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        key = runtime.authenticate(request.headers.get("authorization"))
        alias = runtime.resolve(request.path_params["model_id"], key)
    except GatewayError as e:
        if e.status == 401:
            runtime.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    return Response(orjson.dumps(_model_object(runtime, alias.name)), media_type=JSON)
