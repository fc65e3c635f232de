"""kind = "anthropic": the Anthropic Messages API behind the OpenAI Chat Completions wire format.

Requests go to ``POST {base_url}/v1/messages``. One module per direction: ``request`` (OpenAI request
-> Messages body, with the translation policies), ``response`` (Messages body or error -> OpenAI) and
``stream`` (Messages SSE -> OpenAI chunks).

Thinking blocks travel through the OpenAI round trip in ``thinking_blocks`` on the assistant message
(LiteLLM's convention), next to ``reasoning_content``. In streams each block arrives whole, signature
included, in one delta at the block's end, so a client's reassembly is a plain list concatenation.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.anthropic.request import RequestTranslator
from adapters.anthropic.response import anthropic_error, chat_reply, error_of, openai_message, usage_from
from adapters.anthropic.stream import AnthropicStream
from adapters.base import Adapter, Call, Reply, StreamTranslator, UpstreamError, UpstreamRequest
from adapters.targets import ProviderConfig

__all__ = ["AnthropicAdapter", "AnthropicStream", "RequestTranslator", "anthropic_error", "openai_message",
           "usage_from"]

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(Adapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                        **provider.headers}
        if provider.api_key:
            self.headers["x-api-key"] = provider.api_key
        if provider.anthropic_beta:
            self.headers["anthropic-beta"] = provider.anthropic_beta
        self.url = f"{provider.base_url}/v1/messages"

    def chat_request(self, call: Call) -> UpstreamRequest:
        body = RequestTranslator(call).translate()
        return UpstreamRequest(self.url, self.headers, orjson.dumps(body))

    def chat_response(self, call: Call, body: bytes) -> Reply:
        return chat_reply(self.provider, call, body)

    def chat_stream(self, call: Call) -> StreamTranslator:
        return AnthropicStream(self.provider, call.alias, call.include_usage, call.request_id)

    def error(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return error_of(self.provider, status, body, headers)
