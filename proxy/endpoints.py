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

from adapters.anthropic import AnthropicAdapter
from adapters.base import UpstreamRequest
from adapters.errors import APIError
from adapters.inbound import anthropic_messages
from proxy.auth import presented_key
from proxy.errors import GatewayError, error_body
from proxy.models_api import model_object
from proxy.pipeline import Answer, ClientWatch, WholeAnswer
from proxy.pipeline.estimate import estimate_prompt_tokens
from proxy.requests import read_json
from proxy.runtime import Runtime
from proxy.sse_response import SSEResponse
from proxy.upstream import TRANSPORT_ERRORS
from proxy.uvicorn_protocol import on_disconnect, write_whole

JSON = "application/json"


async def chat_completions(request: Request) -> Response | SSEResponse:
    return await _serve(request, "chat")


async def completions(request: Request) -> Response | SSEResponse:
    return await _serve(request, "completions")


async def embeddings(request: Request) -> Response | SSEResponse:
    return await _serve(request, "embeddings")


async def messages(request: Request) -> Response | SSEResponse:
    """Anthropic's Messages API (adapters.inbound)."""
    return await _serve(request, "messages")


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: after the same key and model checks as a message, Anthropic's
    own count when the alias's first target is Anthropic-kind, else the gateway's estimate (the one its
    limits use, proxy.pipeline.estimate). Free at Anthropic: no usage row."""
    runtime: Runtime = request.app.state.runtime
    try:
        key = runtime.authenticate(presented_key(request.headers))
    except GatewayError as e:
        runtime.obs.auth_failed(e.code or "invalid_api_key")
        return _error(e, "count_tokens")
    try:
        body = await read_json(request, runtime.config.server.max_body_bytes)
        anthropic_messages.check_request(body, counting=True)
        target = runtime.resolve(body["model"], key).targets[0]
        upstream = runtime.upstreams[target.provider]
        if isinstance(upstream.adapter, AnthropicAdapter):
            adapter = upstream.adapter
            req = UpstreamRequest(adapter.url + "/count_tokens", adapter.headers,
                                  orjson.dumps({**body, "model": target.model or body["model"]}))
            raw = await upstream.fetch(req, target.connect_timeout_s, target.timeout_s)
            return Response(raw, media_type=JSON)
        tokens = estimate_prompt_tokens(anthropic_messages.to_chat(body))
    except APIError as e:
        return _error(e, "count_tokens")
    except TRANSPORT_ERRORS as exc:
        return _error(upstream.transport_error(exc), "count_tokens")
    return Response(orjson.dumps({"input_tokens": tokens}), media_type=JSON)


async def responses(request: Request) -> Response | SSEResponse:
    """OpenAI's Responses API (adapters.inbound)."""
    return await _serve(request, "responses")


async def get_response(request: Request) -> Response:
    """``GET /v1/responses/{id}``: the gateway stores no responses (README), so there is none to get."""
    runtime: Runtime = request.app.state.runtime
    try:
        runtime.authenticate(presented_key(request.headers))
    except GatewayError as e:
        runtime.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    ident = request.path_params["response_id"]
    return GatewayError(404, f"No response found with id '{ident}': the gateway does not store responses.",
                        param="response_id", code="not_found").response()


def _error(e: APIError, endpoint: str) -> Response:
    return Response(orjson.dumps(error_body(e, endpoint)), e.status, e.headers, media_type=JSON)


class HttpInbound:
    """One HTTP request as the pipeline reads it."""

    __slots__ = ("request", "endpoint", "authorization", "client_request_id", "watch", "hooked", "watcher",
                 "api_headers", "cache_control", "session_id", "end_user")

    def __init__(self, request: Request, endpoint: str) -> None:
        headers = request.headers
        self.request = request
        self.endpoint = endpoint
        self.authorization = presented_key(headers)
        self.client_request_id = headers.get("x-request-id")
        beta = headers.get("anthropic-beta") if endpoint == "messages" else None
        self.api_headers = {"anthropic-beta": beta} if beta else None
        control, ttl = headers.get("cache-control"), headers.get("x-gateway-cache-ttl")
        self.cache_control = (control, ttl) if control is not None or ttl is not None else None
        self.session_id = headers.get("x-gateway-session-id")  # proxy.pipeline.sessions
        self.end_user = headers.get("x-gateway-end-user")  # over the body's `user` (proxy.end_users)
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
    return model_object(runtime.config.models[name], runtime.config.providers, runtime.created)


async def list_models(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        key = runtime.authenticate(presented_key(request.headers))
    except GatewayError as e:
        runtime.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    data = [_model_object(runtime, m.name) for m in runtime.allowed_models(key)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def get_model(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        key = runtime.authenticate(presented_key(request.headers))
        alias = runtime.resolve(request.path_params["model_id"], key)
    except GatewayError as e:
        if e.status == 401:
            runtime.obs.auth_failed(e.code or "invalid_api_key")
        return e.response()
    return Response(orjson.dumps(_model_object(runtime, alias.name)), media_type=JSON)
