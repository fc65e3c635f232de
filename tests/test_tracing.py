"""OpenTelemetry traces through the real gateway: an in-memory span exporter (and, once, a fake OTLP
collector fed by the standard OTEL_* variables) sees one SERVER span per request and one CLIENT span
per upstream attempt, with GenAI attributes; the client's traceparent is continued and passed upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from proxy.app import create_app  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from tests.conftest import PROVIDER_KEY, Running, base_config  # noqa: E402
from tests.servers import ServerThread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a secret prompt about Paris"
MSGS = [{"role": "user", "content": PROMPT}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def traced(fake_openai: Running, tmp_path: Path) -> Iterator[tuple[Callable[..., Running], InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servers: list[ServerThread] = []

    def start(extra: str = "", observability: str = "") -> Running:
        text = base_config(fake_openai.url, tmp_path / f"gw{len(servers)}.db", extra) + observability
        app = create_app(parse_config(tomllib.loads(text), "test.toml", dict(os.environ)), tracer_provider=provider)
        server = ServerThread(app).start()
        servers.append(server)
        return Running(server, app)

    yield start, exporter
    for server in servers:
        server.stop()
    provider.shutdown()


def spans(exporter: InMemorySpanExporter, kind: SpanKind, requests: int = 1) -> list[ReadableSpan]:
    """Finished spans of ``kind``, oldest first, once ``requests`` server spans have ended: a server
    span ends just after the last byte went out, possibly after the client has read it."""
    deadline = time.monotonic() + 5
    while sum(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()) < requests:
        assert time.monotonic() < deadline, "the server span never ended"
        time.sleep(0.005)
    return sorted((s for s in exporter.get_finished_spans() if s.kind == kind), key=lambda s: s.start_time)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def hex_span(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def hex_trace(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def all_values(exporter: InMemorySpanExporter) -> str:
    return repr([(s.name, attrs(s)) for s in exporter.get_finished_spans()])


def test_chat_spans_continue_the_trace_and_go_upstream(traced, fake_openai):
    start, exporter = traced
    gw = start()
    resp = gw.client().chat.completions.create(model="gpt-test", messages=MSGS,
                                                extra_headers={"traceparent": TRACEPARENT})
    (server,) = spans(exporter, SpanKind.SERVER)
    (client,) = spans(exporter, SpanKind.CLIENT)

    assert server.name == "chat gpt-test"
    assert hex_trace(server) == TRACE_ID and format(server.parent.span_id, "016x") == PARENT_ID
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-test"
    assert a["gen_ai.response.model"] == "ok"
    assert a["gen_ai.response.id"] == resp.id
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == resp.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == resp.usage.completion_tokens
    assert a["server.address"] == "127.0.0.1" and a["http.response.status_code"] == 200
    assert "error.type" not in a and server.status.status_code != StatusCode.ERROR

    assert client.name == "chat ok" and client.parent.span_id == server.context.span_id
    c = attrs(client)
    assert c["gen_ai.operation.name"] == "chat" and c["gen_ai.provider.name"] == "openai"
    assert c["gen_ai.request.model"] == "ok" and c["gen_ai.response.id"] == resp.id
    assert c["server.address"] == "127.0.0.1" and c["server.port"] == fake_openai.server.port
    assert c["gen_ai.usage.input_tokens"] == resp.usage.prompt_tokens

    sent = fake_openai.app.state.fake.last()["headers"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{hex_span(client)}-01"  # the attempt's span is the upstream's parent
    values = all_values(exporter)
    assert PROMPT not in values and "Hello" not in values and PROVIDER_KEY not in values  # no content by default


def test_retry_and_fallback_are_one_client_span_each(traced, fake_openai):
    start, exporter = traced
    tag = os.urandom(4).hex()
    extra = (f'[[models]]\nname = "shaky"\n'
             f'targets = [{{ provider = "fake", model = "flaky-1-{tag}", max_retries = 1 }}]\n'
             '[[models]]\nname = "fallback"\ntargets = [{ provider = "fake", model = "fail-503", max_retries = 0 }, '
             '{ provider = "fake", model = "ok" }]\n')
    gw = start(extra)
    gw.client().chat.completions.create(model="shaky", messages=MSGS)
    (server,) = spans(exporter, SpanKind.SERVER)
    failed, ok = spans(exporter, SpanKind.CLIENT)
    assert attrs(server)["gateway.attempts"] == 2 and "error.type" not in attrs(server)
    for span in (failed, ok):
        assert span.name == f"chat flaky-1-{tag}" and span.parent.span_id == server.context.span_id
    assert attrs(failed)["error.type"] == "status_5xx" and attrs(failed)["http.response.status_code"] == 500
    assert failed.status.status_code == StatusCode.ERROR and failed.end_time <= ok.start_time
    assert "error.type" not in attrs(ok) and attrs(ok)["gen_ai.response.finish_reasons"] == ("stop",)
    upstream = [r["headers"]["traceparent"] for r in fake_openai.app.state.fake.requests
                if r["body"]["model"] == f"flaky-1-{tag}"]
    assert [t.rsplit("-", 1)[0] for t in upstream] == [f"00-{hex_trace(server)}-{hex_span(s)}" for s in (failed, ok)]

    exporter.clear()
    gw.client().chat.completions.create(model="fallback", messages=MSGS)
    first, second = spans(exporter, SpanKind.CLIENT)
    assert (first.name, attrs(first)["error.type"]) == ("chat fail-503", "status_5xx")
    assert second.name == "chat ok" and "error.type" not in attrs(second)
    assert attrs(spans(exporter, SpanKind.SERVER)[0])["gen_ai.response.model"] == "ok"


def test_stream_spans(traced):
    start, exporter = traced
    gw = start()
    chunks = list(gw.client().chat.completions.create(model="gpt-test", messages=MSGS, stream=True,
                                                      stream_options={"include_usage": True}))
    (server,) = spans(exporter, SpanKind.SERVER)
    (client,) = spans(exporter, SpanKind.CLIENT)
    a = attrs(server)
    assert a["gen_ai.response.id"] == chunks[0].id
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens
    assert a["gateway.stream"] is True
    assert client.end_time >= server.end_time - 50_000_000  # the attempt span covers the whole stream
    assert attrs(client)["gen_ai.response.finish_reasons"] == ("stop",)


def test_errors_on_spans(traced):
    start, exporter = traced
    gw = start()
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(model="a-fail-400", messages=MSGS)
    with pytest.raises(openai.APIError):
        list(gw.client().chat.completions.create(model="a-cut-stream", messages=MSGS, stream=True))
    bad, cut = spans(exporter, SpanKind.SERVER, requests=2)
    assert attrs(bad)["error.type"] == "status_4xx" and attrs(bad)["http.response.status_code"] == 400
    assert bad.status.status_code != StatusCode.ERROR  # a client's error is not the server's
    bad_attempt, cut_attempt = spans(exporter, SpanKind.CLIENT, requests=2)
    assert bad_attempt.status.status_code == StatusCode.ERROR and attrs(bad_attempt)["error.type"] == "status_4xx"
    assert attrs(cut)["error.type"] == "bad_response" and cut.status.status_code == StatusCode.ERROR
    assert attrs(cut_attempt)["error.type"] == "bad_response"  # broke after it started


def test_embeddings_span(traced):
    start, exporter = traced
    gw = start()
    emb = gw.client().embeddings.create(model="gpt-test", input="one two")
    (server,) = spans(exporter, SpanKind.SERVER)
    assert server.name == "embeddings gpt-test"
    assert attrs(server)["gen_ai.operation.name"] == "embeddings"
    assert attrs(server)["gen_ai.usage.input_tokens"] == emb.usage.prompt_tokens
    assert spans(exporter, SpanKind.CLIENT)[0].name == "embeddings ok"


def test_capture_content_puts_messages_on_the_span(traced):
    start, exporter = traced
    gw = start(observability="\n[observability]\ncapture_content = true\n")
    answer = gw.client().chat.completions.create(model="gpt-test", messages=MSGS).choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in gw.client().chat.completions.create(
        model="gpt-test", messages=MSGS, stream=True) if c.choices)
    import json

    for server, expected in zip(spans(exporter, SpanKind.SERVER, requests=2), (answer, text), strict=True):
        a = attrs(server)
        assert json.loads(a["gen_ai.input.messages"]) == [
            {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
        assert json.loads(a["gen_ai.output.messages"]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": expected}], "finish_reason": "stop"}]


def test_otlp_export_from_the_standard_environment(fake_openai, tmp_path, monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[bytes] = []

    async def traces(request: Request) -> Response:
        received.append(await request.body())
        return Response(b"", 200, media_type="application/x-protobuf")

    collector = ServerThread(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        text = base_config(fake_openai.url, tmp_path / "gw.db")
        app = create_app(parse_config(tomllib.loads(text), "test.toml", dict(os.environ)))
        server = ServerThread(app).start()
        Running(server, app).client().chat.completions.create(model="gpt-test", messages=MSGS)
        server.stop()  # shutdown flushes the batch
    finally:
        collector.stop()
    names, services = [], set()
    for body in received:
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            services.update(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            names += [s.name for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == ["chat gpt-test", "chat ok"] and services == {"llm-gateway"}


def test_not_configured_means_not_imported(tmp_path):
    """Without a provider or OTEL_* variables nothing of OpenTelemetry is loaded or wrapped."""
    config = tmp_path / "gw.toml"
    config.write_text(base_config("http://127.0.0.1:9", tmp_path / "gw.db"))
    code = ("import sys; from proxy.app import create_app; from proxy.config import load_config; "
            f"app = create_app(load_config({str(config)!r})); "
            "print(len(app.user_middleware), any(m.startswith('opentelemetry') for m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_client_that_leaves_mid_stream(traced):
    import httpx

    from tests.conftest import GATEWAY_KEY

    start, exporter = traced
    gw = start()
    body = {"model": "a-slow-stream", "messages": MSGS, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {GATEWAY_KEY}"}) as r:
        next(r.iter_raw())  # the first chunk, then hang up
    (server,) = spans(exporter, SpanKind.SERVER)
    (client,) = spans(exporter, SpanKind.CLIENT)
    assert attrs(server)["error.type"] == "client_disconnect"
    assert server.status.status_code != StatusCode.ERROR  # 499: the client's doing
    assert attrs(client)["error.type"] == "cancelled" and client.status.status_code != StatusCode.ERROR
