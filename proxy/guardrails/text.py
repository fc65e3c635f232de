"""Where the text of a request or an answer is: slots a guardrail can read and rewrite in place."""

from __future__ import annotations

from typing import Any


class Slot:
    """One string inside a JSON document: ``container[key]``; ``tool`` if it is a tool's result."""

    __slots__ = ("container", "key", "tool")

    def __init__(self, container: Any, key: Any, tool: bool = False) -> None:
        self.container = container
        self.key = key
        self.tool = tool

    @property
    def text(self) -> str:
        return self.container[self.key]

    @text.setter
    def text(self, value: str) -> None:
        self.container[self.key] = value


def _content(container: Any, key: Any, tool: bool, out: list[Slot]) -> None:
    value = container.get(key) if isinstance(container, dict) else None
    if isinstance(value, str):
        out.append(Slot(container, key, tool))
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(Slot(part, "text", tool))


def request_slots(body: dict[str, Any]) -> list[Slot]:
    """The prompt's text: chat messages (the chat form of Messages and Responses requests too),
    a completion's prompt, or embeddings input."""
    out: list[Slot] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                _content(m, "content", m.get("role") in ("tool", "function"), out)
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            out.append(Slot(body, name))
        elif isinstance(value, list):
            out.extend(Slot(value, i) for i, v in enumerate(value) if isinstance(v, str))
    return out


_TEXT_KEYS = frozenset({"content", "text", "system", "instructions", "input"})
_REPLY_KEYS = frozenset({"content", "text"})


def walk_slots(node: Any, keys: frozenset[str] = _TEXT_KEYS, out: list[Slot] | None = None,
               under_key: bool = False) -> list[Slot]:
    """Every string under one of ``keys``, however deep: the text of a body in any client API (an
    Anthropic Messages or OpenAI Responses body as sent, an answer in OpenAI, Anthropic or Responses form)."""
    out = [] if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str):
                if k in keys:
                    out.append(Slot(node, k))
            elif isinstance(v, dict | list):
                walk_slots(v, keys, out, k in keys)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str):
                if under_key:  # a list of strings under a text key ("input": ["a", "b"])
                    out.append(Slot(node, i))
            elif isinstance(v, dict | list):
                walk_slots(v, keys, out, under_key)
    return out


def reply_slots(body: dict[str, Any]) -> list[Slot]:
    """An answer's text: OpenAI choices' content (or completions' text), Anthropic content blocks, or
    Responses output text."""
    return walk_slots(body.get("choices") or body.get("content") or body.get("output") or [], _REPLY_KEYS, None,
                      "content" in body)
