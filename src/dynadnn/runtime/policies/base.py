"""The interface every policy implements.

A policy is told the options (`runtime.options.Option`) once, then after every inference it gets the
measured latency, the option that produced it, the current targets and the latest system sample, and
answers with the option index for the next inference. It must be cheap (the manager's whole decision
path, monitors included, has a budget of 20 us per inference) and it must not block.
"""

from __future__ import annotations

from ..options import NO_SYSTEM, Option, SystemSample, Targets




class Policy:
    """Base class: keeps the current option and nothing else (a static policy)."""

    name = "base"

    def __init__(self) -> None:
        self.options: tuple[Option, ...] = ()
        self.current = 0

    def reset(self, options: tuple[Option, ...], targets: Targets, start: int | None = None) -> int:
        """Called once (and again when the options change); returns the option to start with."""
        self.options = tuple(options)
        self.current = self.initial(targets) if start is None else start
        return self.current

    def initial(self, targets: Targets) -> int:
        return 0

    def step(self, t: float, latency_ms: float, option: int, targets: Targets,
             system: SystemSample = NO_SYSTEM) -> int:
        """One observation in, the next option out."""
        return self.current

    def force(self, option: int) -> None:
        """The manager overrode the choice (a fault fall-back): start from there."""
        self.current = option

    def describe(self) -> dict:
        return {"policy": self.name}
