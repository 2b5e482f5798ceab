"""The manager's per-inference path: run the current option, time it, update the latency monitor, let
the policy decide, turn the knobs when it changes its mind, record the frame.

Why a module of its own: this is the only code that runs at every inference, so it is written twice.
`PyServing` is the reference, readable and used wherever the C extension is not (see `native`);
`ServingCore` in `_native.c` is the same path in C, which the manager uses when it is: after an inference the
caches are cold and each interpreted line costs about a microsecond, which alone breaks the manager's
20 us budget per inference (measured: see BENCHMARKS.md, "decision path"). Both have one interface:

    s = Serving(runners, p50s, on_switch, on_error, record=True)
    s.set_targets(targets); s.set_sample(sample); s.set_policy(policy, monitor); s.set_knobs(flags); s.current = k
    y = s.predict(x)                  # or s.predict(x, released_at=t): latency counts from the frame's release
    s.records()  /  s.reset_records()  /  s.switches()

A switch is logged here, not by the manager; `on_switch(option, latency_ms, t)` is called only for options
flagged by `set_knobs` (torch threads or CPU affinity to turn), and returns the option actually applied.

The manager's own time per frame is recorded as `decision_us`: the span before the runner (picking it)
plus the span after it (monitor, policy, knobs), in wall time. With `record_cpu`, `decision_cpu_us` is
the same spans in the serving thread's CPU time (a cross-check; the system calls that read it leave the
caches colder for the wall spans, so it is off by default and the column is then zeros).
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Callable, Sequence

from . import native

clock = time.perf_counter  # CLOCK_MONOTONIC, as `now_s` in _native.c
cpu_clock = time.thread_time  # CLOCK_THREAD_CPUTIME_ID, as `cpu_s`


class Records:
    """Per-inference columns in typed arrays (appending allocates no garbage-collected objects, so the
    serving loop does not trigger collector pauses)."""

    __slots__ = ("t", "option", "latency_ms", "decision_us", "decision_cpu_us", "deadline_ms")
    COLUMNS = (("t", "d"), ("option", "i"), ("latency_ms", "d"), ("decision_us", "d"), ("decision_cpu_us", "d"),
               ("deadline_ms", "d"))

    def __init__(self) -> None:
        for name, code in self.COLUMNS:
            setattr(self, name, array(code))

    def __len__(self) -> int:
        return len(self.t)


class PyServing:
    """The reference serving path (see the module docstring)."""

    def __init__(self, runners: list[Callable], p50: Sequence[float],
                 on_switch: Callable[[int, float, float], int], on_error: Callable[[Any, int, Exception], tuple],
                 record: bool = True, record_cpu: bool = False):
        self.runners = runners  # the manager's list: replacing a runner there takes effect here
        self.p50 = [float(v) for v in p50]
        self.on_switch, self.on_error, self.record = on_switch, on_error, record
        self.sample = None
        self.record_cpu = record and record_cpu
        self.current = 0
        self.knobs = [False] * len(self.p50)
        self._switches: list[tuple[float, int, int, float]] = []
        self._records = Records()

    def set_knobs(self, flags: Sequence[bool]) -> None:
        if len(flags) != len(self.p50):
            raise ValueError(f"set_knobs: expected {len(self.p50)} flags")
        self.knobs = [bool(f) for f in flags]

    def set_targets(self, targets) -> None:
        self._now = (targets, targets.effective_deadline_ms())  # one reference: swapped whole

    def set_sample(self, sample) -> None:
        """The system monitor pushes each new sample (so a frame reads one reference, not an attribute chain)."""
        self.sample = sample

    def set_policy(self, policy, monitor) -> None:
        self.step, self.monitor = policy.step, monitor

    def predict(self, x, released_at: float | None = None):
        c0 = cpu_clock() if self.record_cpu else 0.0
        t0 = clock()
        idx = self.current
        runner = self.runners[idx]
        t1 = clock()
        c1 = cpu_clock() if self.record_cpu else 0.0
        try:
            y = runner(x)
        except Exception as exc:  # noqa: BLE001 - the manager logs it and re-runs the frame on the safe option
            y, idx = self.on_error(x, idx, exc)
        c2 = cpu_clock() if self.record_cpu else 0.0
        t2 = clock()
        start = t1 if released_at is None else released_at
        lat = (t2 - start) * 1e3
        targets, deadline = self._now  # as set while the runner ran
        self.monitor.update(lat, self.p50[idx], deadline)
        nxt = self.step(t2, lat, idx, targets, self.sample)
        if nxt != self.current:
            before = self.current
            self.current = self.on_switch(nxt, lat, t2) if self.knobs[nxt] else nxt
            self._switches.append((t2, before, self.current, lat))
        t3 = clock()
        if self.record:
            c3 = cpu_clock() if self.record_cpu else 0.0
            r = self._records
            r.t.append(start)
            r.option.append(idx)
            r.latency_ms.append(lat)
            r.decision_us.append(((t1 - t0) + (t3 - t2)) * 1e6)
            r.decision_cpu_us.append(((c1 - c0) + (c3 - c2)) * 1e6)
            r.deadline_ms.append(deadline)
        return y

    def records(self) -> Records:
        return self._records

    def reset_records(self) -> None:
        self._records = Records()

    def switches(self) -> list[tuple[float, int, int, float]]:
        return list(self._switches)


if native.core is not None:

    class NativeServing(native.core.ServingCore):
        """`PyServing` in C; `records()` copies the C-owned columns into a `Records`."""

        def records(self) -> Records:
            r = Records()
            for name, _ in Records.COLUMNS:
                getattr(r, name).frombytes(self.column(name))
            return r

else:  # not built, or DYNADNN_NATIVE=0 (see `native`): the reference runs
    NativeServing = None  # type: ignore[assignment,misc]

Serving = NativeServing or PyServing
