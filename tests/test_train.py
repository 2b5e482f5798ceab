"""Sandwich training: the loss falls, checkpoints load, a killed run resumes exactly, DDP equals one process."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynadnn.errors import CheckpointError, UserError
from dynadnn.space import SearchSpace, load_space
from dynadnn.supernet import load_checkpoint, read_checkpoint_meta, save_checkpoint
from dynadnn.supernet import SuperNet
from dynadnn.train import Recipe, lr_at, lr_by_time, param_groups, step_members, train


def small(**kw) -> Recipe:
    base = dict(data="digits", batch_size=16, n_random=0, lr=0.05, warmup_epochs=0.05, steps=12)
    base.update(kw)
    return Recipe(**base)


def other_preset_checkpoint(path: Path) -> Path:
    """A checkpoint of a copy of the tiny preset named 'tiny-other' (what a run of preset 'tiny' must refuse)."""
    other = load_space("tiny").to_dict()
    other["name"] = "tiny-other"
    return save_checkpoint(SuperNet(SearchSpace.from_dict(other)), path, {"steps": 3})


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3
    assert lr_by_time(1000, 1.0, 10, 0.1) == pytest.approx(0.0) and lr_by_time(0, 0.05, 1000, 0.1) > 0.09


def test_members_are_max_min_then_random_and_seeded_by_step():
    space = load_space("tiny")
    m = step_members(space, 0, 5, 2)
    assert m[0] == space.max_arch() and m[1] == space.min_arch() and len(m) == 4
    assert m == step_members(space, 0, 5, 2) and m != step_members(space, 0, 6, 2)
    assert step_members(space, 0, 5, 2, sandwich=False) == [space.max_arch()]
    shared = step_members(space, 0, 5, 2, shared_resolution=True)
    assert len({a.r for a in shared}) == 1 and shared[0] == space.max_arch(shared[0].r)
    assert shared[1] == space.min_arch(shared[0].r) and shared[2:] == m[2:]  # same random draws


def test_no_weight_decay_on_bn_and_biases():
    net = SuperNet(load_space("tiny"))
    decay, no_decay = param_groups(net, 1e-4)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(p.ndim in (2, 4) for p in decay["params"])
    assert any("bn" in names[id(p)] for p in no_decay["params"])
    assert all("kernel_transforms" not in names[id(p)] for p in decay["params"])


def test_short_run_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path, digits):
    losses = []
    res = train(small(steps=30, lr=0.1), tmp_path, data=digits, progress=False, checkpoint_every=10,
                on_step=lambda s, l: losses.append(l), command="dynadnn train --test")
    assert res.steps == 30
    assert sum(losses[-5:]) / 5 < 0.92 * sum(losses[:5]) / 5, losses
    net, meta = load_checkpoint(tmp_path / "final.safetensors")
    assert meta["preset"] == "tiny" and meta["steps"] == 30 and meta["data"] == "digits"
    assert meta["recipe"]["batch_size"] == 16 and meta["command"] == "dynadnn train --test"
    assert meta["metrics"]["top1_max"] > 30  # well above chance (10 %) after 30 small steps
    assert meta["norm"]["mean"] == digits.mean


def test_training_is_deterministic_given_the_seed(tmp_path, digits):
    a = train(small(steps=3), tmp_path / "a", data=digits, progress=False, evaluate_at_end=False)
    b = train(small(steps=3), tmp_path / "b", data=digits, progress=False, evaluate_at_end=False)
    wa, wb = load_file(str(a.checkpoint)), load_file(str(b.checkpoint))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_non_writable_out_is_a_one_line_error(tmp_path, digits):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="file is not a directory"):
        train(small(steps=1), blocker / "sub", data=digits, progress=False)
    with pytest.raises(UserError, match="exists and is not a directory"):
        train(small(steps=1), blocker, data=digits, progress=False)
    assert blocker.read_text() == "x"


def test_resume_refuses_a_checkpoint_of_another_preset(tmp_path, digits):
    other_preset_checkpoint(tmp_path / "last.safetensors")
    with pytest.raises(CheckpointError, match="preset 'tiny-other'"):
        train(small(), tmp_path, data=digits, resume=True, progress=False)


def test_init_starts_from_a_checkpoint_and_refuses_another_preset(tmp_path, digits):
    torch.manual_seed(123)
    start = SuperNet(load_space("tiny"))
    path = save_checkpoint(start, tmp_path / "start.safetensors", {"steps": 0})
    res = train(small(steps=1, lr=1e-9, warmup_epochs=0.0, init=str(path)), tmp_path / "ft", data=digits,
                progress=False, evaluate_at_end=False)
    tuned, _ = load_checkpoint(res.checkpoint)
    ref = dict(start.named_parameters())
    assert max(float((p.detach() - ref[k].detach()).abs().max()) for k, p in tuned.named_parameters()) < 1e-5
    assert read_checkpoint_meta(res.checkpoint)["recipe"]["init"] == str(path)
    other = other_preset_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="preset 'tiny-other'"):
        train(small(init=str(other)), tmp_path / "ft2", data=digits, progress=False)


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynadnn", "train", "--data", "digits", "--steps", "16", "--batch-size", "16", "--no-eval",
            "--n-random", "0", "--lr", "0.05", "--warmup-epochs", "0.05", "--threads", "1", "--no-progress",
            "--checkpoint-every", "4", "--out", str(out), *extra]


@pytest.mark.slow
def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(tmp_path, cli_env):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it has written a checkpoint past step 4
        if ckpt.is_file() and read_checkpoint_meta(ckpt).get("steps", 0) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint_meta(ckpt)["steps"]
    assert 4 <= killed_at < 16
    resumed = subprocess.run(_cli(out, "--resume"), env=cli_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {killed_at}" in resumed.stdout
    straight = subprocess.run(_cli(tmp_path / "straight"), env=cli_env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = load_file(str(out / "final.safetensors")), load_file(str(tmp_path / "straight" / "final.safetensors"))
    assert read_checkpoint_meta(out / "final.safetensors")["steps"] == 16
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"resumed run differs from an uninterrupted one by {worst}"


def test_cli_reports_bad_budget_in_one_line(tmp_path, cli_env):
    r = subprocess.run([sys.executable, "-m", "dynadnn", "train", "--data", "digits", "--out", str(tmp_path)],
                       env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--minutes" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dynadnn", "train", "--data", "cifar", "--steps", "1", "--out",
                        str(tmp_path)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown dataset 'cifar'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_ddp_two_ranks_agree_and_match_one_process(tmp_path, cli_env):
    """2 gloo ranks with 8 images each == 1 process with 16 images in 2 micro-batches: BN normalises each
    rank's (micro-)batch on its own and DDP averages the gradients, exactly what micro-batching computes.
    Dropout and augmentation are off (their random draws are per-process)."""
    common = ["--data", "digits", "--steps", "3", "--batch-size", "16", "--n-random", "1", "--no-eval", "--lr", "0.05",
              "--warmup-epochs", "0.05", "--threads", "1", "--no-progress", "--no-augment", "--dropout", "0",
              "--checkpoint-every", "0"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + random.randint(0, 400)), "-m", "dynadnn", "train", *common, "--out",
                          str(tmp_path / "ddp")], env=cli_env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "dynadnn", "train", *common, "--micro-batches", "2", "--out",
                          str(tmp_path / "one")], env=cli_env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    meta = read_checkpoint_meta(tmp_path / "ddp" / "final.safetensors")
    assert meta["world_size"] == 2 and meta["metrics"]["ranks_identical"] == 1.0
    a, b = load_file(str(tmp_path / "ddp" / "final.safetensors")), load_file(str(tmp_path / "one" / "final.safetensors"))
    params = dict(SuperNet(load_space("tiny")).named_parameters())
    worst = max(float((a[k] - b[k]).abs().max()) for k in params)
    moved = max(float((b[k] - p.detach()).abs().max()) for k, p in params.items() if "kernel" not in k)
    assert moved > 1e-3  # the weights did train
    assert worst < 1e-4, f"DDP and single-process weights differ by {worst}"
