"""Traces of the endpoints beyond chat and embeddings: legacy completions (text_completion), Anthropic
messages and responses (chat, told apart by gateway.endpoint) and the pass-through endpoints (their own
names), each with a SERVER span, a CLIENT span per attempt whose traceparent went upstream, and the
response id, finish reasons and usage read off what the client got."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.trace import SpanKind  # noqa: E402

from tests import test_tracing  # noqa: E402
from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running  # noqa: E402
from tests.fakes.openai_media import make_app as make_media  # noqa: E402
from tests.servers import ServerThread  # noqa: E402
from tests.test_tracing import TRACE_ID, TRACEPARENT, attrs, hex_span, spans  # noqa: E402

traced = test_tracing.traced  # the fixture: an in-memory exporter and a gateway tracing into it

HI = [{"role": "user", "content": "tell me about Paris"}]


def check(exporter: Any, operation: str, endpoint: str, alias: str, upstream_model: str) -> tuple[Any, Any]:
    """The one server span and its one attempt span, named and attributed as the conventions say."""
    (server,) = spans(exporter, SpanKind.SERVER)
    (client,) = spans(exporter, SpanKind.CLIENT)
    a = attrs(server)
    assert server.name == f"{operation} {alias}"
    assert a["gen_ai.operation.name"] == operation and a["gateway.endpoint"] == endpoint
    assert a["gen_ai.request.model"] == alias and a["gen_ai.provider.name"] == "openai"
    assert a["http.response.status_code"] == 200 and "error.type" not in a
    assert client.name == f"{operation} {upstream_model}" and client.parent.span_id == server.context.span_id
    assert attrs(client)["gen_ai.operation.name"] == operation
    exporter.clear()
    return server, client


def sent_traceparent(requests: list[dict[str, Any]], client: Any, path: str) -> None:
    last = [r for r in requests if r["path"] == path][-1]
    assert last["headers"]["traceparent"] == f"00-{TRACE_ID}-{hex_span(client)}-01"


@pytest.mark.parametrize("stream", [False, True])
def test_completions_are_text_completion(traced, fake_openai: Running, stream: bool) -> None:
    start, exporter = traced
    gw = start()
    answer = gw.client().completions.create(model="gpt-test", prompt="say hi", stream=stream,
                                            stream_options={"include_usage": True} if stream else None,
                                            extra_headers={"traceparent": TRACEPARENT})
    chunks = list(answer) if stream else [answer]
    server, client = check(exporter, "text_completion", "completions", "gpt-test", "ok")
    a = attrs(server)
    assert a["gen_ai.response.id"] == chunks[0].id == "cmpl-fake123"
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens > 0
    sent_traceparent(fake_openai.app.state.fake.requests, client, "/v1/completions")


@pytest.mark.parametrize("stream", [False, True])
def test_messages_are_chat(traced, fake_openai: Running, stream: bool) -> None:
    start, exporter = traced
    gw = start()
    client = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0,
                                 default_headers={"traceparent": TRACEPARENT})
    if stream:
        with client.messages.stream(model="gpt-test", max_tokens=100, messages=HI) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model="gpt-test", max_tokens=100, messages=HI)
    server, attempt = check(exporter, "chat", "messages", "gpt-test", "ok")
    a = attrs(server)
    assert a["gen_ai.response.id"] == message.id
    assert a["gen_ai.response.finish_reasons"] == ("end_turn",)
    usage = message.usage  # Anthropic's input_tokens leave out the cached ones; the span's count them all
    assert a["gen_ai.usage.input_tokens"] == (usage.input_tokens + (usage.cache_read_input_tokens or 0)
                                              + (usage.cache_creation_input_tokens or 0)) > 0
    sent_traceparent(fake_openai.app.state.fake.requests, attempt, "/v1/chat/completions")


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_chat(traced, fake_openai: Running, stream: bool) -> None:
    start, exporter = traced
    gw = start()
    client = gw.client()
    if stream:
        events = list(client.responses.create(model="gpt-test", input="hi there", stream=True,
                                              extra_headers={"traceparent": TRACEPARENT}))
        response = events[-1].response
    else:
        response = client.responses.create(model="gpt-test", input="hi there",
                                           extra_headers={"traceparent": TRACEPARENT})
    server, attempt = check(exporter, "chat", "responses", "gpt-test", "ok")
    a = attrs(server)
    assert a["gen_ai.response.id"] == response.id == "resp_fake1"
    assert a["gen_ai.response.finish_reasons"] == ("completed",)
    assert a["gen_ai.usage.output_tokens"] == response.usage.output_tokens > 0
    sent_traceparent(fake_openai.app.state.fake.requests, attempt, "/v1/responses")


@pytest.fixture
def media() -> Iterator[Running]:
    app = make_media()
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


def test_passthrough_endpoints_have_their_own_names(traced, media: Running) -> None:
    start, exporter = traced
    gw = start(f"""
[providers.media]
kind = "openai"
base_url = "{media.url}/v1"
api_key = "{PROVIDER_KEY}"

[files]
model = "files-store"

[[models]]
name = "dall-e"
targets = [{{ provider = "media", model = "dall-e-3" }}]

[[models]]
name = "files-store"
targets = [{{ provider = "media", model = "gpt-4o-mini" }}]
""")
    client = gw.client(default_headers={"traceparent": TRACEPARENT})
    client.images.generate(model="dall-e", prompt="a cat")
    server, attempt = check(exporter, "images.generations", "images.generations", "dall-e", "dall-e-3")
    assert attrs(server)["url.path"] == "/v1/images/generations"
    sent_traceparent(media.app.state.media.requests, attempt, "/v1/images/generations")

    uploaded = client.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    check(exporter, "files", "files", "files-store", "gpt-4o-mini")
    assert client.files.content(uploaded.id).read() == b'{"custom_id": "a"}\n'
    server, attempt = check(exporter, "files", "files", "files-store", "gpt-4o-mini")
    assert attrs(server)["url.path"] == f"/v1/files/{uploaded.id}/content"
    sent_traceparent(media.app.state.media.requests, attempt, f"/v1/files/{uploaded.id}/content")


def test_other_paths_are_not_traced(traced) -> None:
    start, exporter = traced
    gw = start()
    gw.client().models.list()
    import httpx

    assert httpx.get(gw.url + "/healthz").status_code == 200
    assert httpx.get(gw.url + "/v1/responses/resp_x", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                     timeout=10).status_code in (400, 404)
    gw.client().chat.completions.create(model="gpt-test", messages=HI)  # one traced request to wait for
    assert [s.name for s in spans(exporter, SpanKind.SERVER)] == ["chat gpt-test"]
