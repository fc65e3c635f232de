"""Everything built from one loaded config. A reload builds a new Runtime and swaps it in whole."""

from __future__ import annotations

import difflib
import time
from fnmatch import fnmatchcase

from proxy.auth import KeyRing, model_allowed
from proxy.errors import GatewayError
from proxy.guardrails import GuardrailHooks
from proxy.limits import Limits, MemoryBackend
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
        alias = self.config.models.get(name)
        if alias is None:
            alias = next((a for a in self.globs if fnmatchcase(name, a.name)), None)
        if alias is None and self.config.server.fuzzy_models:
            close = difflib.get_close_matches(name, self.config.models.keys(), n=1, cutoff=0.8)
            alias = self.config.models[close[0]] if close else None
        if alias is None:
            raise GatewayError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        if not model_allowed(key, name if alias.is_glob else alias.name):
            raise GatewayError(403, f"This key is not allowed to use model `{name}`.",
                               type="permission_error", code="model_not_allowed", param="model")
        return alias

    def allowed_models(self, key: KeyConfig | None) -> list[ModelAlias]:
        return [m for m in self.config.models.values() if not m.is_glob and model_allowed(key, m.name)]
