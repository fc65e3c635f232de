"""A fake Azure OpenAI: Azure's URLs, `api-key` header and api-version check in front of the fake
OpenAI server, plus Azure's opening stream chunk of content-filter results."""

from __future__ import annotations

import orjson
from starlette.types import Message, Receive, Scope, Send

from tests.fakes.openai_server import make_app as make_openai_app

API_KEY = "azure-secret-key"
FILTER_CHUNK = b"data: " + orjson.dumps({
    "choices": [], "created": 0, "id": "", "model": "", "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False,
                                                                                       "severity": "safe"}}}],
}) + b"\n\n"


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"code": code, "message": message}})


class FakeAzure:
    def __init__(self) -> None:
        self.inner = make_openai_app()
        self.state = self.inner.state.fake
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path, query = scope["path"], scope.get("query_string", b"").decode()
        headers = dict(scope["headers"])
        self.paths.append(f"{path}?{query}" if query else path)
        failure = None
        if headers.get(b"api-key", b"").decode() != API_KEY:
            failure = _error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        elif path.startswith("/openai/deployments/"):
            parts = path.split("/")  # ['', 'openai', 'deployments', dep, 'chat', 'completions']
            if not query.startswith("api-version="):
                failure = _error(404, "404", "Resource not found")
            else:
                scope = {**scope, "path": "/v1/" + "/".join(parts[4:]), "raw_path": None}
        elif path.startswith("/openai/v1/"):
            scope = {**scope, "path": "/v1/" + path.removeprefix("/openai/v1/"), "raw_path": None}
        else:
            failure = _error(404, "404", "Resource not found")
        if failure:
            status, body = failure
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return

        first = True

        async def send_with_filter_chunk(message: Message) -> None:
            nonlocal first
            if message["type"] == "http.response.start":
                is_stream = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message["headers"])
                first = is_stream
            elif message["type"] == "http.response.body" and first:
                first = False
                message = {**message, "body": FILTER_CHUNK + message.get("body", b"")}
            await send(message)

        await self.inner(scope, receive, send_with_filter_chunk)
