"""OpenAI chat request -> Gemini generateContent body.

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
  max_completion_tokens ?? max_tokens, temperature, top_p, top_k, stop, n, seed, presence/frequency_penalty
                              ``generationConfig`` maxOutputTokens, temperature, topP, topK, stopSequences,
                              candidateCount, seed, presencePenalty, frequencyPenalty. No max is sent when
                              the client sets none: Gemini needs none, and on thinking models a default cap
                              would eat into the thinking budget.
  response_format             json_object: responseMimeType application/json; json_schema: the same plus
                              ``responseJsonSchema`` (full JSON Schema)
  reasoning_effort            ``thinkingConfig``. Gemini 3+ models (the model name says gemini-3 or later) take
                              a thinkingLevel: none and minimal MINIMAL, low LOW, medium MEDIUM, high/xhigh/max
                              HIGH. Older models take a thinkingBudget: none 0, minimal 512, low 1024, medium
                              8192, high/xhigh/max 24576 (the bounds every 2.5 model accepts; low/medium/high
                              match Google's own OpenAI-compatible endpoint), cut to maxOutputTokens - 1 when
                              the client's limit is not above it. Unless the effort is none,
                              includeThoughts is set so thought summaries come back as reasoning_content.
                              Levels a model does not offer (e.g. MINIMAL on Gemini 3 Pro) are Google's 400.
  logprobs, logit_bias, audio output, prediction, web_search_options, file_id inputs, non-function tools
                              400 naming the field, or dropped when the target has drop_unsupported.
  user, metadata, store, parallel_tool_calls, service_tier, ...   ignored (no Gemini equivalent, no effect
                              on the answer's shape)
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from adapters.base import Call, invalid_request
from adapters.gemini.call_ids import parse_call_id

THINKING_LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH",
                   "xhigh": "HIGH", "max": "HIGH"}
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576,
                    "max": 24576}

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".heic": "image/heic", ".heif": "image/heif"}
FILE_TYPES = {".pdf": "application/pdf", ".txt": "text/plain", ".md": "text/md", ".html": "text/html",
              ".csv": "text/csv", ".xml": "text/xml", **IMAGE_TYPES}
AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac",
               "ogg": "audio/ogg", "flac": "audio/flac"}

# Fields with no Gemini equivalent that change what the client gets back: refused unless drop_unsupported.
UNSUPPORTED_FIELDS = ("logit_bias", "audio", "prediction", "web_search_options", "functions", "function_call")

SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented placeholder for foreign history
_GEMINI_VERSION = re.compile(r"gemini-(\d+)")


def resource(model: str) -> str:
    """The model's resource name: tuned models live under tunedModels/, plain names are base models."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def resource_path(model: str) -> str:
    """The resource name as URL path segments: the collection as is, the model's id escaped whole, so a
    name such as ``x/../../v1/models?`` stays one segment of the model collection."""
    collection, _, name = resource(model).partition("/")
    return f"{collection}/{quote(name, safe='')}"


