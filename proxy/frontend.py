"""The client's API at dispatch: how a target is asked, and how its answer is made for the client.

Chat requests go to each adapter as they are (``CHAT``). A request in another client API was
translated to a chat request by parse; its ``Frontend`` sends that chat request through the target's
adapter and translates the chat answer back (adapters.inbound), unless the target speaks the client's
API itself: then the client's own body is forwarded and the answer's bytes pass through.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.anthropic import AnthropicAdapter
from adapters.base import Adapter, Call, Reply, StreamTranslator, UpstreamRequest
from adapters.errors import APIError
from adapters.inbound import anthropic_passthrough as passthrough
from adapters.inbound import openai_responses_passthrough as responses_passthrough
from adapters.inbound.anthropic_messages_reply import MessagesFromChat, message_from_chat
from adapters.inbound.openai_responses import check_translatable
from adapters.inbound.openai_responses_reply import ResponsesFromChat, response_from_chat
from adapters.openai import OpenAIAdapter


class Frontend:
    """Chat Completions: the adapter's own translation."""

    __slots__ = ()

    def request(self, adapter: Adapter, call: Call) -> UpstreamRequest:
        return adapter.chat_request(call)

    def reply(self, adapter: Adapter, call: Call, raw: bytes) -> Reply:
        return adapter.chat_response(call, raw)

    def stream(self, adapter: Adapter, call: Call) -> StreamTranslator:
        return adapter.chat_stream(call)


CHAT = Frontend()


class MessagesFrontend(Frontend):
    """Anthropic Messages: passed through to Anthropic-kind targets, translated for every other kind."""

    __slots__ = ("native", "beta", "untranslatable")

    def __init__(self, native: dict[str, Any], beta: str | None, untranslatable: APIError | None = None) -> None:
        self.native = native  # the client's body, as sent
        self.beta = beta  # the client's anthropic-beta header
        self.untranslatable = untranslatable  # why the body has no chat form, if it has none

    def request(self, adapter: Adapter, call: Call) -> UpstreamRequest:
        if isinstance(adapter, AnthropicAdapter):
            return passthrough.request(adapter.url, adapter.headers, self.native, call.target.model, self.beta)
        if self.untranslatable is not None:
            raise self.untranslatable
        return adapter.chat_request(call)

    def reply(self, adapter: Adapter, call: Call, raw: bytes) -> Reply:
        if isinstance(adapter, AnthropicAdapter):
            return passthrough.reply(adapter.provider, call.alias, raw)
        chat = adapter.chat_response(call, raw)
        message = message_from_chat(orjson.loads(chat.body), call.alias, chat.usage, call.request_id)
        return Reply(orjson.dumps(message), chat.usage)

    def stream(self, adapter: Adapter, call: Call) -> StreamTranslator:
        if isinstance(adapter, AnthropicAdapter):
            return passthrough.MessagesPassthrough(adapter.provider, call.alias)
        return MessagesFromChat(adapter.chat_stream(call), call.alias, call.request_id)


def speaks_responses(adapter: Adapter) -> bool:
    """OpenAI itself and the servers configured as its kind; echo and azure answer through chat."""
    return isinstance(adapter, OpenAIAdapter) and adapter.provider.kind == "openai"


class ResponsesFrontend(Frontend):
    """OpenAI Responses: passed through to ``kind = "openai"`` targets, translated for every other kind."""

    __slots__ = ("native", "untranslatable")

    def __init__(self, native: dict[str, Any], untranslatable: APIError | None = None) -> None:
        self.native = native
        self.untranslatable = untranslatable

    def request(self, adapter: Adapter, call: Call) -> UpstreamRequest:
        if speaks_responses(adapter):
            return responses_passthrough.request(f"{adapter.provider.base_url}/responses",
                                                 adapter.headers, self.native, call.target.model)
        if self.untranslatable is not None:
            raise self.untranslatable
        check_translatable(self.native)
        return adapter.chat_request(call)

    def reply(self, adapter: Adapter, call: Call, raw: bytes) -> Reply:
        if speaks_responses(adapter):
            return responses_passthrough.reply(adapter.provider, call.alias, raw)
        chat = adapter.chat_response(call, raw)
        body = response_from_chat(orjson.loads(chat.body), self.native, call.alias, chat.usage, call.request_id)
        return Reply(orjson.dumps(body), chat.usage)

    def stream(self, adapter: Adapter, call: Call) -> StreamTranslator:
        if speaks_responses(adapter):
            return responses_passthrough.ResponsesPassthrough(adapter.provider, call.alias)
        return ResponsesFromChat(adapter.chat_stream(call), self.native, call.alias, call.request_id)
