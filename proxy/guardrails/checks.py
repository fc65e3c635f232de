"""The in-process guardrails: ``pii`` and ``regex`` (find spans: redact, block or flag) and ``injection``
(a score against a threshold). Each also checks a stream's text piece by piece (``scan``)."""

from __future__ import annotations

from typing import Any

from proxy.guardrails.detect import Finder
from proxy.guardrails.injection import score
from proxy.guardrails.state import GuardState, blocked
from proxy.guardrails.text import Slot
from proxy.guardrails.vault import Vault
from proxy.settings import GuardrailConfig


class Guard:
    """One configured guardrail. ``incremental`` guards can ``scan`` a stream's text as it passes."""

    incremental = False

    def __init__(self, config: GuardrailConfig) -> None:
        self.config = config
        self.name = config.name

    async def check(self, tx: Any, state: GuardState, on: str, body: dict[str, Any], slots: list[Slot]
                    ) -> dict[str, Any] | None:
        """Check (and maybe rewrite) ``slots`` of ``body``; a replacement body, or None; raise to block."""
        raise NotImplementedError

    def scan(self, text: str, new_from: int) -> list[str]:
        """What a stream's text shows in its part from ``new_from`` on: entity types, or ["injection"]."""
        return []


class SpanGuard(Guard):
    """``kind = "pii"`` (built-in detectors) and ``kind = "regex"`` (the config's patterns)."""

    incremental = True

    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        self.finder = Finder(config.entities if config.kind == "pii" else (), config.patterns)

    async def check(self, tx: Any, state: GuardState, on: str, body: dict[str, Any], slots: list[Slot]
                    ) -> dict[str, Any] | None:
        action = self.config.action
        types: dict[str, None] = {}
        count = 0
        output_vault: Vault | None = None
        for slot in slots:
            text = slot.text
            spans = self.finder.spans(text)
            if not spans:
                continue
            count += len(spans)
            for _, _, entity in spans:
                types[entity] = None
            if action == "redact":
                if on == "input":
                    slot.text = state.vault.redact(text, spans)
                else:  # placeholders of its own: an answer's redactions are not restored
                    output_vault = output_vault or Vault()
                    slot.text = output_vault.redact(text, spans)
        if not count:
            return None
        state.acted(self.name, on, action, count)
        if action == "block":
            raise blocked(self.config.kind, self.name, on, ", ".join(sorted(types)))
        if action == "redact" and on == "input" and self.config.restore:
            state.restore = True
        return None

    def scan(self, text: str, new_from: int) -> list[str]:
        return [entity for _, end, entity in self.finder.spans(text) if end > new_from]

    def redact_native(self, state: GuardState, slots: list[Slot]) -> None:
        """The same redaction on the client's own body (Messages, Responses), which a target that speaks the
        client's API gets instead of the chat form; counted already on the chat form."""
        for slot in slots:
            spans = self.finder.spans(slot.text)
            if spans:
                slot.text = state.vault.redact(slot.text, spans)


class InjectionGuard(Guard):
    incremental = True

    async def check(self, tx: Any, state: GuardState, on: str, body: dict[str, Any], slots: list[Slot]
                    ) -> dict[str, Any] | None:
        threshold = self.config.threshold
        if not any(score(slot.text, slot.tool) >= threshold for slot in slots):
            return None
        state.acted(self.name, on, self.config.action)
        if self.config.action == "block":
            raise blocked("injection", self.name, on)
        return None

    def scan(self, text: str, new_from: int) -> list[str]:
        return ["injection"] if score(text) >= self.config.threshold else []
