"""Target selection per alias: strategies, circuit breakers and per-target live state (per process)."""

from __future__ import annotations

import itertools
import random
import time

from proxy.cost import estimated_cost
from proxy.settings import Config, ModelAlias, Target

EXPLORE = 0.05  # latency strategy: share of requests that try a random target, so recoveries are noticed
EWMA_ALPHA = 0.3


class TargetState:
    """Live state of one target of one alias in this process."""

    __slots__ = ("target", "label", "inflight", "ewma_ttfb", "failures", "open_until", "probing", "window_start",
                 "window_ok", "window_failed", "prev_ok", "prev_failed")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.label = f"{target.provider}/{target.model or '*'}"
        self.inflight = 0
        self.ewma_ttfb: float | None = None
        self.failures = 0  # consecutive
        self.open_until = 0.0  # circuit open until this monotonic time; 0 = closed
        self.probing = False  # half-open: one probe request in flight decides
        # failure_rate only: attempts in the current and the previous failure_window_s (a sliding estimate)
        self.window_start = time.monotonic()
        self.window_ok = self.window_failed = 0
        self.prev_ok = self.prev_failed = 0

    @property
    def circuit_open(self) -> bool:
        return self.open_until > 0

    def admits(self, now: float) -> bool:
        if self.open_until == 0:
            return True
        return now >= self.open_until and not self.probing

    def begin(self, now: float) -> None:
        self.inflight += 1
        if self.open_until and now >= self.open_until:
            self.probing = True

    def succeeded(self, ttfb: float | None) -> None:
        if self.target.failure_rate is not None:
            self._roll(time.monotonic())
            self.window_ok += 1
        self.failures = 0
        self.open_until = 0.0
        self.probing = False
        if ttfb is not None:
            self.ewma_ttfb = ttfb if self.ewma_ttfb is None else EWMA_ALPHA * ttfb + (1 - EWMA_ALPHA) * self.ewma_ttfb

    def failed(self) -> None:
        """An upstream fault (not the client's own 4xx): counts towards opening the circuit."""
        self.failures += 1
        now = time.monotonic()
        too_many = self.failures >= self.target.failure_threshold
        if self.target.failure_rate is not None:
            self._roll(now)
            self.window_failed += 1
            too_many = too_many or self._rate_exceeded(now)
        if self.probing or too_many:
            self.open_until = now + self.target.cooldown_s
            self.window_ok = self.window_failed = self.prev_ok = self.prev_failed = 0  # the probe starts afresh
        self.probing = False

    def _roll(self, now: float) -> None:
        window = self.target.failure_window_s
        passed = now - self.window_start
        if passed < window:
            return
        if passed < 2 * window:
            self.prev_ok, self.prev_failed = self.window_ok, self.window_failed
        else:  # a whole quiet window: nothing recent to weigh
            self.prev_ok = self.prev_failed = 0
        self.window_start = now
        self.window_ok = self.window_failed = 0

    def _rate_exceeded(self, now: float) -> bool:
        """The failed share over the last failure_window_s: the current window plus the previous one
        weighted by how much of it still overlaps."""
        target = self.target
        assert target.failure_rate is not None
        weight = max(0.0, 1.0 - (now - self.window_start) / target.failure_window_s)
        failed = self.window_failed + self.prev_failed * weight
        attempts = failed + self.window_ok + self.prev_ok * weight
        return attempts >= target.failure_min_requests and failed >= target.failure_rate * attempts

    def abandoned(self) -> None:
        """The attempt ended without a verdict (cancelled): let another request probe."""
        self.probing = False

    def end(self) -> None:
        self.inflight -= 1


class Router:
    def __init__(self, config: Config) -> None:
        self.states = {name: [TargetState(t) for t in alias.targets] for name, alias in config.models.items()}
        self.turns = {name: itertools.count() for name in config.models}

    def plan(self, alias: ModelAlias, prompt_tokens: int, max_tokens: int) -> list[TargetState]:
        """Targets in the order to try them: the strategy's pick first, the rest as the fallback order."""
        states = self.states[alias.name]
        if len(states) > 1:
            states = self._order(alias, states, prompt_tokens, max_tokens)
        now = time.monotonic()
        return [s for s in states if s.admits(now)]

    def _order(self, alias: ModelAlias, states: list[TargetState], prompt: int, completion: int) -> list[TargetState]:
        strategy = alias.strategy
        if strategy == "priority":
            return states
        if strategy == "round_robin":
            start = next(self.turns[alias.name]) % len(states)
            return states[start:] + states[:start]
        if strategy == "weighted":
            pool, out = list(states), []
            while pool:  # weighted sampling without replacement
                pick = random.choices(range(len(pool)), weights=[max(s.target.weight, 0.0) or 1e-9 for s in pool])[0]
                out.append(pool.pop(pick))
            return out
        if strategy == "latency":
            if random.random() < EXPLORE:
                return random.sample(states, len(states))
            # unmeasured targets first, so each gets measured
            return sorted(states, key=lambda s: -1.0 if s.ewma_ttfb is None else s.ewma_ttfb)
        if strategy == "cost":
            return sorted(states, key=lambda s: estimated_cost(s.target, prompt, completion) or float("inf"))
        if strategy == "least_busy":
            return sorted(states, key=lambda s: s.inflight)
        return states

    def all_states(self) -> list[tuple[str, TargetState]]:
        return [(name, s) for name, states in self.states.items() for s in states]
