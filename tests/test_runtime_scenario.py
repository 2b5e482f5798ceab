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
