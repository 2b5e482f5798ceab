"""The honest deadline calibration (`--deadline-ms auto`) on synthetic latency data, the stream's pacing
from a scenario, and the summary table in an 80-column terminal: no model, no processes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dynadnn.runtime.calibrate import Calibration, calibrate_deadline
from dynadnn.runtime.options import Option, Targets
from dynadnn.runtime.scenario import Pacing

# five members: accuracy rises with latency (a Pareto family), two thread counts each
OPTIONS = tuple(Option(member=i, threads=t, backend="ort", top1=70.0 + 3 * i, p50_ms=(1.0 + i) / (1.6 if t == 2 else 1),
                       p95_ms=1.05 * (1.0 + i) / (1.6 if t == 2 else 1), name=f"m{i}") for i in range(5) for t in (1, 2))
MANAGER = SimpleNamespace(options=OPTIONS, targets=Targets(deadline_ms=50.0))
STATIC = 9  # m4 at 2 threads: what `static` runs


def latencies(scale, sd=0.03, n=600, seed=0, tail=None):
    """Per option: its profiled p50 x `scale` (per option, or one for all) x (1 + sd noise); `tail` =
    (fraction, ms) puts that fraction of the static option's frames at `ms`."""
    rng = np.random.default_rng(seed)
    scales = scale if isinstance(scale, (list, tuple)) else [scale] * len(OPTIONS)
    out = [o.p50_ms * s * (1 + sd * rng.standard_normal(n)) for o, s in zip(OPTIONS, scales)]
    if tail is not None:
        out[STATIC][: int(tail[0] * n)] = tail[1]
    return out


def calibration(*loads, heaviest=None, idle=0):
    return Calibration(list(range(len(loads))), dict(enumerate(loads)), heaviest=len(loads) - 1 if heaviest is None
                       else heaviest, loads=[f"load {k}" for k in range(len(loads))], idle=idle)


def test_a_scenario_that_does_not_bite_says_static_suffices():
    # the co-runners slow every member by 5 %: the most accurate one is on time >= 99 % everywhere
    cal = calibration(latencies(1.0), latencies(1.05, seed=1))
    choice = calibrate_deadline(MANAGER, cal)
    assert choice.static_option == STATIC and not choice.bites
    for load in (0, 1):
        assert cal.on_time(STATIC, choice.deadline_ms, load) >= 0.99
    msg = choice.message()
    assert "does not bite: static suffices" in msg and "could not be met" not in msg
    assert choice.deadline_ms <= 1.5 * float(np.quantile(cal.latencies[1][STATIC], 0.99))


def test_a_scenario_that_bites_misses_about_a_fifth_and_stays_under_the_ceiling():
    cal = calibration(latencies(1.0), latencies(2.5, sd=0.1, seed=1))
    choice = calibrate_deadline(MANAGER, cal)
    assert choice.bites and choice.feasible and not choice.capped
    assert choice.static_heavy_miss >= 0.2 and choice.fastest_heavy_on_time >= 0.995
    slowest_p99 = min(float(np.quantile(cal.latencies[1][i], 0.99, method="higher")) for i in (8, 9))  # m4 at its best option
    assert choice.deadline_ms <= 1.5 * slowest_p99 + 1e-3
    assert "the scenario bites" in choice.message() and "load 1" in choice.message()


def test_the_deadline_never_exceeds_the_ceiling():
    """The report at 500 fps: every member ran in ~1 ms, yet a few paced idle frames of the most accurate
    one took 12 ms and the idle floor lifted the deadline to 13.5 ms. The ceiling holds it at 1.5x the
    slowest member's p99 under the heavy load, and the run says so."""
    cal = calibration(latencies(1.0, tail=(0.1, 12.0)), latencies(1.3, seed=1))
    choice = calibrate_deadline(MANAGER, cal)
    slowest_p99 = min(float(np.quantile(cal.latencies[1][i], 0.99, method="higher")) for i in (8, 9))
    assert choice.capped and choice.deadline_ms <= 1.5 * slowest_p99 + 1e-3
    assert choice.deadline_ms == pytest.approx(choice.ceiling_ms, abs=2e-3)
    assert "ceiling" in choice.message()


