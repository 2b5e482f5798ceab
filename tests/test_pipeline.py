"""The whole path through the public API and through the CLI, on a space that is no preset.

A custom-space checkpoint must go profile -> search -> family -> run: every artifact on the way carries the
space, so nothing looks a preset up by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import dynadnn as dd
from dynadnn.cli import main


def custom_space() -> dd.SearchSpace:
    doc = dd.load_space("tiny").to_dict()
    doc.update(name="custom_pipeline", ks_choices=[3, 5], e_choices=[2, 4], d_choices=[1, 2], resolutions=[16, 24])
    doc["stages"][1]["width"] = 40
    return dd.SearchSpace.from_dict(doc, "test")


def test_the_facade_exports_the_whole_path():
    missing = [name for name in dd.__all__ if not hasattr(dd, name)]
    assert not missing
    for name in ("load_checkpoint", "profile_device", "fit_accuracy_predictor", "choose_family", "Family",
                 "RuntimeManager", "run_experiment"):
        assert name in dd.__all__
    with pytest.raises(AttributeError):
        dd.no_such_name  # noqa: B018


def test_import_dynadnn_is_light():
    code = "import sys, dynadnn; print(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "0"


def test_create_model_gives_a_preset_or_a_checkpoint(tmp_path):
    net = dd.create_model("tiny", seed=3)
    assert net.space.name == "tiny"
    path = dd.save_checkpoint(net, tmp_path / "t.safetensors")
    again = dd.create_model(str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_custom_space_goes_through_profile_search_family_run(tmp_path):
    torch.manual_seed(0)
    space = custom_space()
    assert space.name not in dd.list_presets()
    ckpt = dd.save_checkpoint(dd.SuperNet(space), tmp_path / "custom.safetensors", {"dataset": "digits"})
    assert main(["profile", str(ckpt), "--threads", "1", "--cuda", "no", "--out", str(tmp_path / "prof"),
                 "--runs", "3", "--warmup", "1", "--members", "10", "--member-runs", "2", "--resolutions", "16"]) == 0
    assert main(["search", str(ckpt), "--contexts", "cpu:1t", "--profile", str(tmp_path / "prof"), "--members", "3",
                 "--samples", "10", "--calib-images", "100", "--eval-images", "100", "--out", str(tmp_path / "fam")]) == 0
    doc = json.loads((tmp_path / "fam" / "family.json").read_text())
    assert doc["preset"] == "custom_pipeline" and doc["space"] == space.to_dict()
    fam = dd.Family.load(tmp_path / "fam", checkpoint=ckpt)
    assert fam.space == space and len(fam.members) >= 1
    assert main(["run", str(tmp_path / "fam"), "--dataset", "digits", "--threads", "1", "--backends", "ort",
                 "--policy", "static", "--scenario", "contention", "--duration", "1", "--deadline-ms", "50",
                 "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policies"]["static"]["frames"] > 10


@pytest.mark.slow
def test_runtime_manager_serves_an_in_memory_family(tmp_path):
    """No file in between: choose a family in memory and serve it on the same super-network."""
    torch.manual_seed(0)
    net = dd.create_model("tiny")
    data = dd.load_dataset("digits", image_size=max(net.space.resolutions), in_channels=net.space.in_channels)
    tables = dd.profile_device(net, ["cpu:1t"], resolutions=[20], runs=3, warmup=1, members=10, member_runs=2)
    predictor, fit = dd.fit_accuracy_predictor(net, data, samples=10, calib_images=100, eval_images=100)
    choice = dd.choose_family(net, predictor, tables, data, members=2, candidates=2, calib_images=100)
    family = choice.family
    assert family.checkpoint == "" and family.space == net.space and len(family.members) >= 1
    with dd.RuntimeManager(family, "static", dd.Targets(deadline_ms=100.0), supernet=net, threads=[1],
                           backends=["ort"]) as manager:
        assert manager.source.supernet is net
        x, _ = next(data.test_batches(4))
        assert manager.predict(x[:1]).shape == (1, 10)
