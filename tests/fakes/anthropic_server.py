"""A fake Anthropic Messages API (``POST /v1/messages``) that speaks the real wire format.

It validates requests the way the real API does and answers a rejection with the real error shape
``{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}``: unknown fields,
a ``system`` role in ``messages``, missing ``max_tokens``, non-alternating roles (the real API would
merge them; the fake is stricter so the gateway's merging is tested), misplaced or unmatched
``tool_result`` blocks, bad image sources, a bad thinking budget, and thinking turns whose blocks or
signatures were not sent back unchanged.

The upstream model name picks the behaviour:

claude-ok (anything else)  "Hello <last user text>"; streamed word by word
claude-cache               the same, with cache read and cache creation tokens in the usage
claude-tools               "Let me check." and two get_weather calls (one if parallel use is off);
                           after tool results: "It is <results>"
claude-now                 one call of a tool without parameters ("now", input {}); streamed, as the
                           real API does, with a single empty input_json_delta
finish-<stop_reason>       an answer with that stop_reason (end_turn, max_tokens, stop_sequence, ...)
fail-400/401/403/404/500   that status with Anthropic's error body
fail-429                   429 rate_limit_error with retry-after: 11
fail-529                   529 overloaded_error
leak-key                   401 whose message echoes the x-api-key it was sent
leakall-<status>           that status with every credential header it was sent (and the last user text) in
                           the error's type and message and in nested and unknown members (429: the key as
                           Retry-After)
leakall-stream             a stream that sends one text delta, then ``event: error`` echoing the credentials
not-json                   200 with an HTML body
error-stream               a stream that sends one text delta, then ``event: error`` (overloaded)
cut-stream                 a stream that stops after one text delta, mid-event, without message_stop
split-stream               every event split across three writes, mid-line

``POST /v1/messages/count_tokens`` answers ``{"input_tokens": <the fake's count>}``.

Every model thinks first when ``thinking`` is enabled: a thinking block (signed), a redacted
thinking block, then the answer. Requests are recorded in ``state.requests``; the messages sent
back (usage included) in ``state.replies``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

VERSION = "2023-06-01"
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj2pN"
CITIES = ("Paris", "London")

TOP_LEVEL = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
             "top_k", "metadata", "tools", "tool_choice", "thinking", "output_config", "service_tier"}
BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
USER_BLOCKS = {"text", "image", "document", "tool_result"}
ASSISTANT_BLOCKS = {"text", "tool_use", "thinking", "redacted_thinking"}
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def sign(thinking: str) -> str:
    """The fake's thinking signature: any change to the text (or the signature) is detected."""
    return base64.b64encode(hashlib.sha256(b"fake-anthropic:" + thinking.encode()).digest()).decode()


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011fake"}
    return Response(json.dumps(body), status, headers, media_type="application/json")


class State:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    def last(self) -> dict[str, Any]:
        return self.requests[-1]


# --- request validation --------------------------------------------------------------------------


def check_headers(headers: Any, api_key: str) -> None:
    key = headers.get("x-api-key")
    if not key:
        raise Invalid("x-api-key header is required", 401, "authentication_error")
    if key != api_key:
        raise Invalid("invalid x-api-key", 401, "authentication_error")
    if not headers.get("anthropic-version"):
        raise Invalid("anthropic-version: header is required")
    if headers.get("anthropic-version") != VERSION:
        raise Invalid(f"anthropic-version: unknown version {headers.get('anthropic-version')!r}")


