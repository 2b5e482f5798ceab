"""Platform sensors and actuators: /proc/stat parsing and the cpufreq sysfs backend against a fake tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynadnn.platform.cpufreq import CpuFreq, CpuFreqError
from dynadnn.platform.local import CpuTimes, cpu_count, cpu_load_between, parse_proc_stat, read_proc_stat

HZ = os.sysconf("SC_CLK_TCK")


def test_parse_proc_stat_counts_idle_and_iowait_as_idle():
    busy, total = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert busy == pytest.approx(150 / HZ) and total == pytest.approx(1000 / HZ)


def test_parse_proc_stat_refuses_a_file_without_the_cpu_line():
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        parse_proc_stat("intr 1 2 3\n")


def test_read_proc_stat_from_a_fake_file(tmp_path):
    f = tmp_path / "stat"
    f.write_text("cpu  10 0 10 80 0 0 0 0 0 0\n")
    s = read_proc_stat(f)
    assert s.total == pytest.approx(100 / HZ) and s.own >= 0


def test_cpu_load_between_separates_our_cpu_from_others():
    a = CpuTimes(wall=0.0, busy=0.0, total=0.0, own=0.0)
    # 1 s of wall time on 2 CPUs: 2 CPU-seconds total, 1.5 busy; we used 0.5 of them
    b = CpuTimes(wall=1.0, busy=1.5, total=2.0, own=0.5)
    busy, others = cpu_load_between(a, b, 2)
    assert busy == pytest.approx(1.5) and others == pytest.approx(1.0)


def test_real_proc_stat_reads():
    s = read_proc_stat()
    assert s.total > 0 and cpu_count() >= 1


def make_sysfs(root: Path, cpus=(0, 1), governors="performance powersave userspace", freqs="800000 1200000 1800000"):
    for c in cpus:
        d = root / f"cpu{c}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text("performance\n")
        (d / "scaling_cur_freq").write_text("1800000\n")
        (d / "scaling_min_freq").write_text("800000\n")
        (d / "scaling_max_freq").write_text("1800000\n")
        if freqs is not None:
            (d / "scaling_available_frequencies").write_text(freqs + "\n")
        (d / "scaling_available_governors").write_text(governors + "\n")
        (d / "scaling_setspeed").write_text("<unsupported>\n")
    (root / "cpufreq").mkdir()  # not a cpu directory: ignored
    return root


def test_cpufreq_reads_state(tmp_path):
    cf = CpuFreq(make_sysfs(tmp_path))
    assert cf.available() and cf.cpus() == [0, 1]
    st = cf.state(1)
    assert st.governor == "performance" and st.cur_khz == 1800000
    assert st.available_khz == (800000, 1200000, 1800000) and "userspace" in st.available_governors


def test_cpufreq_sets_nearest_lower_frequency_through_userspace_governor(tmp_path):
    cf = CpuFreq(make_sysfs(tmp_path))
    assert cf.set_frequency(0, 1500000) == 1200000
    d = tmp_path / "cpu0" / "cpufreq"
    assert (d / "scaling_governor").read_text() == "userspace"
    assert (d / "scaling_setspeed").read_text() == "1200000"


def test_cpufreq_clamps_max_freq_without_userspace_governor(tmp_path):
    cf = CpuFreq(make_sysfs(tmp_path, governors="performance schedutil"))
    assert cf.set_frequency(0, 1200000) == 1200000
    assert (tmp_path / "cpu0" / "cpufreq" / "scaling_max_freq").read_text() == "1200000"


def test_cpufreq_errors_name_the_file(tmp_path):
    cf = CpuFreq(make_sysfs(tmp_path))
    with pytest.raises(CpuFreqError, match="below the lowest available frequency"):
        cf.set_frequency(0, 100)
    with pytest.raises(CpuFreqError, match="cpu7/cpufreq: no cpufreq directory"):
        cf.state(7)
    with pytest.raises(CpuFreqError, match="governor 'turbo' not offered"):
        cf.set_governor(0, "turbo")
    (tmp_path / "cpu1" / "cpufreq" / "scaling_cur_freq").write_text("fast\n")
    with pytest.raises(CpuFreqError, match="scaling_cur_freq: expected an integer"):
        cf.state(1)


def test_cpufreq_write_refused_is_a_one_line_error(tmp_path):
    cf = CpuFreq(make_sysfs(tmp_path))
    target = tmp_path / "cpu0" / "cpufreq" / "scaling_setspeed"
    target.unlink()
    target.mkdir()  # writing to a directory fails like a refused sysfs write
    with pytest.raises(CpuFreqError, match="scaling_setspeed: cannot write"):
        cf.set_frequency(0, 800000)


def test_cpufreq_absent_tree_is_not_available(tmp_path):
    assert not CpuFreq(tmp_path).available()


def live_affinities() -> list[list[int]]:
    """Every thread's CPU set, leaving out threads that end while they are listed (other tests' pools)."""
    from dynadnn.platform.local import thread_ids

    out = []
    for t in thread_ids():
        try:
            out.append(sorted(os.sched_getaffinity(t)))
        except ProcessLookupError:
            pass
    return out


def test_process_affinity_moves_every_thread_and_restores_them():
    import threading

    from dynadnn.platform.local import ProcessAffinity

    aff = ProcessAffinity()
    if len(aff.initial) < 2:
        pytest.skip("one CPU: nothing to shrink")
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    try:
        got = aff.limit(1)
        assert got == aff.initial[:1]
        assert all(a == got for a in live_affinities())  # the worker thread too
        assert aff.limit(99) == aff.initial  # more than the process has: all of it
    finally:
        problems = aff.restore()
        stop.set()
        worker.join()
    assert not problems
    assert all(a == aff.initial for a in live_affinities())
    assert aff.restore() == []  # nothing to undo twice


def test_llc_size_from_a_fake_cache_tree(tmp_path):
    from dynadnn.runtime.corunners import LLC_FALLBACK_MB, llc_mb

    for i, (level, size) in enumerate([(1, "48K"), (2, "1024K"), (3, "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    assert llc_mb(tmp_path) == 32.0
    assert llc_mb(tmp_path / "absent") == LLC_FALLBACK_MB
