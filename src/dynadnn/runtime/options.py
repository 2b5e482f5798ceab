"""The knob space the policies choose from, as plain data.

An `Option` is one runnable setting — a family member at a thread count on the backend that was fastest
for that pair when measured at load — together with what is known about it before running: its accuracy
and its profiled latency (median and p95) on an idle machine. Policies see only a tuple of these and
answer with an index into it, so they are pure logic and testable against synthetic latency streams.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_FPS = 100_000.0  # frames per second: 10 us a frame, beyond any batch-1 member's latency
MAX_BATCH = 1024  # images per frame (a frame's batch: the stream's and the profile's)


@dataclass(frozen=True)
class Option:
    member: int          # index into the family's members
    threads: int         # intra-op threads
    backend: str         # "torch" or "ort"
    top1: float          # member accuracy (percent)
    p50_ms: float        # profiled median latency on an idle machine
    p95_ms: float        # profiled p95 latency on an idle machine
    name: str = ""       # human-readable member name

    @property
    def context(self) -> str:
        """Where it runs, e.g. `cpu:2t` (the family's context names)."""
        return f"cpu:{self.threads}t"

    def label(self) -> str:
        return f"{self.name or 'm' + str(self.member)}@{self.threads}t/{self.backend}"


@dataclass(frozen=True)
class Targets:
    """What the user asks for; replaced as a whole (an atomic reference swap) whenever it changes, so any
    thread can set it while the inference thread reads it without a lock."""

    deadline_ms: float = 50.0
    min_top1: float = 0.0
    fps: float | None = None
    power_w: float | None = None  # carried, but no shipped policy acts on it yet: this machine has no power
    #                               sensor (no RAPL, no cpufreq); the manager logs "target_ignored" when set

    def with_(self, **changes) -> "Targets":
        return replace(self, **changes)

    def validate(self) -> "Targets":
        """Every field finite and in range; a message starts with the field's name (`deadline_ms: ...`)."""
        from ..validate import MAX_SECONDS, number

        number(self.deadline_ms, "deadline_ms", low=0.0, low_open=True, high=MAX_SECONDS * 1e3)
        number(self.min_top1, "min_top1", low=0.0, high=100.0)
        if self.fps is not None:
            number(self.fps, "fps", low=0.0, low_open=True, high=MAX_FPS)
        if self.power_w is not None:
            number(self.power_w, "power_w", low=0.0, low_open=True)
        return self

    def effective_deadline_ms(self) -> float:
        """The deadline per inference: the latency target, tightened by the frame period when an FPS
        target is set (a frame must finish before the next one arrives)."""
        if self.fps:
            return min(self.deadline_ms, 1000.0 / self.fps)
        return self.deadline_ms


@dataclass(frozen=True)
class SystemSample:
    """What the background system monitor last saw: CPUs busy with other processes (0..n_cpus) and the
    number of CPUs; `ok` is False when the read failed (the policy then ignores it)."""

    others_busy: float = 0.0
    n_cpus: int = 1
    t: float = 0.0
    ok: bool = False


NO_SYSTEM = SystemSample()


def by_accuracy(options: tuple[Option, ...]) -> list[int]:
    """Indices of `options` from most to least accurate; ties broken by the faster profile."""
    return sorted(range(len(options)), key=lambda i: (-options[i].top1, options[i].p95_ms))


def fastest(options: tuple[Option, ...]) -> int:
    """The option with the lowest profiled p95: the safe fall-back."""
    return min(range(len(options)), key=lambda i: (options[i].p95_ms, -options[i].top1))
