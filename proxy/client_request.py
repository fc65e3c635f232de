"""One client request, parsed once: what every stage of the pipeline reads instead of the body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.frontend import CHAT, Frontend


@dataclass(slots=True)
class ClientRequest:
    """What the parse stage reads from the body, so that no later stage scans it again."""

    endpoint: str  # chat | completions | embeddings | messages | responses
    model: str  # the model name the client sent
    body: dict[str, Any]  # the client's JSON, as sent (for another client API: as a chat request)
    request_id: str  # the usage row's unique id
    header_id: str  # the x-request-id answered to the client
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    prompt_estimate: int = 0  # tokens in the prompt, estimated from the body
    max_tokens: int | None = None  # max_completion_tokens or max_tokens, when the client set one
    choices: int = 1  # n: each completion is billed its own tokens
    frontend: Frontend = CHAT  # the client's API: how the answer is made for it
    end_user: str | None = None  # who the key's request is for (proxy.end_users): limits and the row
    images: int = 0  # images a pass-through request asks for (n): a budget reserves them at per_image
    characters: int = 0  # characters it asks to have spoken: reserved at per_character

    def completion_allowance(self, default: int) -> int:
        """The completion tokens to plan for: what the client asked for (else the target's default)
        for each of the ``n`` completions."""
        if self.endpoint == "embeddings":
            return 0
        return (self.max_tokens if self.max_tokens is not None else default) * self.choices
