"""OpenTelemetry traces (the optional extra ``otel``), per the OpenTelemetry GenAI conventions.

One SERVER span per model request (chat, completions, embeddings, Anthropic messages, responses and the
pass-through endpoints), continuing the client's W3C ``traceparent``, and one CLIENT span per upstream
attempt (retries, fallbacks and hedged requests each get their own), whose context goes upstream as
``traceparent``. gen_ai.operation.name is the conventions' well-known value where one applies (chat for
chat completions, Anthropic messages and responses; text_completion; embeddings), else the pass-through
endpoint's name (images.generations, audio.transcriptions, files, ...); gateway.endpoint says which
endpoint it was. Spans are named ``{gen_ai.operation.name} {model}`` and
carry gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model,
gen_ai.response.id, gen_ai.response.finish_reasons, gen_ai.usage.input_tokens/output_tokens,
server.address/port and error.type (our low-cardinality reasons: timeout, connection, status_429,
status_4xx, status_5xx, bad_response, cancelled, client_disconnect, or the gateway's error code).
Prompt and completion text (gen_ai.input.messages, gen_ai.output.messages) only with
``[observability] capture_content = true``, and only for chat completions.

On when a tracer provider is handed to ``create_app``, or the standard ``OTEL_*`` variables ask for
an exporter (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER
=otlp; OTEL_SDK_DISABLED=true turns it off), or the embedding program already set a global SDK
provider. Otherwise nothing of this runs: no middleware, no hooks, opentelemetry is not imported.

How: an ASGI middleware opens the server span and keeps the request's trace state in a context
variable; the ``attempt_started`` hook opens the attempt's span and adds its traceparent to the
upstream request; ``attempt_finished`` closes it. Response id and finish reasons are read off the bytes
the client gets, with two regex scans per chunk, rather than parsing every chunk again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from proxy.observability.content import MAX_CAPTURE_BYTES, content_attributes
from proxy.observability.observer import Observer
from proxy.passthrough.specs import ENDPOINTS as PASSTHROUGH

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from adapters.base import Call, UpstreamError, UpstreamRequest
    from proxy.records import UsageRecord
    from proxy.router import TargetState
    from proxy.runtime import Runtime
    from proxy.settings import ProviderConfig

log = logging.getLogger("gateway.tracing")

# gen_ai.operation.name by endpoint: the conventions' well-known values; a pass-through endpoint's is its name.
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "messages": "chat",
              "responses": "chat"}
_MODEL_PATHS = {"/chat/completions": "chat", "/completions": "completions", "/embeddings": "embeddings",
                "/messages": "messages", "/responses": "responses",
                **{spec.path: spec.name for spec in PASSTHROUGH if "{id}" not in spec.path}}
LLM_PATHS = {prefix + path: endpoint for prefix in ("/v1", "") for path, endpoint in _MODEL_PATHS.items()}
# Pass-through paths with an upstream id in them (/v1/files/{id}/content): matched only when no fixed path is.
_ID_PATHS = tuple((re.compile(prefix + re.escape(spec.path).replace(r"\{id\}", "[^/]+")), spec.name)
                  for prefix in ("/v1", "") for spec in PASSTHROUGH if "{id}" in spec.path)
_ID = re.compile(rb'"id":\s*"([^"\\]{1,200})"')
# Where each generating endpoint's answer says why it stopped: Anthropic's stop_reason, a response's final
# status (the top-level object's, whose members OpenAI and the gateway write in this order).
_FINISH = {"chat": re.compile(rb'"finish_reason":\s*"([A-Za-z_]{1,40})"'),
           "completions": re.compile(rb'"finish_reason":\s*"([A-Za-z_]{1,40})"'),
           "messages": re.compile(rb'"stop_reason":\s*"([A-Za-z_]{1,40})"'),
           "responses": re.compile(rb'"object":\s*"response",\s*"created_at":\s*[0-9.]+,\s*'
                                   rb'"status":\s*"(completed|incomplete|failed|cancelled)"')}

# gen_ai.provider.name by provider kind; OpenAI-compatible hosts the conventions name get their own.
_KIND_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "azure": "azure.ai.openai"}
_HOST_NAMES = {"api.groq.com": "groq", "api.mistral.ai": "mistral_ai", "api.deepseek.com": "deepseek",
               "api.x.ai": "x_ai", "api.perplexity.ai": "perplexity", "api.cohere.com": "cohere"}

_CURRENT: ContextVar[TracedRequest | None] = ContextVar("gateway_trace", default=None)
_ATTEMPT: ContextVar[Any] = ContextVar("gateway_trace_attempt", default=None)


def env_configured(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether the standard OTEL_* variables ask for trace export."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter and exporter != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported by the gateway (only otlp): traces are off", exporter)
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(capture_content: bool, tracer_provider: Any = None) -> Tracing | None:
    """A Tracing when traces are wanted and possible, else None (and nothing else happens)."""
    if tracer_provider is not None:
        return Tracing(tracer_provider, capture_content, own=False)
    if env_configured():
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            log.warning("OTEL_* variables are set but OpenTelemetry is not installed: traces are off "
                        "(install the extra: pip install 'llm-gateway[otel]')")
            return None
        return Tracing(None, capture_content, own=True)
    api = sys.modules.get("opentelemetry.trace")  # only an embedding program that set a provider imported it
    if api is not None:
        provider = api.get_tracer_provider()
        if not isinstance(provider, api.ProxyTracerProvider) and type(provider).__name__ != "NoOpTracerProvider":
            return Tracing(provider, capture_content, own=False)
    return None


def endpoint_for(path: str) -> str | None:
    """The traced endpoint a request path names (chat, messages, images.generations, ...), or None."""
    endpoint = LLM_PATHS.get(path)
    if endpoint is None and path.startswith(("/v1/files/", "/v1/batches/", "/files/", "/batches/")):
        for pattern, name in _ID_PATHS:
            if pattern.fullmatch(path):
                return name
    return endpoint


def provider_name(provider: ProviderConfig) -> str:
    """gen_ai.provider.name for a configured provider: the conventions' well-known value when there is one."""
    host = provider.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return _HOST_NAMES.get(host) or _KIND_NAMES.get(provider.kind) or provider.kind


