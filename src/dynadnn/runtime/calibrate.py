"""Measure every option under each distinct competitor load of a scenario, with the same real competing
processes and the same frame pacing as the run: the oracle's table, and the deadline that makes a
contention experiment real rather than lax.

`calibrate_deadline` (a run's `--deadline-ms auto`) says plainly when a scenario does not bite (the most
accurate member, run statically, is on time >= 99 % under every load: "static suffices", and the deadline is
there); otherwise it picks the deadline so that, under the heavy load, the most accurate member run
statically misses about `static_miss` of its frames while the fastest member meets it for at least
`fastest_on_time` of them; never above `ceiling_x` (1.5) x the slowest member's p99 under the heavy load.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..validate import number, seconds
from .manager import RuntimeManager
from .scenario import Phase, Scenario
from .stream import Frames, Pacer

clock = time.perf_counter
WARM_FRAMES = 3  # paced frames left out at the start of each option's block


@dataclass
class Calibration:
    phase_keys: list[int]                        # per scenario phase: index of its distinct load
    latencies: dict[int, list[np.ndarray]]       # load index -> per option latencies (ms)
    heaviest: int                                # load index of the heaviest phase
    loads: list[str] = field(default_factory=list)
    idle: int | None = None                      # load index with no competitors, if the scenario has one

    def quantile_table(self, q: float) -> dict[int, list[float]]:
        """Per scenario phase, per option: the q-quantile latency (for the oracle)."""
        return {ph: [float(np.quantile(l, q, method="higher")) if len(l) else float("inf") for l in self.latencies[key]]
                for ph, key in enumerate(self.phase_keys)}

    def on_time(self, option: int, deadline_ms: float, load: int | None = None) -> float:
        lat = self.latencies[self.heaviest if load is None else load][option]
        return float(np.mean(lat <= deadline_ms)) if len(lat) else 0.0


def measure_under_loads(manager: RuntimeManager, frames: Frames, scenario: Scenario, seconds_per_load: float,
                        fps: float, settle_s: float = 0.3, focus: list[int] | None = None,
                        progress=None) -> Calibration:
    """Every option at `fps` under each distinct load of `scenario` (`Phase.load_key`), in contiguous blocks; the
    `focus` options (by default those the deadline rule reads: the static most-accurate option and the
    fastest member's options) get three times the samples."""
    from .conditions import Conditions

    seconds_per_load = seconds(seconds_per_load, "calibrate_s")
    fps = number(fps, "fps", low=0.0, low_open=True)
    scenario.check_limits()  # before any competitor starts
    if focus is None:
        focus = deadline_options(manager)
    keys: dict[tuple, int] = {}
    phase_keys = [keys.setdefault(ph.load_key(), len(keys)) for ph in scenario.phases]
    lat: dict[int, list[np.ndarray]] = {}
    loads = []
    for key in range(len(keys)):
        phase = scenario.phases[phase_keys.index(key)]
        loads.append(phase.name)
        cond = Conditions()  # no manager: a phase's target changes are not a load, and are left out here
        try:
            cond.enter(phase, phase_keys.index(key))  # co-runners, CPU set, CPU cap: as in the run
            time.sleep(settle_s)
            lat[key] = _measure_options(manager, frames, seconds_per_load, 1.0 / fps, focus)
        finally:
            cond.close()
        if progress is not None:
            progress(key + 1, len(keys))
    idle = keys.get(Phase("idle", 1.0, ()).load_key())  # no co-runner, no CPU set, no CPU cap
    return Calibration(phase_keys, lat, phase_keys[scenario.heaviest()], loads, idle)


def _measure_options(manager: RuntimeManager, frames: Frames, seconds_total: float, period: float,
                     focus: list[int]) -> list[np.ndarray]:
    """Each option runs a contiguous block at the stream's pacing, as it would when chosen (its duty cycle
    decides how the scheduler treats the process), its latency measured as the stream measures it (from
    the frame's release; a dropped frame: inf); `focus` options get three blocks' worth."""
    n_opt = len(manager.options)
    per: list[list[float]] = [[] for _ in range(n_opt)]
    weights = [3 if i in focus else 1 for i in range(n_opt)]
    unit = seconds_total / sum(weights)
    for i in range(n_opt):
        end = clock() + unit * weights[i]
        manager.runners[i](frames.frame(0))  # one untimed frame: the switch itself is not the point here
        pacer = Pacer(period)
        while clock() < end:
            released = pacer.next()
            manager.runners[i](frames.frame(pacer.k))
            per[i].append((clock() - released) * 1e3)  # as the stream measures it: from the frame's release
        per[i].extend([math.inf] * len(pacer.dropped))  # no answer: late whatever the deadline
    # the first paced frames of a block still pay for the switch (cold caches): a policy that stays on an
    # option does not, and a few of them would be the whole 1 % tail of a short block
    return [np.asarray(v[WARM_FRAMES:] if len(v) > 4 * WARM_FRAMES else v) for v in per]


def rule_options(manager: RuntimeManager) -> tuple[int, list[int]]:
    """What the deadline rule reads: the option `static` would run (the most accurate member, its fastest
    profile) and every option (thread count, backend) of the fastest member."""
    from .policies.static import StaticPolicy

    opts = manager.options
    static = StaticPolicy()
    static.options = opts
    return static.initial(manager.targets), _member_options(opts, min)


def _member_options(opts, pick) -> list[int]:
    """Every option of the member whose best profiled p50 is the `pick` (min: fastest, max: slowest)."""
    member = pick({o.member for o in opts}, key=lambda m: min(o.p50_ms for o in opts if o.member == m))
    return [i for i, o in enumerate(opts) if o.member == member]


def deadline_options(manager: RuntimeManager) -> list[int]:
    """The static most-accurate option and every option of the fastest member."""
    s_opt, fastest = rule_options(manager)
    return sorted({s_opt, *fastest})


@dataclass(frozen=True)
class DeadlineChoice:
    deadline_ms: float
    static_option: int
    fastest_option: int
    static_heavy_miss: float         # the static option's misses under the heavy load (the one it is slowest under)
    fastest_heavy_on_time: float     # the fastest member's (best option's) on-time rate under its worst load
    feasible: bool                   # the bite rule held exactly: static misses >= static_miss, the fastest meets it
    bites: bool = True               # False: static is on time >= static_on_time under every load ("static suffices")
    static_worst_on_time: float = 0.0  # the static option's on-time rate under its worst load
    heavy_load: str = ""
    ceiling_ms: float = float("inf")  # ceiling_x x the slowest member's p99 under the heavy load
    capped: bool = False             # the ceiling held the deadline down
    static_miss: float = 0.20        # the miss rate the bite rule aims at
    ceiling_x: float = 1.5           # the ceiling, in the slowest member's p99 under the heavy load

    def message(self) -> str:
        """One line for the run's log: whether the scenario bites, and what the deadline means."""
        head = f"deadline {self.deadline_ms:.3f} ms: "
        if not self.bites:
            return (head + "the scenario does not bite: static suffices (the most accurate member is on time for "
                    f"{self.static_worst_on_time:.1%} of frames or more under every load)")
        where = f" under '{self.heavy_load}'" if self.heavy_load else " under the heaviest load"
        how = "bites" if self.static_heavy_miss >= self.static_miss else "bites mildly"
        line = (f"the scenario {how}: static (most accurate) misses {self.static_heavy_miss:.1%} of frames{where}, "
                f"the fastest member meets the deadline for {self.fastest_heavy_on_time:.2%}")
        if self.capped:
            line += f" (held at the ceiling, {self.ceiling_ms:.3f} ms: {self.ceiling_x:g}x the slowest member's p99{where})"
        return head + line


def _q(lat: np.ndarray, q: float) -> float:
    return float(np.quantile(lat, q, method="higher")) if len(lat) else float("nan")  # drops (inf) never make nan


def _q_served(lat: np.ndarray, q: float) -> float:
    """The q-quantile of the frames served (dropped ones left out): a latency to set a deadline from."""
    return _q(lat[np.isfinite(lat)], q)


def _loads_with(cal: Calibration, option: int) -> list[int]:
    return [k for k in sorted(cal.latencies) if len(cal.latencies[k][option])]


def _ceiling(manager: RuntimeManager, cal: Calibration, load: int, ceiling_x: float) -> float:
    """`ceiling_x` x the slowest member's p99 under `load`, at its best measured option."""
    p99 = [_q_served(cal.latencies[load][i], 0.99) for i in _member_options(manager.options, max)
           if len(cal.latencies[load][i])]
    return ceiling_x * min(p99) if p99 else float("inf")


def calibrate_deadline(manager: RuntimeManager, cal: Calibration, static_miss: float = 0.20,
                       fastest_on_time: float = 0.995, below_cap: float = 0.9, headroom: float = 1.2,
                       idle_headroom: float = 1.1, static_on_time: float = 0.99, tail_slack: float = 1.25,
                       ceiling_x: float = 1.5) -> DeadlineChoice:
    """The deadline of a run with `--deadline-ms auto`, from the latencies measured under the scenario's own
    loads at its pacing. The floor: `headroom` x the fastest member's (best option's) p99.5 under its worst
    load, so the fastest can meet it, and `idle_headroom` x the static most-accurate option's p95 as
    profiled and its `static_on_time` quantile (p99) as measured idle at the stream's pacing, dropped frames
    aside (a deadline the most accurate member misses even alone is a different, degenerate problem;
    between paced frames the idle vCPU slows down).

    When the static option is on time for `static_on_time` of frames under every load at a deadline within
    `tail_slack` x the floor, the scenario does not bite (`bites` False: static suffices) and the deadline
    is there. Otherwise the bite rule: `below_cap` x the static option's (1 - static_miss) quantile under
    the heavy load (the one it is slowest under), so it misses more than `static_miss` of those frames, but
    not below the floor. Never above `ceiling_x` x the slowest member's p99 under the heavy load."""
    opts = manager.options
    s_opt, cands = rule_options(manager)
    for i in [s_opt, *cands]:
        if not len(cal.latencies[cal.heaviest][i]):
            raise UserError(f"calibrate_s: too short to measure option {opts[i].label()} under the heaviest load "
                            "(no frame); expected more seconds per load")
    loads = _loads_with(cal, s_opt)
    heavy = max(loads, key=lambda k: _q(cal.latencies[k][s_opt], 1.0 - static_miss))
    worst = {i: max(_q_served(cal.latencies[k][i], fastest_on_time) for k in _loads_with(cal, i)) for i in cands}
    f_opt = min(cands, key=lambda i: worst[i])
    idle_tail = opts[s_opt].p95_ms  # back to back at load ...
    if cal.idle is not None and len(cal.latencies[cal.idle][s_opt]):  # ... and at the stream's pacing, idle
        idle_tail = max(idle_tail, _q_served(cal.latencies[cal.idle][s_opt], static_on_time))
    floor = max(worst[f_opt] * headroom, idle_tail * idle_headroom)
    static_ok = max(_q(cal.latencies[k][s_opt], static_on_time) for k in loads)  # on time that often everywhere
    if static_ok <= tail_slack * floor:
        wanted = max(static_ok, floor)
    else:  # below the cap, >= static_miss of the heavy frames exceed the deadline (or are dropped: inf)
        q_heavy = _q(cal.latencies[heavy][s_opt], 1.0 - static_miss)
        wanted = max(q_heavy * below_cap, floor) if math.isfinite(q_heavy) else floor
    ceiling = _ceiling(manager, cal, heavy, ceiling_x)
    if not math.isfinite(min(wanted, ceiling)):
        raise UserError("calibrate_s: no frame of the fastest member or of the static option was served under the "
                        "scenario's loads; expected a longer calibration or a lighter scenario")
    deadline = math.ceil(min(wanted, ceiling) * 1e3 - 1e-6) / 1e3
    static_worst = min(cal.on_time(s_opt, deadline, k) for k in loads)
    st_miss = 1.0 - cal.on_time(s_opt, deadline, heavy)
    f_on = min(cal.on_time(f_opt, deadline, k) for k in _loads_with(cal, f_opt))
    return DeadlineChoice(deadline, s_opt, f_opt, st_miss, f_on,
                          feasible=st_miss >= static_miss and f_on >= fastest_on_time,
                          bites=static_worst < static_on_time, static_worst_on_time=static_worst,
                          heavy_load=cal.loads[heavy] if heavy < len(cal.loads) else "", ceiling_ms=round(ceiling, 3),
                          capped=wanted > ceiling, static_miss=static_miss, ceiling_x=ceiling_x)
