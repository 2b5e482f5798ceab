"""Measure every option under each distinct competitor load of a scenario, with the same real competing
processes and the same frame pacing as the run: the oracle's table, and the deadline that makes a
contention experiment real rather than lax.

`calibrate_deadline` picks the deadline so that, in the heaviest phase, the most accurate member run
statically misses at least `static_miss` of its frames while the fastest member at its best thread count
meets it for at least `fastest_on_time` of them (the issue's "the problem must be real" rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..validate import number, seconds
from .manager import RuntimeManager
from .scenario import CompetitorPool, Scenario
from .stream import Frames, wait_for_tick

clock = time.perf_counter


@dataclass
class Calibration:
    phase_keys: list[int]                        # per scenario phase: index of its distinct load
    latencies: dict[int, list[np.ndarray]]       # load index -> per option latencies (ms)
    heaviest: int                                # load index of the heaviest phase
    loads: list[str] = field(default_factory=list)
    idle: int | None = None                      # load index with no competitors, if the scenario has one

    def quantile_table(self, q: float) -> dict[int, list[float]]:
        """Per scenario phase, per option: the q-quantile latency (for the oracle)."""
        return {ph: [float(np.quantile(l, q)) if len(l) else float("inf") for l in self.latencies[key]]
                for ph, key in enumerate(self.phase_keys)}

    def on_time(self, option: int, deadline_ms: float, load: int | None = None) -> float:
        lat = self.latencies[self.heaviest if load is None else load][option]
        return float(np.mean(lat <= deadline_ms)) if len(lat) else 0.0


def measure_under_loads(manager: RuntimeManager, frames: Frames, scenario: Scenario, seconds_per_load: float,
                        fps: float, settle_s: float = 0.3, focus: list[int] | None = None,
                        progress=None) -> Calibration:
    """Every option at `fps` under each distinct competitor set of `scenario`, in contiguous blocks; the
    `focus` options (by default those the deadline rule reads: the static most-accurate option and the
    fastest member's options) get three times the samples."""
    seconds_per_load = seconds(seconds_per_load, "calibrate_s")
    fps = number(fps, "fps", low=0.0, low_open=True)
    scenario.check_limits()  # before any competitor starts
    if focus is None:
        focus = deadline_options(manager)
    keys: dict[tuple, int] = {}
    phase_keys = []
    for ph in scenario.phases:
        sig = tuple(sorted((c.kind, c.threads, c.size) for c in ph.competitors))
        phase_keys.append(keys.setdefault(sig, len(keys)))
    heavy_phase = scenario.heaviest()
    lat: dict[int, list[list[float]]] = {}
    n_opt = len(manager.options)
    period = 1.0 / fps
    loads = []
    for key in range(len(keys)):
        phase = scenario.phases[phase_keys.index(key)]
        loads.append(phase.name)
        pool = CompetitorPool()
        try:
            for comp in phase.competitors:
                pool.start(comp)
            time.sleep(settle_s)
            per = [[] for _ in range(n_opt)]
            # each option runs a contiguous block at the stream's pacing, as it would when chosen (its duty
            # cycle decides how the scheduler treats the process); focus options get three blocks' worth
            weights = [3 if i in focus else 1 for i in range(n_opt)]
            unit = seconds_per_load / sum(weights)
            k = 0
            for i in range(n_opt):
                end = clock() + unit * weights[i]
                next_t = clock()
                manager.runners[i](frames.frame(k))  # one untimed frame: the switch itself is not the point here
                while clock() < end:
                    next_t = wait_for_tick(next_t, period)
                    x = frames.frame(k)
                    t0 = clock()
                    manager.runners[i](x)
                    per[i].append((clock() - t0) * 1e3)
                    k += 1
            lat[key] = [np.asarray(v) for v in per]
        finally:
            pool.stop_all()
        if progress is not None:
            progress(key + 1, len(keys))
    return Calibration(phase_keys, lat, phase_keys[heavy_phase], loads, keys.get(()))


def rule_options(manager: RuntimeManager) -> tuple[int, list[int]]:
    """What the deadline rule reads: the option `static` would run (the most accurate member, its fastest
    profile) and every option (thread count, backend) of the fastest member."""
    from .policies.static import StaticPolicy

    opts = manager.options
    static = StaticPolicy()
    static.options = opts
    fastest_member = min({o.member for o in opts}, key=lambda m: min(o.p50_ms for o in opts if o.member == m))
    return static.initial(manager.targets), [i for i, o in enumerate(opts) if o.member == fastest_member]


def deadline_options(manager: RuntimeManager) -> list[int]:
    """The static most-accurate option and every option of the fastest member."""
    s_opt, fastest = rule_options(manager)
    return sorted({s_opt, *fastest})


@dataclass(frozen=True)
class DeadlineChoice:
    deadline_ms: float
    static_option: int
    fastest_option: int
    static_heavy_miss: float
    fastest_heavy_on_time: float
    feasible: bool


def calibrate_deadline(manager: RuntimeManager, cal: Calibration, static_miss: float = 0.20,
                       fastest_on_time: float = 0.995, below_cap: float = 0.9, headroom: float = 1.2,
                       idle_headroom: float = 1.1) -> DeadlineChoice:
    """The most generous deadline that keeps the problem real: `below_cap` x the static most-accurate
    option's heavy-phase (1 - static_miss) quantile, so it misses more than `static_miss` of its heavy
    frames; at least `headroom` x the fastest member's (best thread count's) heavy-phase p99.5, so the
    fastest can meet it; and at least `idle_headroom` x the static option's p95 as profiled at load on
    the idle machine and as measured idle at the stream's pacing, so the experiment is about contention (a
    deadline the most accurate member misses even alone is a different, degenerate problem. It happens
    here: between paced frames the idle vCPU slows down, and a member can run ~30 % slower idle than
    beside busy competitors). When they cannot all hold, the lower bounds win and `feasible` says so."""
    opts = manager.options
    s_opt, cands = rule_options(manager)
    heavy = cal.latencies[cal.heaviest]
    for i in [s_opt, *cands]:
        if not len(heavy[i]):
            raise UserError(f"calibrate_s: too short to measure option {opts[i].label()} under the heaviest load "
                            "(no frame); expected more seconds per load")
    f_opt = min(cands, key=lambda i: float(np.quantile(heavy[i], fastest_on_time)))
    need = float(np.quantile(heavy[f_opt], fastest_on_time))
    cap = float(np.quantile(heavy[s_opt], 1.0 - static_miss))  # below this, >= static_miss of frames exceed it
    idle_p95 = opts[s_opt].p95_ms  # back to back at load ...
    if cal.idle is not None and len(cal.latencies[cal.idle][s_opt]):  # ... and at the stream's pacing, idle
        idle_p95 = max(idle_p95, float(np.quantile(cal.latencies[cal.idle][s_opt], 0.95)))
    idle = idle_p95 * idle_headroom
    deadline = round(max(cap * below_cap, need * headroom, idle), 3)
    st_miss = 1.0 - cal.on_time(s_opt, deadline)
    f_on = cal.on_time(f_opt, deadline)
    return DeadlineChoice(deadline, s_opt, f_opt, st_miss, f_on,
                          feasible=st_miss >= static_miss and f_on >= fastest_on_time)
