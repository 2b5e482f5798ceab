"""The family artifact: round trip, atomic files, clear refusals; the plot and search CLIs end to end."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from dynadnn.cli import main
from dynadnn.family import Family, FamilyError, FamilyWarning, Member, sha256_file
from dynadnn.space import load_space
from dynadnn.supernet import SuperNet
from dynadnn.supernet.checkpoint import save_checkpoint

TINY = load_space("tiny")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SuperNet(TINY).eval()


def make_family(net, ckpt_sha: str = "") -> Family:
    rng = random.Random(0)
    members = []
    x = torch.randn(16, 1, 32, 32)
    for i, arch in enumerate([TINY.min_arch(24), TINY.sample(rng, 28), TINY.max_arch(32)]):
        stats = net.calibrate_bn(arch, [torch.nn.functional.interpolate(x, size=arch.r)])
        members.append(Member(arch, stats, 80.0 + i, 79.0 + i, {"cpu:1t": 4.0 + 3 * i},
                              {"cpu:1t": {"median": 4.1 + 3 * i, "p95": 4.5 + 3 * i}}, 1000 * (i + 1), 500 * (i + 1)))
    archive = [{"arch": m.arch.to_dict(), "top1_predicted": m.top1_predicted,
                "latency_predicted_ms": dict(m.latency_predicted_ms)} for m in members]
    return Family("tiny", ["cpu:1t"], members, "model.safetensors", ckpt_sha, archive, {"test": True})


def test_round_trip_keeps_archs_metrics_and_bn_stats(net, tmp_path):
    fam = make_family(net)
    fam.save(tmp_path / "f")
    again = Family.load(tmp_path / "f", preset="tiny")
    assert [m.arch for m in again.members] == [m.arch for m in fam.members]
    assert again.members[2].latency_ms["cpu:1t"]["p95"] == pytest.approx(10.5)
    assert again.members[1].top1 == 80.0 and again.members[1].macs == 2000
    for a, b in zip(again.members, fam.members):
        assert a.bn_stats.keys() == b.bn_stats.keys()
        for k in a.bn_stats:
            assert torch.equal(a.bn_stats[k], b.bn_stats[k])
    from safetensors.torch import load_file

    assert all(k.startswith(("m0/", "m1/", "m2/")) for k in load_file(str(tmp_path / "f" / "family.safetensors")))
    # a member runs with its own statistics
    plan = net.plan(again.members[0].arch, again.members[0].bn_stats, fold_bn=True)
    assert plan.arch == again.members[0].arch
    assert not [p.name for p in (tmp_path / "f").iterdir() if p.name.endswith(".tmp")]


def test_bad_version_other_preset_and_mismatched_weights_are_refused(net, tmp_path):
    fam = make_family(net)
    fam.save(tmp_path / "f")
    with pytest.raises(FamilyError, match="family is for preset 'tiny', not 'ofa_mbv3_w1.2'"):
        Family.load(tmp_path / "f", preset="ofa_mbv3_w1.2")
    doc = json.loads((tmp_path / "f" / "family.json").read_text())
    doc["format"] = "dynadnn.family/99"
    (tmp_path / "f" / "family.json").write_text(json.dumps(doc))
    with pytest.raises(FamilyError, match="field 'format' is 'dynadnn.family/99'"):
        Family.load(tmp_path / "f")
    fam.save(tmp_path / "g")
    other = make_family(net)
    other.members = other.members[:1]
    other.save(tmp_path / "h")
    (tmp_path / "g" / "family.safetensors").write_bytes((tmp_path / "h" / "family.safetensors").read_bytes())
    with pytest.raises(FamilyError, match="does not match family.json"):
        Family.load(tmp_path / "g")
    with pytest.raises(FamilyError, match="not a family directory"):
        Family.load(tmp_path / "nothing")


def test_checkpoint_hash_mismatch_warns(net, tmp_path):
    ckpt = save_checkpoint(net, tmp_path / "a.safetensors")
    make_family(net, sha256_file(ckpt)).save(tmp_path / "f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Family.load(tmp_path / "f", checkpoint=ckpt)  # same file: no warning
    other = SuperNet(TINY)
    ckpt2 = save_checkpoint(other, tmp_path / "b.safetensors")
    with pytest.warns(FamilyWarning, match="sha256"):
        Family.load(tmp_path / "f", checkpoint=ckpt2)


def test_plot_front_cli_writes_png_and_bad_family_is_one_line_error(net, tmp_path, capsys):
    make_family(net).save(tmp_path / "f")
    assert main(["plot-front", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot-front", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynadnn: error:") and "\n" not in err


def test_profile_and_search_cli_build_a_measured_family(net, tmp_path):
    """End to end on a small budget: profile one resolution, train a predictor on a few measured members,
    search, calibrate and measure the picks, write and reload the family."""
    ckpt = save_checkpoint(net, tmp_path / "tiny.safetensors", {"dataset": "digits"})
    assert main(["profile", str(ckpt), "--threads", "1", "--cuda", "no", "--out", str(tmp_path / "prof"),
                 "--runs", "3", "--warmup", "1", "--members", "10", "--member-runs", "2", "--resolutions", "20"]) == 0
    table = json.loads((tmp_path / "prof" / "cpu_1t" / "table.json").read_text())
    assert table["correction"] and table["report"]["members"] == 10 and "load_before" in table
    assert table["backend"] == "ort"  # what the runtime serves on the CPU
    assert main(["search", str(ckpt), "--contexts", "cpu:1t", "--profile", str(tmp_path / "prof"), "--members", "3",
                 "--samples", "12", "--calib-images", "100", "--eval-images", "100", "--out", str(tmp_path / "fam")]) == 0
    fam = Family.load(tmp_path / "fam", preset="tiny", checkpoint=ckpt)
    assert 1 <= len(fam.members) <= 3 and fam.archive
    lat = [m.latency("cpu:1t") for m in fam.members]
    top1 = [m.top1 for m in fam.members]
    assert lat == sorted(lat) and top1 == sorted(top1)  # dominated members were dropped
    assert all(m.bn_stats and m.latency_ms["cpu:1t"]["p95"] >= m.latency_ms["cpu:1t"]["median"] for m in fam.members)
    assert all(m.latency_ms["cpu:1t"]["backend"] in ("torch", "ort") for m in fam.members)  # as the runtime serves it
    summary = json.loads((tmp_path / "fam" / "search.json").read_text())
    assert summary["candidates"] >= 3 and summary["members"] == len(fam.members)
    assert summary["candidates"] == len(fam.members) + summary["dropped"] + summary["thinned"]


@pytest.mark.parametrize("flag, value, named", [("--eval-images", "0", "--eval-images"),
                                                ("--samples", "3", "--samples")])
def test_search_cli_refuses_bad_measurement_sizes_before_any_work(net, tmp_path, capsys, flag, value, named):
    ckpt = save_checkpoint(net, tmp_path / "tiny.safetensors", {"dataset": "digits"})
    assert main(["search", str(ckpt), "--contexts", "cpu:1t", flag, value, "--out", str(tmp_path / "fam")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynadnn: error:") and named in err and "\n" not in err
    assert not (tmp_path / "fam").exists()


def test_profile_cli_refuses_onnx_runtime_on_cuda_before_any_work(net, tmp_path, capsys):
    ckpt = save_checkpoint(net, tmp_path / "tiny.safetensors", {"dataset": "digits"})
    assert main(["profile", str(ckpt), "--threads", "1", "--cuda", "yes", "--backend", "ort",
                 "--out", str(tmp_path / "prof")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynadnn: error: --backend ort") and "\n" not in err
    assert not (tmp_path / "prof").exists()
