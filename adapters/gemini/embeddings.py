"""OpenAI embeddings request -> Gemini batchEmbedContents, and its answer back.

Embeddings: one batchEmbedContents request per call, one entry per input string (Gemini takes at most 100:
more is a 400 naming ``input``; token arrays too); ``dimensions`` -> ``outputDimensionality``; float or base64
(little-endian float32) as the client asked. Gemini reports no token counts here, so usage is estimated as
ceil(characters / 4) per input.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

import orjson

from adapters.base import Call, Reply, Usage, bad_response, invalid_request, loads_object
from adapters.gemini.request import resource
from adapters.gemini.response import google_error
from adapters.targets import ProviderConfig


def embeddings_body(call: Call) -> dict[str, Any]:
    texts = embedding_inputs(call.body)
    entry: dict[str, Any] = {"model": resource(call.target.model)}
    dims = call.body.get("dimensions")
    if dims is not None:
        entry["outputDimensionality"] = dims
    return {"requests": [{**entry, "content": {"parts": [{"text": text}]}} for text in texts]}


def embeddings_reply(provider: ProviderConfig, call: Call, body: bytes) -> Reply:
    data = loads_object(provider, body)
    texts = embedding_inputs(call.body)
    embeddings = data.get("embeddings")
    if not isinstance(embeddings, list) or len(embeddings) != len(texts):
        if isinstance(data.get("error"), dict):
            raise google_error(provider, 500, data)
        raise bad_response(provider, f"an embeddings response without {len(texts)} embeddings")
    as_base64 = call.body.get("encoding_format") == "base64"
    items = []
    for i, emb in enumerate(embeddings):
        values = emb.get("values") if isinstance(emb, dict) else None
        if not isinstance(values, list):
            raise bad_response(provider, "an embedding without values")
        try:
            vector: Any = pack_float32(values) if as_base64 else values
        except TypeError:
            raise bad_response(provider, "an embedding with values that are not numbers") from None
        items.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum((len(text) + 3) // 4 for text in texts)  # Gemini counts nothing here: ~4 chars a token
    usage = Usage(prompt_tokens=tokens)
    out = {"object": "list", "data": items, "model": call.alias,
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Reply(orjson.dumps(out), usage)


MAX_EMBED_INPUTS = 100  # batchEmbedContents: "at most 100 requests can be in one batch"


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    inputs = body["input"]
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > MAX_EMBED_INPUTS:
        raise invalid_request(f"Gemini embeds at most {MAX_EMBED_INPUTS} inputs per request; got {len(texts)}", "input")
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid_request("Gemini embeddings take strings; token arrays are not supported",
                                  "input" if isinstance(text, int) else f"input[{k}]", "invalid_type")
    return texts


def pack_float32(values: list[float]) -> str:
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()
