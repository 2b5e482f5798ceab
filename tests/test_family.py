"""The family artifact: round trip, atomic files, clear refusals; the plot and search CLIs end to end."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from dynadnn.cli import main
from dynadnn.family import Family, FamilyError, FamilyWarning, Member, sha256_file
from dynadnn.space import SearchSpace, load_space
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


@pytest.mark.slow
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


# --- self-describing families: the space travels in family.json -------------------------------------
def custom_space():
    """A space that is no preset: tiny's skeleton with other widths, choices and resolutions."""
    doc = TINY.to_dict()
    doc.update(name="custom_test", ks_choices=[3, 5], e_choices=[2, 4], d_choices=[1, 2], resolutions=[24, 32])
    doc["stages"][1]["width"] = 40
    return SearchSpace.from_dict(doc, "test")


def no_preset_lookup(monkeypatch):
    def refuse(name):
        raise AssertionError(f"looked up preset {name!r}")

    for module in ("dynadnn.space", "dynadnn.provenance", "dynadnn.family"):
        monkeypatch.setattr(f"{module}.load_space", refuse)


def test_custom_space_family_round_trips_without_any_preset(tmp_path, monkeypatch):
    space = custom_space()
    torch.manual_seed(1)
    net = SuperNet(space).eval()
    ckpt = save_checkpoint(net, tmp_path / "custom.safetensors")
    x = torch.randn(8, 1, 32, 32)
    members = [Member(a, net.calibrate_bn(a, [torch.nn.functional.interpolate(x, size=a.r)]), 70.0 + i,
                      latency_predicted_ms={"cpu:1t": 1.0 + i}) for i, a in enumerate([space.min_arch(), space.max_arch()])]
    fam = Family(space.name, ["cpu:1t"], members, str(ckpt), sha256_file(ckpt), search_space=space)
    fam.save(tmp_path / "f")
    doc = json.loads((tmp_path / "f" / "family.json").read_text())
    assert doc["space"] == space.to_dict() and doc["preset"] == "custom_test"
    assert [m["bn_tensors"] for m in doc["members"]] == [len(m.bn_stats) for m in members]
    # without search_space, a custom family finds its space in its checkpoint's metadata
    assert Family(space.name, ["cpu:1t"], members, str(ckpt)).space == space
    no_preset_lookup(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Family.load(tmp_path / "f", checkpoint=ckpt)  # same space and file: no warning
    assert again.space == space and again.preset == "custom_test"
    assert [m.arch for m in again.members] == [m.arch for m in members]
    assert again.members[1].latency("cpu:1t") == 2.0 and again.checkpoint_sha256 == sha256_file(ckpt)
    for a, b in zip(again.members, members):
        assert a.bn_stats.keys() == b.bn_stats.keys() and all(torch.equal(a.bn_stats[k], b.bn_stats[k]) for k in a.bn_stats)


def test_family_used_with_a_checkpoint_or_space_of_another_space_is_refused(tmp_path, net):
    space = custom_space()
    supernet = SuperNet(space).eval()
    ckpt = save_checkpoint(supernet, tmp_path / "custom.safetensors")
    arch = space.min_arch()
    members = [Member(arch, supernet.calibrate_bn(arch, [torch.randn(4, 1, arch.r, arch.r)]),
                      latency_predicted_ms={"cpu:1t": 1.0})]
    Family(space.name, ["cpu:1t"], members, str(ckpt), sha256_file(ckpt), search_space=space).save(tmp_path / "f")
    tiny_ckpt = save_checkpoint(net, tmp_path / "tiny.safetensors")
    with pytest.raises(FamilyError) as err:
        Family.load(tmp_path / "f", checkpoint=tiny_ckpt)
    assert "different search space than checkpoint" in str(err.value) and "'stages[1].width': 40 vs 32" in str(err.value)
    assert "\n" not in str(err.value)
    renamed = SearchSpace.from_dict({**TINY.to_dict(), "name": "custom_test"}, "test")  # same name, other shape
    with pytest.raises(FamilyError, match=r"space field 'stages\[1\].width': 40 vs 32"):
        Family.load(tmp_path / "f", space=renamed)
    with pytest.raises(FamilyError, match="family is for preset 'custom_test', not 'tiny'"):
        Family.load(tmp_path / "f", space=TINY)
    with pytest.raises(FamilyError, match="not a shipped preset"):
        Family("nowhere", [], members).space


def test_old_family_json_without_space_loads_by_preset_name(net, tmp_path):
    """A family.json as versions before the embedded space wrote it (written by hand here)."""
    from safetensors.torch import save_file

    arch = TINY.min_arch(24)
    stats = net.calibrate_bn(arch, [torch.randn(8, 1, 24, 24)])
    (tmp_path / "old").mkdir()
    save_file({f"m0/{k}": v.contiguous() for k, v in stats.items()}, str(tmp_path / "old" / "family.safetensors"))
    doc = {"format": "dynadnn.family/1", "preset": "tiny", "contexts": ["cpu:1t"],
           "checkpoint": {"path": "model.safetensors", "sha256": ""}, "provenance": {},
           "members": [{"arch": arch.to_dict(), "top1_predicted": 80.0, "top1_measured": None,
                        "latency_predicted_ms": {"cpu:1t": 3.0}, "latency_ms": {}, "macs": 1, "params": 2}],
           "archive": []}
    (tmp_path / "old" / "family.json").write_text(json.dumps(doc))
    fam = Family.load(tmp_path / "old", preset="tiny")
    assert fam.space == TINY and fam.members[0].arch == arch and fam.members[0].bn_stats.keys() == stats.keys()
    doc["preset"] = "custom_test"  # an old file of a custom space cannot be read back: say so
    (tmp_path / "old" / "family.json").write_text(json.dumps(doc))
    with pytest.raises(FamilyError, match="field 'preset': unknown preset 'custom_test'.*no 'space' description"):
        Family.load(tmp_path / "old")


def test_weights_and_json_listing_other_members_are_refused(net, tmp_path):
    from safetensors.torch import load_file, save_file

    make_family(net).save(tmp_path / "f")
    jpath, wpath = tmp_path / "f" / "family.json", tmp_path / "f" / "family.safetensors"
    doc = json.loads(jpath.read_text())
    del doc["weights_sha256"]  # as in a hand-edited file: the member check still catches it
    jpath.write_text(json.dumps(doc))
    tensors = load_file(str(wpath))
    save_file({k: v for k, v in tensors.items() if not k.startswith("m1/")}, str(wpath))
    with pytest.raises(FamilyError) as err:
        Family.load(tmp_path / "f")
    assert "0 BN tensor(s) for member m1" in str(err.value) and "do not match" in str(err.value)
    assert "\n" not in str(err.value)
    save_file({**tensors, "m3/blocks.0.dw_bn.running_mean": torch.zeros(4)}, str(wpath))
    with pytest.raises(FamilyError, match="tensor 'm3/blocks.0.dw_bn.running_mean' belongs to no member"):
        Family.load(tmp_path / "f")
    first = next(k for k in tensors if k.startswith("m0/"))
    save_file({k: v for k, v in tensors.items() if k != first}, str(wpath))
    with pytest.raises(FamilyError, match="member m0, but family.json lists that member with"):
        Family.load(tmp_path / "f")


def test_pick_spread_takes_non_positive_predicted_latencies_without_nan():
    from dynadnn.family import pick_spread

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.log of a negative latency warned and compared NaNs
        assert [int(i) for i in pick_spread([-0.1, 0.5, 2.0, 4.0], [1, 2, 3, 4], 3)] == [0, 1, 3]
