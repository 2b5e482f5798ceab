"""What the manager reads.

- `Window`: a fixed-size ring of recent values with quantiles on demand (sorting 32-64 floats costs ~2 us,
  cheaper than maintaining an order statistic tree in Python).
- `LatencyMonitor`: measured latency per inference, updated at every inference in O(1): windowed p50/p95
  (on demand), deadline-miss rate over the window, EWMA, and the slowdown factor (measured / profiled
  median latency of the option that ran). Native (`_native.c`) when in use (see `native`);
  `PyLatencyMonitor` is the reference it mirrors.
- `SystemMonitor`: a daemon thread that samples /proc/stat and the process's own CPU time every `period_s`
  and publishes one immutable `SystemSample` (a reference swap, so the inference path never locks). A read
  that fails is counted and logged once per streak; the last good sample is marked not-ok so policies stop
  trusting it. `stop()` joins the thread: nothing leaks.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from typing import Callable

from . import native
from ..platform.local import CpuTimes, cpu_count, cpu_load_between, read_proc_stat
from .options import NO_SYSTEM, SystemSample


class Window:
    """The last `size` values pushed."""

    __slots__ = ("size", "values", "pos", "count")

    def __init__(self, size: int = 64):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.values = [0.0] * size
        self.pos = 0
        self.count = 0

    def push(self, value: float) -> None:
        self.values[self.pos] = value
        self.pos = (self.pos + 1) % self.size
        if self.count < self.size:
            self.count += 1

    def clear(self) -> None:
        self.pos = 0
        self.count = 0

    def items(self) -> list[float]:
        return self.values[:self.count] if self.count < self.size else list(self.values)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile of the window (0.0 when empty)."""
        n = self.count
        if n == 0:
            return 0.0
        ordered = sorted(self.values[:n] if n < self.size else self.values)
        return ordered[min(n - 1, int(q * n))]

    def mean(self) -> float:
        n = self.count
        return sum(self.values[:n] if n < self.size else self.values) / n if n else 0.0


class SortedWindow(Window):
    """A `Window` that also keeps its values sorted (bisect insert/remove: O(n) memmove in C, ~0.5 us
    at n=40), so a quantile is one index instead of a sort: for a quantile at every inference."""

    __slots__ = ("ordered",)

    def __init__(self, size: int = 64):
        super().__init__(size)
        self.ordered: list[float] = []

    def push(self, value: float) -> None:
        pos = self.pos
        if self.count == self.size:
            del self.ordered[bisect_left(self.ordered, self.values[pos])]
        else:
            self.count += 1
        insort(self.ordered, value)
        self.values[pos] = value
        self.pos = pos + 1 if pos + 1 < self.size else 0

    def clear(self) -> None:
        super().clear()
        self.ordered.clear()

    def quantile(self, q: float) -> float:
        n = self.count
        return self.ordered[min(n - 1, int(q * n))] if n else 0.0


class _LatencyViews:
    """Reads shared by both latency monitors (each keeps `window()`, `count`, `_missed_in` and counters)."""

    __slots__ = ()

    def quantile(self, q: float) -> float:
        n = self.count
        if not n:
            return 0.0
        return sorted(self.window())[min(n - 1, int(q * n))]

    @property
    def miss_rate(self) -> float:
        return self._missed_in / self.count if self.count else 0.0

    def snapshot(self) -> dict:
        return {"n": self.n, "p50_ms": self.quantile(0.5), "p95_ms": self.quantile(0.95), "ewma_ms": self.ewma_ms,
                "miss_rate": self.miss_rate, "slowdown_ewma": self.ewma_slowdown, "missed_total": self.n_missed}