def _sdk_provider() -> Any:
    """A TracerProvider exporting over OTLP as the OTEL_* variables say (endpoint, headers, protocol,
    sampler, batch settings, resource attributes are all read by the SDK itself)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    attributes = {}
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = "llm-gateway"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class TracedRequest:
    """The trace state of one request, shared by the middleware, the upstream hook and the observer."""

    __slots__ = ("span", "ctx", "operation", "endpoint", "finish", "status", "record", "body", "open", "winner",
                 "winner_end", "response_id", "finish_reasons", "captured", "captured_bytes", "failed")

    def __init__(self, span: Any, ctx: Any, operation: str, endpoint: str) -> None:
        self.span = span
        self.ctx = ctx  # the server span's context: parent of the attempt spans
        self.operation = operation
        self.endpoint = endpoint
        self.finish = _FINISH.get(endpoint)  # None: the answer is not scanned (embeddings, pass-through)
        self.status = 0
        self.record: UsageRecord | None = None
        self.body: dict[str, Any] | None = None  # capture_content: the client's request
        self.open: list[Any] = []  # attempt spans not ended yet
        self.winner: Any = None  # the attempt that answered; ended with the response
        self.winner_end: int | None = None  # its end (ns) when it was a whole answer, not a stream
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []
        self.captured: list[bytes] | None = None
        self.captured_bytes = 0
        self.failed = False

    def saw(self, chunk: bytes) -> None:
        """Bytes sent to the client: pick up the response id and finish reasons."""
        if self.response_id is None:
            m = _ID.search(chunk)
            if m is not None:
                self.response_id = m.group(1).decode()
        if self.finish is not None:
            for m in self.finish.finditer(chunk):
                self.finish_reasons.append(m.group(1).decode())
        if self.captured is not None and self.captured_bytes < MAX_CAPTURE_BYTES:
            self.captured.append(chunk)
            self.captured_bytes += len(chunk)


class Tracing(Observer):
    def __init__(self, provider: Any, capture_content: bool, own: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider  # None: built from the OTEL_* variables by start()
        self.own = own
        self.capture_content = capture_content
        self.tracer: Any = None
        self.names: dict[str, str] = {}  # configured provider name -> gen_ai.provider.name
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()  # traceparent/tracestate only: no baggage upstream

    async def start(self) -> None:
        if self.provider is None:
            self.provider = _sdk_provider()
        self.tracer = self.provider.get_tracer("llm-gateway")

    async def aclose(self) -> None:
        """Flush the spans still batched, when the provider is ours to shut down."""
        if not self.own or self.provider is None:
            return
        try:
            await asyncio.to_thread(self.provider.shutdown)  # exporting may block on the network
        except Exception as e:
            log.warning("could not flush traces at shutdown: %s", e)

    def attach(self, runtime: Runtime) -> None:
        """Learn the providers of a new runtime (the first one, and each one a reload builds)."""
        for name, provider in runtime.config.providers.items():
            self.names[name] = provider_name(provider)

    # --- server span --------------------------------------------------------------------------------

    def begin(self, scope: Scope, endpoint: str) -> TracedRequest:
        operation = OPERATIONS.get(endpoint, endpoint)
        carrier: dict[str, str] = {}
        for k, v in scope["headers"]:
            if k in (b"traceparent", b"tracestate", b"host"):
                carrier[k.decode("latin-1")] = v.decode("latin-1")
        parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "http.request.method": scope["method"],
                                      "url.path": scope["path"], "gateway.endpoint": endpoint}
        host, port = _host_port(carrier.get("host", ""))
        if host:
            attributes["server.address"] = host
            if port.isdigit():
                attributes["server.port"] = int(port)
        span = self.tracer.start_span(operation, context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes=attributes)
        req = TracedRequest(span, self._trace.set_span_in_context(span, parent), operation, endpoint)
        if self.capture_content and endpoint == "chat":
            req.captured = []
        return req

    def end(self, req: TracedRequest) -> None:
        span, r = req.span, req.record
        now = time.time_ns()
        status = req.status
        if r is not None:
            if r.model:
                span.update_name(f"{req.operation} {r.model}")
                span.set_attribute("gen_ai.request.model", r.model)
            if r.provider:
                span.set_attribute("gen_ai.provider.name", self.names.get(r.provider, r.provider))
                span.set_attribute("gateway.provider", r.provider)
            span.set_attributes(_usage(r))
            span.set_attributes({"gateway.request_id": r.request_id, "gateway.attempts": r.attempts,
                                 "gateway.stream": r.stream})
            if r.key_name:
                span.set_attribute("gateway.key", r.key_name)
            if r.cost_usd is not None:
                span.set_attribute("gateway.cost_usd", r.cost_usd)
            if r.error_type:
                span.set_attribute("error.type", r.error_type)
            if r.guardrail_actions is not None:  # names and counts only (proxy.guardrails)
                span.set_attribute("gateway.guardrail_actions", r.guardrail_actions)
            status = max(status, r.status)  # a stream that failed mid-way was still a 200 on the wire
        response = self._response_attributes(req)
        span.set_attributes(response)
        if req.status:
            span.set_attribute("http.response.status_code", req.status)
        if self.capture_content and req.endpoint == "chat":
            span.set_attributes(content_attributes(req.body, req.captured))
        if status >= 500 or req.failed:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        if req.winner is not None:
            winner = req.winner
            winner.set_attributes(response)
            if r is not None:
                winner.set_attributes(_usage(r))
                if r.error_type == "client_disconnect":  # we closed the stream: not the upstream's failure
                    winner.set_attribute("error.type", "cancelled")
                elif r.error_type:  # the stream broke after it started
                    winner.set_attribute("error.type", r.error_type)
                    winner.set_status(self._trace.Status(self._trace.StatusCode.ERROR, r.error_type))
            winner.end(end_time=req.winner_end or now)
            _discard(req.open, winner)
        for other in req.open:  # hedged losers and attempts cut short by a client that left
            other.set_attribute("error.type", "cancelled")
            other.end(end_time=now)
        req.open.clear()
        span.end(end_time=now)

    def _response_attributes(self, req: TracedRequest) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if req.record is not None and req.record.status == 200 and req.record.upstream_model:
            out["gen_ai.response.model"] = req.record.upstream_model
        if req.response_id:
            out["gen_ai.response.id"] = req.response_id
        if req.finish_reasons:
            out["gen_ai.response.finish_reasons"] = tuple(req.finish_reasons)
        return out

    # --- attempt spans ------------------------------------------------------------------------------

    def attempt_started(self, state: TargetState, call: Call, request: UpstreamRequest) -> None:
        """Open the attempt's span and send its context upstream as traceparent."""
        req = _CURRENT.get()
        if req is None:
            return
        attributes: dict[str, Any] = {"gen_ai.operation.name": req.operation}
        url = urlsplit(request.url)
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        span = self.tracer.start_span(req.operation, context=req.ctx, kind=self._trace.SpanKind.CLIENT,
                                      attributes=attributes)
        req.open.append(span)
        _ATTEMPT.set(span)  # this task's attempt: attempt_finished runs in the same task
        headers = dict(request.headers)  # the adapter's dict is shared by every request: never mutate it
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        request.headers = headers

    def attempt_finished(self, state: TargetState, call: Call, seconds: float, error: UpstreamError | None) -> None:
        req = _CURRENT.get()
        if req is None:
            return
        span = _ATTEMPT.get()
        _ATTEMPT.set(None)
        if span is None or not any(s is span for s in req.open):  # failed before it was sent (adapter refused)
            span = self.tracer.start_span(req.operation, context=req.ctx, kind=self._trace.SpanKind.CLIENT,
                                          start_time=time.time_ns() - int(seconds * 1e9),
                                          attributes={"gen_ai.operation.name": req.operation})
            req.open.append(span)
        model = call.target.model
        span.update_name(f"{req.operation} {model}")
        span.set_attributes({"gen_ai.provider.name": self.names.get(call.provider.name, call.provider.kind),
                             "gen_ai.request.model": model, "gateway.provider": call.provider.name,
                             "gateway.target": state.label})
        if self.capture_content and req.endpoint == "chat":
            req.body = call.body
        if error is None:
            req.winner = span
            req.winner_end = None if call.stream else time.time_ns()
            return
        span.set_attribute("error.type", error.reason)
        if error.upstream_status:
            span.set_attribute("http.response.status_code", error.upstream_status)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error.reason))
        span.end()
        _discard(req.open, span)

    def request_finished(self, record: UsageRecord, overhead_s: float) -> None:
        req = _CURRENT.get()
        if req is not None:
            req.record = record


