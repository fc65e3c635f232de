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


def reply_slots(body: dict[str, Any]) -> list[Slot]:
    """An OpenAI answer's text: chat choices' message content, or completions' text."""
    out: list[Slot] = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            _content(message, "content", False, out)
        elif isinstance(choice.get("text"), str):
            out.append(Slot(choice, "text"))
    return out