def is_gemini3(model: str) -> bool:
    """Gemini 3 and later: thinking levels instead of budgets, and mandatory thought signatures."""
    m = _GEMINI_VERSION.search(model)
    return m is not None and int(m.group(1)) >= 3



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
            raise invalid_request(f"{what} is not supported by Gemini targets", param, "unsupported_parameter")

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
            raise invalid_request(f"messages[{i}].role {role!r} is not supported by Gemini targets",
                                  f"messages[{i}].role")

    def texts(self, content: Any, param: str) -> list[str]:
        """Text-only content (system, developer, tool, assistant): a string or text parts."""
        if content is None:
            return []
        if isinstance(content, str):
            return [content]
        if not isinstance(content, list):
            raise invalid_request(f"{param} must be a string or an array of parts", param, "invalid_type")
        out = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "refusal") and isinstance(part.get(kind), str):
                out.append(part[kind])
            else:
                raise invalid_request(f"{param}[{j}] must be a text part here", f"{param}[{j}]", "invalid_type")
        return out

    def user_parts(self, content: Any, i: int) -> list[dict[str, Any]]:
        param = f"messages[{i}].content"
        if isinstance(content, str):
            return [{"text": content}]
        if not isinstance(content, list):
            raise invalid_request(f"{param} must be a string or an array of parts", param, "invalid_type")
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise invalid_request(f"{param}[{j}] must be an object", f"{param}[{j}]", "invalid_type")
            converted = self.user_part(part, f"{param}[{j}]")
            if converted is not None:
                parts.append(converted)
        return parts

    def user_part(self, part: dict[str, Any], param: str) -> dict[str, Any] | None:
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise invalid_request(f"{param}.text must be a string", f"{param}.text", "invalid_type")
            return {"text": part["text"]}
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            return self.image(url, f"{param}.image_url.url")
        if kind == "input_audio":
            audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            mime = AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None:
                raise invalid_request(f"{param}.input_audio.format must be one of {', '.join(AUDIO_TYPES)}",
                                      f"{param}.input_audio.format")
            if not isinstance(audio.get("data"), str):
                raise invalid_request(f"{param}.input_audio.data must be base64 audio", f"{param}.input_audio.data")
            return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
        if kind == "file":
            return self.file(part.get("file"), f"{param}.file")
        self.unsupported(f"{param}.type", f"content part type {kind!r}")
        return None

    def image(self, url: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(url, str):
            raise invalid_request(f"{param} must be a string", param, "invalid_type")
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
            raise invalid_request(f"{param} must be an object", param, "invalid_type")
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
            raise invalid_request(f"messages[{i}].tool_calls must be an array", f"messages[{i}].tool_calls",
                                  "invalid_type")
        calls = [self.function_call(tc, f"messages[{i}].tool_calls[{j}]") for j, tc in enumerate(tool_calls)]
        calls = [c for c in calls if c is not None]
        if calls and self.gemini3 and not any("thoughtSignature" in c for c in calls):
            calls[0]["thoughtSignature"] = SKIP_SIGNATURE
        return parts + calls

    def function_call(self, tc: Any, param: str) -> dict[str, Any] | None:
        if not isinstance(tc, dict):
            raise invalid_request(f"{param} must be an object", param, "invalid_type")
        if tc.get("type", "function") != "function":
            self.unsupported(f"{param}.type", f"tool call type {tc.get('type')!r}")
            return None
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request(f"{param}.function.name is required", f"{param}.function.name",
                                  "missing_required_parameter")
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise invalid_request(f"{param}.function.arguments must be a JSON object "
                                  "(Gemini takes arguments as an object)", f"{param}.function.arguments")
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
            raise invalid_request(f"messages[{i}].tool_call_id {ident!r} does not match a tool call of an earlier "
                                  "assistant message (Gemini needs the function name)", f"messages[{i}].tool_call_id")
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
            raise invalid_request("'tools' must be an array", "tools", "invalid_type")
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
        raise invalid_request("'tool_choice' must be none, auto, required or a function", "tool_choice")

    def generation_config(self) -> dict[str, Any]:
        b = self.body
        config: dict[str, Any] = {}
        max_tokens = b.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = b.get("max_tokens")
        if max_tokens is not None:
            config["maxOutputTokens"] = max_tokens
        for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("n", "candidateCount"),
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
                raise invalid_request("response_format.json_schema must be an object", "response_format.json_schema")
            config["responseMimeType"] = "application/json"
            if spec.get("schema") is not None:
                config["responseJsonSchema"] = spec["schema"]
            return
        raise invalid_request("response_format.type must be text, json_object or json_schema", "response_format.type")

    def reasoning(self, config: dict[str, Any]) -> None:
        effort = self.body.get("reasoning_effort")
        if effort is None:
            return
        if effort not in THINKING_BUDGETS:
            raise invalid_request(f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}", "reasoning_effort")
        thinking: dict[str, Any] = (
            {"thinkingLevel": THINKING_LEVELS[effort]} if self.gemini3 else {"thinkingBudget": THINKING_BUDGETS[effort]}
        )
        asked = config.get("maxOutputTokens")
        if "thinkingBudget" in thinking and isinstance(asked, int) and thinking["thinkingBudget"] >= asked:
            # Thoughts count against maxOutputTokens: a budget past it would leave no room for the answer
            # (as adapters.anthropic does, the budget is cut to the limit less one).
            thinking["thinkingBudget"] = max(0, asked - 1)
        if effort != "none":
            thinking["includeThoughts"] = True
        config["thinkingConfig"] = thinking


def data_url(url: str, param: str) -> dict[str, str]:
    head, sep, data = url.partition(",")
    mime, _, encoding = head[5:].partition(";")
    if not sep or encoding != "base64" or not mime or not data:
        raise invalid_request(f"{param} must be a data:<mime type>;base64,<data> URL", param)
    return {"mimeType": mime, "data": data}
