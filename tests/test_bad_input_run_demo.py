"""Bad input to `dynadnn run` and `dynadnn demo` (and the scenario files `run` reads): refused with one line
naming the option or file and field, exit 2, no traceback, nothing written, nothing started; refused before
the family is loaded or part 1 of the demo runs (each case is fast because the validation comes first)."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from dynadnn.cli import main

RUN = ["run", "random:tiny", "--dataset", "digits", "--members", "2", "--threads", "1", "--backends", "ort",
       "--calib-images", "50", "--deadline-ms", "50"]


@pytest.fixture
def no_family(monkeypatch):
    """Fail loudly if a refused command got as far as loading a family."""
    import dynadnn.runtime.experiment as experiment

    def setup(*a, **k):
        raise AssertionError("the family was loaded before the input was refused")

    monkeypatch.setattr(experiment, "setup", setup)


SHARED_CASES = [  # options `run` and `demo` both take, refused alike
    (["--duration", "nan"], "--duration: expected a finite number"),
    (["--duration", "-1"], "--duration: expected a number > 0"),
    (["--duration", "0"], "--duration"),
    (["--duration", "inf"], "--duration"),
    (["--threads", "0"], "--threads"),
    (["--threads", "999"], "--threads: 999 threads asked for"),
]


@pytest.mark.parametrize("extra, named", [
    (["--fps", "nan"], "--fps: expected a finite number"),
    (["--fps", "0"], "--fps: expected a number > 0"),
    (["--fps", "-1"], "--fps"),
    (["--fps", "inf"], "--fps: expected a finite number"),
    *SHARED_CASES,
    (["--duration", "1e9"], "--duration"),
    (["--duration", "0.001"], "--duration: 0.001 s at 100 fps serves no frame"),
    (["--deadline-ms", "nan"], "--deadline-ms: expected a finite number"),
    (["--deadline-ms", "-5"], "--deadline-ms"),
    (["--min-top1", "150"], "--min-top1: expected a number >= 0 and <= 100"),
    (["--min-top1", "-1"], "--min-top1"),
    (["--threads", "abc"], "--threads"),
    (["--batch", "0"], "--batch"),
    (["--batch", "2.5"], "--batch"),
    (["--batch", "100000"], "--batch"),
    (["--threads", "1,999"], "--threads"),
    (["--members", "1"], "--members: expected an integer in 2..64"),
    (["--members", "0"], "--members"),
    (["--members", "100000"], "--members"),
    (["--calib-images", "0"], "--calib-images: expected an integer >= 1"),
    (["--calib-images", "-5"], "--calib-images"),
    (["--calibrate-s", "-1"], "--calibrate-s"),
    (["--calibrate-s", "nan"], "--calibrate-s: expected a finite number"),
    (["--policy", ""], "--policy"),
    (["--policy", "greedy"], "--policy: expected one of static, dofa, feedback, oracle, got 'greedy'"),
    (["--policy", "feedback,nope"], "--policy: expected one of static, dofa, feedback, oracle, got 'nope'"),
    (["--backends", "tensorflow"], "--backends: expected one of torch, ort"),
    (["--backends", ""], "--backends"),
    (["--scenario", "nope"], "--scenario: unknown scenario 'nope'"),
    (["--scenario", ""], "--scenario"),
    (["--scenario", "x" * 5000 + ".json"], "--scenario"),
    (["--dataset", "nope"], "--dataset: unknown dataset 'nope'"),
    (["--dataset", "imagefolder:"], "--dataset"),
])
def test_run_refuses_bad_options(refused, no_family, tmp_path, extra, named):
    refused(RUN + extra + ["--out", tmp_path / "run"], named)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family, named", [
    ("", "family: expected a family directory"),
    ("/nonexistent/family", "family '/nonexistent/family': not a family directory"),
    ("f" * 5000, "family: cannot read"),
    ("random:nope", "unknown preset 'nope'"),
    ("zoo:nope", "zoo:nope"),
])
def test_run_refuses_a_family_that_is_not_there(refused, tmp_path, family, named):
    refused(["run", family] + RUN[2:] + ["--out", tmp_path / "run"], named)


@pytest.mark.parametrize("verb", ["run", "demo"])
@pytest.mark.parametrize("out, named", [("", "--out: expected a folder"), (".", "is the working, home or root folder")])
def test_out_that_would_replace_a_working_folder_is_refused(refused, no_family, verb, out, named):
    argv = RUN + ["--overwrite"] if verb == "run" else ["demo", "--overwrite"]
    refused(argv + ["--out", out], named)


BAD_SCENARIOS = [
    ('{"phases": [{"duration": NaN, "competitors": []}]}', "phases[0].duration: expected a finite number, got nan"),
    ('{"phases": [{"duration": Infinity}]}', "phases[0].duration: expected a finite number, got inf"),
    ('{"phases": [{"duration": -2}]}', "phases[0].duration: expected a number > 0"),
    ('{"phases": [{"duration": 0}]}', "phases[0].duration"),
    ('{"phases": [{"duration": "1"}]}', "phases[0].duration: expected a number, got '1'"),
    ('{"phases": {"duration": 1}}', "field 'phases': expected a list"),
    ('{"phases": []}', "field 'phases': expected a non-empty list"),
    ('[1, 2]', "expected a JSON object"),
    ('{"phases": [', "not valid JSON"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "fork-bomb"}]}]}', "competitors[0].kind: expected one of busy, matmul"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "threads": "2"}]}]}', "competitors[0].threads: expected an integer"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "threads": 1000}]}]}', "competitors[0].threads"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "matmul", "size": 1e9}]}]}', "competitors[0].size"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "busy", "repeat": 1000}]}]}', "unknown field 'repeat'"),
    ('{"phases": [{"duration": 1, "competitors": {"kind": "busy"}}]}', "field 'competitors': expected a list"),
    ('{"phases": [{"duration": 1, "competitors": [{"kind": "busy"}]}], "description": 7}', "field 'description'"),
]


@pytest.mark.parametrize("text, named", BAD_SCENARIOS)
def test_run_refuses_bad_scenario_files(refused, no_family, tmp_path, text, named):
    path = tmp_path / "bad.json"
    path.write_text(text)
    refused(RUN + ["--scenario", path, "--out", tmp_path / "run"], named)


def test_a_scenario_asking_for_a_million_competitors_starts_none(refused, no_family, tmp_path):
    path = tmp_path / "million.json"
    path.write_text(json.dumps({"phases": [{"duration": 1, "competitors": [{"kind": "busy"}] * 10**6}]}))
    t = time.perf_counter()
    refused(RUN + ["--scenario", path, "--out", tmp_path / "run"], "1000000 competing processes asked for, at most 64")
    assert time.perf_counter() - t < 30
    assert not psutil.Process().children(recursive=True)


def unusable_out(tmp_path, case: str, verb: str, result: str = "summary.json"):
    """An --out the verb must refuse, and what its message names: a file, a folder under /proc, a read-only
    parent, a folder of other files, or one holding an earlier result (`result`)."""
    out = tmp_path / verb
    if case == "file":
        out.write_text("not a folder")
        return out, "exists and is not a directory"
    if case == "proc":
        return f"/proc/dynadnn-{verb}", f"/proc/dynadnn-{verb}: cannot write"
    if case == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
        return tmp_path / "ro" / verb, "cannot write"
    out.mkdir()
    (out / (result if case == "result" else "notes.txt")).write_text("{}")
    return out, f"already holds a run ({result})" if case == "result" else "already holds other files; pass --overwrite"


@pytest.mark.parametrize("case", ["file", "proc", "readonly", "other files", "result"])
def test_run_refuses_an_unusable_out_before_serving(refused, no_family, tmp_path, case):
    out, named = unusable_out(tmp_path, case, "run")
    t = time.perf_counter()
    refused(RUN + ["--duration", "1", "--out", out], named)
    assert time.perf_counter() - t < 10 and not psutil.Process().children(recursive=True)


@pytest.mark.parametrize("extra, named", [
    *SHARED_CASES,
    (["--members", "1"], "--members"),
    (["--members", "0"], "--members"),
    (["--runs", "0"], "--runs"),
    (["--runs", "-3"], "--runs"),
    (["--switch-only", "--runs", "0"], "--runs"),
])
def test_demo_refuses_bad_options_before_part_1(refused, tmp_path, monkeypatch, extra, named):
    import dynadnn.cli.switching as switching

    monkeypatch.setattr(switching, "load_source", lambda: pytest.fail("part 1 ran before the input was refused"))
    refused(["demo", "--out", tmp_path / "demo"] + extra, named)


@pytest.mark.parametrize("case", ["file", "other files", "proc"])
def test_demo_refuses_an_unusable_out_before_part_1(refused, tmp_path, monkeypatch, case):
    import dynadnn.cli.switching as switching

    monkeypatch.setattr(switching, "load_source", lambda: pytest.fail("part 1 ran before --out was refused"))
    out, named = unusable_out(tmp_path, case, "demo")
    refused(["demo", "--out", out], named)


def test_an_earlier_demo_may_be_replaced_but_not_other_folders(tmp_path):
    from dynadnn.cli.demo import previous_demo

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "demo.json").write_text("{}")
    (tmp_path / "new" / "run").mkdir()
    (tmp_path / "old" / "family").mkdir(parents=True)
    (tmp_path / "old" / "run").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "family").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert previous_demo(tmp_path / "new") and previous_demo(tmp_path / "old")
    assert not previous_demo(tmp_path / "mine") and not previous_demo(tmp_path / "absent")


def test_ctrl_c_during_run_leaves_no_output_and_exits_130(tmp_path, monkeypatch):
    import dynadnn.runtime.experiment as experiment

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "setup", interrupted)
    assert main(RUN + ["--duration", "1", "--out", str(tmp_path / "run")]) == 130
    assert list(tmp_path.iterdir()) == []  # neither --out nor a .partial folder beside it


def test_a_second_run_into_a_result_folder_is_refused_and_overwrite_replaces_it_whole(refused, tmp_path):
    """Real (short) runs: the first result stays as it was; --overwrite replaces the folder, never a mix."""
    out = tmp_path / "run"
    argv = RUN + ["--policy", "static", "--duration", "0.5", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "summary.json").read_text())
    assert first["policies"]["static"]["frames"] > 0 and sorted(p.name for p in out.iterdir()) == [
        "summary.json", "trace.json", "trace.png"]
    refused(argv, "already holds a run (summary.json); pass --overwrite")
    (out / "stale.txt").write_text("from before")
    assert main(RUN + ["--policy", "static,dofa", "--duration", "0.5", "--overwrite", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "trace-dofa.json", "trace-dofa.png", "trace-static.json",
                                                    "trace-static.png", "trace.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left beside it


@pytest.mark.slow
def test_ctrl_c_during_a_real_run_stops_competitors_removes_the_partial_output_and_exits_130(tmp_path, cli_env):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    # Ctrl-C as a terminal sends it: a test run in the background (`make test &`) inherits SIGINT ignored,
    # and a Python started that way never turns it into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "dynadnn", *RUN, "--duration", "12", "--out", str(out)],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    me, seen, deadline = psutil.Process(proc.pid), [], time.time() + 120
    try:
        while not seen and time.time() < deadline and proc.poll() is None:  # wait for the first competitor
            seen = [c.pid for c in me.children(recursive=True)]
            time.sleep(0.1)
        assert seen, "no competitor was started"
        assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # the run writes beside --out
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, proc.stderr.read()
    finally:
        proc.kill()
    assert "interrupted" in proc.stderr.read()
    assert not [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert list(tmp_path.iterdir()) == []  # neither --out nor its temporary folder
