"""A fake Gemini API (generativelanguage.googleapis.com/v1beta) speaking the real wire format.

Routes: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` (data-only SSE with
CRLF line ends, no [DONE], the last chunk carrying finishReason and the full usageMetadata; without alt=sse a
JSON array, as the real API sends) and ``:batchEmbedContents``. The model name picks the behaviour:

<anything else>      "Hello <last user text>"; after function responses: "Results: name=output; ..."
*think*              thought-summary parts first, then the answer; fixed usage (11 prompt, 7 candidates,
                     5 thoughts, 4 cached, 23 total)
*tools*              two parallel functionCall parts for the first declared (or allowed) function; for a
                     gemini-3 model the first carries a thoughtSignature and both carry ids, as Gemini 3 does
*image*              the answer, then the generated picture as an inlineData part (image/png)
finish-<REASON>      MAX_TOKENS: some text, then MAX_TOKENS; others: no content, just that finishReason
blocked              promptFeedback.blockReason and no candidates
fail-<code>          Google's error JSON: 400 INVALID_ARGUMENT, 403 PERMISSION_DENIED, 404 NOT_FOUND,
                     429 RESOURCE_EXHAUSTED with RetryInfo 6.2s, 429h the same with only a Retry-After: 11
                     header, 500 INTERNAL, 503 UNAVAILABLE, context: the 400 for a prompt over the window
midstream-error      two text chunks, then a bare pretty-printed error JSON (no ``data:``), then close
midstream-error-data two text chunks, then ``data: {"error": ...}``
cut-stream           text chunks without any finishReason, then close
leakall-<code>       Google's error JSON with that code whose message, status, details (ErrorInfo metadata,
                     unknown members) repeat every credential header it was sent (429: also as Retry-After)
leakall-stream       two text chunks, then ``data: {"error": ...}`` repeating the key
leakall-bare         two text chunks, then the same error as bare JSON outside SSE framing

It rejects what the real API rejects, with Google's error shape: a missing or wrong ``x-goog-api-key``
(400 API_KEY_INVALID), unknown fields, roles other than user/model, empty parts, bad base64, a
functionResponse whose name (or id) matches no earlier functionCall or whose count differs from the calls
of the turn, on gemini-3 models a function-call turn without a thoughtSignature the fake issued (Google's
skip placeholder aside), responseSchema together with responseJsonSchema, a JSON schema without the JSON
MIME type, thinkingLevel together with thinkingBudget or on a pre-3 model, unknown enum values.

Every request is recorded (path, query, headers, body) in ``state.requests``; responses in ``state.responses``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

SKIP_SIGNATURE = "skip_thought_signature_validator"
THINK_USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 7, "thoughtsTokenCount": 5,
               "cachedContentTokenCount": 4, "totalTokenCount": 23}
TOOL_ARGS = [{"city": "Paris", "unit": "celsius", "note": 'says "hi"', "days": [1, 2]},
             {"city": "London", "unit": "celsius", "note": "", "days": []}]

TOP_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig",
              "cachedContent"}
PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
             "codeExecutionResult"}
PART_FIELDS = PART_DATA | {"thought", "thoughtSignature", "videoMetadata"}
GEN_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
              "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
              "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities", "mediaResolution"}
DECL_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema",
               "behavior"}
FUNCTION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")
STATUS_OF = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
             500: "INTERNAL", 503: "UNAVAILABLE"}


class Rejected(Exception):
    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class State:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.responses: list[Any] = []
        self.signatures: set[str] = set()

    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    def issue_signature(self) -> str:
        # Standard base64 with '+', '/' and '=' in it, as thought signatures are (bytes in proto JSON).
        signature = base64.b64encode(b"\xfb\xef\xff" + os.urandom(35)).decode()
        self.signatures.add(signature)
        return signature


def google_error(code: int, message: str, status: str | None = None, details: list | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    err: dict[str, Any] = {"code": code, "message": message, "status": status or STATUS_OF.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    # Google pretty-prints its error bodies.
    return Response(orjson.dumps({"error": err}, option=orjson.OPT_INDENT_2), code, headers,
                    media_type="application/json")


def words_of(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def vector_for(text: str, dims: int) -> list[float]:
    return [round(math.sin(len(text) + j), 6) for j in range(dims)]


# --- validation ----------------------------------------------------------------------------------------


def check_fields(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise Rejected(f"Invalid value at '{where}': expected an object")
    for key in obj:
        if key not in allowed:
            raise Rejected(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.')


def check_part(part: Any, where: str) -> None:
    check_fields(part, PART_FIELDS, where)
    present = [k for k in part if k in PART_DATA]
    if len(present) != 1:
        raise Rejected(f"{where}: a part must hold exactly one of text, inlineData, fileData, functionCall, ...")
    if "inlineData" in part:
        data = part["inlineData"]
        check_fields(data, {"mimeType", "data"}, f"{where}.inline_data")
        if not data.get("mimeType") or not isinstance(data.get("data"), str):
            raise Rejected(f"{where}.inline_data: mimeType and data are required")
        try:
            base64.b64decode(data["data"], validate=True)
        except (binascii.Error, ValueError):
            raise Rejected(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding "
                           "failed") from None
    if "fileData" in part:
        check_fields(part["fileData"], {"mimeType", "fileUri"}, f"{where}.file_data")
        if not part["fileData"].get("fileUri") or not part["fileData"].get("mimeType"):
            raise Rejected(f"{where}.file_data: fileUri and mimeType are required")
    if "text" in part and not isinstance(part["text"], str):
        raise Rejected(f"Invalid value at '{where}.text' (TYPE_STRING)")


def validate_generate(body: Any, model: str, state: State) -> None:
    check_fields(body, TOP_FIELDS, "request")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Rejected("* GenerateContentRequest.contents: contents is not specified")
    gemini3 = "gemini-3" in model
    calls_by_name: dict[str, set[str | None]] = {}
    previous_calls = 0
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        check_fields(content, {"role", "parts"}, where)
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise Rejected(f"Please use a valid role: user, model. (got {role!r} at {where})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Rejected(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        for j, part in enumerate(parts):
            check_part(part, f"{where}.parts[{j}]")
        calls = [p for p in parts if "functionCall" in p]
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        if calls and role != "model" or responses and role != "user":
            raise Rejected(f"{where}: function calls come from the model and function responses from the user")
        for n, part in enumerate(calls):
            call = part["functionCall"]
            check_fields(call, {"id", "name", "args"}, f"{where}.function_call")
            if not isinstance(call.get("args", {}), dict):
                raise Rejected(f"Invalid value at '{where}.parts.function_call.args' (type.googleapis.com/google."
                               "protobuf.Struct)")
            calls_by_name.setdefault(call.get("name"), set()).add(call.get("id"))
            signature = part.get("thoughtSignature")
            if gemini3 and n == 0 and not signature:
                raise Rejected(f"Function call is missing a thought_signature in functionCall parts. This is required "
                               f"for tools to work correctly. Additional data, function call `{call.get('name')}` , "
                               f"position {i + 1}.")
            if signature is not None and signature != SKIP_SIGNATURE and signature not in state.signatures:
                raise Rejected(f"{where}: Thought signature is not valid.")
        if responses:
            if len(responses) != previous_calls:
                raise Rejected("Please ensure that the number of function response parts is equal to the number of "
                               "function call parts of the function call turn.")
            for fr in responses:
                check_fields(fr, {"id", "name", "response"}, f"{where}.function_response")
                if fr.get("name") not in calls_by_name:
                    raise Rejected(f"{where}: function response name {fr.get('name')!r} matches no function call")
                ids = calls_by_name[fr["name"]]
                if any(ids) and fr.get("id") not in ids:
                    raise Rejected(f"{where}: function response id {fr.get('id')!r} matches no function call id")
                if not isinstance(fr.get("response"), dict):
                    raise Rejected(f"Invalid value at '{where}.function_response.response' (Struct)")
        previous_calls = len(calls)
    system = body.get("systemInstruction")
    if system is not None:
        check_fields(system, {"role", "parts"}, "system_instruction")
        for j, part in enumerate(system.get("parts") or []):
            check_part(part, f"system_instruction.parts[{j}]")
            if "text" not in part:
                raise Rejected("system_instruction: only text parts are allowed")
    declared = validate_tools(body)
    validate_generation_config(body.get("generationConfig"), gemini3)
    tool_config = body.get("toolConfig")
    if tool_config is not None:
        check_fields(tool_config, {"functionCallingConfig"}, "tool_config")
        fcc = tool_config.get("functionCallingConfig") or {}
        check_fields(fcc, {"mode", "allowedFunctionNames"}, "tool_config.function_calling_config")
        if fcc.get("mode") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            raise Rejected(f"Invalid value at 'tool_config.function_calling_config.mode', {fcc.get('mode')!r}")
        names = fcc.get("allowedFunctionNames")
        if names is not None:
            if fcc["mode"] not in ("ANY", "VALIDATED"):
                raise Rejected("allowed_function_names should only be set when the mode is ANY or VALIDATED")
            if any(n not in declared for n in names):
                raise Rejected("allowed_function_names must name declared functions")


def validate_tools(body: dict[str, Any]) -> list[str]:
    declared: list[str] = []
    for k, tool in enumerate(body.get("tools") or []):
        check_fields(tool, {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}, f"tools[{k}]")
        for d, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{k}].function_declarations[{d}]"
            check_fields(decl, DECL_FIELDS, where)
            if not isinstance(decl.get("name"), str) or not FUNCTION_NAME.fullmatch(decl["name"]):
                raise Rejected(f"* GenerateContentRequest.{where}.name: Invalid function name.")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise Rejected(f"{where}: parameters and parameters_json_schema cannot both be set")
            declared.append(decl["name"])
    return declared


def validate_generation_config(config: Any, gemini3: bool) -> None:
    if config is None:
        return
    check_fields(config, GEN_FIELDS, "generation_config")
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise Rejected("response_schema and response_json_schema cannot both be set")
    if ("responseSchema" in config or "responseJsonSchema" in config) and \
            config.get("responseMimeType") != "application/json":
        raise Rejected("response_mime_type must be application/json to use a response schema")
    temperature = config.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 2):
        raise Rejected("generation_config.temperature must be in [0.0, 2.0]")
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5 or
                              not all(isinstance(s, str) for s in stops)):
        raise Rejected("Invalid value at 'generation_config.stop_sequences'")
    count = config.get("candidateCount")
    if count is not None and not (isinstance(count, int) and 1 <= count <= 8):
        raise Rejected("generation_config.candidate_count must be in [1, 8]")
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        check_fields(thinking, {"thinkingBudget", "thinkingLevel", "includeThoughts"}, "thinking_config")
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise Rejected("thinking_budget and thinking_level cannot both be set")
        level = thinking.get("thinkingLevel")
        if level is not None:
            if not gemini3:
                raise Rejected("Thinking level is not supported for this model.")
            if level not in ("MINIMAL", "LOW", "MEDIUM", "HIGH"):
                raise Rejected(f"Invalid value at 'generation_config.thinking_config.thinking_level', {level!r}")


# --- answers -------------------------------------------------------------------------------------------


class Plan:
    """What the fake answers: thoughts, text words, function calls, finish reason, usage."""

    def __init__(self) -> None:
        self.thoughts: list[str] = []
        self.words: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.finish: str = "STOP"
        self.usage: dict[str, int] = {}
        self.blocked = False
        self.images: list[dict[str, Any]] = []  # inlineData parts of generated images


GENERATED_IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()


def text_of(parts: list[dict[str, Any]]) -> str:
    return " ".join(p["text"] for p in parts if "text" in p and not p.get("thought"))


def plan_for(model: str, body: dict[str, Any], state: State) -> Plan:
    plan = Plan()
    last = body["contents"][-1]
    results = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
    tools = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if results:
        text = "Results: " + "; ".join(f"{r['name']}={r['response'].get('output')}" for r in results)
    else:
        text = "Hello " + text_of(last["parts"])
    if "tools" in model and tools and not results and fcc.get("mode") != "NONE":
        name = (fcc.get("allowedFunctionNames") or [tools[0]["name"]])[0]
        for n, args in enumerate(TOOL_ARGS):
            call: dict[str, Any] = {"name": name, "args": args}
            part: dict[str, Any] = {"functionCall": call}
            if "gemini-3" in model:
                call["id"] = "fc-" + os.urandom(4).hex()
                if n == 0:
                    part["thoughtSignature"] = state.issue_signature()
            plan.calls.append(part)
        text = ""
    if "think" in model:
        plan.thoughts = words_of("Thinking about what the user wants.")
    if model.startswith("finish-"):
        plan.finish = model[len("finish-"):]
        text = "Hello partial" if plan.finish == "MAX_TOKENS" else ""
    plan.words = words_of(text)
    if model == "blocked":
        plan.blocked, plan.words = True, []
    if "image" in model:  # an image model: a caption, then the picture as an inlineData part
        plan.images = [{"inlineData": {"mimeType": "image/png", "data": GENERATED_IMAGE}}]
    prompt = sum(len(words_of(p.get("text", ""))) for c in body["contents"] for p in c["parts"])
    prompt += sum(len(words_of(p.get("text", ""))) for p in (body.get("systemInstruction") or {}).get("parts", []))
    candidates = len(plan.words) + 9 * len(plan.calls)
    plan.usage = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                  "totalTokenCount": prompt + candidates + len(plan.thoughts)}
    if plan.thoughts:
        plan.usage["thoughtsTokenCount"] = len(plan.thoughts)
    if "think" in model:
        plan.usage = dict(THINK_USAGE)
    if plan.blocked:
        plan.usage = {"promptTokenCount": prompt, "totalTokenCount": prompt}
    return plan


def candidate(parts: list[dict[str, Any]], index: int, finish: str | None) -> dict[str, Any]:
    cand: dict[str, Any] = {"index": index}
    if parts:
        cand["content"] = {"role": "model", "parts": parts}
    if finish:
        cand["finishReason"] = finish
        cand["safetyRatings"] = []
    return cand


def whole_response(plan: Plan, n: int, model: str) -> dict[str, Any]:
    if plan.blocked:
        return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": plan.usage,
                "modelVersion": model, "responseId": "resp-blocked"}
    parts: list[dict[str, Any]] = []
    if plan.thoughts:
        parts.append({"text": "".join(plan.thoughts), "thought": True})
    if plan.words:
        parts.append({"text": "".join(plan.words)})
    parts += plan.calls + plan.images
    return {"candidates": [candidate(parts, i, plan.finish) for i in range(n)], "usageMetadata": plan.usage,
            "modelVersion": model + "-001", "responseId": "resp-" + os.urandom(4).hex()}


def stream_chunks(plan: Plan, n: int, model: str) -> list[dict[str, Any]]:
    rid = "resp-" + os.urandom(4).hex()
    if plan.blocked:
        return [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": plan.usage,
                 "modelVersion": model, "responseId": rid}]
    steps: list[list[dict[str, Any]]] = [[{"text": w, "thought": True}] for w in plan.thoughts]
    steps += [[{"text": w}] for w in plan.words]
    if plan.calls:
        steps.append(plan.calls)
    if plan.images:
        steps.append(plan.images)
    if not steps:
        steps = [[]]
    running = {"promptTokenCount": plan.usage["promptTokenCount"], "totalTokenCount": plan.usage["promptTokenCount"]}
    chunks = []
    for k, parts in enumerate(steps):
        final = k == len(steps) - 1
        chunks.append({"candidates": [candidate(parts, i, plan.finish if final else None) for i in range(n)],
                       "usageMetadata": plan.usage if final else running, "modelVersion": model + "-001",
                       "responseId": rid})
    return chunks


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def leaked_error(code: int, headers: Any) -> dict[str, Any]:
    """Google's error shape, repeating the credentials it was sent wherever it can (the status string too)."""
    sent = [v for k, v in headers.items() if any(w in k for w in ("auth", "key", "token"))]
    key, echo = headers["x-goog-api-key"], " ".join(sent)
    return {"error": {"code": code, "message": f"API key {echo} cannot do that.", "status": key, "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": key, "domain": "googleapis.com",
         "metadata": {"key": key, "consumer": f"projects/{key}"}},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}], key: [key]}}


