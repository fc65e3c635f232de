"""kind = "gemini": Google's Gemini API (generativelanguage.googleapis.com) behind OpenAI's chat and embeddings.

Chat goes to ``{base_url}/v1beta/models/{model}:generateContent`` or ``:streamGenerateContent?alt=sse``,
embeddings to ``:batchEmbedContents``, all with the ``x-goog-api-key`` header. One module per API pair and
direction, each documenting its mapping: ``request``, ``response`` (with errors), ``stream``, ``embeddings``;
``call_ids`` holds the tool call id encoding that carries thought signatures through OpenAI clients.
"""

from __future__ import annotations

import orjson

from adapters.base import Adapter, Call, Reply, StreamTranslator, UpstreamError, UpstreamRequest
from adapters.gemini.call_ids import make_call_id, parse_call_id
from adapters.gemini.embeddings import embeddings_body, embeddings_reply
from adapters.gemini.request import ChatRequestBuilder, resource_path
from adapters.gemini.response import chat_reply, error_of, google_error
from adapters.gemini.stream import GeminiStream
from adapters.targets import ProviderConfig

__all__ = ["ChatRequestBuilder", "GeminiAdapter", "GeminiStream", "google_error", "make_call_id", "parse_call_id"]


class GeminiAdapter(Adapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key:
            self.headers["x-goog-api-key"] = provider.api_key
        self.root = f"{provider.base_url}/v1beta/"

    def url(self, model: str, method: str) -> str:
        return f"{self.root}{resource_path(model)}:{method}"

    def chat_request(self, call: Call) -> UpstreamRequest:
        body = ChatRequestBuilder(call).build()
        if call.stream:
            url = self.url(call.target.model, "streamGenerateContent") + "?alt=sse"
        else:
            url = self.url(call.target.model, "generateContent")
        return UpstreamRequest(url, self.headers, orjson.dumps(body))

    def chat_response(self, call: Call, body: bytes) -> Reply:
        return chat_reply(self.provider, call, body)

    def chat_stream(self, call: Call) -> StreamTranslator:
        return GeminiStream(self.provider, call.alias, call.include_usage)

    def embeddings_request(self, call: Call) -> UpstreamRequest:
        return UpstreamRequest(self.url(call.target.model, "batchEmbedContents"), self.headers,
                               orjson.dumps(embeddings_body(call)))

    def embeddings_response(self, call: Call, body: bytes) -> Reply:
        return embeddings_reply(self.provider, call, body)

    def error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return error_of(self.provider, status, body, headers)
