"""What an adapter is handed: a provider's connection settings and one alias target's settings.

They live in the adapters package so that adapters never import the proxy package (proxy depends on
adapters, not the other way round); proxy.config parses gateway.toml into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.redact import NO_SECRETS, Redactor, provider_secrets


@dataclass(slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str = ""
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    api_version: str = ""  # azure: the api-version query parameter; empty = the /openai/v1/ style
    anthropic_beta: str = ""  # anthropic: sent as the anthropic-beta header when set
    # How connections reach the provider (proxy.http1_connect). proxy: the effective forward proxy URL,
    # "" = direct; proxy.config resolves an absent key from HTTPS_PROXY/HTTP_PROXY and NO_PROXY.
    proxy: str = ""
    ca_file: str = ""  # PEM CA bundle that replaces the system's trust store for this provider
    client_cert: str = ""  # PEM certificate (chain) for mTLS; may hold the key too
    client_key: str = ""
    verify_tls: bool = True
    max_response_mb: float = 64.0  # the most of a response body read whole (not streams); past it a 502
    # Hides credentials in error text: this provider's own by default; proxy.config gives every provider
    # of a config the same one, which knows all of the config's secrets.
    redactor: Redactor = field(default=NO_SECRETS, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.redactor is NO_SECRETS:
            self.redactor = Redactor(provider_secrets(self.api_key, self.headers))


FALLBACK_REASONS = ("rate_limit", "timeout", "server_error", "connection", "context_window")
RETRYABLE_STATUSES = (429, 500, 502, 503, 504, 529)


@dataclass(slots=True)
class Target:
    provider: str
    model: str  # "" = forward the model name the client asked for (glob aliases)
    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    cached_input_per_mtok: float | None = None
    per_request: float | None = None
    per_image: float | None = None  # USD per image generated or edited (images endpoints)
    per_second: float | None = None  # USD per second of audio transcribed or translated
    per_character: float | None = None  # USD per character of text spoken (audio/speech)
    per_web_search: float | None = None  # USD per web search the provider ran (usage's server_tool_use)
    # what it can serve (strategy "capability"): vision, tools, json_schema, reasoning; None = not said
    capabilities: tuple[str, ...] | None = None
    default_max_tokens: int = 4096  # translating adapters whose API requires max_tokens
    drop_unsupported: bool = False  # drop fields the provider cannot honour instead of a 400
    # routing and resilience
    weight: float = 1.0
    max_retries: int = 1
    retry_on: tuple[int | str, ...] = ("connection", "timeout") + RETRYABLE_STATUSES
    context_window: int | None = None
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 120.0
    # first_byte_timeout_s when the config sets it: then it bounds a whole-body answer's head too (the
    # provider-wide default does not, so a target that raises timeout_s alone keeps its slow answers)
    head_timeout_s: float | None = None
    timeout_s: float = 120.0
    stream_idle_timeout_s: float = 120.0
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    failure_rate: float | None = None  # also open at this failed share of attempts over failure_window_s
    failure_window_s: float = 60.0
    failure_min_requests: int = 10  # ... once the window holds at least this many attempts
