"""kind = "azure": Azure OpenAI. The OpenAI wire format with Azure's URLs and `api-key` header.

With `api_version` set, the classic deployment URLs are used:
  {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}
where the target's `model` is the deployment name. With `api_version` empty, the newer v1 API:
  {base_url}/openai/v1/chat/completions  (the model goes in the body as usual).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from adapters.base import Call, StreamTranslator, UpstreamRequest
from adapters.openai import OpenAIAdapter, OpenAIStream
from adapters.targets import ProviderConfig


class AzureAdapter(OpenAIAdapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key:
            self.headers["api-key"] = provider.api_key
        self.v1 = f"{provider.base_url}/openai/v1"

    def _url(self, call: Call, endpoint: str) -> str:
        version = self.provider.api_version
        if not version:
            return f"{self.v1}/{endpoint}"
        # Escaped whole: a deployment name is one path segment, whatever the client sent (glob aliases).
        deployment, version = quote(call.target.model, safe=""), quote(version, safe="")
        return f"{self.provider.base_url}/openai/deployments/{deployment}/{endpoint}?api-version={version}"

    def chat_request(self, call: Call) -> UpstreamRequest:
        req = super().chat_request(call)
        req.url = self._url(call, "chat/completions")
        return req

    def embeddings_request(self, call: Call) -> UpstreamRequest:
        req = super().embeddings_request(call)
        req.url = self._url(call, "embeddings")
        return req

    def completions_request(self, call: Call) -> UpstreamRequest:
        req = super().completions_request(call)
        req.url = self._url(call, "completions")
        return req

    def chat_stream(self, call: Call) -> StreamTranslator:
        return AzureStream(call.alias, call.include_usage, self.provider.redactor)


class AzureStream(OpenAIStream):
    """Azure opens a stream with a chunk of content-filter results: empty `choices`, `id` and `model`.

    Clients written for OpenAI index `choices[0]` on every chunk, so that chunk is not passed on.
    """

    markers = OpenAIStream.markers + (b'"prompt_filter_results"',)

    def keep_event(self, event: dict[str, Any]) -> bool:
        return not ("prompt_filter_results" in event and not event.get("choices"))