class PyLatencyMonitor(_LatencyViews):
    """Per-inference latency statistics: a window of the last `size` latencies (p50/p95 on demand), the
    deadline-miss rate over the same window, EWMAs of latency and of the slowdown factor (measured /
    profiled median of the option that ran). The reference implementation: `_native.c` mirrors `update`
    line by line, and `LatencyMonitor` is the native one when it is in use."""

    __slots__ = ("size", "lat", "miss", "pos", "count", "alpha", "ewma_ms", "ewma_slowdown", "n", "n_missed", "_missed_in")

    def __init__(self, size: int = 64, alpha: float = 0.1):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size, self.alpha = size, alpha
        self.lat = [0.0] * size
        self.miss = [False] * size
        self.pos = self.count = self.n = self.n_missed = self._missed_in = 0
        self.ewma_ms = 0.0
        self.ewma_slowdown = 1.0

    def update(self, latency_ms: float, profiled_p50_ms: float, deadline_ms: float) -> None:
        pos = self.pos
        missed = latency_ms > deadline_ms
        self._missed_in += missed - self.miss[pos] if self.count == self.size else missed
        self.lat[pos] = latency_ms
        self.miss[pos] = missed
        self.pos = pos + 1 if pos + 1 < self.size else 0
        if self.count < self.size:
            self.count += 1
        self.n_missed += missed
        ratio = latency_ms / profiled_p50_ms if profiled_p50_ms > 0 else 1.0
        if self.n:
            self.ewma_ms += self.alpha * (latency_ms - self.ewma_ms)
            self.ewma_slowdown += self.alpha * (ratio - self.ewma_slowdown)
        else:
            self.ewma_ms, self.ewma_slowdown = latency_ms, ratio
        self.n += 1

    def window(self) -> list[float]:
        return self.lat[:self.count]


if native.core is not None:

    class NativeLatencyMonitor(native.core.LatencyMonitorCore, _LatencyViews):
        """`PyLatencyMonitor` with `update` in C (the native serving path calls it without Python)."""

        __slots__ = ()

else:  # not built, or DYNADNN_NATIVE=0 (see `native`): the reference runs
    NativeLatencyMonitor = None  # type: ignore[assignment,misc]

LatencyMonitor = NativeLatencyMonitor or PyLatencyMonitor


class SystemMonitor:
    """Background sampler of CPU availability. `reader` returns a `CpuTimes` (tests inject failing or fake
    readers); `on_event(kind, detail)` receives fault and recovery notices."""

    def __init__(self, period_s: float = 0.1, reader: Callable[[], CpuTimes] = read_proc_stat,
                 n_cpus: int | None = None, on_event: Callable[[str, dict], None] | None = None):
        self.period_s = period_s
        self.reader = reader
        self.n_cpus = n_cpus or cpu_count()
        self.on_event = on_event or (lambda kind, detail: None)
        self.sample: SystemSample = NO_SYSTEM
        self.on_sample: Callable[[SystemSample], None] | None = None  # e.g. the serving path's set_sample
        self.failures = 0
        self.history: list[tuple[float, float, float]] = []  # (t, busy cpus, others' busy cpus)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: CpuTimes | None = None
        self._failing = False

    def start(self) -> "SystemMonitor":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dynadnn-system-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.period_s + 1.0)
            self._thread = None

    def poll(self) -> SystemSample:
        """Take one sample now (the thread calls this; tests call it directly)."""
        try:
            now = self.reader()
        except Exception as exc:  # noqa: BLE001 - a sensor must never take the manager down
            self.failures += 1
            if not self._failing:
                self._failing = True
                self.on_event("monitor_failed", {"monitor": "system", "error": f"{type(exc).__name__}: {exc}"})
            old = self.sample
            self._publish(SystemSample(old.others_busy, self.n_cpus, old.t, ok=False))
            return self.sample
        if self._failing:
            self._failing = False
            self.on_event("monitor_recovered", {"monitor": "system", "failures": self.failures})
        if self._last is not None:
            busy, others = cpu_load_between(self._last, now, self.n_cpus)
            self._publish(SystemSample(others_busy=others, n_cpus=self.n_cpus, t=now.wall, ok=True))
            if len(self.history) < 100_000:
                self.history.append((now.wall, busy, others))
        self._last = now
        return self.sample

    def _publish(self, sample: SystemSample) -> None:
        self.sample = sample
        if self.on_sample is not None:
            self.on_sample(sample)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.period_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
