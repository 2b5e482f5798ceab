"""The C per-inference path (`runtime/_native.c`) against its Python reference: the same random streams
in, identical decisions and statistics out. CI builds the extension (gcc is on the image), so a failed
build fails here instead of silently falling back to Python. `make test` runs this file a second time with
DYNADNN_NATIVE=0: the comparisons are then skipped and the Python path is checked to be the one in use."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from dynadnn.errors import UserError
from dynadnn.runtime import native
from dynadnn.runtime.monitors import LatencyMonitor, NativeLatencyMonitor, PyLatencyMonitor
from dynadnn.runtime.options import Option, SystemSample, Targets
from dynadnn.runtime.policies import FeedbackParams, FeedbackPolicy, NativeFeedbackPolicy, make_policy
from dynadnn.runtime.serving import NativeServing, PyServing, Serving

FORCED_OFF = os.environ.get(native.ENV, "").strip() == "0"
needs_c = pytest.mark.skipif(FORCED_OFF, reason=f"{native.ENV}=0: the pure-Python path is under test")


def test_the_extension_is_built_and_used():
    if FORCED_OFF:
        assert native.core is None and native.active() == "python" and "forced" in native.describe()
        assert NativeLatencyMonitor is None and LatencyMonitor is PyLatencyMonitor
        assert type(make_policy("feedback")) is FeedbackPolicy and Serving is PyServing and NativeServing is None
        with pytest.raises(RuntimeError, match="not in use"):
            NativeFeedbackPolicy()
        return
    assert native.core is not None and native.active() == "native"
    assert NativeLatencyMonitor is not None and LatencyMonitor is NativeLatencyMonitor
    assert type(make_policy("feedback")) is NativeFeedbackPolicy and Serving is NativeServing


PROBE = """
import contextlib, io, json
from dynadnn.cli import info
from dynadnn.runtime import manager, native
from dynadnn.runtime.policies import make_policy
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    info.run(None)
print(json.dumps({"active": native.active(), "policy": type(make_policy("feedback")).__name__,
                  "manager_serving": manager.Serving.__name__, "manager_monitor": manager.LatencyMonitor.__name__,
                  "info": buf.getvalue().splitlines()[-1]}))
