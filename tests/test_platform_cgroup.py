"""The CPU-bandwidth cap through a child cgroup: on fake v1 and v2 trees (tmp_path), refused trees (skipped,
never a crash), and this machine's real tree where it is writable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynadnn.platform.cgroup import DEFAULT_ROOT, CapUnavailable, CpuCap, own_group

PID = 4242


def fake_v1(root: Path, writable: bool = True) -> Path:
    cpu = root / "cpu"
    cpu.mkdir()
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cgroup.procs"):
        (cpu / name).write_text("")
    if writable:  # a real cgroupfs makes the control files of a new group itself; a fake one needs them made
        child = cpu / f"dynadnn-cap-{PID}"
        child.mkdir()
        for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cgroup.procs"):
            (child / name).write_text("")
    return cpu


def test_own_group_reads_v1_and_v2_lines():
    text = "12:pids:/\n4:cpu,cpuacct:/user/app\n0::/user.slice/x\n"
    assert own_group(text, 1) == "/user/app"
    assert own_group(text, 2) == "/user.slice/x"
    with pytest.raises(CapUnavailable, match="no cgroup v1 cpu entry"):
        own_group("0::/\n", 1)


def test_v1_cap_writes_quota_and_moves_the_process_then_moves_it_back(tmp_path):
    cpu = fake_v1(tmp_path)
    cap = CpuCap(tmp_path, pid=PID, proc_cgroup="3:cpuset:/\n1:cpu:/\n")
    quota = cap.apply(0.25)
    child = cpu / f"dynadnn-cap-{PID}"
    assert quota == round(0.25 * os.cpu_count() * 100_000)
    assert (child / "cpu.cfs_quota_us").read_text() == str(quota)
    assert (child / "cpu.cfs_period_us").read_text() == "100000"
    assert (child / "cgroup.procs").read_text() == str(PID) and cap.active
    assert cap.apply(0.5) == round(0.5 * os.cpu_count() * 100_000)  # re-applied: same group, new quota
    problems = cap.release()
    assert (cpu / "cgroup.procs").read_text() == str(PID) and not cap.active
    # a fake group keeps its files, so rmdir fails: reported, not raised (a real cgroupfs removes it)
    assert len(problems) == 1 and "dynadnn-cap" in problems[0]


def test_v2_cap_writes_cpu_max_in_a_child_of_the_own_group(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    home = tmp_path / "app.slice"
    child = home / f"dynadnn-cap-{PID}"
    child.mkdir(parents=True)
    for d in (home, child):
        (d / "cgroup.procs").write_text("")
    (child / "cpu.max").write_text("")
    cap = CpuCap(tmp_path, pid=PID, proc_cgroup="0::/app.slice\n")
    quota = cap.apply(0.1)
    assert (child / "cpu.max").read_text() == f"{quota} 100000"
    cap.release()
    assert (home / "cgroup.procs").read_text() == str(PID)


def test_a_tree_that_is_not_writable_is_refused_and_left_as_it_was(tmp_path):
    """mkdir in a directory that is not a cgroup gives a plain folder without control files: refused,
    the folder removed again, the process never moved (we run as root: file modes would not stop us)."""
    cpu = fake_v1(tmp_path, writable=False)
    cap = CpuCap(tmp_path, pid=PID, proc_cgroup="1:cpu:/\n")
    with pytest.raises(CapUnavailable, match="not a control file"):
        cap.apply(0.3)
    assert not cap.active and not (cpu / f"dynadnn-cap-{PID}").exists()
    assert (cpu / "cgroup.procs").read_text() == ""


def test_no_cpu_controller_is_refused(tmp_path):
    with pytest.raises(CapUnavailable, match="no cpu controller"):
        CpuCap(tmp_path).apply(0.5)
    with pytest.raises(ValueError, match="cpu_quota"):
        CpuCap(tmp_path).apply(1.5)


def test_real_cap_on_this_machine_where_writable():
    cap = CpuCap(DEFAULT_ROOT)
    try:
        cap.apply(0.5)
    except CapUnavailable as exc:
        pytest.skip(f"no writable cgroup here: {exc}")
    try:
        assert f"dynadnn-cap-{os.getpid()}" in Path("/proc/self/cgroup").read_text()
    finally:
        problems = cap.release()
    assert not problems
    assert "dynadnn-cap" not in Path("/proc/self/cgroup").read_text()
    assert not list(Path(DEFAULT_ROOT).glob(f"*/dynadnn-cap-{os.getpid()}"))
