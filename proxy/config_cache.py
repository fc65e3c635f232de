"""The [cache] table (proxy.cache): backend, sizes, key strategy, scope and semantic mode, checked at start."""

from __future__ import annotations

from proxy.config_reader import Section, count
from proxy.settings import CacheConfig, ConfigError, ModelAlias, StorageConfig


def parse_cache(s: Section, storage: StorageConfig, models: dict[str, ModelAlias]) -> CacheConfig:
    file = s.cfg.file
    cache = CacheConfig(
        backend=_choice(s, "backend", ("off", "memory", "redis")),
        mode=_choice(s, "mode", ("exact", "semantic")),
        ttl_s=s.number("ttl_s", 3600.0, minimum=0.001),
        max_size_mb=s.number("max_size_mb", 256.0, minimum=0.001),
        max_entry_kb=s.number("max_entry_kb", 1024.0, minimum=0.001),
        hash_strategy=_choice(s, "hash_strategy", ("full_request", "content+model", "content")),
        scope=_choice(s, "scope", ("key", "global")),
        deterministic_only=s.get("deterministic_only", bool, False),
        coalesce_wait_s=s.number("coalesce_wait_s", 30.0),
        embedding_model=s.get("embedding_model", str, ""),
        similarity_threshold=s.number("similarity_threshold", 0.95, minimum=0.001),
        semantic_max_entries=count(s, "semantic_max_entries", 10_000, minimum=1),
    )
    if cache.backend == "redis" and not storage.redis_url:
        raise ConfigError(file, "cache.backend", "'redis' needs [storage] redis_url")
    if cache.similarity_threshold > 1:
        raise ConfigError(file, "cache.similarity_threshold", "must be a cosine similarity, at most 1")
    if cache.mode == "semantic":
        alias = models.get(cache.embedding_model)
        if alias is None or alias.is_glob:
            raise ConfigError(file, "cache.embedding_model", "semantic mode needs the name of an alias in [[models]]"
                              f" that embeds (got {cache.embedding_model!r})")
    s.done()
    return cache


def _choice(s: Section, name: str, choices: tuple[str, ...]) -> str:
    value = s.get(name, str, choices[0])
    if value not in choices:
        raise ConfigError(s.cfg.file, s.key(name), "must be one of " + ", ".join(repr(c) for c in choices))
    return value
