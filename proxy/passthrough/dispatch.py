"""The dispatch stage of a pass-through request: the alias's OpenAI-kind targets, each sent the client's
request with only ``model`` rewritten, and the answer taken as JSON or relayed as bytes.

A JSON body can be sent again, so it gets the alias's retries, fallbacks and hedging as chat does. An
upload is streamed from the client as it is sent, so it can be sent once: one attempt, on the first
target the router picks.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from adapters.base import Reply, UpstreamError, UpstreamRequest, bad_response
from proxy.client_request import ClientRequest
from proxy.dispatch import Dispatch, Outcome, category
from proxy.errors import GatewayError, bad_request
from proxy.http1 import Response
from proxy.observability.observer import Observer
from proxy.passthrough.multipart import Upload
from proxy.passthrough.specs import ECHO_ANSWERS, Spec
from proxy.passthrough.usage import usage_of
from proxy.router import Router, TargetState
from proxy.settings import ModelAlias
from proxy.upstream import TRANSPORT_ERRORS, Upstream

_QUERY = re.compile(r"[A-Za-z0-9\-._~]+=(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*(?:&[A-Za-z0-9\-._~]+="
                    r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*)*")


@dataclass(slots=True)
class Passed(Outcome):
    """An attempt that answered: a JSON ``reply``, or a ``response`` whose body is relayed as it comes."""

    response: Response | None = None
    content_type: str = ""
    disposition: str | None = None


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in ("application/json", "")


class PassthroughDispatch(Dispatch):
    def __init__(self, router: Router, upstreams: dict[str, Upstream], obs: Observer, alias: ModelAlias,
                 request: ClientRequest, spec: Spec, ident: str | None, query: str,
                 upload: Upload | None, content_type: str | None) -> None:
        super().__init__(router, upstreams, obs, alias, request)
        self.spec = spec
        self.path = spec.upstream_path(ident)  # a 400 for a bad id, before anything is sent
        if query and not _QUERY.fullmatch(query):
            raise bad_request("The query string must be name=value pairs of URL-safe characters.", param="query",
                              code="invalid_value")
        self.query = query
        self.upload = upload
        self.content_type = content_type

    def serves(self, state: TargetState) -> bool:
        kind = self.upstreams[state.target.provider].provider.kind
        return kind in self.spec.kinds or (kind == "echo" and self.spec.name in ECHO_ANSWERS)

    def plan(self) -> list[TargetState]:
        states = self.router.states[self.alias.name]
        if not any(self.serves(s) for s in states):
            kinds = sorted({self.upstreams[s.target.provider].provider.kind for s in states})
            where = f"{self.spec.method} /v1{self.spec.path}"
            raise GatewayError(400, f"{where} is not available for model `{self.alias.name}`: its "
                               f"targets are of kind {', '.join(kinds)}, and this endpoint is passed through to "
                               f"{' or '.join(self.spec.kinds)} targets only.", code="unsupported_endpoint",
                               param="model")
        plan = [s for s in super().plan() if self.serves(s)]
        if not plan:
            raise GatewayError(503, f"No target of `{self.alias.name}` that serves this endpoint is available "
                               "right now (circuit open).", "service_unavailable_error", "no_healthy_upstream",
                               headers={"retry-after": "1"})
        return plan

    async def run(self) -> Outcome:
        if self.upload is None and not self.request.stream:
            return await super().run()
        # An upload goes once; relayed answers (raw, or stream: true) are not hedged: a losing relay would
        # hold its connection.
        plan = self.plan()
        started = time.perf_counter()
        try:
            return await (self._once(plan[0]) if self.upload is not None else self._sequential(plan))
        finally:
            self.waited_s += time.perf_counter() - started

    async def _once(self, state: TargetState) -> Outcome:
        """One attempt (an upload cannot be sent twice), with what ``_try_target`` tells the router."""
        self.attempts += 1
        self.last = state
        state.begin(time.monotonic())
        started = time.perf_counter()
        try:
            outcome = await self._attempt(state)
            state.succeeded(time.perf_counter() - started)
            self.obs.attempt_finished(state, outcome.call, time.perf_counter() - started, None)
            return outcome
        except UpstreamError as e:
            self.obs.attempt_finished(state, self._call(state)[1], time.perf_counter() - started, e)
            if category(e) in ("client", "context_window"):
                state.abandoned()
            else:
                state.failed()
            raise
        except BaseException:
            state.abandoned()
            raise
        finally:
            state.end()

    def _url(self, upstream: Upstream, model: str) -> str:
        provider = upstream.provider
        query = self.query
        base = provider.base_url
        if provider.kind == "azure":
            version = provider.api_version
            if not version:
                base = f"{base}/openai/v1"
            else:
                version_query = f"api-version={quote(version, safe='')}"
                query = f"{query}&{version_query}" if query else version_query
                base = (f"{base}/openai/deployments/{quote(model, safe='')}" if self.spec.routed_by == "model"
                        else f"{base}/openai")
        return f"{base}/{self.path}" + (f"?{query}" if query else "")

    async def _attempt(self, state: TargetState) -> Outcome:
        upstream, call = self._call(state)
        target = call.target
        model = target.model if self.spec.routed_by == "model" else None
        url = self._url(upstream, target.model)
        headers = dict(getattr(upstream.adapter, "headers", {}))
        content: bytes | AsyncIterator[bytes] = b""
        if self.spec.body == "json":
            body = self.request.body if model is None else {**self.request.body, "model": model}
            content = orjson.dumps(body)
        elif self.upload is not None:
            content, length = self.upload.with_model(model)
            headers["content-type"] = self.content_type or ""
            if length is not None:
                headers["content-length"] = str(length)
        else:
            headers.pop("content-type", None)
        req = self._started(state, call, UpstreamRequest(url, headers, content if isinstance(content, bytes) else b"",
                                                         self.spec.method))
        if upstream.provider.kind == "echo":
            raw = await upstream.fetch(req, target.connect_timeout_s, target.timeout_s)
            return Passed(state, upstream, call, reply=self._reply(upstream, call.alias, raw))
        pool, path = upstream._route(url)
        response: Response | None = None
        try:
            async with asyncio.timeout(target.timeout_s):  # the upload, the upstream's work and a JSON answer
                response = await pool.request(req.method, path, req.headers, content, target.connect_timeout_s,
                                              target.stream_idle_timeout_s)
                if response.status >= 300:
                    error_body = await response.read()
                    raise upstream.adapter.error(response.status, error_body, response.headers)
                content_type = response.headers.get("content-type", "")
                if self.spec.raw or not is_json(content_type):
                    return Passed(state, upstream, call, response=response, content_type=content_type or
                                  "application/octet-stream", disposition=response.headers.get("content-disposition"))
                raw = await response.read()
        except TimeoutError:
            if response is not None:
                response.close()
            raise upstream.transport_error(TimeoutError()) from None
        except TRANSPORT_ERRORS as exc:
            if response is not None:
                response.close()
            raise upstream.transport_error(exc) from None
        except BaseException:
            if response is not None:
                response.close()
            raise
        return Passed(state, upstream, call, reply=self._reply(upstream, call.alias, raw))

    def _reply(self, upstream: Upstream, alias: str, raw: bytes) -> Reply:
        """A JSON answer as the client gets it: ``model``, where the answer names one, is the alias."""
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_response(upstream.provider, "a body that is not JSON") from None
        if isinstance(data, dict) and isinstance(data.get("model"), str) and self.spec.routed_by == "model":
            data["model"] = alias
            raw = orjson.dumps(data)
        return Reply(raw, usage_of(self.spec.name, self.request.body, data, self.request.prompt_estimate))
