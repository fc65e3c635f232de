"""kind = "anthropic": the Anthropic Messages API behind the OpenAI Chat Completions wire format.

Requests go to ``POST {base_url}/v1/messages``. Translation policies worth knowing:

- ``system``/``developer`` messages, wherever they stand, become the top-level ``system`` (in order).
- ``max_tokens`` is always sent: ``max_completion_tokens``, else ``max_tokens``, else the target's
  ``default_max_tokens``. ``temperature`` is clamped to Anthropic's 0..1.
- ``reasoning_effort`` becomes ``thinking: {type: enabled, budget_tokens}`` with the budgets in
  ``THINKING_BUDGETS`` (``none`` turns thinking off). As with OpenAI, a client's max tokens bounds
  reasoning plus answer, so the budget is cut to ``max_tokens - 1`` (a 400 if that is below
  Anthropic's minimum of 1024); without a client limit ``max_tokens`` is the budget plus
  ``default_max_tokens``, so thinking does not eat the answer's room. A native ``thinking`` object
  in the body wins over ``reasoning_effort``.
- Thinking blocks travel through the OpenAI round trip in ``thinking_blocks`` on the assistant
  message (LiteLLM's convention), next to ``reasoning_content``. In streams each block arrives
  whole, signature included, in one delta at the block's end, so a client's reassembly is a plain
  list concatenation. They are sent back first in the assistant turn, and only when thinking is on
  (Anthropic rejects thinking in a final assistant turn when it is off, and ignores older ones).
- ``response_format`` json_schema becomes ``output_config.format``; json_object has no equivalent.
- Fields Anthropic cannot honour (``n > 1``, ``logprobs``, ``logit_bias``, penalties, audio) are a 400
  naming the field, or are dropped when the target sets ``drop_unsupported = true``. ``seed``,
  ``store``, ``metadata``, ``service_tier`` and tools' ``strict`` are best-effort hints and are ignored.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.base import (
    Adapter,
    Call,
    Reply,
    StreamTranslator,
    UpstreamError,
    UpstreamRequest,
    Usage,
    bad_response,
    loads_object,
    scrub,
    upstream_status_error,
)
from adapters.sse_decoder import SSEDecoder
from adapters.targets import ProviderConfig

ANTHROPIC_VERSION = "2023-06-01"

# reasoning_effort -> thinking budget in tokens. Anthropic's minimum budget is 1024.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 32000}
MIN_THINKING_BUDGET = 1024

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> (OpenAI type, code) for 4xx; 5xx types go through the shared 502 policy.
ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("not_found_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
}
# The status an error type arrives with, for errors that come without one (in-band, or in a 200 body).
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


class AnthropicAdapter(Adapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                        **provider.headers}
        if provider.api_key:
            self.headers["x-api-key"] = provider.api_key
        if provider.anthropic_beta:
            self.headers["anthropic-beta"] = provider.anthropic_beta
        self.url = f"{provider.base_url}/v1/messages"

    def chat_request(self, call: Call) -> UpstreamRequest:
        body = RequestTranslator(call).translate()
        return UpstreamRequest(self.url, self.headers, orjson.dumps(body))

    def chat_response(self, call: Call, body: bytes) -> Reply:
        data = loads_object(self.provider, body)
        if data.get("type") == "error":
            raise self.error(200, body, {})
        if not isinstance(data.get("content"), list):
            raise bad_response(self.provider, "a message without content")
        message, finish = openai_message(data["content"]), FINISH_REASONS.get(data.get("stop_reason"), "stop")
        usage = usage_from(data.get("usage") or {})
        out = {
            "id": openai_id(data.get("id"), call.request_id),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.alias,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage.to_openai(),
        }
        return Reply(orjson.dumps(out), usage)

    def chat_stream(self, call: Call) -> StreamTranslator:
        return AnthropicStream(self.provider, call.alias, call.include_usage, call.request_id)

    def error(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        err_type, message = None, f"HTTP {status}"
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
            if body:
                message = f"HTTP {status} with a non-JSON body"
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            err_type = err.get("type") if isinstance(err.get("type"), str) else None
            message = str(err.get("message") or message)
        if status < 300:  # an error in a 200 body: take the status its type stands for
            status = ERROR_STATUS.get(err_type or "", 500)
        return anthropic_error(self.provider, status, err_type, message, headers.get("retry-after"))


def anthropic_error(provider: ProviderConfig, status: int, err_type: str | None, message: str,
                    retry_after: str | None) -> UpstreamError:
    if status == 529 or err_type == "overloaded_error":
        # Anthropic's "try again shortly": a retryable 503 rather than the generic 502.
        return UpstreamError(503, f"upstream {provider.name} is overloaded: {scrub(provider, message)}", "status_5xx",
                             "service_unavailable_error", "server_is_overloaded", retry_after=retry_after,
                             upstream_status=status)
    type_, code = ERROR_TYPES.get(err_type or "", (None, None))
    return upstream_status_error(provider, status, message, type_, code, None, retry_after)


def openai_id(message_id: Any, request_id: str) -> str:
    return f"chatcmpl-{message_id if isinstance(message_id, str) and message_id else request_id}"


def usage_from(raw: dict[str, Any]) -> Usage:
    """Anthropic counts uncached input apart from cache reads and writes; OpenAI's prompt_tokens is all of it."""
    cache_read = _int(raw.get("cache_read_input_tokens"))
    prompt = _int(raw.get("input_tokens")) + cache_read + _int(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    reasoning = _int(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return Usage(prompt_tokens=prompt, completion_tokens=_int(raw.get("output_tokens")), cached_tokens=cache_read,
                 reasoning_tokens=reasoning)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_message(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                    "signature": block.get("signature") or ""})
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") if isinstance(block.get("input"), dict) else {}).decode()
            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"), "arguments": arguments}})
    # Consecutive text blocks are joined as a stream would show them, without separators.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking_blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = thinking_blocks
    return message


# --- requests ------------------------------------------------------------------------------------


def invalid(message: str, param: str | None, code: str = "invalid_value") -> UpstreamError:
    return UpstreamError(400, message, "status_4xx", type="invalid_request_error", code=code, param=param)


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
            raise invalid(f"{what} is not supported by model {self.call.alias!r} (an Anthropic model)", param,
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
            raise invalid(f"{param!r} must be an integer", param, "invalid_type")
        native = src.get("thinking")
        if isinstance(native, dict):  # the client speaks Anthropic here: pass it as it is
            return native, asked if asked is not None else self.call.target.default_max_tokens
        effort = src.get("reasoning_effort")
        if effort is None or effort == "none":
            return None, asked if asked is not None else self.call.target.default_max_tokens
        budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
        if budget is None:
            raise invalid(f"'reasoning_effort' must be one of none, {', '.join(THINKING_BUDGETS)}",
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
                raise invalid("'response_format.json_schema.schema' must be an object",
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
            raise invalid("'tools' must be an array", "tools", "invalid_type")
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
                raise invalid(f"messages[{i}].role {role!r} is not supported", f"messages[{i}].role")
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
                raise invalid(f"{param}[{j}] must be a text part", f"{param}[{j}]")
            if part.get("text"):
                blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
        return blocks

    def user_blocks(self, content: Any, i: int) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise invalid(f"messages[{i}].content must be a string or an array", f"messages[{i}].content",
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
            raise invalid(f"{param}.file must be an object", f"{param}.file", "invalid_type")
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
            raise invalid(f"messages[{i}].tool_call_id is required", f"messages[{i}].tool_call_id",
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
        raise invalid(f"{param} must be a base64 data URL", param)
    return head[5:-7].lower(), data


def image_block(image: Any, param: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid(f"{param}.image_url.url is required", f"{param}.image_url", "missing_required_parameter")
    if url.startswith("data:"):
        media_type, data = _split_data_url(url, f"{param}.image_url")
        if media_type not in IMAGE_TYPES:
            raise invalid(f"{param}: image type {media_type!r} is not supported; use one of "
                          f"{', '.join(IMAGE_TYPES)}", f"{param}.image_url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid(f"{param}.image_url.url must be an https or data URL", f"{param}.image_url")


def tool_use_block(tc: Any, param: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(tc.get("id"), str):
        raise invalid(f"{param} must have an 'id' and a 'function'", param)
    raw = fn.get("arguments") or "{}"
    try:
        args = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        args = None
    if not isinstance(args, dict):
        # Anthropic needs the input as an object; guessing at broken JSON would change the call.
        raise invalid(f"{param}.function.arguments must be a JSON object", f"{param}.function.arguments")
    return {"type": "tool_use", "id": tc["id"], "name": fn.get("name"), "input": args}



# --- streams -------------------------------------------------------------------------------------


class AnthropicStream(StreamTranslator):
    """Anthropic's named SSE events -> OpenAI ``chat.completion.chunk``s, each as it arrives.

    Each event is parsed once; chunks are assembled from a prebuilt prefix and suffix, so only the
    delta itself is serialized per event.
    """

    def __init__(self, provider: ProviderConfig, alias: str, include_usage: bool, request_id: str) -> None:
        self.provider = provider
        self.alias = alias
        self.include_usage = include_usage
        self.created = int(time.time())
        self.decoder = SSEDecoder()
        self.tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._set_id(openai_id(None, request_id))
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.tool_args: dict[int, bool] = {}  # content block index -> any argument fragment sent
        self.thinking: dict[int, list[str]] = {}  # content block index -> thinking text so far
        self.signatures: dict[int, str] = {}
        self.raw_usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.deltas = 0

    def _set_id(self, ident: str) -> None:
        self.id = ident
        self.head = (b'data: {"id":' + orjson.dumps(ident) + b',"object":"chat.completion.chunk","created":'
                     + str(self.created).encode() + b',"model":' + orjson.dumps(self.alias)
                     + b',"choices":[{"index":0,"delta":')

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (self.head + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":' + orjson.dumps(finish)
                + self.tail)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        return self._events(self.decoder.feed(data))

    def end(self) -> bytes:
        out = b""
        if not self.done:
            try:
                out = self._events(self.decoder.flush())
            except UpstreamError:
                out = b""  # an event cut off by the EOF: the stream was truncated, reported below
        if not self.done:
            self._settle_partial()
            raise UpstreamError(502, f"upstream {self.provider.name} stream ended before message_stop",
                                "bad_response", "upstream_error", "stream_truncated")
        return out

    def estimated_completion_tokens(self) -> int:
        return self.deltas

    def _events(self, events: list[tuple[str, bytes]]) -> bytes:
        out: list[bytes] = []
        for name, data in events:
            if name == "ping":
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise bad_response(self.provider, f"a stream event that is not JSON ({name})") from None
            if not isinstance(event, dict):
                raise bad_response(self.provider, f"a stream event that is not an object ({name})")
            chunk = self._event(event.get("type") or name, event)
            if chunk:
                out.append(chunk)
            if self.done:
                break
        return b"".join(out)

    def _event(self, kind: str, event: dict[str, Any]) -> bytes:
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_stop":
            return self._block_stop(event)
        if kind == "message_start":
            return self._message_start(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            return self._message_stop()
        if kind == "error":
            return self._error(event)
        return b""  # ping and event types newer than this code

    def _message_start(self, event: dict[str, Any]) -> bytes:
        message = event.get("message") or {}
        if isinstance(message.get("id"), str):
            self._set_id(openai_id(message["id"], ""))
        self._update_usage(message.get("usage"))
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, event: dict[str, Any]) -> bytes:
        index, block = event.get("index"), event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            n = self.tool_index[index] = len(self.tool_index)
            self.tool_args[index] = False
            return self._chunk({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                                "function": {"name": block.get("name"), "arguments": ""}}]})
        if kind == "text":
            return self._chunk({"content": block["text"]}) if block.get("text") else b""
        if kind == "thinking":
            text = block.get("thinking") or ""
            self.thinking[index] = [text]
            return self._chunk({"reasoning_content": text}) if text else b""
        if kind == "redacted_thinking":
            return self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data")}]})
        return b""  # server tools and their results have no OpenAI form

    def _block_delta(self, event: dict[str, Any]) -> bytes:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        index = event.get("index")
        if kind == "text_delta":
            self.deltas += 1
            return self._chunk({"content": delta.get("text") or ""})
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if not fragment or index not in self.tool_index:
                return b""
            self.deltas += 1
            self.tool_args[index] = True
            return self._chunk({"tool_calls": [{"index": self.tool_index[index], "function": {"arguments": fragment}}]})
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            self.deltas += 1
            self.thinking.setdefault(index, []).append(text)
            return self._chunk({"reasoning_content": text})
        if kind == "signature_delta":
            self.signatures[index] = self.signatures.get(index, "") + (delta.get("signature") or "")
        return b""

    def _block_stop(self, event: dict[str, Any]) -> bytes:
        index = event.get("index")
        if index in self.thinking:
            block = {"type": "thinking", "thinking": "".join(self.thinking.pop(index)),
                     "signature": self.signatures.pop(index, "")}
            return self._chunk({"thinking_blocks": [block]})
        if self.tool_args.get(index) is False:  # a call without arguments: still valid JSON for the client
            self.tool_args[index] = True
            return self._chunk({"tool_calls": [{"index": self.tool_index[index], "function": {"arguments": "{}"}}]})
        return b""

    def _message_delta(self, event: dict[str, Any]) -> bytes:
        self._update_usage(event.get("usage"))
        reason = (event.get("delta") or {}).get("stop_reason")
        if reason is None:
            return b""
        return self._chunk({}, FINISH_REASONS.get(reason, "stop"))

    def _message_stop(self) -> bytes:
        self.done = True
        if self.usage is None:
            self.usage = usage_from(self.raw_usage)
        out = b""
        if self.include_usage:
            out = b"data: " + orjson.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                            "model": self.alias, "choices": [],
                                            "usage": self.usage.to_openai()}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def _error(self, event: dict[str, Any]) -> bytes:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or "upstream stream error")
        self.error = anthropic_error(self.provider, ERROR_STATUS.get(err_type or "", 500), err_type, message, None)
        self.done = True
        self._settle_partial()
        return b"data: " + orjson.dumps(self.error.body()) + b"\n\n"

    def _update_usage(self, raw: Any) -> None:
        """Anthropic's usage numbers are cumulative: the latest value of each field is the total."""
        if not isinstance(raw, dict):
            return
        for key, value in raw.items():
            if value is not None:
                self.raw_usage[key] = value
        if "output_tokens" in raw and self.raw_usage:
            self.usage = usage_from(self.raw_usage)

    def _settle_partial(self) -> None:
        """A stream cut short still bills the prompt it read and at least the deltas it sent."""
        if not self.raw_usage:
            return
        usage = usage_from(self.raw_usage)
        usage.completion_tokens = max(usage.completion_tokens, self.deltas)
        self.usage = usage