def test_the_heavy_load_is_the_one_the_most_accurate_member_is_slowest_under():
    # a phase with no co-runner (a core lost, say) hurts more than the one with the most co-runner threads
    cal = calibration(latencies(1.0), latencies(2.4, sd=0.1, seed=1), latencies(1.2, seed=2), heaviest=2)
    choice = calibrate_deadline(MANAGER, cal)
    assert choice.heavy_load == "load 1" and choice.bites and choice.static_heavy_miss >= 0.2


def test_a_load_key_tells_new_kinds_of_load_apart_and_ignores_target_changes():
    from dynadnn.runtime.scenario import Competitor, Phase

    busy, matmul = Competitor("busy"), Competitor("matmul")
    idle = Phase("a", 1, ()).load_key()
    assert idle == ((), None, None, None)  # what `measure_under_loads` recognises as the idle load
    assert Phase("b", 2, (), targets={"deadline_x": 0.5}).load_key() == idle
    assert Phase("c", 1, (), cpus=1).load_key() != idle
    assert Phase("d", 1, (busy, matmul)).load_key() == Phase("e", 3, (matmul, busy)).load_key()


@pytest.mark.parametrize("pacing, fps, expected", [
    (None, None, 100.0),
    (None, 40.0, 40.0),
    (Pacing(fps=30), None, 30.0),
    (Pacing(fps=25.0, period_x_p50=None), None, 25.0),
    (Pacing(fps=30), 60.0, 60.0),  # --fps wins over the scenario
    (Pacing(period_x_p50=1.25), None, 1000.0 / (1.25 * OPTIONS[STATIC].p50_ms)),
    (Pacing(fps=None, period_x_p50=2.0), None, 1000.0 / (2.0 * OPTIONS[STATIC].p50_ms)),
])
def test_stream_fps_follows_the_scenarios_pacing_unless_fps_is_given(pacing, fps, expected):
    from dynadnn.runtime.experiment import stream_fps

    scenario = SimpleNamespace(name="s", pacing=pacing)
    got, how = stream_fps(scenario, MANAGER, fps, 20.0)
    assert got == pytest.approx(expected) and "fps" in how


def test_a_pacing_that_serves_no_frame_is_refused():
    from dynadnn.errors import UserError
    from dynadnn.runtime.experiment import stream_fps

    with pytest.raises(UserError, match="serves no frame"):
        stream_fps(SimpleNamespace(pacing=Pacing(fps=1.0)), MANAGER, None, 0.5)


def _trace(policy, n=300, seed=0):
    from dynadnn.runtime.trace import Trace

    rng = np.random.default_rng(seed)
    opts = [{"member": i, "top1": 90.0 + i, "label": f"m{i}"} for i in range(3)]
    option = rng.integers(0, 3, n).tolist()
    frames = {"t": [k / 100 for k in range(n)], "phase": [0] * n, "option": option,
              "latency_ms": rng.uniform(10.0, 30.0, n).round(3).tolist(), "deadline_ms": [25.0] * n,
              "decision_us": rng.uniform(2.0, 20.0, n).tolist(), "correct": (rng.random(n) < 0.9).tolist()}
    return Trace(policy=policy, fps=100.0, options=opts, phases=[], frames=frames)


@pytest.mark.parametrize("width", [80, 120])
def test_the_summary_table_is_readable_in_80_columns(width):
    from rich.console import Console

    from dynadnn.runtime.trace import print_summary

    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    traces = [_trace(p, seed=i) for i, p in enumerate(("static", "dofa", "feedback", "oracle"))]
    print_summary(traces, console, title="scenario 'contention', deadline 25.000 ms")
    text = console.export_text()
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines())
    for word in ("policy", "frames", "on time", "top-1", "p99", "switch", "static", "feedback", "oracle", "dofa"):
        assert word in text
    if width >= 100:
        assert "p50" in text


def test_the_tradeoff_is_told_in_words_against_static_and_the_oracle():
    from dynadnn.runtime.trace import tradeoff

    lines = tradeoff([_trace(p, seed=i) for i, p in enumerate(("static", "dofa", "feedback", "oracle"))])
    assert lines[0].startswith("static (most accurate, never switches): on time")
    assert any(line.startswith("feedback: on time") and "points" in line for line in lines)
    assert lines[-1].startswith("feedback vs oracle")
    assert tradeoff([_trace("feedback")]) == []  # nothing to compare with
