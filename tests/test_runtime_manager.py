"""The RuntimeManager with real members (a random-initialised tiny super-network: real latency, chance
accuracy), real ONNX Runtime sessions and the real /proc/stat monitor; faults injected at each seam."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dynadnn.data import resize_batch
from dynadnn.errors import UserError
from dynadnn.runtime.manager import InferenceFailed, RuntimeManager
from dynadnn.runtime.members import hand_picked_archs, load_family
from dynadnn.runtime.options import Targets
from dynadnn.platform.local import LocalPlatform
from dynadnn.space import load_space


@pytest.fixture(scope="module")
def source():
    return load_family("random:tiny", dataset="digits", k=3, calib_images=200)


def make(source, **kw):
    kw.setdefault("backends", ("ort",))
    kw.setdefault("threads", (1,))
    kw.setdefault("profile_frames", 10)
    return RuntimeManager(source, kw.pop("policy", "feedback"), kw.pop("targets", Targets(deadline_ms=50.0)), **kw)


X = torch.randn(1, 1, 28, 28)


def test_hand_picked_members_grow_monotonically():
    archs = hand_picked_archs(load_space("tiny"), 5)
    assert archs[0] == load_space("tiny").canonical(load_space("tiny").min_arch())
    assert archs[-1] == load_space("tiny").canonical(load_space("tiny").max_arch())
    assert [a.r for a in archs] == sorted(a.r for a in archs)


def test_manager_serves_every_member_and_records_each_inference(source):
    with make(source) as mgr:
        assert len(mgr.options) == 3 and all(o.backend == "ort" for o in mgr.options)
        for i in range(len(mgr.options)):
            mgr.policy.force(i)
            mgr.current = i
            y = mgr.predict(X)
            assert y.shape == (1, 10)
            m = mgr.options[i].member
            ref = source.supernet.extract(source.archs[m], source.bn_stats[m]).fuse()(resize_batch(X, source.archs[m].r))
            assert (y - ref).abs().max() <= 2e-3 * ref.abs().max()  # the ONNX export computes the member
        assert len(mgr.records) == 3
        assert {e["kind"] for e in mgr.events} >= {"profiled", "ready"}


def test_faster_backend_is_chosen_per_member_and_thread_count(source):
    with make(source, backends=("torch", "ort"), threads=(1,)) as mgr:
        meas = [e for e in mgr.events if e["kind"] == "profiled"][0]["measurements"]
        for opt in mgr.options:
            mine = [m for m in meas if m["member"] == opt.member and m["threads"] == opt.threads]
            assert opt.backend == min(mine, key=lambda m: m["p50_ms"])["backend"]


def test_targets_can_be_changed_from_another_thread(source):
    with make(source, targets=Targets(deadline_ms=100.0)) as mgr:
        t = threading.Thread(target=mgr.set_targets, kwargs={"deadline_ms": 0.01})
        t.start()
        t.join()
        for _ in range(20):
            mgr.predict(X)
        assert mgr.targets.deadline_ms == 0.01
        assert mgr.records.deadline_ms[-1] == 0.01
        # an impossible deadline: the manager ends on the fastest option and keeps serving
        assert mgr.current == min(range(len(mgr.options)), key=lambda i: mgr.options[i].p50_ms)
        assert any(e["kind"] == "targets" for e in mgr.events)
        assert not any(e["kind"] == "target_ignored" for e in mgr.events)
        mgr.set_targets(power_w=5.0)  # no power model here: said so in the log, not silently dropped
        assert [e["field"] for e in mgr.events if e["kind"] == "target_ignored"] == ["power_w"]


def test_an_inference_that_raises_falls_back_to_the_safe_member(source):
    with make(source, policy="static") as mgr:
        assert mgr.current != mgr.safe

        def broken(x):
            raise RuntimeError("simulated inference failure")

        mgr.runners[mgr.current] = broken
        y = mgr.predict(X)
        assert y.shape == (1, 10) and mgr.current == mgr.safe
        kinds = [e["kind"] for e in mgr.events]
        assert "inference_failed" in kinds and "fallback" in kinds
        mgr.predict(X)  # and it keeps serving
        mgr.runners[mgr.safe] = broken
        with pytest.raises(InferenceFailed, match="safe option"):
            mgr.predict(X)


class RefusingPlatform(LocalPlatform):
    def set_affinity(self, cpus):
        raise PermissionError("affinity refused (simulated)")

    def lock_memory(self):
        raise OSError(12, "mlockall refused (simulated)")


class CountingPlatform(LocalPlatform):
    locks = unlocks = 0

    def lock_memory(self):
        self.locks += 1

    def unlock_memory(self):
        self.unlocks += 1


def test_memory_is_locked_while_serving_and_a_refusal_is_logged(source):
    plat = CountingPlatform()
    with make(source, policy="static", platform=plat, lock_memory=True) as mgr:
        assert mgr.memory_locked and plat.locks == 1
    assert plat.unlocks == 1  # close() gives the pages back
    with make(source, policy="static", platform=RefusingPlatform(), lock_memory=True) as mgr:
        assert not mgr.memory_locked and mgr.predict(X).shape == (1, 10)
        assert any(e["kind"] == "actuator_failed" and e.get("knob") == "lock_memory" for e in mgr.events)


def test_an_actuator_that_raises_is_logged_and_serving_goes_on(source):
    with make(source, policy="static", platform=RefusingPlatform(), pin_affinity=True) as mgr:
        assert mgr.current == mgr.safe and not mgr.pin_affinity
        assert any(e["kind"] == "actuator_failed" and "affinity refused" in e["error"] for e in mgr.events)
        assert mgr.predict(X).shape == (1, 10)


def test_a_failing_monitor_read_is_logged_and_distrusted(source):
    calls = {"n": 0}

    def failing_reader():
        calls["n"] += 1
        raise OSError("simulated /proc/stat read failure")

    with make(source, system_reader=failing_reader, system_period_s=0.01) as mgr:
        deadline = time.time() + 2
        while calls["n"] < 3 and time.time() < deadline:
            mgr.predict(X)
            time.sleep(0.01)
        assert calls["n"] >= 3
        assert not mgr.system.sample.ok
        failed = [e for e in mgr.events if e["kind"] == "monitor_failed"]
        assert len(failed) == 1 and "simulated" in failed[0]["error"]  # once per streak, not per read
        assert mgr.predict(X).shape == (1, 10)


def test_close_leaks_no_threads_or_sessions(source):
    before = {t.ident for t in threading.enumerate()}
    mgr = make(source)
    assert mgr.system.running
    mgr.predict(X)
    mgr.close()
    mgr.close()  # idempotent
    assert not mgr.system.running
    assert {t.ident for t in threading.enumerate()} <= before
    assert all(getattr(r, "session", None) is None for r in mgr.runners)


def test_decision_time_is_recorded_per_inference(source):
    with make(source) as mgr:
        for _ in range(50):
            mgr.predict(X)
        d = mgr.decision_us()
        assert len(d) == 50 and (d > 0).all()


def test_hand_picked_family_from_a_checkpoint_is_cached_as_a_family_directory(tmp_path, monkeypatch):
    from dynadnn.family import Family
    from dynadnn.supernet import SuperNet
    from dynadnn.supernet.checkpoint import save_checkpoint

    monkeypatch.setenv("DYNADNN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    ck = save_checkpoint(SuperNet(load_space("tiny")), tmp_path / "net.safetensors", {"preset": "tiny"})
    first = load_family(str(ck), dataset="digits", k=2, calib_images=100)
    dirs = list((tmp_path / "cache" / "families").iterdir())
    assert len(dirs) == 1
    fam = Family.load(dirs[0])
    assert [m.arch for m in fam.members] == first.archs
    again = load_family(str(ck), dataset="digits", k=2)
    assert again.origin.get("cache") == str(dirs[0]) and again.top1 == pytest.approx(first.top1)
    for a, b in zip(first.bn_stats, again.bn_stats):
        assert all(torch.equal(a[key], b[key]) for key in a)
    # and that directory is a family like the search writes: it loads as one
    as_family = load_family(str(dirs[0]), dataset="digits")
    assert as_family.origin["kind"] == "family" and as_family.archs == first.archs
    assert as_family.top1 == pytest.approx(first.top1)


@pytest.mark.parametrize("spoil, msg", [
    (lambda s: s.bn_stats.__setitem__(1, {}), "member 1: no BN statistics"),
    (lambda s: s.bn_stats[0].pop(next(iter(s.bn_stats[0]))), "member 0: BN statistics lack '.*'"),
    (lambda s: s.bn_stats[0].__setitem__("final_bn.running_var", torch.full_like(s.bn_stats[0]["final_bn.running_var"],
                                                                                   float("nan"))), "non-finite"),
    (lambda s: s.bn_stats[0].__setitem__("final_bn.running_mean", torch.zeros(3)), r"expected \d+ floating-point numbers, got \(3,\)"),
    (lambda s: s.top1.__setitem__(0, float("nan")), "member 0: top1: expected a finite number"),
    (lambda s: s.top1.pop(), "entries in top1"),
])
def test_a_member_that_cannot_be_served_faithfully_is_refused(source, spoil, msg):
    """Members built in Python (not read from a family file) are checked too: none is served uncalibrated."""
    import copy

    spoiled = copy.copy(source)
    spoiled.bn_stats = [dict(b) for b in source.bn_stats]
    spoiled.top1 = list(source.top1)
    spoil(spoiled)
    with pytest.raises(UserError, match=msg):
        make(spoiled)


@pytest.mark.parametrize("kw, msg", [
    ({"threads": (999,)}, "threads: 999 threads asked for"),
    ({"threads": (0,)}, "threads: expected an integer >= 1"),
    ({"threads": ()}, "threads: expected a non-empty list"),
    ({"backends": ("tensorflow",)}, "backends: expected one of torch, ort"),
    ({"backends": ()}, "backends: expected a non-empty list"),
    ({"profile_frames": 0}, "profile_frames"),
    ({"system_period_s": float("nan")}, "system_period_s: expected a finite number"),
    ({"targets": Targets(deadline_ms=float("nan"))}, "deadline_ms: expected a finite number"),
    ({"targets": Targets(min_top1=150)}, "min_top1: expected a number >= 0 and <= 100"),
    ({"targets": Targets(fps=float("inf"))}, "fps: expected a finite number"),
])
def test_manager_arguments_are_checked_before_any_member_is_built(source, kw, msg):
    with pytest.raises(UserError, match=msg):
        make(source, **kw)


@pytest.mark.parametrize("kw, msg", [
    ({"duration_s": float("nan")}, "duration: expected a finite number"),
    ({"fps": -1}, "fps: expected a number > 0"),
    ({"threads": [999]}, "threads: 999 threads asked for"),
    ({"members": 1}, "members: expected an integer in 2..64"),
    ({"calibrate_s": float("inf")}, "calibrate_s: expected a finite number"),
    ({"dataset": "mnist"}, "dataset: unknown dataset 'mnist'"),
])
def test_run_experiment_checks_its_arguments_before_loading(kw, msg, monkeypatch):
    """Python callers get the CLI's errors (named as run_experiment's parameters), before anything loads."""
    import dynadnn.runtime.experiment as experiment

    monkeypatch.setattr(experiment, "setup", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(UserError, match=msg):
        experiment.run_experiment("random:tiny", "contention", ["static"], **{"dataset": "digits", **kw})
