"""A fake OpenAI upstream for the pass-through endpoints, in the real wire formats: images, audio,
moderations, rerank (vLLM's shape), files and batches. It records what it received (method, path, query,
headers, JSON body or the multipart fields and each file's size and sha256) in ``state.requests``, and
keeps uploaded files and batches in memory so ids work across calls.

The model name picks a behaviour: ``fail-<status>`` answers that status with an OpenAI error body;
``gated-speech`` sends its first piece of audio, then waits (10 s at most) for ``state.gate`` before the
rest (``state.speech_sent`` counts the pieces sent).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import threading
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
SPEECH_PIECE = bytes(range(256)) * 64  # 16 KiB of "audio"
SPEECH_PIECES = 8


class MediaState:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.speech_sent = 0
        self.gate = threading.Event()

    def last(self, path: str) -> dict[str, Any]:
        return next(r for r in reversed(self.requests) if r["path"] == path)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(text fields, files: name -> filename, size, sha256, bytes), with the standard library's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    files: dict[str, dict[str, Any]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = data.decode()
        else:
            files[name] = {"filename": filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "bytes": data, "content_type": part.get_content_type()}
    return fields, files


def _error(status: int, message: str, param: str | None = None) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return Response(orjson.dumps(body), status, media_type="application/json")


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def make_app() -> Starlette:
    state = MediaState()

    async def record(request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = {"method": request.method, "path": request.url.path, "query": request.url.query,
                                 "headers": dict(request.headers)}
        try:
            raw = await request.body()
        except ClientDisconnect:  # the gateway closed the connection mid-upload
            state.requests.append({**entry, "abandoned": True})
            raise
        entry["raw_size"] = len(raw)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            entry["fields"], entry["files"] = parse_multipart(content_type, raw)
            entry["body"] = entry["fields"]
        elif raw:
            entry["body"] = orjson.loads(raw)
        else:
            entry["body"] = {}
        state.requests.append(entry)
        return entry

    def failure(entry: dict[str, Any]) -> Response | None:
        model = str(entry["body"].get("model", ""))
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            return _error(status, f"failure {status} as asked")
        return None

    async def images(request: Request) -> Response:
        entry = await record(request)
        if (failed := failure(entry)) is not None:
            return failed
        body = entry["body"]
        n = int(body.get("n") or 1)
        data: dict[str, Any] = {"created": int(time.time()),
                                "data": [{"b64_json": PNG, "revised_prompt": body.get("prompt")} for _ in range(n)]}
        if str(body.get("model", "")).startswith("gpt-image"):
            data["usage"] = {"input_tokens": 50, "output_tokens": 4160 * n, "total_tokens": 50 + 4160 * n,
                             "input_tokens_details": {"text_tokens": 40, "image_tokens": 10}}
        return _json(data)

    async def speech(request: Request) -> Response:
        entry = await record(request)
        if (failed := failure(entry)) is not None:
            return failed
        gated = entry["body"].get("model") == "gated-speech"

        async def audio() -> Any:
            for i in range(SPEECH_PIECES):
                state.speech_sent += 1
                yield SPEECH_PIECE
                if gated and i == 0:  # the test's thread opens the gate
                    await asyncio.to_thread(state.gate.wait, 10)

        return StreamingResponse(audio(), media_type="audio/mpeg")

    async def transcribe(request: Request) -> Response:
        entry = await record(request)
        if (failed := failure(entry)) is not None:
            return failed
        fields, files = entry["fields"], entry["files"]
        audio = files.get("file")
        if audio is None:
            return _error(400, "file is required", "file")
        text = f"heard {audio['size']} bytes"
        if fields.get("response_format") == "text":
            return Response(text, media_type="text/plain")
        if fields.get("response_format") == "verbose_json":
            return _json({"task": "transcribe", "language": "english", "duration": 12.5, "text": text,
                          "segments": []})
        return _json({"text": text, "usage": {"type": "duration", "seconds": 9}})

    async def moderations(request: Request) -> Response:
        entry = await record(request)
        body = entry["body"]
        inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input")]
        categories = ["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                      "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                      "sexual/minors", "violence", "violence/graphic"]
        result = {"flagged": False, "categories": dict.fromkeys(categories, False),
                  "category_scores": dict.fromkeys(categories, 0.01),
                  "category_applied_input_types": {c: ["text"] for c in categories}}
        return _json({"id": "modr-1", "model": body.get("model") + "-2024-09-26", "results": [result] * len(inputs)})

    async def rerank(request: Request) -> Response:
        entry = await record(request)
        body = entry["body"]
        results = [{"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
                   for i, d in enumerate(body["documents"])]
        return _json({"id": "rerank-1", "model": body["model"], "usage": {"total_tokens": 37}, "results": results})

    async def files_create(request: Request) -> Response:
        entry = await record(request)
        upload = entry["files"].get("file")
        if upload is None or "purpose" not in entry["fields"]:
            return _error(400, "file and purpose are required")
        ident = f"file-{len(state.files) + 1:04d}"
        obj = {"id": ident, "object": "file", "bytes": upload["size"], "created_at": int(time.time()),
               "filename": upload["filename"], "purpose": entry["fields"]["purpose"], "status": "processed"}
        state.files[ident] = obj
        state.contents[ident] = upload["bytes"]
        return _json(obj)

    async def files_list(request: Request) -> Response:
        await record(request)
        data = list(state.files.values())
        return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def file_get(request: Request) -> Response:
        await record(request)
        obj = state.files.get(request.path_params["ident"])
        return _json(obj) if obj else _error(404, "No such File object", "id")

    async def file_delete(request: Request) -> Response:
        await record(request)
        ident = request.path_params["ident"]
        if state.files.pop(ident, None) is None:
            return _error(404, "No such File object", "id")
        return _json({"id": ident, "object": "file", "deleted": True})

    async def file_content(request: Request) -> Response:
        await record(request)
        data = state.contents.get(request.path_params["ident"])
        if data is None:
            return _error(404, "No such File object", "id")
        return Response(data, media_type="application/octet-stream")

    async def batches_create(request: Request) -> Response:
        entry = await record(request)
        body = entry["body"]
        if body.get("input_file_id") not in state.files:
            return _error(400, "input_file_id is not a file", "input_file_id")
        ident = f"batch_{len(state.batches) + 1:04d}"
        now = int(time.time())
        # Members OpenAI sends as null until they apply are left out: the published schema types them non-null.
        obj = {"id": ident, "object": "batch", "endpoint": body["endpoint"],
               "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
               "status": "validating", "created_at": now, "expires_at": now + 86400,
               "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        state.batches[ident] = obj
        return _json(obj)

    async def batches_list(request: Request) -> Response:
        await record(request)
        data = list(state.batches.values())
        return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def batch_get(request: Request) -> Response:
        await record(request)
        obj = state.batches.get(request.path_params["ident"])
        return _json(obj) if obj else _error(404, "No such Batch object", "id")

    async def batch_cancel(request: Request) -> Response:
        await record(request)
        obj = state.batches.get(request.path_params["ident"])
        if obj is None:
            return _error(404, "No such Batch object", "id")
        obj.update(status="cancelling", cancelling_at=int(time.time()))
        return _json(obj)

    async def abandoned(request: Request, exc: Exception) -> Response:
        return Response(b"", 499)

    app = Starlette(exception_handlers={ClientDisconnect: abandoned}, routes=[
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/images/edits", images_edit_route(record, failure), methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
        Route("/v1/audio/translations", transcribe, methods=["POST"]),
        Route("/v1/moderations", moderations, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v1/files", files_create, methods=["POST"]),
        Route("/v1/files", files_list, methods=["GET"]),
        Route("/v1/files/{ident}", file_get, methods=["GET"]),
        Route("/v1/files/{ident}", file_delete, methods=["DELETE"]),
        Route("/v1/files/{ident}/content", file_content, methods=["GET"]),
        Route("/v1/batches", batches_create, methods=["POST"]),
        Route("/v1/batches", batches_list, methods=["GET"]),
        Route("/v1/batches/{ident}", batch_get, methods=["GET"]),
        Route("/v1/batches/{ident}/cancel", batch_cancel, methods=["POST"]),
    ])
    app.state.media = state
    return app


def images_edit_route(record: Any, failure: Any) -> Any:
    async def edit(request: Request) -> Response:
        entry = await record(request)
        if (failed := failure(entry)) is not None:
            return failed
        if "image" not in entry["files"] and "image[]" not in entry["files"]:
            return _error(400, "image is required", "image")
        n = int(entry["fields"].get("n") or 1)
        return _json({"created": int(time.time()), "data": [{"b64_json": PNG} for _ in range(n)]})

    return edit


class AzureStyle:
    """The same fake behind Azure OpenAI's URLs: ``/openai/deployments/{dep}/...?api-version=``,
    ``/openai/{files,batches}...?api-version=`` and the v1 style ``/openai/v1/...``; each request's
    original path and query land in ``paths``."""

    def __init__(self) -> None:
        self.inner = make_app()
        self.state = self.inner.state.media
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            query = scope.get("query_string", b"").decode()
            self.paths.append(f"{path}?{query}" if query else path)
            parts = path.split("/")
            if path.startswith("/openai/deployments/"):
                path = "/v1/" + "/".join(parts[4:])
            elif path.startswith("/openai/v1/"):
                path = "/v1/" + "/".join(parts[3:])
            elif path.startswith("/openai/"):
                path = "/v1/" + "/".join(parts[2:])
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.inner(scope, receive, send)