def check_body(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for key in body:
        if key not in TOP_LEVEL:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise Invalid(f"{name}: Input should be less than or equal to 1")
    check_system(body.get("system"))
    check_metadata(body.get("metadata"))
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    check_tools(body)
    check_output_config(body.get("output_config"))
    thinking = check_thinking(body)
    check_messages(body.get("messages"), thinking)


def check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        check_block_keys(block, f"system.{i}")
        if not block.get("text"):
            raise Invalid(f"system.{i}.text: text content blocks must be non-empty")


def check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise Invalid("metadata: Input should be a valid dictionary")
    for key, value in metadata.items():
        if key != "user_id":
            raise Invalid(f"metadata.{key}: Extra inputs are not permitted")
        if not isinstance(value, str):
            raise Invalid("metadata.user_id: Input should be a valid string")


def check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for k, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise Invalid(f"tools.{k}: Input should be a valid dictionary")
            for key in tool:
                if key not in ("name", "description", "input_schema", "cache_control", "type", "strict"):
                    raise Invalid(f"tools.{k}.custom.{key}: Extra inputs are not permitted")
            if not isinstance(tool.get("name"), str) or not TOOL_NAME.fullmatch(tool["name"]):
                raise Invalid(f"tools.{k}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise Invalid(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise Invalid("tool_choice: tool_choice may only be specified while providing tools")
    kind = choice.get("type") if isinstance(choice, dict) else None
    allowed = {"auto": {"type", "disable_parallel_tool_use"}, "any": {"type", "disable_parallel_tool_use"},
               "tool": {"type", "name", "disable_parallel_tool_use"}, "none": {"type"}}
    if kind not in allowed:
        raise Invalid(f"tool_choice: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
                      "'auto', 'any', 'tool', 'none'")
    for key in choice:
        if key not in allowed[kind]:
            raise Invalid(f"tool_choice.{kind}.{key}: Extra inputs are not permitted")
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise Invalid("tool_choice.tool.name: Field required")


def check_output_config(config: Any) -> None:
    if config is None:
        return
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise Invalid("output_config.format: expected {'type': 'json_schema', 'schema': {...}}")
    if set(config) != {"format"} or set(fmt) != {"type", "schema"}:
        raise Invalid("output_config: Extra inputs are not permitted")


def check_thinking(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        return False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return False
    if kind != "enabled":
        raise Invalid(f"thinking: Input tag {kind!r} found using 'type' does not match any of the expected tags")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if budget >= body["max_tokens"]:
        raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation "
                      "at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-"
                      "window-size")
    if body.get("temperature", 1) != 1:
        raise Invalid("`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation "
                      "at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    return True


def check_block_keys(block: dict[str, Any], where: str) -> None:
    for key in block:
        if key not in BLOCK_KEYS[block["type"]]:
            raise Invalid(f"{where}.{key}: Extra inputs are not permitted")


def check_messages(messages: Any, thinking: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: Field required" if messages is None else "messages: at least one message is required")
    blocks_of: list[list[dict[str, Any]]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        for key in m:
            if key not in ("role", "content"):
                raise Invalid(f"messages.{i}.{key}: Extra inputs are not permitted")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i and messages[i - 1].get("role") == role:
            raise Invalid(f'messages: roles must alternate between "user" and "assistant", but found multiple "{role}" '
                          "roles in a row")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
        final_assistant = role == "assistant" and i == len(messages) - 1
        if not blocks and not final_assistant:
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional final "
                          "assistant message")
        for j, block in enumerate(blocks):
            check_block(block, role, f"messages.{i}.content.{j}")
        blocks_of.append(blocks)
    check_tool_pairing(messages, blocks_of)
    check_thinking_turns(messages, blocks_of, thinking)


def check_block(block: Any, role: str, where: str) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in BLOCK_KEYS:
        raise Invalid(f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the expected tags")
    if kind not in (USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS):
        raise Invalid(f"{where}: `{kind}` blocks are not allowed in `{role}` messages")
    check_block_keys(block, where)
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        raise Invalid(f"{where}.text: text content blocks must be non-empty")
    if kind == "image":
        check_image_source(block.get("source"), where)
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") != "base64" or source.get("media_type") != "application/pdf" or not _b64(
                source.get("data")):
            raise Invalid(f"{where}.source: expected a base64 application/pdf source")
    if kind == "tool_use" and (not isinstance(block.get("id"), str) or not isinstance(block.get("input"), dict)
                               or not isinstance(block.get("name"), str)):
        raise Invalid(f"{where}.input: Input should be a valid dictionary")
    if kind == "tool_result":
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            for k, inner in enumerate(content):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image"):
                    raise Invalid(f"{where}.content.{k}.type: Input should be 'text' or 'image'")
    if kind == "thinking" and (not isinstance(block.get("thinking"), str) or not isinstance(block.get("signature"),
                                                                                            str)):
        raise Invalid(f"{where}.signature: Field required")


def check_image_source(source: Any, where: str) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        if set(source) != {"type", "media_type", "data"}:
            raise Invalid(f"{where}.source.base64: Extra inputs are not permitted")
        if source.get("media_type") not in IMAGE_TYPES:
            raise Invalid(f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                          "'image/gif' or 'image/webp'")
        if not _b64(source.get("data")):
            raise Invalid(f"{where}.source.base64.data: invalid base64 data")
    elif kind == "url":
        if set(source) != {"type", "url"} or not str(source.get("url")).startswith(("https://", "http://")):
            raise Invalid(f"{where}.source.url: expected an http(s) URL")
    else:
        raise Invalid(f"{where}.source: Input tag {kind!r} found using 'type' does not match any of the expected tags")


def _b64(data: Any) -> bool:
    if not isinstance(data, str) or not data:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def check_tool_pairing(messages: list[dict[str, Any]], blocks_of: list[list[dict[str, Any]]]) -> None:
    for i, blocks in enumerate(blocks_of):
        if messages[i]["role"] == "user":
            seen_other = False
            previous = {b["id"] for b in blocks_of[i - 1] if b["type"] == "tool_use"} if i else set()
            for j, block in enumerate(blocks):
                if block["type"] != "tool_result":
                    seen_other = True
                    continue
                if seen_other:
                    raise Invalid(f"messages.{i}.content.{j}: tool_result blocks must come before any other content "
                                  "in a user message")
                if block.get("tool_use_id") not in previous:
                    raise Invalid(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                  f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                                  "`tool_use` block in the previous message.")
            continue
        uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
        if uses and i + 1 < len(messages):
            answered = {b.get("tool_use_id") for b in blocks_of[i + 1] if b["type"] == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                              f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                              "`tool_result` block in the next message.")


def check_thinking_turns(messages: list[dict[str, Any]], blocks_of: list[list[dict[str, Any]]],
                         thinking: bool) -> None:
    last = len(messages) - 1
    if not thinking:
        if messages[last]["role"] == "assistant" and any(b["type"] in ("thinking", "redacted_thinking")
                                                         for b in blocks_of[last]):
            raise Invalid(f"messages.{last}.content.0: When thinking is disabled, an `assistant` message in the final "
                          "position cannot contain `thinking`. To use thinking blocks, enable `thinking` in your "
                          "request.")
        return
    for i, blocks in enumerate(blocks_of):
        if messages[i]["role"] != "assistant":
            continue
        kinds = [b["type"] for b in blocks]
        for j, block in enumerate(blocks):
            if block["type"] == "thinking" and block["signature"] != sign(block["thinking"]):
                raise Invalid(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
            if block["type"] == "redacted_thinking" and block.get("data") != REDACTED:
                raise Invalid(f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block")
        has_thinking = any(k in ("thinking", "redacted_thinking") for k in kinds)
        if has_thinking and kinds[0] not in ("thinking", "redacted_thinking"):
            raise Invalid(f"messages.{i}.content.0: If an assistant message contains any thinking blocks, the first "
                          f"block must be thinking or redacted_thinking. Found {kinds[0]}.")
    # The assistant turn that opens the current tool loop must start with its thinking.
    for i in range(last, -1, -1):
        if messages[i]["role"] == "assistant" and any(b["type"] == "tool_use" for b in blocks_of[i]):
            first = blocks_of[i][0]["type"]
            if first not in ("thinking", "redacted_thinking"):
                raise Invalid(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                              f"`{first}`. When `thinking` is enabled, a final `assistant` message must start with a "
                              "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We "
                              "recommend you include thinking blocks from previous turns. To avoid this requirement, "
                              "disable `thinking`. Please consult our documentation at "
                              "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")
            break
        if messages[i]["role"] == "user" and not any(b["type"] == "tool_result" for b in blocks_of[i]):
            break


# --- answers -------------------------------------------------------------------------------------


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def count_tokens(body: dict[str, Any]) -> int:
    """A stand-in tokenizer: words of every text in the request, plus a fixed overhead."""
    words = len(text_of(body.get("system") or "").split())
    for m in body["messages"]:
        blocks = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for b in blocks:
            if b["type"] == "text":
                words += len(b["text"].split())
            elif b["type"] == "tool_result":
                words += len(text_of(b.get("content")).split())
    return words + 3


def answer(body: dict[str, Any], thinking: bool) -> tuple[list[dict[str, Any]], str, str | None]:
    """The content blocks, stop_reason and stop_sequence for a request."""
    model = body["model"]
    last = body["messages"][-1]
    blocks = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
    results = [text_of(b.get("content")) for b in blocks if b["type"] == "tool_result"]
    content: list[dict[str, Any]] = []
    if thinking:
        thought = "The tool answered." if results else "The user wants an answer. I should be brief."
        content.append({"type": "thinking", "thinking": thought, "signature": sign(thought)})
        content.append({"type": "redacted_thinking", "data": REDACTED})
    stop, stop_sequence = "end_turn", None
    if results:
        content.append({"type": "text", "text": "It is " + " and ".join(results)})
    elif model == "claude-tools":
        content.append({"type": "text", "text": "Let me check."})
        parallel = not (body.get("tool_choice") or {}).get("disable_parallel_tool_use")
        for city in CITIES if parallel else CITIES[:1]:
            content.append({"type": "tool_use", "id": f"toolu_01{city.lower()}", "name": "get_weather",
                            "input": {"city": city, "unit": "celsius", "note": 'says "hi"'}})
        stop = "tool_use"
    elif model == "claude-now":
        content.append({"type": "tool_use", "id": "toolu_01now", "name": "now", "input": {}})
        stop = "tool_use"
    else:
        text = "Hello " + text_of(last["content"])
        if model.startswith("finish-"):
            stop = model[7:]
            if stop == "stop_sequence":
                stop_sequence = (body.get("stop_sequences") or ["END"])[0]
        content.append({"type": "text", "text": text})
    return content, stop, stop_sequence


def make_message(body: dict[str, Any], thinking: bool) -> dict[str, Any]:
    content, stop, stop_sequence = answer(body, thinking)
    cached = body["model"] == "claude-cache"
    output = sum(len(json.dumps(b).split()) for b in content)
    usage: dict[str, Any] = {"input_tokens": count_tokens(body), "cache_creation_input_tokens": 20 if cached else 0,
                             "cache_read_input_tokens": 100 if cached else 0, "output_tokens": output}
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": sum(len(json.dumps(b).split()) for b in content
                                                                 if b["type"].endswith("thinking"))}
    return {"id": "msg_01FakeMessage", "type": "message", "role": "assistant", "model": body["model"] + "-20250101",
            "content": content, "stop_reason": stop, "stop_sequence": stop_sequence, "usage": usage}


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """The full event sequence the real API sends for a message."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1, "output_tokens_details": None}}
    if message["model"].startswith("claude-ok"):  # the older, shorter final usage: output counts only
        usage = {k: v for k, v in usage.items() if k.startswith("output_tokens")}
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": ""},
                 "tool_use": {**block, "input": {}}, "redacted_thinking": block}[kind]
        events.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": empty}))
        if index == 0:
            events.append(sse("ping", {"type": "ping"}))

        def delta(d: dict[str, Any], index: int = index) -> bytes:
            return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})

        if kind == "text":
            events += [delta({"type": "text_delta", "text": w}) for w in re.findall(r"\S+\s*", block["text"])]
        elif kind == "thinking":
            events += [delta({"type": "thinking_delta", "thinking": w})
                       for w in re.findall(r"\S+\s*", block["thinking"])]
            events.append(delta({"type": "signature_delta", "signature": block["signature"]}))
        elif kind == "tool_use":
            args = json.dumps(block["input"]) if block["input"] else ""  # no input: only the empty delta
            events.append(delta({"type": "input_json_delta", "partial_json": ""}))
            events += [delta({"type": "input_json_delta", "partial_json": args[i:i + 5]})
                       for i in range(0, len(args), 5)]
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}, "usage": usage}))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def leaked_error(headers: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's error shape, repeating the credentials it was sent (and the last user text) wherever it can."""
    said = text_of(body["messages"][-1].get("content")) if body.get("messages") else ""
    key = headers["x-api-key"]
    sent = " ".join(v for k, v in headers.items() if any(w in k for w in ("auth", "key", "token")))
    return {"type": "error", "error": {"type": key, "message": f"invalid credentials: {sent}; {said}",
                                       "details": {"key": key, "nested": [{"echo": f"Bearer {key}"}]}},
            "request_id": key, key: said}


async def stream_body(model: str, events: list[bytes], leaked: dict[str, Any] | None = None
                      ) -> AsyncIterator[bytes]:
    first_text = next((i for i, e in enumerate(events) if b'"text_delta"' in e), -2)  # -2: no text at all
    for i, event in enumerate(events):
        if model in ("cut-stream", "error-stream", "leakall-stream") and i == first_text + 1:
            await asyncio.sleep(0.05)  # what came before reaches the client first, as a separate read
        if model == "cut-stream" and i == first_text + 1:
            yield event[: len(event) // 2]
            return
        if model == "leakall-stream" and i == first_text + 1:
            yield sse("error", leaked)
            return
        if model == "error-stream" and i == first_text + 1:
            yield sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            return
        if model == "split-stream":
            third = len(event) // 3
            for piece in (event[:third], event[third:2 * third], event[2 * third:]):
                yield piece
                await asyncio.sleep(0.002)
            continue
        yield event


FAILURES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def make_app(api_key: str) -> Starlette:
    state = State()

    async def messages(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            return error_response(400, "invalid_request_error", "There was an issue with your request body.")
        state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        try:
            check_headers(request.headers, api_key)
            check_body(body)
        except Invalid as e:
            return error_response(e.status, e.type, e.message)
        model = body["model"]
        if model.startswith("fail-"):
            status = int(model[5:])
            headers = {"retry-after": "11"} if status == 429 else None
            message = {529: "Overloaded", 500: "Internal server error"}.get(status, f"fake failure {status}")
            return error_response(status, FAILURES[status], message, headers)
        if model.startswith("leakall-") and model[8:].isdigit():
            status = int(model[8:])
            return Response(json.dumps(leaked_error(request.headers, body)), status,
                            {"retry-after": request.headers["x-api-key"]} if status == 429 else None,
                            media_type="application/json")
        if model == "leak-key":
            return error_response(401, "authentication_error", f"invalid x-api-key: {request.headers['x-api-key']}")
        if model == "not-json":
            return Response(b"<html>502 Bad Gateway</html>", 200, media_type="text/html")
        message = make_message(body, check_thinking(body))
        state.replies.append(message)
        if not body.get("stream"):
            return Response(json.dumps(message), media_type="application/json")
        leaked = leaked_error(request.headers, body) if model == "leakall-stream" else None
        return StreamingResponse(stream_body(model, stream_events(message), leaked), media_type="text/event-stream")

    async def count(request: Request) -> Response:
        """POST /v1/messages/count_tokens: the fake's count of the request, as ``{"input_tokens": n}``."""
        body = json.loads(await request.body())
        state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        try:
            check_headers(request.headers, api_key)
        except Invalid as e:
            return error_response(e.status, e.type, e.message)
        return Response(json.dumps({"input_tokens": count_tokens(body)}), media_type="application/json")

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]),
                            Route("/v1/messages/count_tokens", count, methods=["POST"])])
    app.state.fake = state
    return app
