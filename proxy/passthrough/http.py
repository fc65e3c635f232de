"""The pass-through endpoints' routes: each turns a Starlette request into a PassthroughInbound and
the pipeline's answer into a response (proxy.endpoints does the same for chat and embeddings)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import passthrough
from proxy.endpoints import HttpInbound, respond
from proxy.passthrough.multipart import Upload, read_upload
from proxy.passthrough.specs import ENDPOINTS, Spec
from proxy.runtime import Runtime
from proxy.sse_response import SSEResponse


class HttpPassthroughInbound(HttpInbound):
    __slots__ = ("ident", "query", "content_type")

    def __init__(self, request: Request, endpoint: str) -> None:
        super().__init__(request, endpoint)
        self.ident: str | None = request.path_params.get("ident")
        self.query = request.url.query
        self.content_type = request.headers.get("content-type")

    async def upload(self, limit: int, want_model: bool) -> Upload:
        return await read_upload(self.request.receive, self.content_type, self.request.headers.get("content-length"),
                                 limit, want_model)


async def serve(spec: Spec, request: Request) -> Response | SSEResponse:
    runtime: Runtime = request.app.state.runtime
    inbound = HttpPassthroughInbound(request, spec.name)
    try:
        return respond(await passthrough.handle(runtime.pipeline, inbound, spec))
    finally:
        inbound.answered()


def handler(spec: Spec) -> Callable[[Request], Awaitable[Response | SSEResponse]]:
    return functools.partial(serve, spec)


def routes() -> list[Route]:
    """Every pass-through route, under /v1 and without it (as the chat routes are)."""
    out = []
    for prefix in ("/v1", ""):
        for spec in ENDPOINTS:
            path = prefix + spec.path.replace("{id}", "{ident}")
            out.append(Route(path, handler(spec), methods=[spec.method]))
    return out