async def stream_body(model: str, chunks: list[dict[str, Any]], leaked: dict[str, Any] | None = None
                      ) -> AsyncIterator[bytes]:
    for k, chunk in enumerate(chunks):
        event = sse(chunk)
        if model in ("midstream-error", "midstream-error-data", "leakall-stream", "leakall-bare") and k == 2:
            err = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                             "status": "UNAVAILABLE"}}
            if leaked is not None:
                err = leaked
            await asyncio.sleep(0.05)  # after the first chunks have been relayed: truly mid-stream
            if model in ("midstream-error", "leakall-bare"):
                yield b"\n" + orjson.dumps(err, option=orjson.OPT_INDENT_2) + b"\n"
            else:
                yield sse(err)
            return
        if model == "cut-stream" and k == len(chunks) - 1:
            return
        # Split each event mid-line: the gateway must not depend on how reads fall.
        yield event[:7]
        yield event[7:]


# --- the app -------------------------------------------------------------------------------------------


def make_app(api_key: str) -> Starlette:
    state = State(api_key)

    async def handle(request: Request) -> Response:
        name = request.path_params["name"]
        resource, _, method = name.rpartition(":")
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return google_error(400, "Invalid JSON payload received.")
        state.requests.append({"path": request.url.path, "query": dict(request.query_params),
                               "headers": dict(request.headers), "body": body})
        if request.headers.get("x-goog-api-key") != state.api_key:
            return google_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        if not resource.startswith("models/"):
            return google_error(404, f"{resource} is not found for API version v1beta.")
        model = resource[len("models/"):]
        if model.startswith("leakall-") and model[8:].isdigit():
            code = int(model[8:])
            return Response(orjson.dumps(leaked_error(code, request.headers)), code,
                            {"retry-after": state.api_key} if code == 429 else None, media_type="application/json")
        if model.startswith("fail-"):
            return failure(model[len("fail-"):])
        try:
            if method == "batchEmbedContents":
                return embed(resource, body)
            if method not in ("generateContent", "streamGenerateContent"):
                return google_error(404, f"Method {method} is not found.")
            validate_generate(body, model, state)
        except Rejected as e:
            return google_error(400, e.message)
        plan = plan_for(model, body, state)
        n = (body.get("generationConfig") or {}).get("candidateCount", 1)
        if method == "generateContent":
            response = whole_response(plan, n, model)
            state.responses.append(response)
            return Response(orjson.dumps(response), media_type="application/json")
        chunks = stream_chunks(plan, n, model)
        state.responses.append(chunks)
        if request.query_params.get("alt") != "sse":  # without SSE the API streams one JSON array
            return Response(orjson.dumps(chunks), media_type="application/json")
        leaked = leaked_error(503, request.headers) if model.startswith("leakall-") else None
        return StreamingResponse(stream_body(model, chunks, leaked), media_type="text/event-stream")

    def embed(resource: str, body: dict[str, Any]) -> Response:
        check_fields(body, {"requests"}, "request")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise Rejected("* BatchEmbedContentsRequest.requests: requests is required")
        if len(requests) > 100:
            raise Rejected("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
        out = []
        for k, item in enumerate(requests):
            where = f"requests[{k}]"
            check_fields(item, {"model", "content", "taskType", "title", "outputDimensionality"}, where)
            if item.get("model") != resource:
                raise Rejected(f"* BatchEmbedContentsRequest.{where}.model: The model in the request must match "
                               f"the model in the URL ({item.get('model')!r} != {resource!r})")
            check_fields(item.get("content"), {"role", "parts"}, f"{where}.content")
            parts = item["content"].get("parts") or []
            if not parts or any("text" not in p for p in parts):
                raise Rejected(f"{where}.content: text parts are required")
            dims = item.get("outputDimensionality", 8)
            if not isinstance(dims, int) or dims < 1:
                raise Rejected(f"{where}.output_dimensionality must be a positive integer")
            out.append({"values": vector_for(" ".join(p["text"] for p in parts), dims)})
        response = {"embeddings": out}
        state.responses.append(response)
        return Response(orjson.dumps(response), media_type="application/json")

    async def endpoint(request: Request) -> Response:
        try:
            return await handle(request)
        except Rejected as e:
            return google_error(400, e.message)

    app = Starlette(routes=[Route("/v1beta/{name:path}", endpoint, methods=["POST"])])
    app.state.fake = state
    return app


def failure(kind: str) -> Response:
    if kind == "429":
        return google_error(429, "You exceeded your current quota, please check your plan and billing details.",
                            details=[{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                                     {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "6.2s"}])
    if kind == "context":
        return google_error(400, "The input token count (1200000) exceeds the maximum number of tokens allowed "
                                 "(1048576).")
    if kind == "429h":
        return google_error(429, "Resource has been exhausted (e.g. check quota).", headers={"retry-after": "11"})
    code = int(kind)
    messages = {400: "Request contains an invalid argument.", 403: "The caller does not have permission",
                404: "models/fail-404 is not found for API version v1beta, or is not supported for generateContent.",
                500: "An internal error has occurred. Please retry or report in "
                     "https://developers.generativeai.google/guide/troubleshooting",
                503: "The model is overloaded. Please try again later."}
    return google_error(code, messages[code])
