"""Guardrails: the hooks stage's checks on prompts and answers, configured as [[guardrails]].

A request's guardrails are ``[server] guardrails``, then its alias's, then its key's, each name once,
run in that order: on input after the alias is resolved (before limits), on output when the answer is
in (whole bodies) or as it passes (streams, proxy.guardrails.stream). A request with none attached
returns at the first line of ``before_request``.

    module      job
    detect      PII and secret detectors (spans)          vault       placeholders and restore
    injection   the prompt-injection score                text        where a body's text is
    checks      pii, regex, injection guardrails          external    python, webhook, llm guardrails
    state       one request's actions and its 400s        stream      output checks on chat streams
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import bad_request
from proxy.guardrails.checks import Guard, InjectionGuard, SpanGuard
from proxy.guardrails.external import CLASSIFYING, Blocked, LLMGuard, PythonGuard, WebhookGuard
from proxy.guardrails.state import GuardState
from proxy.guardrails.stream import StreamFilter
from proxy.guardrails.text import reply_slots, request_slots, walk_slots
from proxy.pipeline.transaction import Transaction

if TYPE_CHECKING:
    from proxy.runtime import Runtime

__all__ = ["Blocked", "GuardrailHooks"]


def build(config: Any, runtime: Runtime) -> Guard:
    if config.kind in ("pii", "regex"):
        return SpanGuard(config)
    if config.kind == "injection":
        return InjectionGuard(config)
    if config.kind == "python":
        return PythonGuard(config)
    if config.kind == "webhook":
        return WebhookGuard(config)
    return LLMGuard(config, runtime)


class GuardrailHooks:
    """The ``Hooks`` of a config with [[guardrails]]."""

    def __init__(self, runtime: Runtime) -> None:
        config = runtime.config
        self.obs = runtime.obs
        self.guards = {name: build(g, runtime) for name, g in config.guardrails.items()}
        self.server = tuple(config.server.guardrails)
        self.plans: dict[tuple[str, tuple[str, ...]], list[Guard]] = {}

    def plan(self, tx: Transaction) -> list[Guard]:
        alias = tx.alias.guardrails if tx.alias is not None else ()
        key = tuple(tx.key.guardrails) if tx.key is not None else ()
        k = (tx.alias.name if tx.alias is not None else "", key)
        got = self.plans.get(k)
        if got is None:
            names = dict.fromkeys((*self.server, *alias, *key))
            got = [self.guards[n] for n in names if n in self.guards]  # a managed key may name a removed one
            if len(self.plans) < 10_000:
                self.plans[k] = got
        return got

    async def before_request(self, tx: Transaction) -> None:
        if not self.guards or CLASSIFYING.get():
            return
        guards = self.plan(tx)
        if not guards:
            return
        request = tx.request
        assert request is not None
        state = tx.guardrails = GuardState()
        state.output = [g for g in guards if g.config.on_output]
        body = request.body
        slots = None
        for guard in guards:
            if not guard.config.on_input:
                continue
            if slots is None:
                slots = request_slots(body)
            new = await self._run(guard, tx, state, "input", body, slots)
            if new is not None:
                body = request.body = new
                slots = None
        native = getattr(request.frontend, "native", None)
        if native is not None and state.actions:
            slots = walk_slots(native)
            for guard in guards:
                if isinstance(guard, SpanGuard) and guard.config.on_input and guard.config.action == "redact":
                    guard.redact_native(state, slots)
        if state.restore or state.output or state.actions:
            # an answer kept for one request must not reach another whose redacted prompt looks the same
            tx.cache_control = ("no-store", None)
        if request.stream and (state.restore or state.output):
            if tx.endpoint != "chat":
                raise bad_request("Guardrails that restore or check answers need streams in the Chat Completions "
                                  "format; this request streams another API's events.", param="stream",
                                  code="unsupported_value")
            tx.stream_filter = StreamFilter(state, [g for g in state.output if g.incremental])

    async def after_response(self, tx: Transaction) -> None:
        state = tx.guardrails
        if state is None or tx.request is None or tx.request.stream:
            return
        reply = tx.outcome.reply if tx.outcome is not None else tx.cached
        if reply is None:
            return
        body_bytes = reply.body
        if state.output:
            body = orjson.loads(body_bytes)
            before = len(state.actions), sum(state.actions.values())
            for guard in state.output:
                new = await self._run(guard, tx, state, "output", body, reply_slots(body))
                if new is not None:
                    body = new
            if (len(state.actions), sum(state.actions.values())) != before:
                body_bytes = orjson.dumps(body)
        if state.restore:
            body_bytes = state.vault.restore_json(body_bytes)
        if body_bytes is not reply.body:
            reply.body = body_bytes

    async def aclose(self) -> None:
        for guard in self.guards.values():
            if isinstance(guard, WebhookGuard):
                await guard.aclose()

    async def _run(self, guard: Guard, tx: Transaction, state: GuardState, on: str, body: dict[str, Any],
                   slots: Any) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        try:
            return await guard.check(tx, state, on, body, slots)
        finally:  # what it did is counted from the usage row (proxy.observability.metrics)
            self.obs.guardrail_ran(guard.name, on, time.perf_counter() - t0)
