"""Scenarios with real competing processes: parsing, cleanup in every exit path, and one real end-to-end
contention run through the CLI (short: CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from dynadnn.cli import main
from dynadnn.errors import UserError
from dynadnn.runtime.scenario import CompetitorPool, Competitor, ScenarioRunner, list_scenarios, load_scenario, parse_scenario


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_shipped_scenarios_load_and_default_steps_0_1_2_0():
    assert {"contention", "flood"} <= set(list_scenarios())
    sc = load_scenario("contention")
    assert [len(p.competitors) for p in sc.phases] == [0, 1, 2, 0]
    assert sc.heaviest() == 2
    assert sc.boundaries(8.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]


@pytest.mark.parametrize("doc, msg", [
    ({}, "field 'phases' is missing"),
    ({"phases": []}, "field 'phases': expected a non-empty list"),
    ({"phases": "idle"}, "field 'phases': expected a list"),
    ({"phases": [{"duration": -1}]}, r"phases\[0\].duration: expected a number > 0"),
    ({"phases": [{"duration": float("nan")}]}, r"phases\[0\].duration: expected a finite number, got nan"),
    ({"phases": [{"duration": float("inf")}]}, r"phases\[0\].duration: expected a finite number, got inf"),
    ({"phases": [{"duration": "1"}]}, r"phases\[0\].duration: expected a number, got '1'"),
    ({"phases": [{"duration": True}]}, r"phases\[0\].duration: expected a number"),
    ({"phases": [{}]}, r"phases\[0\].duration: missing"),
    ({"phases": [{"duration": 1, "competitors": "busy"}]}, r"field 'competitors': expected a list"),
    ({"phases": [{"duration": 1, "competitors": ["busy"]}]}, r"competitors\[0\]: expected an object"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "busy", "count": 10**6}]}]}, "unknown field 'count'"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "busy", "threads": 4}]}]}, "a busy loop is one thread"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "size": 10**6}]}]}, r"competitors\[0\].size"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "busy"}] * 65}]}, "65 competing processes asked for, at most 64"),
    ({"phases": [{"duration": 1}], "name": 5}, "field 'name': expected a string"),
    ({"phases": [{"duration": 1}] * 1001}, "1001 phases, at most 1000"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "fork-bomb"}]}]}, r"competitors\[0\].kind: expected one of busy, matmul"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "threads": 0}]}]}, r"competitors\[0\].threads"),
])
def test_bad_scenarios_are_one_line_errors_naming_the_field(doc, msg):
    with pytest.raises(UserError, match=msg):
        parse_scenario(doc, "s.json")


def test_unknown_scenario_and_bad_json(tmp_path):
    with pytest.raises(UserError, match="unknown scenario 'nope'"):
        load_scenario("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        load_scenario(bad)


def test_pool_kills_competitors_and_their_groups():
    pool = CompetitorPool()
    procs = [pool.start(Competitor("busy")), pool.start(Competitor("matmul", threads=2, size=64))]
    time.sleep(0.3)
    assert all(alive(p.pid) for p in procs)
    assert all(os.getpgid(p.pid) == p.pid for p in procs)  # each leads its own process group
    pool.stop_all()
    assert not any(alive(p.pid) for p in procs)


def test_runner_cleans_up_when_the_body_raises():
    sc = parse_scenario({"phases": [{"duration": 1, "competitors": [{"kind": "busy"}]}]}, "t")
    pids = []
    with pytest.raises(RuntimeError, match="boom"):
        with ScenarioRunner(sc, duration_s=30.0) as run:
            deadline = time.time() + 5
            while not run.pool.pids() and time.time() < deadline:
                time.sleep(0.02)
            pids = run.pool.pids()
            raise RuntimeError("boom")
    assert pids and not any(alive(p) for p in pids)


def test_competitors_exit_by_themselves_when_their_parent_is_killed(tmp_path):
    """A manager killed with SIGKILL cannot clean up: its competitors must notice and leave."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from dynadnn.runtime.scenario import CompetitorPool, Competitor
        pool = CompetitorPool()
        print(pool.start(Competitor("busy")).pid, pool.start(Competitor("matmul", size=64)).pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(v) for v in parent.stdout.readline().split()]
    assert all(alive(p) for p in pids)
    parent.kill()
    parent.wait()
    deadline = time.time() + 5
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


