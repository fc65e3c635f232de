"""kind = "echo": a local OpenAI-compatible provider with no network.

It answers the OpenAI wire format in-process (``answer``: a status and a body, or a stream of SSE
bytes), so an echo provider runs through exactly the same adapter (``OpenAIAdapter``), streaming and
accounting code as a real one; only the network is missing.
Replies are derived from the last user message; token counts are honest counts of the same
word/punctuation tokens it emits; embeddings are deterministic unit vectors.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content
                        if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def reply_for(messages: list[Any]) -> str:
    last = ""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            last = message_text(m.get("content"))
    return f"Echo: {last}" if last.strip() else "Echo: (no user message)"


def prompt_tokens(messages: list[Any]) -> int:
    return sum(count_tokens(message_text(m.get("content"))) for m in messages if isinstance(m, dict))


Answer = tuple[int, bytes | AsyncIterator[bytes]]


def answer(url: str, content: bytes) -> Answer:
    """What an OpenAI-compatible server would answer to a POST of ``content`` to ``url``."""
    body = orjson.loads(content)
    if url.endswith("/chat/completions"):
        return _chat(body)
    if url.endswith("/embeddings"):
        return _embeddings(body)
    if url.endswith("/moderations"):
        return _moderations(body)
    if url.endswith("/rerank"):
        return _rerank(body)
    if url.endswith("/images/generations"):
        return _images(body)
    if url.endswith("/completions"):
        return _completions(body)
    return _json(404, {"error": {"message": f"echo has no {url}", "type": "invalid_request_error",
                                 "param": None, "code": "not_found"}})


def _json(status: int, data: dict[str, Any]) -> Answer:
    return status, orjson.dumps(data)


def _chat(body: dict[str, Any]) -> Answer:
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    text = reply_for(messages)
    words = re.findall(r"\S+\s*", text)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if isinstance(max_tokens, int) and max_tokens < len(words):
        words, finish = words[:max_tokens], "length"
        text = "".join(words)
    usage = {
        "prompt_tokens": prompt_tokens(messages),
        "completion_tokens": count_tokens(text),
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    ident = "chatcmpl-echo-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    created = int(time.time())
    model = body.get("model", "echo")
    if not body.get("stream"):
        return _json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })
    options = body.get("stream_options") or {}
    return 200, aiter(_EchoStream(ident, created, model, words, finish,
                                  usage if options.get("include_usage") else None))


class _EchoStream:
    def __init__(self, ident: str, created: int, model: str, words: list[str], finish: str,
                 usage: dict[str, Any] | None) -> None:
        self.head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        self.words = words
        self.finish = finish
        self.usage = usage

    def _event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**self.head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.usage is not None:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._event({"role": "assistant", "content": ""})
        for word in self.words:
            yield self._event({"content": word})
        yield self._event({}, self.finish)
        if self.usage is not None:
            yield b"data: " + orjson.dumps({**self.head, "choices": [], "usage": self.usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _completions(body: dict[str, Any]) -> Answer:
    """Legacy text completions: the prompt (the first, if several) echoed back, as with chat."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else " ".join(map(str, prompt))
    text = f"Echo: {prompt}" if isinstance(prompt, str) and prompt.strip() else "Echo: (no prompt)"
    words = re.findall(r"\S+\s*", text)
    max_tokens = body.get("max_tokens")
    finish = "stop"
    if isinstance(max_tokens, int) and max_tokens < len(words):
        words, finish = words[:max_tokens], "length"
        text = "".join(words)
    prompt_count = count_tokens(prompt) if isinstance(prompt, str) else 0
    usage = {"prompt_tokens": prompt_count, "completion_tokens": count_tokens(text),
             "total_tokens": prompt_count + count_tokens(text)}
    head = {"id": "cmpl-echo-" + hashlib.sha256(text.encode()).hexdigest()[:16], "object": "text_completion",
            "created": int(time.time()), "model": body.get("model", "echo")}
    if not body.get("stream"):
        return _json(200, {**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                           "usage": usage})
    options = body.get("stream_options") or {}
    return 200, aiter(_text_stream(head, words, finish, usage if options.get("include_usage") else None))


