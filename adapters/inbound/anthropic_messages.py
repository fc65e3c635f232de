"""Anthropic Messages request (``POST /v1/messages``) -> the internal OpenAI chat request.

Used for every target that does not speak Messages itself (OpenAI-kind, Gemini, echo); Anthropic-kind
targets get the client's body as it is (``anthropic_passthrough``). Policies:

- ``system`` (a string or text blocks) becomes the first, system, message.
- ``tool_result`` blocks become ``tool`` messages, placed before the rest of their user turn.
- Thinking blocks in earlier assistant turns are dropped: their signatures only mean something to
  Anthropic, and OpenAI-compatible servers reject unknown message fields.
- ``thinking.budget_tokens`` becomes ``reasoning_effort`` (the nearest of low, medium, high).
- Server tools (web search, code execution, ...) have no chat form: a 400 naming ``tools[i]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.errors import APIError

ROLES = ("user", "assistant")


def invalid(message: str, param: str | None = None) -> APIError:
    """A 400 for the client, rendered in Anthropic's error format by the gateway; names the field."""
    return APIError(400, f"{param}: {message}" if param else message, "invalid_request_error", "invalid_request",
                    param)


def check_request(body: dict[str, Any], *, counting: bool = False) -> None:
    """What Anthropic itself checks before anything else: required fields and their types."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("Field required", "model")
    if not counting:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise invalid("Field required", "max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise invalid("Input should be a positive integer", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("Field required" if messages is None else "Input should be a valid list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise invalid("Input should be 'user' or 'assistant'", f"messages.{i}.role")
        content = m.get("content")
        if not isinstance(content, str | list):
            raise invalid("Input should be a valid string or list of content blocks", f"messages.{i}.content")
        if isinstance(content, list) and not all(isinstance(b, dict) and isinstance(b.get("type"), str)
                                                 for b in content):
            raise invalid("each content block must be an object with a 'type'", f"messages.{i}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise invalid("Input should be a valid string or list of text blocks", "system")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("Input should be a valid boolean", "stream")
    for name in ("tools", "stop_sequences"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise invalid("Input should be a valid list", name)


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body that asks the same of a non-Anthropic target. Never mutates ``body``."""
    out: dict[str, Any] = {"model": body["model"], "messages": messages(body)}
    if body.get("max_tokens") is not None:  # OpenAI's current name: its reasoning models refuse max_tokens
        out["max_completion_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    effort = reasoning_effort(body.get("thinking"))
    if effort is not None:
        out["reasoning_effort"] = effort
    tools(body, out)
    response_format(body, out)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def reasoning_effort(thinking: Any) -> str | None:
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        return "medium"
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid("must be an object", "output_config.format.schema")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    given = body.get("tools")
    if not given:
        return
    converted = []
    for i, tool in enumerate(given):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise invalid("a tool needs a 'name'", f"tools.{i}")
        if tool.get("type") not in (None, "custom"):
            raise invalid(f"server tool {tool.get('type')!r} is only available on Anthropic models", f"tools.{i}")
        fn: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        schema = tool.get("input_schema")
        fn["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        converted.append({"type": "function", "function": fn})
    out["tools"] = converted
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise invalid("must be auto, any, tool or none", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# messages -----------------------------------------------------------------------------------------


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "\n\n".join(texts(system, "system"))
        if text:
            out.append({"role": "system", "content": text})
    for i, m in enumerate(body["messages"]):
        content = m["content"]
        if m["role"] == "user":
            out.extend(user_turn(content, f"messages.{i}.content"))
        else:
            out.append(assistant_turn(content, f"messages.{i}.content"))
    return out


def texts(blocks: list[Any], param: str) -> list[str]:
    found = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid("only text blocks are allowed here", f"{param}.{j}")
        found.append(block["text"])
    return found


def user_turn(content: str | list[Any], param: str) -> list[dict[str, Any]]:
    """One user turn: its tool results as ``tool`` messages first, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        where = f"{param}.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": source_url(block.get("source"), where)}})
        elif kind == "document":
            parts.append(document_part(block, where))
        elif kind == "tool_result":
            results.append(tool_message(block, where))
        else:
            raise invalid(f"content blocks of type {kind!r} are only available on Anthropic models", where)
    out = results
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text and len(parts) == 1
                    else parts})
    return out


def source_url(source: Any, param: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise invalid("source must be base64 (media_type, data) or url", f"{param}.source")


def document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if isinstance(source, dict) and source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        file: dict[str, Any] = {"file_data": source_url(source, param)}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    raise invalid("only PDF (base64) and plain-text documents can be sent to this model", f"{param}.source")


def tool_message(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid("Field required", f"{param}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(texts(content, f"{param}.content"))
    else:
        raise invalid("must be a string or a list of text blocks", f"{param}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def assistant_turn(content: str | list[Any], param: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise invalid("a tool_use block needs an 'id' and a 'name'", f"{param}.{j}")
            arguments = orjson.dumps(block.get("input") if isinstance(block.get("input"), dict) else {}).decode()
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise invalid(f"content blocks of type {kind!r} are only available on Anthropic models", f"{param}.{j}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    return message