class TraceMiddleware:
    """Opens the server span around model requests (``LLM_PATHS`` and the pass-through paths with an id);
    every other path passes through."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = endpoint_for(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or self.tracing.tracer is None:
            await self.app(scope, receive, send)
            return
        req = self.tracing.begin(scope, endpoint)
        token = _CURRENT.set(req)

        async def traced_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                req.status = message["status"]
            elif kind == "http.response.body" and req.status == 200 and req.finish is not None:
                chunk = message.get("body", b"")
                if chunk:
                    req.saw(chunk)
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException:
            req.failed = True
            raise
        finally:
            _CURRENT.reset(token)
            self.tracing.end(req)


# --- helpers -----------------------------------------------------------------------------------------


def _discard(spans: list[Any], span: Any) -> None:
    for i, s in enumerate(spans):
        if s is span:
            del spans[i]
            return


def _host_port(value: str) -> tuple[str, str]:
    if value.startswith("["):  # [v6-address]:port
        host, _, rest = value[1:].partition("]")
        return host, rest[1:]
    host, _, port = value.partition(":")
    return host, port


def _usage(r: UsageRecord) -> dict[str, int]:
    if not (r.prompt_tokens or r.completion_tokens):
        return {}
    return {"gen_ai.usage.input_tokens": r.prompt_tokens, "gen_ai.usage.output_tokens": r.completion_tokens}
