"""The loaded configuration as plain dataclasses: what every other module reads.

proxy.config builds these from gateway.toml; this module imports nothing of the project's but the
adapter-facing settings, so any module can import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.redact import NO_SECRETS, Redactor
from adapters.targets import FALLBACK_REASONS, RETRYABLE_STATUSES, ProviderConfig, Target

__all__ = [  # ProviderConfig and Target are re-exported: every setting is read from here
    "BUDGET_PERIODS", "FALLBACK_REASONS", "RETRYABLE_STATUSES", "STRATEGIES", "CacheConfig", "Config", "ConfigError",
    "FilesConfig", "GuardrailConfig", "KeyConfig", "LimitsConfig", "ModelAlias", "ObservabilityConfig",
    "ProviderConfig", "ServerConfig", "StorageConfig", "Target",
]

STRATEGIES = ("priority", "weighted", "round_robin", "latency", "cost", "least_busy", "capability")


class ConfigError(Exception):
    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}:{key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_mb: float = 32
    require_auth: bool = True
    admin_key: str = ""
    fuzzy_models: bool = False  # resolve partial model names (proxy.model_names; said in x-gateway-model-resolved)
    metrics_port: int = 0  # 0 = GET /metrics on the main port; else only on this port
    metrics_require_admin: bool = False  # /metrics needs `Authorization: Bearer <admin_key>`
    # Slow and idle clients (GatewayHttpProtocol): how long each phase of a request may take on the wire.
    idle_timeout_s: float = 5.0  # a connection with no request in progress, fresh or kept alive
    header_timeout_s: float = 10.0  # from a request's first byte until its headers are complete
    body_timeout_s: float = 30.0  # from the headers until the body's last byte
    max_connections: int = 10_000  # per process; more are answered 503 and closed at once
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed to call; [] = no CORS headers
    guardrails: list[str] = field(default_factory=list)  # names of [[guardrails]] applied to every request
    ui: bool = True  # the web console at /ui (proxy.console)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(slots=True)
class StorageConfig:
    database_url: str = "sqlite:///gateway.db"
    redis_url: str = ""
    # rediss:// only: the CA bundle that signs the server ("" = the system's), and a client certificate (mTLS)
    redis_ca_file: str = ""
    redis_client_cert: str = ""
    redis_client_key: str = ""  # "" = the key is in redis_client_cert's file
    retention_days: int = 0  # 0 = keep usage rows forever
    spill_dir: str = "usage-spill"  # usage rows wait here while the database is unreachable
    prices_file: str = ""  # resolved against the config file's directory; "" = none
    prices_refresh_hours: float = 0.0  # > 0: OpenRouter's prices fetched at start and this often (proxy.price_refresh)
    prices_refresh_url: str = "https://openrouter.ai"  # where they are fetched (its /api/v1/models)
    queue_max_rows: int = 10_000  # usage rows kept in memory before spilling to spill_dir
    flush_interval_ms: int = 200
    # "batch": a crash loses at most the last flush_interval's rows; "strict": a whole answer, and a
    # stream's last event and end, are sent only once its row is in the journal on disk
    durability: str = "batch"


@dataclass(slots=True)
class ObservabilityConfig:
    access_log: bool = True  # one JSON line per request on stdout
    log_bodies: bool = False  # add the client's request body (the prompt) to access log lines
    capture_content: bool = False  # prompt and completion text on trace spans (gen_ai.*.messages)


@dataclass(slots=True)
class ModelAlias:
    name: str
    targets: list[Target]
    strategy: str = "priority"
    fallback_on: tuple[str, ...] = FALLBACK_REASONS
    max_cost_per_request: float | None = None
    hedge_after_ms: float | None = None
    keepalive_s: float = 15.0
    retry_after_cap_s: float = 5.0
    rpm: int | None = None  # limits for the alias as a whole, e.g. to protect a provider quota
    tpm: int | None = None
    capabilities: tuple[str, ...] | None = None  # what GET /v1/models says the alias can do; None = not said
    file_metadata: dict[str, Any] = field(default_factory=dict)  # the prices file's context_window, capabilities
    # Per target, the prices gateway.toml gave (None where it gave none): price tables fill in the rest.
    configured_prices: list[dict[str, float | None]] = field(default_factory=list)
    # Per target, the price table's context_window and capabilities for its model (capability routing).
    target_metadata: list[dict[str, Any]] = field(default_factory=list)
    cache: bool = True  # answers of this alias may be cached (when [cache] backend is not "off")
    cache_ttl_s: float | None = None  # this alias's entries live this long; None = [cache] ttl_s
    guardrails: list[str] = field(default_factory=list)  # names of [[guardrails]] applied to this alias
    is_glob: bool = field(init=False)  # a pattern such as "openai/*": set from the name, read per request

    def __post_init__(self) -> None:
        self.is_glob = "*" in self.name or "?" in self.name or "[" in self.name


BUDGET_PERIODS = ("day", "month", "total")


@dataclass(slots=True)
class KeyConfig:
    name: str
    key_hash: str  # hex sha256 of the secret; the secret itself is never kept
    models: list[str] = field(default_factory=lambda: ["*"])
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    expires_at: datetime | None = None  # UTC
    metadata: dict[str, Any] = field(default_factory=dict)
    guardrails: list[str] = field(default_factory=list)  # names of [[guardrails]] applied to this key's requests
    source: str = "config"  # config | db (managed through the admin API)
    # Each end user of this key (the request's `user`, or x-gateway-end-user): limits of their own, over
    # [limits] per_user_rpm / per_user_tpm; user_budget_usd per budget_period.
    user_rpm: int | None = None
    user_tpm: int | None = None
    user_budget_usd: float | None = None


@dataclass(slots=True)
class LimitsConfig:
    rpm: int | None = None
    tpm: int | None = None
    # local | allow | deny: what to do when Redis cannot be reached (local: each replica enforces its share)
    on_store_error: str = "local"
    expected_replicas: int = 1  # under "local", each replica enforces every limit divided by this
    per_user_rpm: int | None = None  # each end user of a key (proxy.end_users), unless the key says otherwise
    per_user_tpm: int | None = None


@dataclass(slots=True)
class FilesConfig:
    # The alias whose first OpenAI-kind target serves /v1/files and /v1/batches (they name no model):
    # its key allow-list, limits and usage rows apply. "" = the first such alias in gateway.toml.
    model: str = ""


@dataclass(slots=True)
class CacheConfig:
    """[cache]: the response cache (proxy.cache)."""

    backend: str = "off"  # off | memory | redis ([storage] redis_url)
    mode: str = "exact"  # exact | semantic
    ttl_s: float = 3600.0
    max_size_mb: float = 256.0  # memory backend: an LRU bounded by the bytes of its entries
    max_entry_kb: float = 1024.0  # larger answers are not stored
    hash_strategy: str = "full_request"  # full_request | content+model | content
    scope: str = "key"  # key: one gateway key never sees another's answers | global
    deterministic_only: bool = False  # only requests with temperature 0 or a seed
    coalesce_wait_s: float = 30.0  # identical misses wait this long for the first one's answer
    embedding_model: str = ""  # semantic mode: the alias that embeds prompts
    similarity_threshold: float = 0.95  # semantic mode: the cosine similarity a hit needs
    semantic_max_entries: int = 10_000  # semantic mode: vectors kept per index (oldest dropped first)

    @property
    def enabled(self) -> bool:
        return self.backend != "off"


GUARDRAIL_KINDS = ("pii", "injection", "regex", "llm", "webhook", "python")
PII_ENTITIES = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret")


@dataclass(slots=True)
class GuardrailConfig:
    """One [[guardrails]] table (proxy.guardrails): what it checks, on which side, and what it does."""

    name: str
    kind: str  # one of GUARDRAIL_KINDS
    on: str = "input"  # input | output | both
    action: str = "redact"  # redact | block | flag (llm, webhook, python, injection: block | flag)
    entities: tuple[str, ...] = PII_ENTITIES  # pii: which entity types
    restore: bool = False  # redact on input: put the originals back into the answer the client sees
    patterns: dict[str, str] = field(default_factory=dict)  # regex: entity type -> pattern
    threshold: float = 0.5  # injection: the score (0..1) at or above which the prompt counts as an attack
    function: str = ""  # python: "module:function"
    url: str = ""  # webhook: where the request (or answer) is POSTed
    secret: str = field(default="", repr=False)  # webhook: HMAC-SHA256 key of the x-gateway-signature header
    model: str = ""  # llm: the alias that classifies
    prompt: str = ""  # llm: the template; {text} is replaced by the text to classify
    timeout_s: float = 5.0  # llm, webhook, python: how long a verdict may take
    on_error: str = "allow"  # llm, webhook, python: allow | block when the check fails or times out

    @property
    def on_input(self) -> bool:
        return self.on in ("input", "both")

    @property
    def on_output(self) -> bool:
        return self.on in ("output", "both")


@dataclass(slots=True)
class Config:
    path: str
    server: ServerConfig
    storage: StorageConfig
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelAlias]
    keys: list[KeyConfig]
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    guardrails: dict[str, GuardrailConfig] = field(default_factory=dict)  # [[guardrails]] by name
    redactor: Redactor = field(default=NO_SECRETS, repr=False, compare=False)  # every secret above, to hide