@pytest.mark.slow
def test_end_to_end_contention_run_writes_trace_and_leaves_nothing_behind(tmp_path):
    """Real: a (random-weight) family served under the default 0 -> 1 -> 2 -> 0 competitor scenario."""
    me = psutil.Process()
    out = tmp_path / "run"
    rc = main(["run", "random:tiny", "--dataset", "digits", "--members", "3", "--threads", "1", "--backends", "ort",
               "--policy", "feedback", "--scenario", "contention", "--duration", "4", "--deadline-ms", "20",
               "--calib-images", "100",
               "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "trace.json").read_text())
    assert (out / "trace.png").stat().st_size > 10_000
    frames = doc["frames"]
    assert len(frames["t"]) > 100 and len(frames["latency_ms"]) == len(frames["t"])
    assert [p["competitors"] for p in doc["phases"]] == [[], ["busy"], ["busy", "matmul x2t"], []]
    assert all(p["started_s"] is not None for p in doc["phases"])
    assert {"policy", "scenario"} <= {e["kind"] for e in doc["events"]}
    s = doc["summary"]
    assert 0.0 <= s["on_time"] <= 1.0 and s["frames"] == len(frames["t"])
    # every competitor was started and is gone
    pids = [pid for p in doc["phases"] for pid in p["pids"]]
    assert len(pids) == 3 and not any(alive(p) for p in pids)
    assert not [c for c in me.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]


def test_run_cli_bad_input_is_one_line(tmp_path, capsys):
    rc = main(["run", "random:tiny", "--scenario", "nope", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown scenario 'nope'" in err[0]


def test_a_scenario_built_in_python_with_a_million_competitors_starts_none():
    """parse_scenario refuses such a file; a Scenario made directly is held to the same cap before any start."""
    from dynadnn.runtime.scenario import Phase, Scenario
    from dynadnn.validate import MAX_PROCESSES

    big = Scenario("big", (Phase("all", 1.0, (Competitor("busy"),) * 10**6),))
    with pytest.raises(UserError, match=f"1000000 competing processes asked for, at most {MAX_PROCESSES}"):
        ScenarioRunner(big, duration_s=1.0)
    pool = CompetitorPool()  # the last guard, for a caller that starts competitors itself
    pool.procs = [(Competitor("busy"), None)] * MAX_PROCESSES  # as if that many were running
    with pytest.raises(UserError, match=f"at most {MAX_PROCESSES} may run at once"):
        pool.start(Competitor("busy"))
    pool.procs = []
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize("duration", [0, -1, float("nan"), float("inf")])
def test_a_runner_needs_a_finite_positive_duration(duration):
    sc = parse_scenario({"phases": [{"duration": 1}]}, "t")
    with pytest.raises(UserError, match="duration: expected"):
        ScenarioRunner(sc, duration_s=duration)


def test_scenario_names_and_paths_that_are_not_there(tmp_path):
    for bad, msg in [("", "scenario: expected a shipped name"), ("x" * 5000, "scenario: "),
                     (str(tmp_path), "is not a readable file"), (str(tmp_path / "no.json"), "is not a readable file")]:
        with pytest.raises(UserError, match=msg):
            load_scenario(bad)


# --- issue 17: pressure that bites ------------------------------------------------------------------------

NEW_SUITE = ("bursty", "second_app", "core_loss", "bandwidth_cap", "targets", "pinned_membw")


def test_the_shipped_suite_loads_with_pacing_and_keeps_contention_and_flood():
    names = set(list_scenarios())
    assert set(NEW_SUITE) <= names and len(names) >= 8
    for name in NEW_SUITE:
        sc = load_scenario(name)
        assert sc.pacing is not None and sc.pacing.period_x_p50 == 1.3
        assert sc.phases[0].competitors == () and sc.heaviest() != 0  # starts idle, something bites later
        assert parse_scenario(sc.to_dict(), name) == sc  # what a trace records parses back to the same
    assert load_scenario("contention").pacing is None
    assert [p.cpus for p in load_scenario("core_loss").phases] == [None, None, 1, None, None]
    assert [p.cpu_quota for p in load_scenario("bandwidth_cap").phases] == [None, 0.5, 0.3, None]


def test_pacing_absolute_or_relative_to_the_most_accurate_p50():
    sc = parse_scenario({"pacing": {"period_x_p50": 2.0}, "phases": [{"duration": 1}]}, "s.json")
    assert sc.pacing.fps_for(5.0) == pytest.approx(100.0)  # a 10 ms period
    sc = parse_scenario({"pacing": {"fps": 40}, "phases": [{"duration": 1}]}, "s.json")
    assert sc.pacing.fps_for(5.0) == 40.0


@pytest.mark.parametrize("doc, msg", [
    ({"pacing": {"fps": 30, "period_x_p50": 1.3}}, r"pacing: expected an object with one of"),
    ({"pacing": {"period_x_p50": 0.5}}, r"pacing.period_x_p50: expected a number >= 1"),
    ({"pacing": {"rate": 3}}, r"pacing: unknown field 'rate'"),
    ({"phases": [{"duration": 1, "cpus": 0}]}, r"phases\[0\].cpus: expected an integer in 1"),
    ({"phases": [{"duration": 1, "cpus": 1.5}]}, r"phases\[0\].cpus: expected an integer"),
    ({"phases": [{"duration": 1, "cpu_quota": 1.5}]}, r"phases\[0\].cpu_quota: expected a number > 0 and <= 1"),
    ({"phases": [{"duration": 1, "cpu_quota": 0}]}, r"phases\[0\].cpu_quota: expected a number > 0"),
    ({"phases": [{"duration": 1, "targets": {}}]}, r"phases\[0\].targets: expected an object"),
    ({"phases": [{"duration": 1, "targets": {"deadline_ms": 3, "deadline_x": 0.5}}]}, "not both"),
    ({"phases": [{"duration": 1, "targets": {"min_top1": 101}}]}, r"targets.min_top1: expected a number"),
    ({"phases": [{"duration": 1, "targets": {"fps": 3}}]}, r"targets: unknown field 'fps'"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "busy", "pin": "core0"}]}]}, r"competitors\[0\].pin: expected one of app"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "busy", "fps": 3}]}]}, r"competitors\[0\] \(busy\): unknown field 'fps'"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "paced_app", "fps": 0}]}]}, r"competitors\[0\].fps: expected a number > 0"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "paced_app", "layers": 0}]}]}, r"competitors\[0\].layers"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "membw", "size": 64}]}]}, r"\(membw\): unknown field 'size'"),
    ({"phases": [{"duration": 1, "competitors": [{"kind": "membw", "size_mb": 10**6}]}]}, r"competitors\[0\].size_mb"),
])
def test_bad_new_fields_are_one_line_errors_naming_the_field(doc, msg):
    doc = {"phases": [{"duration": 1}], **doc}
    with pytest.raises(UserError, match=msg):
        parse_scenario(doc, "s.json")


