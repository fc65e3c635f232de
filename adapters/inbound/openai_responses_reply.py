"""The internal OpenAI chat answer -> an OpenAI Responses ``response`` object, or its typed stream events.

Output items, in order: ``reasoning`` (the reasoning text as its summary), ``message`` (one
``output_text`` part), one ``function_call`` per tool call. finish_reason ``length`` makes the response
``incomplete`` (``max_output_tokens``), ``content_filter`` likewise (``content_filter``). The stream is
``response.created``, ``response.in_progress``, then per item ``output_item.added``, its parts and
deltas and their ``done`` events, ``output_item.done``, and last ``response.completed`` (or
``response.incomplete``) with the usage; an upstream error mid-stream is ``response.failed``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.base import StreamTranslator, Usage
from adapters.inbound.stream_bases import FromChatStream

# Fields of the request echoed in the response object, with OpenAI's defaults.
ECHOED = {"instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
          "temperature": 1.0, "tool_choice": "auto", "top_p": 1.0, "truncation": "disabled",
          "previous_response_id": None}


def usage_of(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def envelope(request: dict[str, Any], alias: str, ident: str, created: int) -> dict[str, Any]:
    """The response object before any output: what the request asked for, echoed."""
    out: dict[str, Any] = {"id": ident, "object": "response", "created_at": created, "status": "in_progress",
                           "error": None, "incomplete_details": None, "model": alias, "output": [],
                           "store": False, "background": False}
    for name, default in ECHOED.items():
        value = request.get(name)
        out[name] = default if value is None else value
    if isinstance(request.get("user"), str):
        out["user"] = request["user"]
    # Function tools as the response shows them: every field present (strict: whether it is enforced).
    out["tools"] = [{"type": "function", "name": t.get("name"), "description": t.get("description"),
                     "parameters": t.get("parameters"), "strict": bool(t.get("strict"))}
                    for t in request.get("tools") or () if isinstance(t, dict)]
    reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) else {}
    out["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    text = request.get("text") if isinstance(request.get("text"), dict) else {}
    out["text"] = {"format": text.get("format") or {"type": "text"}}
    return out


def finished(out: dict[str, Any], finish: str | None, usage: Usage | None) -> None:
    """Status, incomplete_details and usage, once the answer is whole."""
    if finish in ("length", "content_filter"):
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "max_output_tokens" if finish == "length" else "content_filter"}
    else:
        out["status"] = "completed"
        out["completed_at"] = int(time.time())
    out["usage"] = usage_of(usage)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(ident: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": ident, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text)] if status == "completed" else []}


def reasoning_item(ident: str, text: str) -> dict[str, Any]:
    return {"id": ident, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if text else []}


def call_item(ident: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": ident, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def response_from_chat(chat: dict[str, Any], request: dict[str, Any], alias: str, usage: Usage | None,
                       request_id: str) -> dict[str, Any]:
    """A chat completion body -> the Responses ``response`` object."""
    out = envelope(request, alias, response_id(request_id), int(chat.get("created") or time.time()))
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        items.append(reasoning_item(f"rs_{request_id}", reasoning))
    text = message.get("content")
    if isinstance(text, str) and text:
        items.append(message_item(f"msg_{request_id}", text))
    for n, call in enumerate(message.get("tool_calls") or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            items.append(call_item(f"fc_{request_id}_{n}", call.get("id") or f"call_{n}", fn.get("name") or "",
                                   fn.get("arguments") or "{}"))
    out["output"] = items
    finished(out, choice.get("finish_reason"), usage)
    return out


class ResponsesFromChat(FromChatStream):
    """Wraps a target's chat stream translator: its OpenAI chunks -> Responses events, as they come.

    One output item is open at a time (reasoning, message, or a function call); a delta of another
    kind closes it with its ``done`` events. ``sequence_number`` counts every event from 0.
    """

    def __init__(self, inner: StreamTranslator, request: dict[str, Any], alias: str, request_id: str) -> None:
        super().__init__(inner, request_id)
        self.response = envelope(request, alias, response_id(request_id), int(time.time()))
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # finished output items
        self.open: dict[str, Any] | None = None  # the open item, as it grows
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool call index -> its item
        self.finish: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        self.started = True
        return (self._event("response.created", response=self.response)
                + self._event("response.in_progress", response=self.response))

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [] if self.started else [self._start()]
        if isinstance(chunk.get("error"), dict):
            out.append(self._failed(chunk["error"]))
            return b"".join(out)
        for delta, finish_reason in self._deltas(chunk):
            out.extend(self._delta(delta))
            if finish_reason:
                self.finish = finish_reason
        return b"".join(out)

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            if self.open is None or self.open["type"] != "reasoning":
                out += self._open(reasoning_item(f"rs_{self.request_id}_{len(self.items)}", ""))
                out.append(self._event("response.reasoning_summary_part.added", **self._at(), summary_index=0,
                                       part={"type": "summary_text", "text": ""}))
                self.open["_text"] = []
            self.open["_text"].append(reasoning)
            out.append(self._event("response.reasoning_summary_text.delta", **self._at(), summary_index=0,
                                   delta=reasoning))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open is None or self.open["type"] != "message":
                out += self._open(message_item(f"msg_{self.request_id}_{len(self.items)}", "", "in_progress"))
                out.append(self._event("response.content_part.added", **self._at(), content_index=0,
                                       part=text_part("")))
                self.open["_text"] = []
            self.open["_text"].append(text)
            out.append(self._event("response.output_text.delta", **self._at(), content_index=0, delta=text,
                                   logprobs=[]))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out

    def _at(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _open(self, item: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.open = item
        return [*out, self._event("response.output_item.added", output_index=len(self.items), item=item)]

    def _close(self) -> list[bytes]:
        item = self.open
        if item is None:
            return []
        out: list[bytes] = []
        at = self._at()
        text = "".join(item.pop("_text", ()))
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            out.append(self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=text))
            out.append(self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part))
            item["summary"] = [part]
        elif item["type"] == "message":
            out.append(self._event("response.output_text.done", **at, content_index=0, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **at, content_index=0, part=text_part(text)))
            item.update(status="completed", content=[text_part(text)])
        else:
            item["arguments"] = arguments = "".join(item.pop("_args", ())) or "{}"
            out.append(self._event("response.function_call_arguments.done", **at, name=item["name"],
                                   arguments=arguments))
            item["status"] = "completed"
        out.append(self._event("response.output_item.done", output_index=at["output_index"], item=item))
        self.items.append(item)
        self.open = None
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        n = call.get("index", 0)
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        out: list[bytes] = []
        item = self.calls.get(n)
        if item is None:
            item = call_item(f"fc_{self.request_id}_{n}", call.get("id") or f"call_{n}", fn.get("name") or "", "",
                             "in_progress")
            out += self._open(item)
            item["_args"] = []
            self.calls[n] = item
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments and item is self.open:
            item["_args"].append(arguments)
            out.append(self._event("response.function_call_arguments.delta", **self._at(), delta=arguments))
        return out

    def _finish(self) -> bytes:
        self.done = True
        out = [] if self.started else [self._start()]
        out += self._close()
        self.usage = self.inner.usage or self.usage
        self.response["output"] = self.items
        finished(self.response, self.finish, self.usage)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=self.response))
        return b"".join(out)

    def _failed(self, err: dict[str, Any]) -> bytes:
        status = self._upstream_failed()
        self.response.update(status="failed", output=self.items,
                             error={"code": "rate_limit_exceeded" if status == 429 else "server_error",
                                    "message": str(err.get("message") or "upstream stream error")})
        return self._event("response.failed", response=self.response)
