"""Accuracy predictor: OFA's checkpoint loads exactly, bad checkpoints are refused, and it trains."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynadnn.errors import UserError
from dynadnn.predict.accuracy import AccuracyPredictor, kendall_tau, reference_predictor
from dynadnn.predict.genes import GeneCoding
from dynadnn.space import SearchSpace, load_space

W12 = load_space("ofa_mbv3_w1.2")


@pytest.fixture(scope="module")
def ofa_pred(reference):
    return reference_predictor(reference, W12)


def test_predictions_equal_ofa_tutorial_predictor(ofa_pred, reference):
    sys.path.insert(0, str(Path(__file__).parent))
    from ofa_peer import import_ofa

    try:
        import_ofa()
        from ofa.tutorial.accuracy_predictor import AccuracyPredictor as Peer
    except ImportError:
        pytest.skip("ofa package not importable")
    peer = Peer(pretrained=False, device="cpu")
    peer.model.load_state_dict(torch.load(reference / "dynamic-ofa/ofa_mbv3_acc_predictor.pth", map_location="cpu",
                                          weights_only=True))
    rng = random.Random(0)
    archs = [W12.sample(rng, rng.choice(W12.resolutions)) for _ in range(64)]
    ours = ofa_pred.predict(archs)
    theirs = peer.predict_accuracy([a.to_ofa() for a in archs])[:, 0].numpy() * 100
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    coding = GeneCoding(W12)
    np.testing.assert_allclose(ofa_pred.predict_genes(coding.encode(archs), coding), ours, atol=1e-9)


def test_predicted_accuracy_grows_from_smallest_to_largest(ofa_pred):
    assert ofa_pred.predict(W12.min_arch(160))[0] < ofa_pred.predict(W12.max_arch(224))[0]
    assert 70 < ofa_pred.predict(W12.min_arch(160))[0] < ofa_pred.predict(W12.max_arch(224))[0] < 90


def test_wrong_shape_checkpoint_is_one_line_error(tmp_path):
    state = {k: v for k, v in AccuracyPredictor(load_space("tiny")).model.state_dict().items()}
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        AccuracyPredictor.from_ofa_checkpoint(path, W12)
    assert "'0.weight' has shape" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        AccuracyPredictor.from_ofa_checkpoint(tmp_path / "junk.pth", W12)


def test_fit_learns_a_real_accuracy_function_and_round_trips(ofa_pred, tmp_path):
    rng = random.Random(3)
    archs = [W12.sample(rng, rng.choice((160, 176, 192, 208, 224))) for _ in range(300)]
    target = ofa_pred.predict(archs)  # a real (OFA-trained) accuracy landscape as the ground truth
    torch.manual_seed(0)
    pred, report = AccuracyPredictor.fit(W12, archs, target, hidden=(64, 64), epochs=50, folds=2, seed=0, kind="mlp")
    assert report.n_test == 300 and report.n_train == 150 and report.kendall_tau > 0.6 and report.rmse < 1.0
    pred.save(tmp_path / "p")
    again = AccuracyPredictor.load(tmp_path / "p", W12)
    np.testing.assert_allclose(again.predict(archs[:10]), pred.predict(archs[:10]), atol=1e-6)
    with pytest.raises(UserError, match="preset 'ofa_mbv3_w1.2', not 'tiny'"):
        AccuracyPredictor.load(tmp_path / "p", load_space("tiny"))


def test_ridge_recovers_an_additive_landscape_under_noise_and_auto_picks_it(tmp_path):
    """Top-1 made of one cost per choice plus measurement noise (what BN-calibrated evaluations of a small
    model look like): ridge ranks held-out members well, and `auto` prefers it to an MLP on 120 pairs."""
    space = load_space("tiny")
    rng = random.Random(5)
    archs = [space.sample(rng, rng.choice(space.resolutions)) for _ in range(120)]
    x = space.encode_many(archs)
    weights = np.random.default_rng(0).normal(0, 0.15, x.shape[1])
    truth = 96.0 + x @ weights
    noisy = truth + np.random.default_rng(1).normal(0, 0.1, len(truth))
    pred, report = AccuracyPredictor.fit(space, archs, noisy, hidden=(32,), epochs=30, kind="auto", seed=0)
    assert report.model.startswith("ridge") and set(report.candidates) >= {"ridge(alpha=1)", "mlp(32)"}
    assert report.kendall_tau > 0.75 and report.kendall_tau == pytest.approx(max(report.candidates.values()), abs=1e-4)
    fresh = [space.sample(rng, rng.choice(space.resolutions)) for _ in range(50)]
    assert kendall_tau(pred.predict(fresh), 96.0 + space.encode_many(fresh) @ weights) > 0.8
    pred.save(tmp_path / "r")
    again = AccuracyPredictor.load(tmp_path / "r", space)
    assert again.hidden == () and again.meta["fit"]["model"] == report.model
    np.testing.assert_allclose(again.predict(fresh), pred.predict(fresh), atol=1e-4)
    with pytest.raises(UserError, match="kind 'svm'"):
        AccuracyPredictor.fit(space, archs, noisy, kind="svm")


# --- self-describing predictors: the space and the checkpoint travel in predictor.json ------------------
def custom_space():
    """A space that is no preset: tiny's skeleton with other widths, choices and resolutions."""
    doc = load_space("tiny").to_dict()
    doc.update(name="custom_test", ks_choices=[3, 5], e_choices=[2, 4], d_choices=[1, 2], resolutions=[24, 32])
    doc["stages"][1]["width"] = 40
    return SearchSpace.from_dict(doc, "test")


