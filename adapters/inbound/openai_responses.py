"""OpenAI Responses request (``POST /v1/responses``) -> the internal OpenAI chat request.

Used for every target that does not speak Responses itself (Anthropic, Gemini, echo); ``kind =
"openai"`` targets get the client's body as it is (``openai_responses_passthrough``). Policies:

- ``instructions`` becomes the first, system, message; ``input`` a string or a list of items:
  messages (``input_text``, ``input_image``, ``input_file``, ``output_text`` parts), ``function_call``
  items (joined into one assistant turn with ``tool_calls``) and ``function_call_output`` items (``tool``
  messages). ``reasoning`` items from earlier turns are dropped: only OpenAI can read them.
- ``max_output_tokens`` -> ``max_completion_tokens``, ``reasoning.effort`` -> ``reasoning_effort``,
  ``text.format`` (json_schema, json_object) -> ``response_format``.
- The gateway stores no responses: ``previous_response_id``, ``conversation``, ``background`` and
  ``store: true`` are a 400 naming the parameter; so are hosted tools (web search, file search, ...)
  and item types with no chat form.
"""

from __future__ import annotations

from typing import Any

from adapters.errors import APIError

STATEFUL = ("previous_response_id", "conversation", "background", "prompt")


def invalid(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", code, param)


def check_request(body: dict[str, Any]) -> None:
    """The checks that do not depend on the target: types and required fields."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", "model", "missing_required_parameter")
    given = body.get("input")
    if given is not None and not isinstance(given, str | list):
        raise invalid("'input' must be a string or an array of input items", "input", "invalid_type")
    if isinstance(given, list) and not all(isinstance(item, dict) for item in given):
        raise invalid("each item of 'input' must be an object", "input", "invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream", "invalid_type")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise invalid("'max_output_tokens' must be a positive integer", "max_output_tokens")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise invalid("'instructions' must be a string", "instructions", "invalid_type")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise invalid("'tools' must be an array", "tools", "invalid_type")


def check_translatable(body: dict[str, Any]) -> None:
    """What only OpenAI itself can do: a 400 naming the parameter when the target is another kind."""
    for name in STATEFUL:
        if body.get(name) not in (None, False):
            raise invalid(f"'{name}' needs stored responses, which the gateway does not keep; send the whole "
                          "conversation in 'input' instead (or use an OpenAI model)", name, "unsupported_parameter")
    if body.get("store") is True:
        raise invalid("the gateway does not store responses: leave 'store' out or set it to false (or use an "
                      "OpenAI model)", "store", "unsupported_parameter")
    for i, tool in enumerate(body.get("tools") or ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise invalid(f"hosted tool {kind!r} is only available on OpenAI models", f"tools[{i}]",
                          "unsupported_parameter")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body that asks the same of a translated target. Never mutates ``body``."""
    out: dict[str, Any] = {"model": body["model"], "messages": messages(body)}
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier"):
        if body.get(name) is not None:
            out[name] = body[name]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    tools(body, out)
    response_format(body, out)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        if not isinstance(fmt.get("schema"), dict):
            raise invalid("'text.format.schema' must be an object", "text.format.schema")
        spec = {"name": fmt.get("name") or "output", "schema": fmt["schema"]}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind not in (None, "text"):
        raise invalid(f"'text.format.type' {kind!r} is not one of text, json_schema, json_object", "text.format.type")


def tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    given = body.get("tools")
    if given:
        converted = []
        for i, tool in enumerate(given):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise invalid(f"hosted tool {kind!r} is only available on OpenAI models", f"tools[{i}]",
                              "unsupported_parameter")
            if not isinstance(tool.get("name"), str):
                raise invalid("a function tool needs a 'name'", f"tools[{i}].name", "missing_required_parameter")
            fn: dict[str, Any] = {"name": tool["name"]}
            for name in ("description", "parameters", "strict"):
                if tool.get(name) is not None:
                    fn[name] = tool[name]
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        raise invalid("'tool_choice' must be auto, none, required or a function", "tool_choice")


# input items --------------------------------------------------------------------------------------


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.get("instructions"):
        out.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        out.append({"role": "user", "content": given})
        return out
    for i, item in enumerate(given or ()):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(message(item, f"input[{i}]"))
        elif kind == "function_call":
            call = function_call(item, f"input[{i}]")
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # text and calls are one chat turn
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(tool_output(item, f"input[{i}]"))
        elif kind == "reasoning":
            continue
        else:
            raise invalid(f"input items of type {kind!r} are only available on OpenAI models", f"input[{i}]")
    return out


def message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise invalid("'role' must be user, assistant, system or developer", f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid("'content' must be a string or an array", f"{param}.content", "invalid_type")
    parts = [part_of(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    if role != "user" or all(p["type"] == "text" for p in parts):
        if any(p["type"] != "text" for p in parts):
            raise invalid(f"only text parts may appear in a {role} message", f"{param}.content")
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def part_of(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise invalid("'image_url' is required (file ids are only available on OpenAI models)",
                          f"{param}.image_url", "missing_required_parameter")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not isinstance(part.get("file_data"), str):
            raise invalid("'file_data' is required (file ids and URLs are only available on OpenAI models)",
                          f"{param}.file_data", "missing_required_parameter")
        file = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise invalid(f"content parts of type {kind!r} are not supported here", f"{param}.type")


def function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    for name in ("call_id", "name"):
        if not isinstance(item.get(name), str) or not item[name]:
            raise invalid(f"'{name}' is required", f"{param}.{name}", "missing_required_parameter")
    arguments = item.get("arguments")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": arguments if isinstance(arguments, str) else "{}"}}


def tool_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise invalid("'call_id' is required", f"{param}.call_id", "missing_required_parameter")
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(part_of(p, f"{param}.output[{j}]").get("text", "") for j, p in enumerate(output))
    elif not isinstance(output, str):
        raise invalid("'output' must be a string or an array of parts", f"{param}.output", "invalid_type")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}
