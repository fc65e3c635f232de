"""OpenAI chat request -> Anthropic Messages request body.

Translation policies worth knowing:

- ``system``/``developer`` messages, wherever they stand, become the top-level ``system`` (in order).
- ``max_tokens`` is always sent: ``max_completion_tokens``, else ``max_tokens``, else the target's
  ``default_max_tokens``. ``temperature`` is clamped to Anthropic's 0..1.
- ``reasoning_effort`` becomes ``thinking: {type: enabled, budget_tokens}`` with the budgets in
  ``THINKING_BUDGETS`` (``none`` turns thinking off). As with OpenAI, a client's max tokens bounds
  reasoning plus answer, so the budget is cut to ``max_tokens - 1`` (a 400 if that is below
  Anthropic's minimum of 1024); without a client limit ``max_tokens`` is the budget plus
  ``default_max_tokens``, so thinking does not eat the answer's room. A native ``thinking`` object
  in the body wins over ``reasoning_effort``.
- Thinking blocks from earlier turns (``thinking_blocks`` on an assistant message) are sent back first
  in the assistant turn, and only when thinking is on: Anthropic rejects thinking in a final assistant
  turn when it is off, and ignores older ones.
- ``response_format`` json_schema becomes ``output_config.format``; json_object has no equivalent.
- Fields Anthropic cannot honour (``n > 1``, ``logprobs``, ``logit_bias``, penalties, audio) are a 400
  naming the field, or are dropped when the target sets ``drop_unsupported = true``. ``seed``,
  ``store``, ``metadata``, ``service_tier`` and tools' ``strict`` are best-effort hints and are ignored.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.base import Call, invalid_request

# reasoning_effort -> thinking budget in tokens. Anthropic's minimum budget is 1024.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 32000}
MIN_THINKING_BUDGET = 1024

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class RequestTranslator:
    """One OpenAI chat request -> one Anthropic Messages body. Never mutates ``call.body``."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.src = call.body
        self.drop = call.target.drop_unsupported
        self.thinking_on = False

    def unsupported(self, param: str, what: str) -> None:
        """Raise the 400 for a field Anthropic cannot honour; return (the caller drops it) if allowed."""
        if not self.drop:
            raise invalid_request(f"{what} is not supported by model {self.call.alias!r} (an Anthropic model)", param,
                                  "unsupported_parameter")

    def translate(self) -> dict[str, Any]:
        src = self.src
        self.check_unsupported()
        out: dict[str, Any] = {"model": self.call.target.model}
        thinking, max_tokens = self.thinking_and_max_tokens()
        out["max_tokens"] = max_tokens
        if thinking is not None:
            out["thinking"] = thinking
            self.thinking_on = thinking.get("type") in ("enabled", "adaptive")
        system, messages = self.messages(src["messages"])
        if system:
            out["system"] = system
        out["messages"] = messages
        self.sampling(out)
        self.tools(out)
        self.response_format(out)
        if self.call.stream:
            out["stream"] = True
        return out

    def check_unsupported(self) -> None:
        src = self.src
        n = src.get("n")
        if n is not None and n != 1:
            self.unsupported("n", "'n' other than 1")
        if src.get("logprobs") or src.get("top_logprobs"):
            self.unsupported("logprobs" if src.get("logprobs") else "top_logprobs", "'logprobs'")
        if src.get("logit_bias"):
            self.unsupported("logit_bias", "'logit_bias'")
        for penalty in ("frequency_penalty", "presence_penalty"):
            if src.get(penalty):
                self.unsupported(penalty, f"{penalty!r}")
        if src.get("audio") is not None or "audio" in (src.get("modalities") or ()):
            self.unsupported("audio" if src.get("audio") is not None else "modalities", "audio output")

    # max_tokens and thinking ----------------------------------------------------------------------

    def thinking_and_max_tokens(self) -> tuple[dict[str, Any] | None, int]:
        src = self.src
        asked = src.get("max_completion_tokens")
        param = "max_completion_tokens"
        if asked is None:
            asked, param = src.get("max_tokens"), "max_tokens"
        if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool)):
            raise invalid_request(f"{param!r} must be an integer", param, "invalid_type")
        native = src.get("thinking")
        if isinstance(native, dict):  # the client speaks Anthropic here: pass it as it is
            return native, asked if asked is not None else self.call.target.default_max_tokens
        effort = src.get("reasoning_effort")
        if effort is None or effort == "none":
            return None, asked if asked is not None else self.call.target.default_max_tokens
        budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
        if budget is None:
            raise invalid_request(f"'reasoning_effort' must be one of none, {', '.join(THINKING_BUDGETS)}",
                                  "reasoning_effort")
        if asked is None:
            return {"type": "enabled", "budget_tokens": budget}, budget + self.call.target.default_max_tokens
        budget = min(budget, asked - 1)
        if budget < MIN_THINKING_BUDGET:
            self.unsupported("reasoning_effort", f"'reasoning_effort' with {param} <= {MIN_THINKING_BUDGET} "
                             f"(Anthropic's smallest thinking budget is {MIN_THINKING_BUDGET} tokens)")
            return None, asked
        return {"type": "enabled", "budget_tokens": budget}, asked

    # sampling -------------------------------------------------------------------------------------

    def sampling(self, out: dict[str, Any]) -> None:
        src = self.src
        temperature = src.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            temperature = min(max(float(temperature), 0.0), 1.0)  # OpenAI's range is 0..2
            if self.thinking_on and temperature != 1.0:
                self.unsupported("temperature", "'temperature' other than 1 together with reasoning")
            else:
                out["temperature"] = temperature
        for name in ("top_p", "top_k"):
            if src.get(name) is not None:
                out[name] = src[name]
        stop = src.get("stop")
        if isinstance(stop, str):
            out["stop_sequences"] = [stop]
        elif isinstance(stop, list) and stop:
            out["stop_sequences"] = stop
        user = src.get("user") or src.get("safety_identifier")
        if isinstance(user, str) and user:
            out["metadata"] = {"user_id": user}

    def response_format(self, out: dict[str, Any]) -> None:
        fmt = self.src.get("response_format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind is None or kind == "text":
            return
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise invalid_request("'response_format.json_schema.schema' must be an object",
                                      "response_format.json_schema.schema")
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
            return
        self.unsupported("response_format", f"'response_format' of type {kind!r} (use json_schema)")

    # tools ----------------------------------------------------------------------------------------

    def tools(self, out: dict[str, Any]) -> None:
        tools = self.src.get("tools")
        if not tools:
            return
        if not isinstance(tools, list):
            raise invalid_request("'tools' must be an array", "tools", "invalid_type")
        converted = []
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
                self.unsupported(f"tools[{i}]", "a tool that is not of type 'function'")
                continue
            entry: dict[str, Any] = {"name": fn.get("name")}
            if fn.get("description"):
                entry["description"] = fn["description"]
            params = fn.get("parameters")
            entry["input_schema"] = params if isinstance(params, dict) else {"type": "object", "properties": {}}
            if isinstance(tool.get("cache_control"), dict):
                entry["cache_control"] = tool["cache_control"]
            converted.append(entry)
        if not converted:
            return
        out["tools"] = converted
        choice = self.tool_choice()
        if self.src.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice:
            out["tool_choice"] = choice

    def tool_choice(self) -> dict[str, Any] | None:
        choice = self.src.get("tool_choice")
        if choice is None:
            return None
        if choice in ("auto", "none"):
            return {"type": choice}
        if choice == "required":
            return {"type": "any"}
        fn = choice.get("function") if isinstance(choice, dict) else None
        if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(fn, dict) and fn.get("name"):
            return {"type": "tool", "name": fn["name"]}
        self.unsupported("tool_choice", "this 'tool_choice'")
        return None

    # messages -------------------------------------------------------------------------------------

    def messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        system: list[dict[str, Any]] = []
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            role = m["role"]
            if role in ("system", "developer"):
                system.extend(self.text_blocks(m.get("content"), f"messages[{i}].content"))
                continue
            if role == "user":
                turn = ("user", self.user_blocks(m.get("content"), i))
            elif role == "assistant":
                turn = ("assistant", self.assistant_blocks(m, i))
            elif role == "tool":
                turn = ("user", [self.tool_result(m, i)])
            else:
                raise invalid_request(f"messages[{i}].role {role!r} is not supported", f"messages[{i}].role")
            if not turn[1]:
                continue
            if out and out[-1]["role"] == turn[0]:
                out[-1]["content"].extend(turn[1])  # Anthropic wants alternating turns: merge
            else:
                out.append({"role": turn[0], "content": turn[1]})
        for msg in out:
            if msg["role"] == "user":
                # tool_result blocks must open their user turn; a stable sort keeps each group's order
                msg["content"].sort(key=lambda b: b.get("type") != "tool_result")
        if out and out[-1]["role"] == "assistant":
            last = out[-1]["content"][-1]
            if last.get("type") == "text":  # a prefill may not end in whitespace
                last["text"] = last["text"].rstrip()
                if not last["text"]:
                    out[-1]["content"].pop()
                    if not out[-1]["content"]:
                        out.pop()
        return system, out

    def text_blocks(self, content: Any, param: str) -> list[dict[str, Any]]:
        """Content that may only hold text (system, developer, tool) -> text blocks."""
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        if not isinstance(content, list):
            return []
        blocks = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid_request(f"{param}[{j}] must be a text part", f"{param}[{j}]")
            if part.get("text"):
                blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
        return blocks

    def user_blocks(self, content: Any, i: int) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise invalid_request(f"messages[{i}].content must be a string or an array", f"messages[{i}].content",
                                  "invalid_type")
        blocks = []
        for j, part in enumerate(content):
            block = self.user_part(part, f"messages[{i}].content[{j}]")
            if block is not None:
                blocks.append(_with_cache_control(block, part))
        return blocks

    def user_part(self, part: Any, param: str) -> dict[str, Any] | None:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            return {"type": "text", "text": part.get("text") or ""}
        if kind == "image_url":
            return image_block(part.get("image_url"), param)
        if kind == "file":
            return self.document_block(part.get("file"), param)
        if kind == "input_audio":
            self.unsupported(param, "audio input ('input_audio')")
            return None
        self.unsupported(param, f"a content part of type {kind!r}")
        return None

    def document_block(self, file: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(file, dict):
            raise invalid_request(f"{param}.file must be an object", f"{param}.file", "invalid_type")
        data = file.get("file_data")
        if not isinstance(data, str) or not data:
            self.unsupported(f"{param}.file", "a 'file' part without 'file_data' (file ids)")
            return None
        media_type = "application/pdf"  # Chat Completions takes PDF files only; bare base64 means PDF
        if data.startswith("data:"):
            media_type, data = _split_data_url(data, param)
        if media_type != "application/pdf":
            self.unsupported(f"{param}.file", f"a file of type {media_type!r} (PDF only)")
            return None
        block: dict[str, Any] = {"type": "document",
                                 "source": {"type": "base64", "media_type": media_type, "data": data}}
        if isinstance(file.get("filename"), str) and file["filename"]:
            block["title"] = file["filename"]
        return block

    def assistant_blocks(self, m: dict[str, Any], i: int) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thinking_on:
            # Anthropic checks these byte for byte against their signatures: copy, never rebuild.
            for block in m.get("thinking_blocks") or ():
                if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
                    blocks.append(block)
        content = m.get("content")
        if isinstance(content, str):
            if content:
                blocks.append({"type": "text", "text": content})
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and part.get("text"):
                    blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
        for j, tc in enumerate(m.get("tool_calls") or ()):
            blocks.append(tool_use_block(tc, f"messages[{i}].tool_calls[{j}]"))
        return blocks

    def tool_result(self, m: dict[str, Any], i: int) -> dict[str, Any]:
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid_request(f"messages[{i}].tool_call_id is required", f"messages[{i}].tool_call_id",
                                  "missing_required_parameter")
        content = m.get("content")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        if isinstance(content, str):
            result["content"] = content
        else:
            result["content"] = self.text_blocks(content, f"messages[{i}].content")
        return result


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Prompt-caching breakpoints set by the client (LiteLLM's convention) pass through."""
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _split_data_url(url: str, param: str) -> tuple[str, str]:
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise invalid_request(f"{param} must be a base64 data URL", param)
    return head[5:-7].lower(), data


def image_block(image: Any, param: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid_request(f"{param}.image_url.url is required", f"{param}.image_url", "missing_required_parameter")
    if url.startswith("data:"):
        media_type, data = _split_data_url(url, f"{param}.image_url")
        if media_type not in IMAGE_TYPES:
            raise invalid_request(f"{param}: image type {media_type!r} is not supported; use one of "
                                  f"{', '.join(IMAGE_TYPES)}", f"{param}.image_url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request(f"{param}.image_url.url must be an https or data URL", f"{param}.image_url")


def tool_use_block(tc: Any, param: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(tc.get("id"), str):
        raise invalid_request(f"{param} must have an 'id' and a 'function'", param)
    raw = fn.get("arguments") or "{}"
    try:
        args = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        args = None
    if not isinstance(args, dict):
        # Anthropic needs the input as an object; guessing at broken JSON would change the call.
        raise invalid_request(f"{param}.function.arguments must be a JSON object", f"{param}.function.arguments")
    return {"type": "tool_use", "id": tc["id"], "name": fn.get("name"), "input": args}