def test_custom_space_predictor_round_trips_and_refuses_other_checkpoints(tmp_path, monkeypatch):
    from dynadnn.family import sha256_file
    from dynadnn.supernet import SuperNet
    from dynadnn.supernet.checkpoint import save_checkpoint

    space = custom_space()
    ckpt = save_checkpoint(SuperNet(space), tmp_path / "custom.safetensors")
    other = save_checkpoint(SuperNet(space), tmp_path / "other.safetensors")  # same space, other weights
    tiny = save_checkpoint(SuperNet(load_space("tiny")), tmp_path / "tiny.safetensors")
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(20)]
    pred, _ = AccuracyPredictor.fit(space, archs, [90.0 + 0.1 * sum(a.e) for a in archs], kind="ridge", folds=2)
    pred.checkpoint_sha256 = sha256_file(ckpt)
    pred.save(tmp_path / "p")
    doc = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert doc["space"] == space.to_dict() and doc["checkpoint_sha256"] == sha256_file(ckpt)

    def refuse(name):
        raise AssertionError(f"looked up preset {name!r}")

    monkeypatch.setattr("dynadnn.provenance.load_space", refuse)
    monkeypatch.setattr("dynadnn.space.load_space", refuse)
    again = AccuracyPredictor.load(tmp_path / "p", checkpoint=ckpt)
    assert again.space == space and again.checkpoint_sha256 == pred.checkpoint_sha256
    assert "space" not in again.meta and again.meta["fit"]["model"].startswith("ridge")
    np.testing.assert_allclose(again.predict(archs), pred.predict(archs), atol=1e-5)
    assert AccuracyPredictor.load(tmp_path / "p", space).space == space
    with pytest.raises(UserError, match="was built from checkpoint sha256 .* train a predictor"):
        AccuracyPredictor.load(tmp_path / "p", checkpoint=other)
    with pytest.raises(UserError) as err:
        again.check_checkpoint(tiny)
    assert r"space field 'stages[1].width': 40 vs 32" in str(err.value) and "\n" not in str(err.value)


def test_old_predictor_json_without_space_loads_by_preset_name(tmp_path):
    """A predictor.json as versions before the embedded space wrote it (written by hand here)."""
    from safetensors.torch import save_file

    tiny = load_space("tiny")
    model = AccuracyPredictor(tiny, hidden=()).model
    (tmp_path / "old").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old" / "predictor.safetensors"))
    (tmp_path / "old" / "predictor.json").write_text(json.dumps(
        {"format": "dynadnn.accuracy_predictor/1", "preset": "tiny", "encoding_size": tiny.encoding_size,
         "hidden": [], "output": "top-1 fraction (x100 = percent)", "origin": "dynadnn"}))
    old = AccuracyPredictor.load(tmp_path / "old")
    assert old.space == tiny and old.checkpoint_sha256 == "" and old.meta == {"origin": "dynadnn"}
    assert AccuracyPredictor.load(tmp_path / "old", tiny).hidden == ()
    with pytest.raises(UserError, match="predictor is for preset 'tiny', not 'custom_test'"):
        AccuracyPredictor.load(tmp_path / "old", custom_space())