"""


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_environment_switch_picks_the_path_everywhere(value):
    """DYNADNN_NATIVE=0 forces the Python references in the manager, the policies and `dynadnn info`; any
    other value uses C (built on CI)."""
    env = dict(os.environ, **{native.ENV: value})
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    py = value == "0"
    assert got["active"] == ("python" if py else "native")
    assert got["policy"] == ("FeedbackPolicy" if py else "NativeFeedbackPolicy")
    assert got["manager_serving"] == ("PyServing" if py else "NativeServing")
    assert got["manager_monitor"] == ("PyLatencyMonitor" if py else "NativeLatencyMonitor")
    assert got["info"] == "runtime serving path: " + ("pure Python (forced by DYNADNN_NATIVE=0)" if py else "native (C)")


@needs_c
def test_monitor_matches_the_reference():
    rng = random.Random(1)
    py, c = PyLatencyMonitor(size=16), NativeLatencyMonitor(size=16)
    for k in range(500):
        lat, p50, dl = rng.uniform(0.5, 9.0), rng.choice([0.0, 1.0, 2.5]), rng.uniform(2.0, 8.0)
        py.update(lat, p50, dl)
        c.update(lat, p50, dl)
        assert c.snapshot() == py.snapshot() and c.window() == py.window(), k
    with pytest.raises(ValueError):
        NativeLatencyMonitor(size=0)


def ladder(rng: random.Random, threads: tuple[int, ...]) -> tuple[Option, ...]:
    opts = []
    for m in range(rng.randint(2, 6)):
        base = 1.0 + m * rng.uniform(0.3, 1.5)
        for th in threads:
            p50 = base * rng.uniform(0.5, 1.1) ** (th - 1)
            opts.append(Option(m, th, "ort", 70.0 + 3 * m + rng.choice([0.0, 0.0, 0.5]), p50, p50 * rng.uniform(1.0, 1.4)))
    return tuple(opts)


def drive(policy, options, rng: random.Random, n: int, force_at: set[int]) -> list[int]:
    """A random load (slow drifts, bursts, idle tails), random system samples, target changes and
    fall-backs; returns the decisions."""
    targets = Targets(deadline_ms=rng.uniform(2.0, 10.0))
    cur = policy.reset(options, targets)
    out, load = [cur], 1.0
    for k in range(n):
        t = k * 0.01
        if rng.random() < 0.01:
            load = rng.choice([1.0, 1.5, 2.5, 4.0])
        if rng.random() < 0.003:
            targets = targets.with_(deadline_ms=rng.uniform(2.0, 10.0))
        lat = options[cur].p50_ms * load * (1 + 0.1 * rng.random()) + (rng.expovariate(1.0) if rng.random() < 0.05 else 0)
        if rng.random() < 0.02:  # an isolated spike: the miss-count rule must agree on what it ignores
            lat *= rng.uniform(2.0, 6.0)
        system = rng.choice([None, SystemSample(rng.uniform(0, 2), 2, t, ok=rng.random() < 0.8)])
        if k in force_at:
            cur = rng.randrange(len(options))
            policy.force(cur)
        cur = policy.step(t, lat, cur, targets, system)
        out.append(cur)
    return out


@needs_c
@pytest.mark.parametrize("seed", range(12))
def test_feedback_core_makes_the_reference_decisions(seed):
    threads = [(1,), (1, 2), (1, 2, 4)][seed % 3]
    options = ladder(random.Random(seed), threads)
    force_at = set(random.Random(seed + 100).sample(range(3000), 5))
    kw = dict(probe_s=0.3) if seed % 2 else {}
    if seed % 4 == 1:  # a looser budget, less confidence: other miss allowances
        kw.update(miss_budget=0.05, miss_confidence=0.8)
    ref = drive(FeedbackPolicy(**kw), options, random.Random(seed), 3000, force_at)
    nat = drive(NativeFeedbackPolicy(**kw), options, random.Random(seed), 3000, force_at)
    assert nat == ref
    assert len(set(ref)) > 1  # the stream made it switch: the comparison covered the control law


@needs_c
def test_feedback_core_rejects_bad_input():
    pol = NativeFeedbackPolicy()
    options = ladder(random.Random(0), (1,))
    pol.reset(options, Targets(deadline_ms=5.0))
    with pytest.raises(IndexError, match="out of range"):
        pol.step(0.0, 1.0, len(options), Targets())
    with pytest.raises(TypeError):
        pol.step(0.0, "slow", 0, Targets())
    core, kw = pol.core, dict(p50=[1.0], ctx_of=[0], ctx_threads=[1], order=[0], idle_tail=[1.0], current=0,
                              targets=Targets())
    with pytest.raises(ValueError, match="window must be in 1"):  # C validates what it reads
        core.__init__(params=FakeParams(window=0), **kw)
    for bad in (dict(miss_budget=1.0), dict(miss_confidence=0.0), dict(miss_confidence=float("nan"))):
        with pytest.raises(ValueError, match="miss_budget < 1 and 0 < miss_confidence < 1"):
            core.__init__(params=FakeParams(**bad), **kw)
    partial = FakeParams()
    del partial.sync_penalty
    with pytest.raises(AttributeError, match="sync_penalty"):  # every field is read from the record
        core.__init__(params=partial, **kw)
    with pytest.raises(IndexError, match="out of range"):  # a core whose re-init failed refuses every option
        core.step(0.0, 1.0, 0, Targets())


class FakeParams:
    """A record that skips `FeedbackParams`' own validation (to reach the C checks)."""

    def __init__(self, **changes):
        self.__dict__.update(dataclasses.asdict(FeedbackParams()), **changes)


@needs_c
def test_the_core_reads_every_field_of_the_parameter_record():
    assert native.core.FEEDBACK_PARAMS == tuple(f.name for f in dataclasses.fields(FeedbackParams))


# a change per field that alters the decisions on seed 2's stream (three thread counts): found by trying
CHANGES = dict(miss_budget=0.1, miss_confidence=0.5, margin=0.3, up_hysteresis=0.3, window=10, min_samples=40, stale_s=0.1, dwell_s=1.0, min_dwell_s=1.0,
               probe_s=0.3, probe_slack=0.9, sync_penalty=1.0, up_fail_s=10.0, backoff_max_s=0.3, down_block_s=30.0)
BASES = dict(probe_s=dict(probe_slack=0.9), backoff_max_s=dict(up_fail_s=10.0), down_block_s=dict(window=8, min_samples=4))  # the miss-count rule never probes on this stream at the default slack


