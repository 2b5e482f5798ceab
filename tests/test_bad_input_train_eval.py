"""Bad input to `dynadnn train` and `dynadnn eval`: one line naming the option or file and what was expected,
exit 2, no traceback, no file touched (the `refused` fixture). Then what the output folder promises: a run is
never replaced without --overwrite, an overwrite replaces it whole, Ctrl-C at any step leaves a checkpoint that
--resume continues, a training folder stands for its checkpoint, and eval writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dynadnn.cli import main
from dynadnn.errors import UserError
from dynadnn.space import load_space
from dynadnn.supernet import SuperNet, read_checkpoint_meta, save_checkpoint
from dynadnn.train import Recipe, train
from dynadnn.validate import available_cpus

from conftest import snapshot

TRAIN = ["train", "--data", "digits", "--steps", "2", "--batch-size", "16", "--n-random", "0", "--no-eval",
         "--no-progress"]
LONG = "x" * 5000


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by the cases (outside each test's tmp_path): a checkpoint on digits, training folders,
    image folders (one class; all corrupt) and checkpoints whose metadata has the wrong types."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    net = SuperNet(load_space("tiny"))
    ckpt = save_checkpoint(net, root / "net.safetensors", {"data": "digits", "steps": 0})
    save_checkpoint(net, root / "run" / "final.safetensors", {"data": "digits", "steps": 0})
    save_checkpoint(net, root / "interrupted" / "last.safetensors", {"data": "digits", "steps": 0})
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("no checkpoint here")
    rng = np.random.default_rng(0)
    (root / "one" / "a").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "one" / "a" / f"{i}.png")
    for c in range(10):
        (root / "corrupt" / str(c)).mkdir(parents=True)
        for i in range(12):
            (root / "corrupt" / str(c) / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    good = read_checkpoint_meta(ckpt)
    for name, change in {"space5": {"space": 5}, "stepsx": {"steps": "x"}, "preset5": {"preset": 5, "space": None},
                         "steps-neg": {"steps": -4}, "recipe-list": {"recipe": [1]}}.items():
        doc = {k: v for k, v in {**good, **change}.items() if v is not None}
        save_file(tensors, str(root / f"{name}.safetensors"), metadata={"dynadnn": json.dumps(doc)})
    (root / "text.safetensors").write_text("not a checkpoint")
    return {"root": root, "ckpt": ckpt}


def _cuda() -> bool:
    return torch.cuda.is_available()


TRAIN_CASES = {
    "threads 0": (["--threads", "0"], "--threads"),
    "threads -1": (["--threads", "-1"], "--threads"),
    "threads 999": (["--threads", "999"], "--threads: 999 threads"),
    "steps -1": (["--steps", "-1"], "--steps"),
    "steps 0": (["--steps", "0"], "--steps"),
    "epochs -1": (["--epochs", "-1"], "--epochs"),
    "minutes -1": (["--minutes", "-1"], "--minutes"),
    "minutes nan": (["--minutes", "nan"], "--minutes: expected a finite number"),
    "minutes inf": (["--minutes", "inf"], "--minutes: expected a finite number"),
    "lr nan": (["--lr", "nan"], "--lr: expected a finite number"),
    "lr negative": (["--lr", "-0.1"], "--lr"),
    "weight decay nan": (["--weight-decay", "nan"], "--weight-decay"),
    "warmup -1": (["--warmup-epochs", "-1"], "--warmup-epochs"),
    "label smoothing 5": (["--label-smoothing", "5"], "--label-smoothing"),
    "dropout 2": (["--dropout", "2"], "--dropout"),
    "batch size 0": (["--batch-size", "0"], "--batch-size"),
    "batch size beyond the data": (["--batch-size", "100000"], "--batch-size: 100000 is more than"),
    "micro-batches 0": (["--micro-batches", "0"], "--micro-batches"),
    "micro-batches not dividing": (["--micro-batches", "3"], "--batch-size"),
    "n-random -1": (["--n-random", "-1"], "--n-random"),
    "checkpoint-every -1": (["--checkpoint-every", "-1"], "--checkpoint-every"),
    "seed -1": (["--seed", "-1"], "--seed"),
    "device banana": (["--device", "banana"], "--device: expected cpu, cuda"),
    "device cuda:7": (["--device", "cuda:7"], "--device: 'cuda:7'"),
    "unknown data": (["--data", "cifar"], "--data: unknown dataset 'cifar'"),
    "imagefolder without a path": (["--data", "imagefolder:"], "--data"),
    "unknown preset": (["--preset", "nope"], "nope"),
    "missing init": (["--init", "{root}/absent.safetensors"], "absent.safetensors: no such checkpoint"),
    "unknown zoo model as init": (["--init", "zoo:nope"], "zoo:nope: no such shipped model"),
    "a folder that is not a run as init": (["--init", "{root}/not-a-run"], "is a directory, not a checkpoint"),
    "missing image folder": (["--data", "imagefolder:{root}/absent"], "no such directory"),
    "one class for ten": (["--data", "imagefolder:{root}/one"], "1 classes"),
    "all images corrupt": (["--data", "imagefolder:{root}/corrupt"], "could be decoded"),
    "image folder path too long": (["--data", "imagefolder:{root}/" + LONG], "File name too long"),
    "resume without a run": (["--resume"], "--resume: no checkpoint"),
    "resume and overwrite": (["--resume", "--overwrite"], "--overwrite"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses(case, refused, files, tmp_path):
    extra, named = TRAIN_CASES[case]
    extra = [a.replace("{root}", str(files["root"])) for a in extra]
    refused(TRAIN + ["--out", tmp_path / "out"] + extra, named)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(_cuda(), reason="this machine has a GPU")
def test_train_refuses_cuda_without_a_gpu(refused, tmp_path):
    refused(TRAIN + ["--out", tmp_path / "out", "--device", "cuda"], "--device: 'cuda' asked for")


@pytest.mark.parametrize("case", ["a file", "below a file", "path too long", "under /proc", "a finished run",
                                  "an interrupted run", "other files", "empty"])
def test_train_refuses_the_output_folder(case, refused, tmp_path):
    (tmp_path / "file").write_text("x")
    run = tmp_path / "run"
    save_checkpoint(SuperNet(load_space("tiny")), run / "final.safetensors", {"steps": 1})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    save_checkpoint(SuperNet(load_space("tiny")), tmp_path / "cut" / "last.safetensors", {"steps": 1})
    out, named = {"a file": (tmp_path / "file", "exists and is not a directory"),
                  "below a file": (tmp_path / "file" / "sub", "is not a directory"),
                  "path too long": (tmp_path / LONG, "File name too long"),
                  "under /proc": (Path("/proc/dynadnn-test-out"), "--out"),
                  "a finished run": (run, "already holds a training run"),
                  "an interrupted run": (tmp_path / "cut", "pass --resume to continue it, --overwrite"),
                  "empty": ("", "--out: expected a folder"),
                  "other files": (tmp_path / "busy", "already holds other files")}[case]
    refused(TRAIN + ["--out", out], named)


EVAL_CASES = {
    "missing checkpoint": (["{root}/absent.safetensors"], "no such checkpoint file"),
    "a folder that is not a run": (["{root}/not-a-run"], "is a directory, not a checkpoint"),
    "path too long": (["{root}/" + LONG], "File name too long"),
    "not a checkpoint": (["{root}/text.safetensors"], "not a checkpoint"),
    "unknown zoo model": (["zoo:nope"], "zoo:nope: no such shipped model (available: zoo:animals"),
    "zoo name too long": (["zoo:" + LONG], "no such shipped model"),
    "metadata space 5": (["{root}/space5.safetensors"], "field 'space': expected an object"),
    "metadata steps text": (["{root}/stepsx.safetensors"], "field 'steps'"),
    "metadata steps negative": (["{root}/steps-neg.safetensors"], "field 'steps'"),
    "metadata preset 5": (["{root}/preset5.safetensors"], "field 'preset'"),
    "metadata recipe a list": (["{root}/recipe-list.safetensors"], "field 'recipe'"),
    "subnets random:-3": (["{ckpt}", "--subnets", "random:-3"], "--subnets: 'random:-3'"),
    "subnets garbage": (["{ckpt}", "--subnets", "banana"], "--subnets: 'banana'"),
    "subnets random:x": (["{ckpt}", "--subnets", "max,random:x"], "--subnets: 'random:x'"),
    "subnets empty": (["{ckpt}", "--subnets", ","], "--subnets: empty"),
    "subnets too many": (["{ckpt}", "--subnets", "random:99999999"], "--subnets"),
    "calib images 0": (["{ckpt}", "--calib-images", "0"], "--calib-images"),
    "calib images -5": (["{ckpt}", "--calib-images", "-5"], "--calib-images"),
    "threads 0": (["{ckpt}", "--threads", "0"], "--threads"),
    "threads 999": (["{ckpt}", "--threads", "999"], "--threads"),
    "seed -1": (["{ckpt}", "--seed", "-1"], "--seed"),
    "unknown data": (["{ckpt}", "--data", "cifar"], "--data: unknown dataset"),
    "one class for ten": (["{ckpt}", "--data", "imagefolder:{root}/one"], "1 classes"),
    "all images corrupt": (["{ckpt}", "--data", "imagefolder:{root}/corrupt"], "could be decoded"),
    "unknown preset": (["{ckpt}", "--preset", "nope"], "nope"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_refuses(case, refused, files):
    extra, named = EVAL_CASES[case]
    argv = [a.replace("{root}", str(files["root"])).replace("{ckpt}", str(files["ckpt"])) for a in extra]
    refused(["eval", "--subnets", "max", "--calib-images", "50"] + argv, named)


# --- the output folder and Ctrl-C ----------------------------------------------------------------
def _small(**kw) -> Recipe:
    return Recipe(**{**dict(data="digits", batch_size=16, n_random=0, lr=0.05, warmup_epochs=0.05, steps=6), **kw})


def _interrupt_at(step: int):
    def hook(s: int, loss: float) -> None:
        if s == step:
            raise KeyboardInterrupt

    return hook


def test_ctrl_c_in_the_first_steps_leaves_a_checkpoint_that_resume_continues(tmp_path, digits):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_small(), out, data=digits, progress=False, evaluate_at_end=False, checkpoint_every=100,
              on_step=_interrupt_at(2))
    assert read_checkpoint_meta(out / "last.safetensors")["steps"] == 2
    assert not (out / "final.safetensors").exists()
    res = train(_small(), out, resume=True, data=digits, progress=False, evaluate_at_end=False)
    assert res.steps == 6 and read_checkpoint_meta(out / "final.safetensors")["steps"] == 6
    straight = train(_small(), tmp_path / "straight", data=digits, progress=False, evaluate_at_end=False)
    a, b = load_file(str(out / "final.safetensors")), load_file(str(straight.checkpoint))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"the resumed run differs from an uninterrupted one by {worst}"


def test_ctrl_c_through_the_cli_exits_130_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    import dynadnn.train as train_module

    real, calls = train_module._sandwich_step, []

    def step(run, x, y, lr):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(run, x, y, lr)

    monkeypatch.setattr(train_module, "_sandwich_step", step)
    out = tmp_path / "run"
    assert main(TRAIN + ["--steps", "6", "--out", str(out)]) == 130
    assert read_checkpoint_meta(out / "last.safetensors")["steps"] == 2
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "_sandwich_step", real)
    assert main(TRAIN + ["--steps", "6", "--out", str(out), "--resume"]) == 0
    assert read_checkpoint_meta(out / "final.safetensors")["steps"] == 6


def test_ctrl_c_before_the_first_step_leaves_nothing(tmp_path, digits, monkeypatch):
    import dynadnn.train as train_module

    def step(run, x, y, lr):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_sandwich_step", step)
    with pytest.raises(KeyboardInterrupt):
        train(_small(), tmp_path / "run", data=digits, progress=False, evaluate_at_end=False)
    assert list(tmp_path.iterdir()) == []


def _old_run(out: Path) -> None:
    save_checkpoint(SuperNet(load_space("tiny")), out / "final.safetensors", {"steps": 99, "command": "old"})
    (out / "stale.txt").write_text("from the old run")


def test_overwrite_replaces_the_folder_whole(tmp_path, digits):
    out = tmp_path / "run"
    _old_run(out)
    with pytest.raises(UserError, match="already holds a training run"):
        train(_small(steps=2), out, data=digits, progress=False, evaluate_at_end=False)
    train(_small(steps=2), out, overwrite=True, data=digits, progress=False, evaluate_at_end=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["final.safetensors", "final.train-state.safetensors", "last.safetensors",
                     "last.train-state.safetensors"]
    assert read_checkpoint_meta(out / "final.safetensors")["steps"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or old folder left beside it


def test_an_overwrite_interrupted_before_its_first_checkpoint_keeps_the_old_run(tmp_path, digits, monkeypatch):
    import dynadnn.train as train_module

    out = tmp_path / "run"
    _old_run(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(train_module, "_sandwich_step", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(_small(), out, overwrite=True, data=digits, progress=False, evaluate_at_end=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_an_overwrite_interrupted_after_some_steps_holds_only_the_new_run(tmp_path, digits):
    out = tmp_path / "run"
    _old_run(out)
    with pytest.raises(KeyboardInterrupt):
        train(_small(), out, overwrite=True, data=digits, progress=False, evaluate_at_end=False,
              on_step=_interrupt_at(1))
    assert sorted(p.name for p in out.iterdir()) == ["last.safetensors", "last.train-state.safetensors"]
    assert read_checkpoint_meta(out / "last.safetensors")["steps"] == 1


def test_an_epoch_without_a_usable_batch_is_an_error_not_an_endless_loop(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(digits, "train_batches", lambda *a, **k: iter(()))
    with pytest.raises(UserError, match="no usable batch"):
        train(_small(steps=None, minutes=1.0), tmp_path / "run", data=digits, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("folder", ["run", "interrupted"])
def test_eval_accepts_a_training_folder_and_writes_nothing(folder, files, tmp_path, capsys):
    before = snapshot(files["root"])
    code = main(["eval", str(files["root"] / folder), "--subnets", "max", "--calib-images", "50", "--json"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["name"] for m in doc["members"]] == ["max"] and doc["data"] == "digits"
    assert snapshot(files["root"]) == before and list(tmp_path.iterdir()) == []


def test_threads_within_the_cpus_are_accepted(tmp_path):
    assert main(TRAIN + ["--steps", "1", "--threads", str(available_cpus()), "--out", str(tmp_path / "o")]) == 0


def test_overwrite_refuses_the_current_directory(tmp_path, digits, monkeypatch):
    _old_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")
    for out in (".", tmp_path):
        with pytest.raises(UserError, match="^out: .* holds the current directory"):
            train(_small(), out, overwrite=True, data=digits, progress=False)
    assert (tmp_path / "run" / "stale.txt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_refused_before_any_work(refused, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        refused(TRAIN + ["--out", tmp_path / "ro" / "run"], "is not writable")
    finally:
        (tmp_path / "ro").chmod(0o700)