def test_the_cap_on_what_a_scenario_starts_is_refused_up_front():
    """Threads and memory, as well as processes: refused by the parser and by a runner, before any start."""
    from dynadnn.runtime.corunners import MAX_THREADS
    from dynadnn.runtime.scenario import Phase, Scenario

    many = {"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "threads": 64, "size": 16}] * 5}]}
    with pytest.raises(UserError, match=f"320 competing threads asked for, at most {MAX_THREADS}"):
        parse_scenario(many, "s.json")
    free_mb = psutil.virtual_memory().available // 2**20
    huge = {"phases": [{"duration": 1, "competitors": [{"kind": "membw", "size_mb": 4096}] * (free_mb // 8192 + 1)}]}
    with pytest.raises(UserError, match=r"phases\[0\].competitors: the co-runners' buffers need .* MiB, more than half"):
        parse_scenario(huge, "s.json")
    big = Scenario("big", (Phase("p", 1.0, (Competitor("membw", threads=64),) * 5),))
    with pytest.raises(UserError, match="scenario 'big': phases\\[0\\]: 320 competing threads"):
        ScenarioRunner(big, duration_s=1.0)
    assert not psutil.Process().children(recursive=True)


class FakeManager:
    """What the runner needs of a RuntimeManager: targets, set_targets (validated), an event log."""

    def __init__(self):
        from dynadnn.runtime.options import Targets

        self.targets = Targets(deadline_ms=10.0, min_top1=0.0)
        self.log = []

    def set_targets(self, targets):
        self.targets = targets.validate()
        return self.targets

    def _log(self, kind, **detail):
        self.log.append({"kind": kind, **detail})


def wait_for(cond, timeout=10.0):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.02)
    return cond()


@pytest.mark.timeout(90)
def test_every_event_kind_is_applied_for_real_and_undone(tmp_path):
    """cpus, pinned co-runners of every kind, targets, and a cgroup cap on a tree that is not writable
    (skipped and reported, the run goes on); after the run: affinity and targets restored, children gone."""
    initial = sorted(os.sched_getaffinity(0))
    if len(initial) < 2:
        pytest.skip("one CPU: nothing to shrink")
    fake_cg = tmp_path / "cg"
    (fake_cg / "cpu").mkdir(parents=True)
    (fake_cg / "cpu" / "cpu.cfs_quota_us").write_text("")
    (fake_cg / "cpu" / "cgroup.procs").write_text("")
    doc = {"phases": [
        {"name": "squeezed", "duration": 1, "cpus": 1, "targets": {"deadline_x": 0.5, "min_top1": 50},
         "competitors": [{"kind": "busy", "pin": "app"}, {"kind": "paced_app", "fps": 50, "size": 64, "pin": "app"},
                         {"kind": "membw", "size_mb": 8, "pin": "app"}, {"kind": "matmul", "size": 64}]},
        {"name": "capped", "duration": 1, "cpu_quota": 0.3}]}
    mgr = FakeManager()
    seen = {}
    with ScenarioRunner(parse_scenario(doc, "s.json"), duration_s=6.0, manager=mgr, cgroup_root=fake_cg) as run:
        assert wait_for(lambda: len(run.pool.pids()) == 4 and run.records[0].events)
        seen["own"] = sorted(os.sched_getaffinity(0))
        seen["main"] = sorted(os.sched_getaffinity(os.getpid()))
        time.sleep(0.5)  # the children pin themselves before they import numpy
        seen["children"] = {c.label(): sorted(os.sched_getaffinity(p.pid)) for c, p in run.pool.procs}
        seen["targets"] = mgr.targets
        pids = run.pool.pids()
        assert wait_for(lambda: run.records[1].events)  # the second phase, 3 s in
        assert not any(alive(p) for p in pids)
        seen["capped_cpus"] = sorted(os.sched_getaffinity(os.getpid()))
    assert seen["own"] == seen["main"] == initial[:1]
    assert seen["children"]["matmul x1t"] == initial  # not pinned
    assert all(v == initial[:1] for k, v in seen["children"].items() if k.endswith("pinned"))
    assert (seen["targets"].deadline_ms, seen["targets"].min_top1) == (5.0, 50.0)
    assert seen["capped_cpus"] == initial  # a phase without `cpus` runs on the whole set
    ev = [e for r in run.records for e in r.events]
    kinds = [(e["event"], e["applied"]) for e in ev]
    assert ("cpus", True) in kinds and ("targets", True) in kinds and ("pin", True) in kinds
    quota = [e for e in ev if e["event"] == "cpu_quota"]
    assert len(quota) == 1 and not quota[0]["applied"] and "skipped" in quota[0]["reason"]
    assert {e["event"] for e in mgr.log if e["kind"] == "scenario_event"} == {"cpus", "targets", "pin", "cpu_quota"}
    assert sorted(os.sched_getaffinity(0)) == initial and mgr.targets.deadline_ms == 10.0
    assert not [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    assert not (fake_cg / "cpu" / f"dynadnn-cap-{os.getpid()}").exists()
    assert run.describe()["phases"][1]["events"]


def test_affinity_and_cap_are_restored_when_the_body_raises():
    from dynadnn.platform.cgroup import CpuCap

    initial = sorted(os.sched_getaffinity(0))
    sc = parse_scenario({"phases": [{"duration": 1, "cpus": 1, "cpu_quota": 0.9,
                                     "competitors": [{"kind": "busy", "pin": "app"}]}]}, "t")
    with pytest.raises(RuntimeError, match="boom"):
        with ScenarioRunner(sc, duration_s=30.0) as run:
            assert wait_for(lambda: run.records[0].events and run.pool.pids())
            raise RuntimeError("boom")
    assert sorted(os.sched_getaffinity(0)) == initial
    assert f"dynadnn-cap-{os.getpid()}" not in open("/proc/self/cgroup").read()
    assert not CpuCap().active
    assert not [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]


def test_targets_without_a_manager_are_skipped_and_reported():
    sc = parse_scenario({"phases": [{"duration": 1, "targets": {"deadline_ms": 3}}]}, "t")
    with ScenarioRunner(sc, duration_s=0.3) as run:
        wait_for(lambda: run.done)
    ev = run.records[0].events
    assert ev and ev[0]["event"] == "targets" and not ev[0]["applied"] and "no runtime manager" in ev[0]["reason"]
