"""Everything built from one loaded config. A reload builds a new Runtime and swaps it in whole."""

from __future__ import annotations

import time
from fnmatch import fnmatchcase

from proxy.auth import KeyRing, model_allowed
from proxy.errors import GatewayError
from proxy.guardrails import GuardrailHooks
from proxy.limits import Limits, MemoryBackend
from proxy.model_names import UpstreamModels, ambiguous, glob_candidates, rank
from proxy.observability.observer import Observer
from proxy.pipeline import Pipeline
from proxy.records import NullSink, UsageSink
from proxy.router import Router
from proxy.settings import Config, KeyConfig, ModelAlias
from proxy.upstream import make_upstream


class Runtime:
    def __init__(self, config: Config, sink: UsageSink | None = None, limits: Limits | None = None,
                 observer: Observer | None = None) -> None:
        self.config = config
        self.sink: UsageSink = sink or NullSink()  # outlives reloads: passed on to the next Runtime
        # Metrics, logs and traces outlive reloads too, so counters never reset; a no-op without them.
        self.obs = observer if observer is not None else Observer()
        # Limit state outlives reloads too; a reload hands the same Limits the new config.
        self.limits = limits or Limits(config, MemoryBackend(), self.obs)
        self.limits.config = config
        self.keys = KeyRing(config.keys)
        self.all_keys = config.keys  # config keys plus managed ones, once the app merges them in
        self.active = 0  # requests in flight on this runtime: a replaced runtime closes when it drains
        self.upstreams = {name: make_upstream(p, config.path) for name, p in config.providers.items()}
        self.router = Router(config)
        self.globs = [a for a in config.models.values() if a.is_glob]  # tried in config order
        self.created = int(time.time())
        self.upstream_models = UpstreamModels()  # glob aliases' upstream lists, for partial names
        self.pipeline = Pipeline(self, GuardrailHooks(self) if config.guardrails else None)
        self.obs.attach(self)  # last: the observer reads the models and providers set up above

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
        close = getattr(self.pipeline.hooks, "aclose", None)  # guardrails' webhook clients
        if close is not None:
            await close()

    def authenticate(self, authorization: str | None) -> KeyConfig | None:
        if not self.config.server.require_auth:
            return None
        return self.keys.authenticate(authorization)

    def resolve(self, name: str, key: KeyConfig | None) -> ModelAlias:
        """The alias ``name`` means: exact, glob, or (fuzzy_models) a partial name of an alias."""
        return self._checked(name, key, *self._lookup(name, key, []))

    async def resolve_name(self, name: str, key: KeyConfig | None) -> tuple[ModelAlias, str]:
        """The alias and the model name a request is served as: the name sent, unless it is a partial
        name (fuzzy_models), ranked against the aliases and the upstream lists of glob aliases."""
        alias, resolved = self._match(name)
        if alias is None and self.config.server.fuzzy_models:
            forwarded = await glob_candidates(self, self.upstream_models) if self.globs else []
            alias, resolved = self._lookup(name, key, forwarded)
        return self._checked(name, key, alias, resolved), resolved

    def _match(self, name: str) -> tuple[ModelAlias | None, str]:
        alias = self.config.models.get(name)
        if alias is None:
            alias = next((a for a in self.globs if fnmatchcase(name, a.name)), None)
        return alias, name

    def _lookup(self, name: str, key: KeyConfig | None,
                forwarded: list[tuple[str, ModelAlias]]) -> tuple[ModelAlias | None, str]:
        alias, resolved = self._match(name)
        if alias is not None or not self.config.server.fuzzy_models:
            return alias, resolved
        # Only names this key may use are candidates: an ambiguity must not list the others.
        choices = {a.name: a for a in self.allowed_models(key)}
        choices.update((n, a) for n, a in forwarded if n not in choices and model_allowed(key, n))
        found = rank(name, choices)
        if len(found) > 1:
            raise ambiguous(name, found)
        return (choices[found[0]], found[0]) if found else (None, name)

    def _checked(self, name: str, key: KeyConfig | None, alias: ModelAlias | None, resolved: str) -> ModelAlias:
        if alias is None:
            raise GatewayError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        if not model_allowed(key, resolved if alias.is_glob else alias.name):
            raise GatewayError(403, f"This key is not allowed to use model `{name}`.",
                               type="permission_error", code="model_not_allowed", param="model")
        return alias

    def allowed_models(self, key: KeyConfig | None) -> list[ModelAlias]:
        return [m for m in self.config.models.values() if not m.is_glob and model_allowed(key, m.name)]
