"""kind = "gemini": Google's Gemini API (generativelanguage.googleapis.com) behind OpenAI's chat and embeddings.

Chat goes to ``{base_url}/v1beta/models/{model}:generateContent`` or ``:streamGenerateContent?alt=sse``,
embeddings to ``:batchEmbedContents``, all with the ``x-goog-api-key`` header.

Request mapping (OpenAI -> Gemini)
  system/developer messages   ``systemInstruction`` (all of them, in order, wherever they stand)
  user / assistant            ``user`` / ``model`` contents
  data: image URL, input_audio, file (PDF or any data URL)   ``inlineData{mimeType,data}``
  https image URL             ``fileData{mimeType,fileUri}``: Gemini fetches public and signed URLs itself.
                              fileData needs a MIME type, so the URL path must end in a known image
                              extension (.png .jpg .jpeg .webp .gif .heic .heif); any other URL (or http://)
                              is a 400 naming the field, or is dropped when the target has drop_unsupported.
  assistant tool_calls        ``functionCall{name,args}`` parts, with the ``thoughtSignature`` and Gemini's
                              call id recovered from the tool call id (see below)
  tool messages               one ``user`` content of ``functionResponse{name,response:{output}}`` parts per
                              run of tool messages; the name is looked up from the earlier call
  tools / tool_choice         ``functionDeclarations`` (schemas as ``parametersJsonSchema``, so full JSON
                              Schema passes unchanged) / ``functionCallingConfig``: auto AUTO, none NONE,
                              required ANY, a named function ANY + allowedFunctionNames, allowed_tools
                              (auto: the declarations are narrowed; required: ANY + allowedFunctionNames)
  max_completion_tokens ?? max_tokens, temperature, top_p, stop, n, seed, presence/frequency_penalty
                              ``generationConfig`` maxOutputTokens, temperature, topP, stopSequences,
                              candidateCount, seed, presencePenalty, frequencyPenalty. No max is sent when
                              the client sets none: Gemini needs none, and on thinking models a default cap
                              would eat into the thinking budget.
  response_format             json_object: responseMimeType application/json; json_schema: the same plus
                              ``responseJsonSchema`` (full JSON Schema)
  reasoning_effort            ``thinkingConfig``. Gemini 3+ models (the model name says gemini-3 or later) take
                              a thinkingLevel: none and minimal MINIMAL, low LOW, medium MEDIUM, high/xhigh/max
                              HIGH. Older models take a thinkingBudget: none 0, minimal 512, low 1024, medium
                              8192, high/xhigh/max 24576 (the bounds every 2.5 model accepts; low/medium/high
                              match Google's own OpenAI-compatible endpoint). Unless the effort is none,
                              includeThoughts is set so thought summaries come back as reasoning_content.
                              Levels a model does not offer (e.g. MINIMAL on Gemini 3 Pro) are Google's 400.
  logprobs, logit_bias, audio output, prediction, web_search_options, file_id inputs, non-function tools
                              400 naming the field, or dropped when the target has drop_unsupported.
  user, metadata, store, parallel_tool_calls, service_tier, ...   ignored (no Gemini equivalent, no effect
                              on the answer's shape)

Tool call ids carry what Gemini needs back on the next turn, so the gateway stays stateless:
``call_<24 hex>`` then optional ``.s<urlsafe-base64 of the thoughtSignature bytes>`` and ``.i<urlsafe-base64
of Gemini's functionCall.id>``. Only ``[A-Za-z0-9_.-]`` appears. Gemini 3 rejects a tool loop whose function
call lacks its signature; for history without one (written by hand or by another model) the first call of the
turn gets Google's documented ``skip_thought_signature_validator`` placeholder.

Response mapping: text parts (not ``thought``) -> content, thought parts -> reasoning_content, functionCall
parts -> tool_calls (finish_reason tool_calls); STOP stop, MAX_TOKENS length, safety/recitation/blocklist/
prohibited/SPII/language and promptFeedback.blockReason content_filter, anything else stop. Usage: prompt =
promptTokenCount, completion = candidatesTokenCount + thoughtsTokenCount, reasoning = thoughtsTokenCount,
cached = cachedContentTokenCount. A thoughtSignature on a text part (not a function call) is dropped: Google
recommends but does not require sending those back.

Errors: Google's ``{"error":{code,message,status,details}}``. The status string decides: INVALID_ARGUMENT,
FAILED_PRECONDITION, OUT_OF_RANGE 400; PERMISSION_DENIED 403; NOT_FOUND 404; RESOURCE_EXHAUSTED 429 with
Retry-After (the header, else RetryInfo.retryDelay); INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED and other
server-side statuses 502 (retryable). A rejected provider key (ErrorInfo reason API_KEY_INVALID, or
UNAUTHENTICATED) is a 401.

Embeddings: one batchEmbedContents request per call, one entry per input string (Gemini takes at most 100:
more is a 400 naming ``input``; token arrays too); ``dimensions`` -> ``outputDimensionality``; float or base64
(little-endian float32) as the client asked. Gemini reports no token counts here, so usage is estimated as
ceil(characters / 4) per input.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import sys
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

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

# --- policy tables -----------------------------------------------------------------------------------

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}  # everything else (OTHER, MALFORMED_FUNCTION_CALL, ...) has no OpenAI equivalent: "stop"

THINKING_LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH",
                   "xhigh": "HIGH", "max": "HIGH"}
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576,
                    "max": 24576}

# Google's canonical status strings -> the HTTP status the client sees (5xx become 502 downstream).
GOOGLE_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 500, "UNKNOWN": 500, "INTERNAL": 500, "DATA_LOSS": 500, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".heic": "image/heic", ".heif": "image/heif"}
FILE_TYPES = {".pdf": "application/pdf", ".txt": "text/plain", ".md": "text/md", ".html": "text/html",
              ".csv": "text/csv", ".xml": "text/xml", **IMAGE_TYPES}
AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac",
               "ogg": "audio/ogg", "flac": "audio/flac"}

# Fields with no Gemini equivalent that change what the client gets back: refused unless drop_unsupported.
UNSUPPORTED_FIELDS = ("logit_bias", "audio", "prediction", "web_search_options", "functions", "function_call")

SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented placeholder for foreign history
_CALL_ID = re.compile(r"call_[0-9a-f]{24}((?:\.[sti][A-Za-z0-9_-]*)*)")
_GEMINI_VERSION = re.compile(r"gemini-(\d+)")
_TOO_LONG = re.compile(r"input token count.*exceeds the maximum", re.IGNORECASE)


def invalid(message: str, param: str | None, code: str = "invalid_value") -> UpstreamError:
    return UpstreamError(400, message, "status_4xx", "invalid_request_error", code, param)


def resource(model: str) -> str:
    """The model's resource name: tuned models live under tunedModels/, plain names are base models."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def is_gemini3(model: str) -> bool:
    """Gemini 3 and later: thinking levels instead of budgets, and mandatory thought signatures."""
    m = _GEMINI_VERSION.search(model)
    return m is not None and int(m.group(1)) >= 3


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_call_id(signature: str | None = None, gemini_id: str | None = None) -> str:
    ident = "call_" + os.urandom(12).hex()
    if signature:
        try:
            raw = base64.b64decode(signature, validate=True)
            canonical = base64.b64encode(raw).decode() == signature
        except (binascii.Error, ValueError):
            canonical = False
        # .s: the signature's bytes (it is base64 on the wire); .t: an opaque string kept verbatim
        ident += ".s" + _b64url(raw) if canonical else ".t" + _b64url(signature.encode())
    if gemini_id:
        ident += ".i" + _b64url(gemini_id.encode())
    return ident


