"""Generated images reach the client in the OpenAI-compatible shape OpenRouter uses (``message.images`` /
``delta.images``: ``[{"type": "image_url", "image_url": {"url": "data:..."}}]``), stream and not: from
Gemini image models (``inlineData`` parts) and from OpenRouter (passed through as it sends them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, storage_table
from tests.fakes.gemini_server import GENERATED_IMAGE, make_app
from tests.servers import ServerThread

GEMINI_KEY = "AIzaSy-fake-gemini-key-images"
MSGS = [{"role": "user", "content": "draw a cat"}]
PICTURE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + GENERATED_IMAGE}}


class OpenRouterImages:
    """An OpenRouter-like upstream whose answers carry ``images`` on the message and on a delta."""

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            head = '{"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
            events = [head + '[{"index":0,"delta":{"role":"assistant","content":"Here"},"finish_reason":null}]}',
                      head + '[{"index":0,"delta":{"images":[' + _picture() + ']},"finish_reason":null}]}',
                      head + '[{"index":0,"delta":{},"finish_reason":"stop"}]}']
            data = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"
            return Response(data, media_type="text/event-stream")
        return JSONResponse({"id": "gen-1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant", "content": "Here", "images": [PICTURE]}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1290, "total_tokens": 1293}})


def _picture() -> str:
    return '{"type":"image_url","image_url":{"url":"data:image/png;base64,' + GENERATED_IMAGE + '"}}'


@pytest.fixture
def upstreams() -> Any:
    gemini = ServerThread(make_app(GEMINI_KEY)).start()
    router = ServerThread(Starlette(routes=[Route("/v1/chat/completions", OpenRouterImages().chat,
                                                  methods=["POST"])])).start()
    yield gemini.url, router.url
    gemini.stop()
    router.stop()


def config(gemini_url: str, router_url: str, tmp: Path) -> str:
    return f"""
{storage_table(tmp)}
[providers.gem]
kind = "gemini"
base_url = "{gemini_url}"
api_key = "{GEMINI_KEY}"

[providers.openrouter]
kind = "openai"
base_url = "{router_url}/v1"
api_key = "{PROVIDER_KEY}"

[[models]]
name = "painter"
targets = [{{ provider = "gem", model = "gemini-2.5-flash-image" }}]

[[models]]
name = "routed-painter"
targets = [{{ provider = "openrouter", model = "google/gemini-2.5-flash-image" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
"""


@pytest.mark.parametrize("alias", ["painter", "routed-painter"])
def test_images_reach_the_client_whole_and_streamed(upstreams: Any, make_gateway: Any, tmp_path: Path,
                                                    alias: str) -> None:
    gw: Running = make_gateway(config(*upstreams, tmp_path))
    client = gw.client()
    reply = client.chat.completions.create(model=alias, messages=MSGS)  # type: ignore[arg-type]
    message = reply.choices[0].message
    assert message.content and message.model_extra["images"] == [PICTURE]  # type: ignore[index]
    chunks = list(client.chat.completions.create(model=alias, messages=MSGS, stream=True))  # type: ignore
    images = [img for c in chunks if c.choices for img in (c.choices[0].delta.model_extra or {}).get("images", [])]
    assert images == [PICTURE]
    assert chunks[0].choices[0].delta.role == "assistant"  # the images come after the message opened
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # and the text still comes
