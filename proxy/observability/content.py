"""Prompt and completion text on trace spans, only with ``[observability] capture_content = true``.

Both are written in the OpenTelemetry GenAI conventions' message shape ({role, parts}):
gen_ai.input.messages from the client's request, gen_ai.output.messages rebuilt from the bytes the
client was sent (a whole JSON answer, or the SSE chunks of a stream joined per choice).
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.sse_decoder import SSEDecoder

MAX_CAPTURE_BYTES = 1 << 20  # stream bytes kept to rebuild the completion text


def content_attributes(body: dict[str, Any] | None, sent: list[bytes] | None) -> dict[str, str]:
    """gen_ai.input.messages from the request ``body``, gen_ai.output.messages from the ``sent`` bytes."""
    out = {}
    if body is not None and isinstance(body.get("messages"), list):
        out["gen_ai.input.messages"] = orjson.dumps([_message(m) for m in body["messages"]
                                                     if isinstance(m, dict)]).decode()
    if sent:
        outputs = _outputs(b"".join(sent))
        if outputs:
            out["gen_ai.output.messages"] = orjson.dumps(outputs).decode()
    return out


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    for p in content if isinstance(content, list) else ():
        if isinstance(p, dict) and p.get("type") == "text":
            parts.append({"type": "text", "content": p.get("text", "")})
        elif isinstance(p, dict):
            parts.append({"type": str(p.get("type", "unknown"))})  # images, audio, files: the kind only
    return parts


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat message in the conventions' {role, parts} shape."""
    if m.get("role") == "tool":
        return {"role": "tool", "parts": [{"type": "tool_call_response", "id": m.get("tool_call_id"),
                                           "result": m.get("content")}]}
    parts = _parts(m.get("content"))
    for tc in m.get("tool_calls") or ():
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        parts.append({"type": "tool_call", "id": tc.get("id"), "name": fn.get("name"),
                      "arguments": fn.get("arguments")})
    out = {"role": m.get("role"), "parts": parts}
    if "finish_reason" in m:
        out["finish_reason"] = m["finish_reason"]
    return out


def _outputs(raw: bytes) -> list[dict[str, Any]]:
    """The completion as the client got it: a whole JSON answer, or SSE chunks joined per choice."""
    if not raw.lstrip().startswith((b"data:", b":")):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return []
        return [_message({**(c.get("message") or {}), "finish_reason": c.get("finish_reason")})
                for c in data.get("choices") or () if isinstance(c, dict)]
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    decoder = SSEDecoder()
    for _, data in [*decoder.feed(raw), *decoder.flush()]:
        if data.strip() == b"[DONE]":
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # cut off at MAX_CAPTURE_BYTES, or not JSON
        for c in event.get("choices") or () if isinstance(event, dict) else ():
            i = c.get("index", 0)
            content = (c.get("delta") or {}).get("content")
            if content:
                texts.setdefault(i, []).append(content)
            if c.get("finish_reason"):
                finish[i] = c["finish_reason"]
    return [{"role": "assistant", "parts": [{"type": "text", "content": "".join(texts.get(i, []))}],
             "finish_reason": finish.get(i)} for i in sorted(set(texts) | set(finish))]
