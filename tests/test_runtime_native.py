"""The C per-inference path (`runtime/_native.c`) against its Python reference: the same random streams
in, identical decisions and statistics out. CI builds the extension (gcc is on the image), so a failed
build fails here instead of silently falling back to Python."""

from __future__ import annotations

import random

import pytest

from dynadnn.runtime.monitors import LatencyMonitor, NativeLatencyMonitor, PyLatencyMonitor
from dynadnn.runtime.options import Option, SystemSample, Targets
from dynadnn.runtime.policies import FeedbackPolicy, NativeFeedbackPolicy, make_policy
from dynadnn.runtime.serving import NativeServing, PyServing, Serving


def test_the_extension_is_built_and_used():
    assert NativeLatencyMonitor is not None and LatencyMonitor is NativeLatencyMonitor
    assert type(make_policy("feedback")) is NativeFeedbackPolicy and Serving is NativeServing


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
        system = rng.choice([None, SystemSample(rng.uniform(0, 2), 2, t, ok=rng.random() < 0.8)])
        if k in force_at:
            cur = rng.randrange(len(options))
            policy.force(cur)
        cur = policy.step(t, lat, cur, targets, system)
        out.append(cur)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_feedback_core_makes_the_reference_decisions(seed):
    threads = [(1,), (1, 2), (1, 2, 4)][seed % 3]
    options = ladder(random.Random(seed), threads)
    force_at = set(random.Random(seed + 100).sample(range(3000), 5))
    kw = dict(probe_s=0.3) if seed % 2 else {}
    ref = drive(FeedbackPolicy(**kw), options, random.Random(seed), 3000, force_at)
    nat = drive(NativeFeedbackPolicy(**kw), options, random.Random(seed), 3000, force_at)
    assert nat == ref
    assert len(set(ref)) > 1  # the stream made it switch: the comparison covered the control law


def test_feedback_core_rejects_bad_input():
    pol = NativeFeedbackPolicy()
    options = ladder(random.Random(0), (1,))
    pol.reset(options, Targets(deadline_ms=5.0))
    with pytest.raises(IndexError, match="out of range"):
        pol.step(0.0, 1.0, len(options), Targets())
    with pytest.raises(TypeError):
        pol.step(0.0, "slow", 0, Targets())


class ScriptedPolicy:
    """Answers from a script and remembers what it was told."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def step(self, t, latency_ms, option, targets, system=None):
        self.seen.append((option, targets.deadline_ms, system))
        return self.answers.pop(0)


@pytest.mark.parametrize("impl", [PyServing, NativeServing], ids=["python", "native"])
def test_serving_path_runs_measures_decides_and_records(impl):
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
    mon, pol = (NativeLatencyMonitor(), ScriptedPolicy([0, 1, 1, 1, 2]))
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
    s2.set_policy(ScriptedPolicy([0]), NativeLatencyMonitor())
    with pytest.raises(ValueError, match="no safe option"):
        s2.predict("bad")
