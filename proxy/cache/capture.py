"""What a relayed stream said, rebuilt as the whole chat.completion it stands for, so that it can be stored.

The relay hands each piece of OpenAI SSE bytes to ``feed`` as it sends it: the capture only reads
(the client's bytes are never held back), and gives up for good once the answer grows past the
cache's entry limit or carries an error.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.base import Usage


class StreamCapture:
    __slots__ = ("buffer", "limit", "size", "failed", "done", "head", "choices", "usage")

    def __init__(self, limit: int) -> None:
        self.buffer = b""
        self.limit = limit
        self.size = 0
        self.failed = False
        self.done = False  # [DONE] was relayed
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        if self.failed or not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.failed = True
            self.buffer = b""
            return
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            self._event(buffer[:end])
            buffer = buffer[end + 2:]
        self.buffer = buffer

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # comments (keep-alives) and other fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.failed = True
                return
            if not isinstance(chunk, dict) or "error" in chunk:
                self.failed = True
                return
            self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            choice = self.choices.setdefault(int(c.get("index", 0)), {"parts": {}, "tools": {}, "finish": None})
            delta = c.get("delta") or {}
            for field in ("content", "reasoning_content", "refusal"):
                if isinstance(delta.get(field), str):
                    choice["parts"].setdefault(field, []).append(delta[field])
            if delta.get("role"):
                choice["role"] = delta["role"]
            for call in delta.get("tool_calls") or ():
                tool = choice["tools"].setdefault(int(call.get("index", 0)), {"args": []})
                if call.get("id"):
                    tool["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    tool["name"] = fn["name"]
                if isinstance(fn.get("arguments"), str):
                    tool["args"].append(fn["arguments"])
            if c.get("finish_reason"):
                choice["finish"] = c["finish_reason"]

    def completion(self, usage: Usage | None) -> bytes | None:
        """The whole chat.completion, or None if the stream did not end cleanly with every finish reason."""
        if self.failed or not self.done or not self.choices:
            return None
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            if c["finish"] is None:
                return None
            message: dict[str, Any] = {"role": c.get("role", "assistant"),
                                       "content": "".join(c["parts"].get("content", ())) or None}
            for field in ("reasoning_content", "refusal"):
                if field in c["parts"]:
                    message[field] = "".join(c["parts"][field])
            if c["tools"]:
                message["tool_calls"] = [
                    {"id": t.get("id"), "type": "function", "function": {"name": t.get("name"),
                                                                         "arguments": "".join(t["args"])}}
                    for _, t in sorted(c["tools"].items())]
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": c["finish"]})
        body = {"id": self.head.get("id"), "object": "chat.completion", "created": self.head.get("created"),
                "model": self.head.get("model"), "choices": choices}
        if self.head.get("system_fingerprint") is not None:
            body["system_fingerprint"] = self.head["system_fingerprint"]
        shown = self.usage or (usage.to_openai() if usage is not None else None)
        if shown is not None:
            body["usage"] = shown
        return orjson.dumps(body)