def parse_call_id(ident: Any) -> tuple[str | None, str | None]:
    """(thoughtSignature, Gemini call id) carried by a tool call id this adapter made, else (None, None)."""
    m = _CALL_ID.fullmatch(ident) if isinstance(ident, str) else None
    if m is None or not m.group(1):
        return None, None
    signature = gemini_id = None
    for segment in m.group(1)[1:].split("."):
        tag, value = segment[:1], segment[1:]
        try:
            raw = _unb64url(value)
        except (binascii.Error, ValueError):
            continue
        if tag == "s":
            signature = base64.b64encode(raw).decode()
        elif tag == "t":
            signature = raw.decode("utf-8", "replace")
        else:
            gemini_id = raw.decode("utf-8", "replace")
    return signature, gemini_id


# --- the adapter ---------------------------------------------------------------------------------------


class GeminiAdapter(Adapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key:
            self.headers["x-goog-api-key"] = provider.api_key
        self.root = f"{provider.base_url}/v1beta/"

    def url(self, model: str, method: str) -> str:
        return f"{self.root}{resource(model)}:{method}"

    # chat -------------------------------------------------------------------------------------------

    def chat_request(self, call: Call) -> UpstreamRequest:
        body = ChatRequestBuilder(call).build()
        if call.stream:
            url = self.url(call.target.model, "streamGenerateContent") + "?alt=sse"
        else:
            url = self.url(call.target.model, "generateContent")
        return UpstreamRequest(url, self.headers, orjson.dumps(body))

    def chat_response(self, call: Call, body: bytes) -> Reply:
        data = loads_object(self.provider, body)
        if "candidates" not in data and "promptFeedback" not in data:
            if isinstance(data.get("error"), dict):  # an error inside a 200
                raise google_error(self.provider, 500, data)
            raise bad_response(self.provider, "a response without candidates")
        candidates = data.get("candidates") or []
        choices = [choice_of(c, i) for i, c in enumerate(candidates) if isinstance(c, dict)]
        if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
            choices = [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
                        "logprobs": None, "finish_reason": "content_filter"}]
        usage = usage_of(data.get("usageMetadata"))
        out: dict[str, Any] = {"id": completion_id(data), "object": "chat.completion", "created": int(time.time()),
                               "model": call.alias, "choices": choices}
        if usage is not None:
            out["usage"] = usage.to_openai()
        return Reply(orjson.dumps(out), usage)

    def chat_stream(self, call: Call) -> StreamTranslator:
        return GeminiStream(self.provider, call.alias, call.include_usage)

    # embeddings -------------------------------------------------------------------------------------

    def embeddings_request(self, call: Call) -> UpstreamRequest:
        texts = embedding_inputs(call.body)
        entry: dict[str, Any] = {"model": resource(call.target.model)}
        dims = call.body.get("dimensions")
        if dims is not None:
            entry["outputDimensionality"] = dims
        requests = [{**entry, "content": {"parts": [{"text": text}]}} for text in texts]
        return UpstreamRequest(self.url(call.target.model, "batchEmbedContents"), self.headers,
                               orjson.dumps({"requests": requests}))

    def embeddings_response(self, call: Call, body: bytes) -> Reply:
        data = loads_object(self.provider, body)
        texts = embedding_inputs(call.body)
        embeddings = data.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            if isinstance(data.get("error"), dict):
                raise google_error(self.provider, 500, data)
            raise bad_response(self.provider, f"an embeddings response without {len(texts)} embeddings")
        as_base64 = call.body.get("encoding_format") == "base64"
        items = []
        for i, emb in enumerate(embeddings):
            values = emb.get("values") if isinstance(emb, dict) else None
            if not isinstance(values, list):
                raise bad_response(self.provider, "an embedding without values")
            try:
                vector: Any = pack_float32(values) if as_base64 else values
            except TypeError:
                raise bad_response(self.provider, "an embedding with values that are not numbers") from None
            items.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum((len(text) + 3) // 4 for text in texts)  # Gemini counts nothing here: ~4 chars a token
        usage = Usage(prompt_tokens=tokens)
        out = {"object": "list", "data": items, "model": call.alias,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Reply(orjson.dumps(out), usage)

    # errors -----------------------------------------------------------------------------------------

    def error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if data is None:
            message = f"HTTP {status} with a non-JSON body" if body else f"HTTP {status}"
            return upstream_status_error(self.provider, status, message, None, retry_after=headers.get("retry-after"))
        return google_error(self.provider, status, data, headers.get("retry-after"))


# --- requests ------------------------------------------------------------------------------------------


class ChatRequestBuilder:
    """One OpenAI chat body -> one generateContent body. Raises a 400 UpstreamError naming the field."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.body = call.body
        self.drop = call.target.drop_unsupported
        self.gemini3 = is_gemini3(call.target.model)
        self.system: list[dict[str, Any]] = []
        self.contents: list[dict[str, Any]] = []
        self.calls: dict[str, tuple[str, str | None]] = {}  # tool call id -> (function name, Gemini call id)
        self.tool_turn: dict[str, Any] | None = None  # the user content collecting a run of tool results

    def build(self) -> dict[str, Any]:
        for field in UNSUPPORTED_FIELDS:
            if self.body.get(field) is not None:
                self.unsupported(field, f"'{field}'")
        modalities = self.body.get("modalities")
        if isinstance(modalities, list) and any(m != "text" for m in modalities):
            self.unsupported("modalities", "output modalities other than text")
        for i, message in enumerate(self.body["messages"]):
            self.message(message, i)
        out: dict[str, Any] = {"contents": self.contents}
        if self.system:
            out["systemInstruction"] = {"parts": self.system}
        declarations, calling = self.tools()
        if declarations:
            out["tools"] = [{"functionDeclarations": declarations}]
            if calling:
                out["toolConfig"] = {"functionCallingConfig": calling}
        config = self.generation_config()
        if config:
            out["generationConfig"] = config
        return out

    def unsupported(self, param: str, what: str) -> None:
        """A 400 naming the field, unless the target drops what Gemini cannot honour (then the caller skips it)."""
        if not self.drop:
            raise invalid(f"{what} is not supported by Gemini targets", param, "unsupported_parameter")

    # messages ---------------------------------------------------------------------------------------

    def message(self, m: dict[str, Any], i: int) -> None:
        role = m["role"]
        if role != "tool":
            self.tool_turn = None
        if role in ("system", "developer"):
            self.system.extend({"text": t} for t in self.texts(m.get("content"), f"messages[{i}].content"))
        elif role == "user":
            self.contents.append({"role": "user", "parts": self.user_parts(m.get("content"), i)})
        elif role == "assistant":
            parts = self.assistant_parts(m, i)
            if parts:  # Gemini rejects a content without parts; an empty assistant turn says nothing
                self.contents.append({"role": "model", "parts": parts})
        elif role == "tool":
            self.tool_result(m, i)
        else:
            raise invalid(f"messages[{i}].role {role!r} is not supported by Gemini targets", f"messages[{i}].role")

    def texts(self, content: Any, param: str) -> list[str]:
        """Text-only content (system, developer, tool, assistant): a string or text parts."""
        if content is None:
            return []
        if isinstance(content, str):
            return [content]
        if not isinstance(content, list):
            raise invalid(f"{param} must be a string or an array of parts", param, "invalid_type")
        out = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "refusal") and isinstance(part.get(kind), str):
                out.append(part[kind])
            else:
                raise invalid(f"{param}[{j}] must be a text part here", f"{param}[{j}]", "invalid_type")
        return out

    def user_parts(self, content: Any, i: int) -> list[dict[str, Any]]:
        param = f"messages[{i}].content"
        if isinstance(content, str):
            return [{"text": content}]
        if not isinstance(content, list):
            raise invalid(f"{param} must be a string or an array of parts", param, "invalid_type")
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise invalid(f"{param}[{j}] must be an object", f"{param}[{j}]", "invalid_type")
            converted = self.user_part(part, f"{param}[{j}]")
            if converted is not None:
                parts.append(converted)
        return parts

    def user_part(self, part: dict[str, Any], param: str) -> dict[str, Any] | None:
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"{param}.text must be a string", f"{param}.text", "invalid_type")
            return {"text": part["text"]}
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            return self.image(url, f"{param}.image_url.url")
        if kind == "input_audio":
            audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            mime = AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None:
                raise invalid(f"{param}.input_audio.format must be one of {', '.join(AUDIO_TYPES)}",
                              f"{param}.input_audio.format")
            if not isinstance(audio.get("data"), str):
                raise invalid(f"{param}.input_audio.data must be base64 audio", f"{param}.input_audio.data")
            return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
        if kind == "file":
            return self.file(part.get("file"), f"{param}.file")
        self.unsupported(f"{param}.type", f"content part type {kind!r}")
        return None

    def image(self, url: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(url, str):
            raise invalid(f"{param} must be a string", param, "invalid_type")
        if url.startswith("data:"):
            return {"inlineData": data_url(url, param)}
        if url.startswith("https://"):
            mime = IMAGE_TYPES.get(os.path.splitext(urlsplit(url).path)[1].lower())
            if mime is not None:
                return {"fileData": {"mimeType": mime, "fileUri": url}}
            self.unsupported(param, "an https image URL whose path does not end in a known image extension "
                                    "(Gemini needs the MIME type; send a data: URL instead)")
            return None
        self.unsupported(param, "an image URL that is neither https:// nor data:")
        return None

    def file(self, file: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(file, dict):
            raise invalid(f"{param} must be an object", param, "invalid_type")
        data = file.get("file_data")
        if not isinstance(data, str):
            self.unsupported(f"{param}.file_id", "a file part without file_data (file ids)")
            return None
        if data.startswith("data:"):
            return {"inlineData": data_url(data, f"{param}.file_data")}
        # Bare base64, as the spec describes it: the filename tells the type, PDF by default.
        ext = os.path.splitext(str(file.get("filename") or ""))[1].lower()
        return {"inlineData": {"mimeType": FILE_TYPES.get(ext, "application/pdf"), "data": data}}

    def assistant_parts(self, m: dict[str, Any], i: int) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"text": t} for t in self.texts(m.get("content"), f"messages[{i}].content") if t]
        tool_calls = m.get("tool_calls") or []
        if not isinstance(tool_calls, list):
            raise invalid(f"messages[{i}].tool_calls must be an array", f"messages[{i}].tool_calls", "invalid_type")
        calls = [self.function_call(tc, f"messages[{i}].tool_calls[{j}]") for j, tc in enumerate(tool_calls)]
        calls = [c for c in calls if c is not None]
        if calls and self.gemini3 and not any("thoughtSignature" in c for c in calls):
            calls[0]["thoughtSignature"] = SKIP_SIGNATURE
        return parts + calls

    def function_call(self, tc: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(tc, dict):
            raise invalid(f"{param} must be an object", param, "invalid_type")
        if tc.get("type", "function") != "function":
            self.unsupported(f"{param}.type", f"tool call type {tc.get('type')!r}")
            return None
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{param}.function.name is required", f"{param}.function.name", "missing_required_parameter")
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise invalid(f"{param}.function.arguments must be a JSON object (Gemini takes arguments as an object)",
                          f"{param}.function.arguments")
        signature, gemini_id = parse_call_id(tc.get("id"))
        call: dict[str, Any] = {"name": name, "args": parsed}
        if gemini_id:
            call["id"] = gemini_id
        if isinstance(tc.get("id"), str):
            self.calls[tc["id"]] = (name, gemini_id)
        part: dict[str, Any] = {"functionCall": call}
        if signature:
            part["thoughtSignature"] = signature
        return part

    def tool_result(self, m: dict[str, Any], i: int) -> None:
        ident = m.get("tool_call_id")
        if ident not in self.calls:
            raise invalid(f"messages[{i}].tool_call_id {ident!r} does not match a tool call of an earlier assistant "
                          "message (Gemini needs the function name)", f"messages[{i}].tool_call_id")
        name, gemini_id = self.calls[ident]
        output = "".join(self.texts(m.get("content"), f"messages[{i}].content"))
        response: dict[str, Any] = {"name": name, "response": {"output": output}}
        if gemini_id:
            response["id"] = gemini_id
        # Gemini wants all results for one model turn together, in a single user content.
        if self.tool_turn is None:
            self.tool_turn = {"role": "user", "parts": []}
            self.contents.append(self.tool_turn)
        self.tool_turn["parts"].append({"functionResponse": response})

    # tools and generation config --------------------------------------------------------------------

    def tools(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        tools = self.body.get("tools") or []
        if not isinstance(tools, list):
            raise invalid("'tools' must be an array", "tools", "invalid_type")
        declarations = []
        for k, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
            if not isinstance(fn, dict):
                self.unsupported(f"tools[{k}]", "a tool that is not a function")
                continue
            decl: dict[str, Any] = {"name": fn.get("name")}
            if fn.get("description") is not None:
                decl["description"] = fn["description"]
            if fn.get("parameters") is not None:
                decl["parametersJsonSchema"] = fn["parameters"]
            declarations.append(decl)
        if not declarations:
            return [], None
        return self.tool_choice(declarations)

    def tool_choice(self, declarations: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        choice = self.body.get("tool_choice")
        if choice is None:
            return declarations, None
        modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
        if isinstance(choice, str) and choice in modes:
            return declarations, {"mode": modes[choice]}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "function" and isinstance(choice.get("function"), dict):
            return declarations, {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
        if kind == "allowed_tools" and isinstance(choice.get("allowed_tools"), dict):
            allowed = choice["allowed_tools"]
            names = [t["function"].get("name") for t in allowed.get("tools") or []
                     if isinstance(t, dict) and isinstance(t.get("function"), dict)]
            if allowed.get("mode") == "required":
                return declarations, {"mode": "ANY", "allowedFunctionNames": names}
            # Gemini takes allowedFunctionNames only with ANY: for "auto", narrow the declarations instead.
            return [d for d in declarations if d["name"] in names], {"mode": "AUTO"}
        raise invalid("'tool_choice' must be none, auto, required or a function", "tool_choice")

    def generation_config(self) -> dict[str, Any]:
        b = self.body
        config: dict[str, Any] = {}
        max_tokens = b.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = b.get("max_tokens")
        if max_tokens is not None:
            config["maxOutputTokens"] = max_tokens
        for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
                         ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
            if b.get(src) is not None:
                config[dst] = b[src]
        stop = b.get("stop")
        if stop is not None:
            config["stopSequences"] = [stop] if isinstance(stop, str) else stop
        if b.get("logprobs") or b.get("top_logprobs") is not None:
            self.unsupported("logprobs", "'logprobs'")
        self.response_format(config)
        self.reasoning(config)
        return config

    def response_format(self, config: dict[str, Any]) -> None:
        fmt = self.body.get("response_format")
        if fmt is None:
            return
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
            return
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise invalid("response_format.json_schema must be an object", "response_format.json_schema")
            config["responseMimeType"] = "application/json"
            if spec.get("schema") is not None:
                config["responseJsonSchema"] = spec["schema"]
            return
        raise invalid("response_format.type must be text, json_object or json_schema", "response_format.type")

    def reasoning(self, config: dict[str, Any]) -> None:
        effort = self.body.get("reasoning_effort")
        if effort is None:
            return
        if effort not in THINKING_BUDGETS:
            raise invalid(f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}", "reasoning_effort")
        thinking: dict[str, Any] = (
            {"thinkingLevel": THINKING_LEVELS[effort]} if self.gemini3 else {"thinkingBudget": THINKING_BUDGETS[effort]}
        )
        if effort != "none":
            thinking["includeThoughts"] = True
        config["thinkingConfig"] = thinking


def data_url(url: str, param: str) -> dict[str, str]:
    head, sep, data = url.partition(",")
    mime, _, encoding = head[5:].partition(";")
    if not sep or encoding != "base64" or not mime or not data:
        raise invalid(f"{param} must be a data:<mime type>;base64,<data> URL", param)
    return {"mimeType": mime, "data": data}


MAX_EMBED_INPUTS = 100  # batchEmbedContents: "at most 100 requests can be in one batch"


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    inputs = body["input"]
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > MAX_EMBED_INPUTS:
        raise invalid(f"Gemini embeds at most {MAX_EMBED_INPUTS} inputs per request; got {len(texts)}", "input")
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid("Gemini embeddings take strings; token arrays are not supported",
                          "input" if isinstance(text, int) else f"input[{k}]", "invalid_type")
    return texts


def pack_float32(values: list[float]) -> str:
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


# --- responses -----------------------------------------------------------------------------------------


def completion_id(data: dict[str, Any]) -> str:
    rid = data.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else "chatcmpl-" + os.urandom(12).hex()


def usage_of(meta: Any) -> Usage | None:
    if not isinstance(meta, dict):
        return None

    def n(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    thoughts = n("thoughtsTokenCount")
    return Usage(prompt_tokens=n("promptTokenCount"), completion_tokens=n("candidatesTokenCount") + thoughts,
                 cached_tokens=n("cachedContentTokenCount"), reasoning_tokens=thoughts)


def finish_reason(reason: Any, has_tool_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_tool_calls and mapped == "stop" else mapped


def tool_call_of(call: dict[str, Any], signature: Any) -> dict[str, Any]:
    args = call.get("args")
    gemini_id = call.get("id") if isinstance(call.get("id"), str) else None
    arguments = orjson.dumps(args if args is not None else {}).decode()
    return {"id": make_call_id(signature if isinstance(signature, str) else None, gemini_id), "type": "function",
            "function": {"name": call.get("name"), "arguments": arguments}}


def split_parts(parts: Any) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Text, thought text and function calls of a candidate's parts, in order."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            calls.append(tool_call_of(part["functionCall"], part.get("thoughtSignature")))
        elif isinstance(part.get("text"), str) and part["text"]:
            (thoughts if part.get("thought") else text).append(part["text"])
    return text, thoughts, calls


def choice_of(candidate: dict[str, Any], position: int) -> dict[str, Any]:
    content = candidate.get("content")
    text, thoughts, calls = split_parts(content.get("parts") if isinstance(content, dict) else None)
    finish = finish_reason(candidate.get("finishReason"), bool(calls))
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(text) if text else (None if calls or finish == "content_filter"
                                                                      else ""),
                               "refusal": None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    index = candidate.get("index")
    return {"index": index if isinstance(index, int) else position, "message": message, "logprobs": None,
            "finish_reason": finish}


# --- errors --------------------------------------------------------------------------------------------


def google_error(provider: ProviderConfig, status: int, data: Any, retry_after: str | None = None) -> UpstreamError:
    """Google's error JSON (or a list holding one, as streamGenerateContent without SSE sends) -> UpstreamError."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return upstream_status_error(provider, status, f"HTTP {status}", None, retry_after=retry_after)
    message = str(err.get("message") or f"HTTP {status}")
    google_status = err.get("status") if isinstance(err.get("status"), str) else ""
    details = err.get("details") if isinstance(err.get("details"), list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons or google_status == "UNAUTHENTICATED":
        # The gateway's own provider key was refused: an authentication failure, never the key itself.
        return UpstreamError(401, f"upstream {provider.name} rejected the provider API key: {scrub(provider, message)}",
                             "status_4xx", "invalid_request_error", "invalid_api_key", upstream_status=status)
    code_value = err.get("code")
    fallback = code_value if isinstance(code_value, int) and 400 <= code_value < 600 else status
    mapped = GOOGLE_STATUS.get(google_status, fallback)
    if mapped == 429:
        retry_after = retry_after or retry_delay(details)
    code = google_status.lower() if google_status and 400 <= mapped < 500 and mapped != 429 else None
    if mapped == 400 and _TOO_LONG.search(message):
        code = "context_length_exceeded"  # OpenAI's code: lets the router fall back to a larger window
    return upstream_status_error(provider, mapped, message, None, code, None, retry_after)


def retry_delay(details: list[Any]) -> str | None:
    """RetryInfo.retryDelay ("37s", "1.5s") as whole seconds for a Retry-After header."""
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            try:
                return str(max(1, math.ceil(float(str(delay).rstrip("s")))))
            except ValueError:
                return None
    return None


# --- streams -------------------------------------------------------------------------------------------

_BARE_JSON_AT_START = re.compile(rb"[ \t]*[\[{]")
_BARE_JSON_AFTER_NL = re.compile(rb"\n[ \t]*[\[{]")


class _Choice:
    __slots__ = ("started", "tools", "finished")

    def __init__(self) -> None:
        self.started = False
        self.tools = 0  # tool calls so far: the OpenAI index of the next one
        self.finished = False


class GeminiStream(StreamTranslator):
    """Gemini SSE (``data: <GenerateContentResponse>``, no [DONE]) -> OpenAI chat.completion.chunk events.

    Every Gemini event is parsed (each is one small JSON object); each becomes at most two chunks per
    candidate: one delta (role on the first, reasoning_content, content, whole tool calls) and one
    finish chunk. The stream is complete only when the upstream closes after a finishReason: ``end``
    then adds the usage chunk (if asked for) and [DONE]. Errors may arrive as ``data: {"error":...}`` or
    as bare (often pretty-printed) JSON lines outside SSE framing; both become an OpenAI error event.
    """

    def __init__(self, provider: ProviderConfig, alias: str, include_usage: bool) -> None:
        self.provider = provider
        self.alias = alias
        self.include_usage = include_usage
        self.decoder = SSEDecoder()
        self.created = int(time.time())
        self.head = b""  # the chunk prefix up to "choices": fixed by the first event (it carries the id)
        self.tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self.choices: dict[int, _Choice] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.chars = 0
        self.line_start = True
        self.bare: bytearray | None = None  # bytes of a JSON value sent outside SSE framing

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        for _, payload in self.decoder.feed(data):
            self.event(payload, out)
            if self.done:
                return b"".join(out)
        self.collect_bare(data, out)
        self.line_start = data.endswith(b"\n")
        return b"".join(out)

    def end(self) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        for _, payload in self.decoder.flush():
            self.event(payload, out)
            if self.done:
                return b"".join(out)
        if self.bare is not None:
            raise bad_response(self.provider, "a stream with a malformed JSON body")
        finished = [c for c in self.choices.values() if c.finished]
        if not finished or len(finished) != len(self.choices):
            raise UpstreamError(502, f"upstream {self.provider.name} stream ended before a finishReason",
                                "bad_response", "upstream_error", "stream_truncated")
        if self.include_usage and self.usage is not None:
            out.append(self.head + b'[],"usage":' + orjson.dumps(self.usage.to_openai()) + b"}\n\n")
        out.append(b"data: [DONE]\n\n")
        self.done = True
        return b"".join(out)

    def estimated_completion_tokens(self) -> int:
        return (self.chars + 3) // 4

    # events -----------------------------------------------------------------------------------------

    def event(self, payload: bytes, out: list[bytes]) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise bad_response(self.provider, "a stream event that is not JSON") from None
        if isinstance(event, list) and len(event) == 1:
            event = event[0]
        if not isinstance(event, dict):
            raise bad_response(self.provider, "a stream event that is not a JSON object")
        if "error" in event and "candidates" not in event:
            self.fail(event, out)
            return
        if not self.head:
            self.head = (b'data: {"id":' + orjson.dumps(completion_id(event)) + b',"object":"chat.completion.chunk",'
                         b'"created":' + str(self.created).encode() + b',"model":' + orjson.dumps(self.alias)
                         + b',"choices":')
        if "usageMetadata" in event:
            self.usage = usage_of(event["usageMetadata"])
        candidates = event.get("candidates")
        if isinstance(candidates, list) and candidates:
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    self.candidate(candidate, position, out)
        elif isinstance(event.get("promptFeedback"), dict) and event["promptFeedback"].get("blockReason"):
            state = self.choices.setdefault(0, _Choice())
            self.delta(0, state, [], [], [], out)
            self.finish(0, state, "content_filter", out)

    def candidate(self, candidate: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = candidate.get("index")
        index = index if isinstance(index, int) else position
        state = self.choices.get(index)
        if state is None:
            state = self.choices[index] = _Choice()
        if state.finished:
            return
        content = candidate.get("content")
        text, thoughts, calls = split_parts(content.get("parts") if isinstance(content, dict) else None)
        self.delta(index, state, text, thoughts, calls, out)
        reason = candidate.get("finishReason")
        if reason:
            self.finish(index, state, finish_reason(reason, state.tools > 0), out)

    def delta(self, index: int, state: _Choice, text: list[str], thoughts: list[str], calls: list[dict[str, Any]],
              out: list[bytes]) -> None:
        delta: dict[str, Any] = {}
        if not state.started:
            state.started = True
            delta["role"] = "assistant"
            if not text:
                delta["content"] = None if calls else ""
        if thoughts:
            delta["reasoning_content"] = "".join(thoughts)
            self.chars += len(delta["reasoning_content"])
        if text:
            delta["content"] = "".join(text)
            self.chars += len(delta["content"])
        if calls:
            indexed = []
            for call in calls:
                indexed.append({"index": state.tools, **call})
                state.tools += 1
                self.chars += len(call["function"]["arguments"])
            delta["tool_calls"] = indexed
        if delta:
            self.chunk(index, delta, None, out)

    def finish(self, index: int, state: _Choice, reason: str, out: list[bytes]) -> None:
        state.finished = True
        self.chunk(index, {}, reason, out)

    def chunk(self, index: int, delta: dict[str, Any], finish: str | None, out: list[bytes]) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(self.head + orjson.dumps([choice]) + self.tail)

    def fail(self, event: Any, out: list[bytes]) -> None:
        err = event.get("error") if isinstance(event, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        self.error = google_error(self.provider, code if isinstance(code, int) else 500, event)
        out.append(b"data: " + orjson.dumps(self.error.body()) + b"\n\n")
        self.done = True

    def collect_bare(self, data: bytes, out: list[bytes]) -> None:
        """Gather a JSON value sent without ``data:`` (Google's error body inside a 200 stream)."""
        if self.bare is None:
            if self.line_start and _BARE_JSON_AT_START.match(data):
                start = 0
            else:
                m = _BARE_JSON_AFTER_NL.search(data)
                if m is None:
                    return
                start = m.start() + 1
            self.bare = bytearray(data[start:])
        else:
            self.bare += data
        try:
            value = orjson.loads(self.bare)
        except orjson.JSONDecodeError:
            return  # not complete yet
        self.bare = None
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, dict) and "error" in value:
            self.fail(value, out)
        else:
            raise bad_response(self.provider, "a stream with JSON outside its events")