async def _text_stream(head: dict[str, Any], words: list[str], finish: str,
                       usage: dict[str, Any] | None) -> AsyncIterator[bytes]:
    for i, word in enumerate(words):
        last = i == len(words) - 1
        choice = {"text": word, "index": 0, "logprobs": None, "finish_reason": finish if last else None}
        yield b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
    if usage is not None:
        yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def embedding_for(text: str, dimensions: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])
    vec = [i / 2147483647.5 - 1.0 for i in ints]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _embeddings(body: dict[str, Any]) -> Answer:
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return _json(400, {"error": {"message": "'input' must be a non-empty string or array",
                                     "type": "invalid_request_error", "param": "input", "code": None}})
    dimensions = body.get("dimensions") or 1536
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 8192:
        return _json(400, {"error": {"message": "'dimensions' must be an integer from 1 to 8192",
                                     "type": "invalid_request_error", "param": "dimensions", "code": None}})
    for i, item in enumerate(inputs):  # strings or token-id arrays, as OpenAI takes them
        if not isinstance(item, str) and not (isinstance(item, list) and item and all(
                isinstance(t, int) and not isinstance(t, bool) for t in item)):
            return _json(400, {"error": {"message": f"'input[{i}]' must be a string or an array of token ids",
                                         "type": "invalid_request_error", "param": "input", "code": None}})
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += count_tokens(text) if isinstance(item, str) else len(item)
        vec: Any = embedding_for(text, dimensions)
        if as_base64:
            vec = base64.b64encode(struct.pack(f"<{dimensions}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return _json(200, {"object": "list", "data": data, "model": body.get("model", "echo"),
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


# pass-through endpoints (proxy.passthrough): enough of each answer's shape for a client to try them ----------

MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                         "sexual/minors", "violence", "violence/graphic")
# A 1x1 transparent PNG: what every echo image is.
PIXEL_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def _moderations(body: dict[str, Any]) -> Answer:
    """Nothing is ever flagged."""
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    result = {"flagged": False, "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
              "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
              "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}
    ident = "modr-echo-" + hashlib.sha256(orjson.dumps(inputs)).hexdigest()[:16]
    return _json(200, {"id": ident, "model": body.get("model", "echo"), "results": [result for _ in items]})


def _rerank(body: dict[str, Any]) -> Answer:
    """Documents ranked by how many of the query's words they share (vLLM's /rerank shape)."""
    query = body.get("query")
    documents = body.get("documents")
    if not isinstance(query, str) or not isinstance(documents, list):
        return _json(400, {"error": {"message": "'query' must be a string and 'documents' an array",
                                     "type": "invalid_request_error", "param": "documents", "code": None}})
    words = {w.lower() for w in _TOKEN.findall(query)}
    results = []
    for i, doc in enumerate(documents):
        text = doc if isinstance(doc, str) else str(doc.get("text", "")) if isinstance(doc, dict) else ""
        doc_words = {w.lower() for w in _TOKEN.findall(text)}
        score = len(words & doc_words) / (len(words) or 1)
        results.append({"index": i, "document": {"text": text}, "relevance_score": score})
    results.sort(key=lambda r: -r["relevance_score"])
    top = body.get("top_n")
    if isinstance(top, int) and top > 0:
        results = results[:top]
    tokens = count_tokens(query) + sum(count_tokens(r["document"]["text"]) for r in results)
    return _json(200, {"id": "rerank-echo", "model": body.get("model", "echo"), "results": results,
                       "usage": {"total_tokens": tokens}})


def _images(body: dict[str, Any]) -> Answer:
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    if not 1 <= n <= 10:
        return _json(400, {"error": {"message": "'n' must be from 1 to 10", "type": "invalid_request_error",
                                     "param": "n", "code": None}})
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    item = {"b64_json": PIXEL_PNG, "revised_prompt": f"Echo: {prompt}"}
    return _json(200, {"created": int(time.time()), "data": [item for _ in range(n)]})