def test_every_parameter_has_a_change_to_try():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(FeedbackParams)}


@needs_c
@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_changed_parameter_reaches_both_cores(field):
    """The record is what both implementations are built from: changing one field changes the decisions,
    identically in C and in Python."""
    options = ladder(random.Random(2), (1, 2, 4))
    force_at = set(random.Random(102).sample(range(3000), 5))
    base = FeedbackParams().with_(**BASES.get(field, {}))
    params = base.with_(**{field: CHANGES[field]})
    default = drive(FeedbackPolicy(base), options, random.Random(2), 3000, force_at)
    ref = drive(FeedbackPolicy(params), options, random.Random(2), 3000, force_at)
    nat = drive(NativeFeedbackPolicy(params), options, random.Random(2), 3000, force_at)
    assert nat == ref and ref != default
    assert NativeFeedbackPolicy(**{field: CHANGES[field]}).describe()[field] == CHANGES[field]


@pytest.mark.parametrize("bad", [dict(window=0), dict(min_samples=2.5), dict(margin=-0.1), dict(probe_s="1"),
                                 dict(dwell_s=float("nan")), dict(windows=40),
                                 dict(miss_budget=1.0), dict(miss_confidence=1.5)])
def test_bad_feedback_parameters_are_a_user_error(bad):
    with pytest.raises(UserError, match="feedback: ") as err:
        make_policy("feedback", **bad)
    assert "\n" not in str(err.value)


class ScriptedPolicy:
    """Answers from a script and remembers what it was told."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def step(self, t, latency_ms, option, targets, system=None):
        self.seen.append((option, targets.deadline_ms, system))
        return self.answers.pop(0)


@pytest.mark.parametrize("impl", ["python", pytest.param("native", marks=needs_c)])
def test_serving_path_runs_measures_decides_and_records(impl):
    impl, monitor = (PyServing, PyLatencyMonitor) if impl == "python" else (NativeServing, NativeLatencyMonitor)
    def runner(k):
        def run(x):
            if x == "bad" and k == 1:
                raise RuntimeError("simulated")
            return (k, x)
        return run

    switched, errors = [], []

    def on_switch(nxt, lat, t):
        switched.append(nxt)
        return nxt

    def on_error(x, idx, exc):
        errors.append((idx, str(exc)))
        return runners[0](x), 0

    runners = [runner(k) for k in range(3)]
    sample = SystemSample(0.5, 2, 0.0, ok=True)
    s = impl(runners, [1.0, 2.0, 3.0], on_switch, on_error)
    s.set_targets(Targets(deadline_ms=50.0, fps=100.0))
    s.set_sample(sample)
    mon, pol = (monitor(), ScriptedPolicy([0, 1, 1, 1, 2]))
    s.set_policy(pol, mon)
    s.set_knobs([False, True, False])            # only a switch to option 1 has knobs to turn
    assert s.predict("a") == (0, "a")           # option 0 runs; the policy keeps it
    assert s.predict("b") == (0, "b") and s.current == 1 and switched == [1]
    assert s.predict("bad") == (0, "bad") and errors == [(1, "simulated")]  # the fall-back's output
    s.current = 1
    runners[1] = runner(9)                       # the manager's list is the one served
    assert s.predict("c") == (9, "c")
    assert s.predict("d") == (9, "d") and s.current == 2 and switched == [1]  # 2 has no knobs: no call
    assert [(a, b) for _, a, b, _ in s.switches()] == [(0, 1), (1, 2)]
    assert [o for o, _, _ in pol.seen] == [0, 0, 0, 1, 1]  # told the option that actually ran
    assert all(dl == 50.0 and sys is sample for _, dl, sys in pol.seen)
    r = s.records()
    assert len(r) == 5 and list(r.option) == [0, 0, 0, 1, 1] and set(r.deadline_ms) == {10.0}
    assert all(v > 0 for v in r.decision_us) and list(r.t) == sorted(r.t) and mon.n == 5
    s.reset_records()
    assert len(s.records()) == 0

    def refuse(x, idx, exc):
        raise ValueError("no safe option")

    s2 = impl([runner(1)], [1.0], on_switch, refuse)
    s2.set_targets(Targets())
    s2.set_policy(ScriptedPolicy([0]), monitor())
    with pytest.raises(ValueError, match="no safe option"):
        s2.predict("bad")
