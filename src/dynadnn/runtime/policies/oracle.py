"""`oracle`: knows the competitor schedule and every option's measured latency in each phase of it, and
runs the most accurate option whose measured tail latency in the current phase meets the deadline. The
tail is whatever the table holds; `runtime.calibrate` fills it with each option's p99, the on-time rate
(0.99) we hold the causal policies to. For evaluation only: the bound a causal policy can approach, never
something a deployment can run."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from ..options import SystemSample, Targets, by_accuracy
from .base import Policy


class OraclePolicy(Policy):
    name = "oracle"

    def __init__(self, phase_at: Callable[[float], object] | None, latency_by_phase: Mapping[object, Sequence[float]],
                 lookahead_s: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        """`phase_at(t)` names the phase at manager time t; `latency_by_phase[phase][option]` is that option's
        measured tail latency (ms) in the phase. Times are the manager's clock (`clock`: time.perf_counter seconds)."""
        super().__init__()
        self.phase_at = phase_at
        self.latency_by_phase = latency_by_phase
        self.lookahead_s = lookahead_s
        self.clock = clock
        self._cache: dict = {}

    def bind(self, phase_at: Callable[[float], object]) -> None:
        """Read the schedule from here (the scenario runner's `phase_at`, once it has started)."""
        self.phase_at = phase_at
        self._cache.clear()

    def choose(self, phase: object, targets: Targets) -> int:
        key = (phase, targets)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        table = self.latency_by_phase[phase]
        deadline = targets.effective_deadline_ms()
        order = by_accuracy(self.options)
        ok = [i for i in order if table[i] <= deadline and self.options[i].top1 >= targets.min_top1]
        ok = ok or [i for i in order if table[i] <= deadline]
        choice = ok[0] if ok else min(range(len(self.options)), key=lambda i: table[i])
        self._cache[key] = choice
        return choice

    def initial(self, targets: Targets) -> int:
        if self.phase_at is None:  # not bound yet: the first phase of the table
            return self.choose(next(iter(self.latency_by_phase)), targets)
        return self.choose(self.phase_at(self.clock() + self.lookahead_s), targets)

    def step(self, t: float, latency_ms: float, option: int, targets: Targets,
             system: SystemSample | None = None) -> int:
        self.current = self.choose(self.phase_at(t + self.lookahead_s), targets)
        return self.current
