"""Bad input to `profile`, `search` and `plot-front`, and bad latency tables, predictors and families: each is
refused up front with one line naming the option or the file and field (exit 2, nothing written, nothing
lost). Plus: a result folder is never replaced without --overwrite, an overwrite leaves no stale file, and an
interrupted profile or search leaves the earlier result as it was."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from dynadnn.cli import main
from dynadnn.errors import UserError
from dynadnn.family import Family, Member, sha256_file
from dynadnn.predict.accuracy import AccuracyPredictor
from dynadnn.predict.latency import Correction, LatencyTable, space_layers
from dynadnn.space import load_space
from dynadnn.supernet import SuperNet
from dynadnn.supernet.checkpoint import save_checkpoint

TINY = load_space("tiny")
CPUS = len(os.sched_getaffinity(0))


# --- good artifacts, built once (fast: random weights, synthetic tables) ------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    net = SuperNet(TINY).eval()
    ckpt = save_checkpoint(net, root / "tiny.safetensors", {"dataset": "digits"})
    rng = random.Random(0)
    entries = {r: {layer.key: {"count": 3, "mean": rng.uniform(0.01, 0.5), "std": 0.001}
                   for sl in [space_layers(TINY, r)]
                   for layer in list(sl.fixed) + [x for per_k in sl.blocks for per_e in per_k for x in per_e]}
               for r in TINY.resolutions}
    LatencyTable(TINY, "cpu:1t", entries, "test", Correction(1.1, 0.01, 0.2)).save(root / "prof" / "cpu_1t")
    AccuracyPredictor(TINY, hidden=(8,)).save(root / "pred")
    make_family(net).save(root / "fam")
    return {"root": root, "net": net, "ckpt": ckpt, "prof": root / "prof", "pred": root / "pred", "fam": root / "fam"}


def make_family(net) -> Family:
    members = []
    x = torch.randn(8, 1, 32, 32)
    for i, arch in enumerate([TINY.min_arch(24), TINY.sample(random.Random(0), 28), TINY.max_arch(32)]):
        stats = net.calibrate_bn(arch, [torch.nn.functional.interpolate(x, size=arch.r)])
        members.append(Member(arch, stats, 80.0 + i, 79.0 + i, {"cpu:1t": 4.0 + 3 * i},
                              {"cpu:1t": {"median": 4.1 + 3 * i, "p95": 4.5 + 3 * i}}, 1000 * (i + 1), 500 * (i + 1)))
    archive = [{"arch": m.arch.to_dict(), "top1_predicted": m.top1_predicted,
                "latency_predicted_ms": dict(m.latency_predicted_ms)} for m in members]
    return Family("tiny", ["cpu:1t"], members, "model.safetensors", "", archive, {"test": True})


def copy(good, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(good[name], dst)
    return dst


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# --- options --------------------------------------------------------------------------------------------
PROFILE_OPTIONS = [
    (["--threads", "0"], "--threads"), (["--threads", "-1"], "--threads"), (["--threads", "999"], "--threads"),
    (["--threads", f"{CPUS + 1}"], "--threads"), (["--threads", "1,x"], "--threads"), (["--runs", "0"], "--runs"),
    (["--runs", "-3"], "--runs"), (["--runs", "1000000000"], "--runs"), (["--warmup", "-1"], "--warmup"),
    (["--member-runs", "0"], "--member-runs"), (["--members", "3"], "--members"), (["--members", "-1"], "--members"),
    (["--members", "100000000"], "--members"), (["--resolutions", "999"], "--resolutions"),
    (["--resolutions", "20,abc"], "--resolutions"),
]
if not torch.cuda.is_available():
    PROFILE_OPTIONS.append((["--cuda", "yes"], "--cuda"))


@pytest.mark.parametrize("extra, named", PROFILE_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_profile_option_refused(good, tmp_path, refused, extra, named):
    refused(["profile", good["ckpt"], "--cuda", "no", "--out", tmp_path / "prof", *extra], named)


SEARCH_OPTIONS = [
    (["--members", "1"], "--members"), (["--members", "0"], "--members"), (["--members", "5000"], "--members"),
    (["--candidates", "1"], "--candidates"), (["--candidates", "0"], "--candidates"),
    (["--members", "4", "--candidates", "3"], "--candidates"), (["--samples", "3"], "--samples"),
    (["--samples", "-5"], "--samples"), (["--calib-images", "-5"], "--calib-images"),
    (["--calib-images", "0"], "--calib-images"), (["--eval-images", "0"], "--eval-images"),
    (["--seed", "-1"], "--seed"), (["--contexts", "banana"], "--contexts"), (["--contexts", ","], "--contexts"),
    (["--contexts", "cpu:999t"], "--contexts"), (["--contexts", "cpu:0t"], "--contexts"),
    (["--contexts", "cpu:1t,cpu:1t"], "--contexts"), (["--contexts", "jetson_cpu"], "--contexts"),
]
if not torch.cuda.is_available():
    SEARCH_OPTIONS.append((["--contexts", "cuda"], "--contexts"))


@pytest.mark.parametrize("extra, named", SEARCH_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_search_option_refused(good, tmp_path, refused, extra, named):
    refused(["search", good["ckpt"], "--contexts", "cpu:1t", "--out", tmp_path / "fam", *extra], named)


# --- output folders: refused before the work -------------------------------------------------------------
def out_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    return tmp_path / "taken", "taken: exists and is not a directory"


def out_holds_a_result(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "profile.json").write_text("{}")
    (tmp_path / "taken" / "family.json").write_text("{}")
    return tmp_path / "taken", "--overwrite"


def out_under_proc(tmp_path):
    return Path("/proc/dynadnn-test/out"), "/proc/dynadnn-test/out"


def out_too_long(tmp_path):
    return tmp_path / ("x" * 5000), "cannot"


@pytest.mark.parametrize("make_out", [out_is_a_file, out_holds_a_result, out_under_proc, out_too_long])
@pytest.mark.parametrize("verb", ["profile", "search"])
def test_bad_out_refused_before_the_work(good, tmp_path, refused, verb, make_out, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr("dynadnn.predict.fitting.profile_device", no_work)
    out, named = make_out(tmp_path)
    argv = ["profile", good["ckpt"], "--threads", "1", "--cuda", "no"] if verb == "profile" else \
        ["search", good["ckpt"], "--contexts", "cpu:1t"]
    refused(argv + ["--out", out], named)


@pytest.mark.parametrize("where", ["cwd", "above"])
@pytest.mark.parametrize("verb", ["profile", "search"])
def test_overwrite_of_the_working_folder_refused(good, tmp_path, refused, verb, where, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr("dynadnn.predict.fitting.profile_device", no_work)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "work")
    out = "." if where == "cwd" else tmp_path  # the working folder, or one holding it
    argv = ["profile", good["ckpt"], "--threads", "1", "--cuda", "no"] if verb == "profile" else \
        ["search", good["ckpt"], "--contexts", "cpu:1t"]
    refused(argv + ["--out", out, "--overwrite"], "holds the current directory")
    assert (tmp_path / "work" / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_refused_before_the_work(good, tmp_path, refused):
    (tmp_path / "ro").mkdir(mode=0o555)
    refused(["profile", good["ckpt"], "--threads", "1", "--cuda", "no", "--out", tmp_path / "ro" / "p"], "ro")


# --- bad files ---------------------------------------------------------------------------------------
def nan_mean(d):
    d[next(iter(d))]["mean"] = float("nan")


def negative_mean(d):
    d[next(iter(d))]["mean"] = -0.5


def text_mean(d):
    d[next(iter(d))]["mean"] = "fast"


def entry_not_object(d):
    d[next(iter(d))] = 0.3


TABLE_CASES = [
    ("24_lookup_table.json", nan_mean, "field 'mean'"), ("24_lookup_table.json", negative_mean, "field 'mean'"),
    ("24_lookup_table.json", text_mean, "field 'mean'"), ("32_lookup_table.json", entry_not_object, "'mean'"),
    ("table.json", lambda d: d["correction"].update(a=float("nan")), "field 'a'"),
    ("table.json", lambda d: d["correction"].update(b="x"), "field 'b'"),
    ("table.json", lambda d: d.update(correction=[1, 2]), "field 'correction'"),
    ("table.json", lambda d: d["correction"].update(offsets={"24": float("inf")}), "offsets.24"),
    ("table.json", lambda d: d.update(context=5), "field 'context'"),
    ("table.json", lambda d: d.update(checkpoint_sha256=7), "field 'checkpoint_sha256'"),
]


@pytest.mark.parametrize("name, change, named", TABLE_CASES)
def test_bad_latency_table_refused_when_read(good, tmp_path, refused, name, change, named):
    prof = copy(good, "prof", tmp_path)
    edit_json(prof / "cpu_1t" / name, change)
    err = refused(["search", good["ckpt"], "--contexts", "cpu:1t", "--profile", prof, "--out", tmp_path / "fam"], named)
    assert name in err


def nan_weights(pred: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(pred / "predictor.safetensors"))
    tensors["0.weight"][0, 0] = float("nan")
    save_file(tensors, str(pred / "predictor.safetensors"))


PREDICTOR_CASES = [
    (lambda p: edit_json(p / "predictor.json", lambda d: d.update(hidden="8")), "field 'hidden'"),
    (lambda p: edit_json(p / "predictor.json", lambda d: d.update(checkpoint_sha256=5)), "field 'checkpoint_sha256'"),
    (lambda p: edit_json(p / "predictor.json", lambda d: d.update(encoding_size=-3)), "field 'encoding_size'"),
    (lambda p: edit_json(p / "predictor.json", lambda d: d.update(fit={"rmse": "low"})), "field 'rmse'"),
    (lambda p: edit_json(p / "predictor.json", lambda d: d.update(format=1)), "field 'format'"),
    (nan_weights, "NaN"),
    (lambda p: (p / "predictor.safetensors").write_bytes(b"\x00" * 40), "not a readable safetensors"),
]


@pytest.mark.parametrize("corrupt, named", PREDICTOR_CASES)
def test_bad_predictor_refused_when_read(good, tmp_path, refused, corrupt, named):
    pred = copy(good, "pred", tmp_path)
    corrupt(pred)
    refused(["search", good["ckpt"], "--contexts", "cpu:1t", "--predictor", pred, "--out", tmp_path / "fam"], named)


def member(i, **change):
    return lambda d: d["members"][i].update(change)


def drop_tensors(fam: Path, prefix: str, bn_tensors: int | None = None) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(fam / "family.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith(prefix)}, str(fam / "family.safetensors"))

    def change(d):
        d["weights_sha256"] = sha256_file(fam / "family.safetensors")
        if bn_tensors is not None:
            d["members"][int(prefix[1:-1])]["bn_tensors"] = bn_tensors
    edit_json(fam / "family.json", change)


FAMILY_CASES = [
    (member(0, top1_measured=float("nan")), "field 'top1_measured'"),
    (member(1, top1_measured="high"), "field 'top1_measured'"),
    (member(1, top1_predicted=150), "field 'top1_predicted'"),
    (lambda d: d["members"][1]["latency_ms"]["cpu:1t"].update(median=-2.0), "latency_ms.cpu:1t.median"),
    (lambda d: d["members"][1]["latency_ms"]["cpu:1t"].update(p95=float("nan")), "latency_ms.cpu:1t.p95"),
    (lambda d: d["members"][0]["latency_predicted_ms"].update({"cpu:1t": float("nan")}), "latency_predicted_ms"),
    (member(0, latency_ms={}, latency_predicted_ms={"cpu:1t": -1.0}), "positive"),
    (member(2, macs="many"), "field 'macs'"),
    (member(2, params=-1), "field 'params'"),
    (member(0, bn_tensors="x"), "bn_tensors"),
    (lambda d: d["members"].insert(0, d["members"].pop(2)), "do not match"),
    (lambda d: d["members"].pop(0), "do not match"),
    (lambda d: d.update(members=[]), "field 'members'"),
    (lambda d: d.update(contexts="cpu:1t"), "field 'contexts'"),
    (lambda d: d.update(contexts=["cpu:1t", "cpu:1t"]), "field 'contexts'"),
    (lambda d: d.update(archive=5), "field 'archive'"),
    (lambda d: d["archive"][0].update(top1_predicted=float("inf")), "archive[0]"),
    (lambda d: d.update(checkpoint="model"), "field 'checkpoint'"),
]


@pytest.mark.parametrize("change, named", FAMILY_CASES)
def test_bad_family_json_refused_when_read(good, tmp_path, refused, change, named):
    fam = copy(good, "fam", tmp_path)
    edit_json(fam / "family.json", change)
    err = refused(["plot-front", fam], named)
    assert "family" in err


@pytest.mark.parametrize("prefix, bn_tensors, named", [("m1/", 0, "no BN statistics"), ("m1/", None, "member m1"),
                                                       ("m2/", 0, "members[2]")])
def test_family_member_without_bn_statistics_refused(good, tmp_path, refused, prefix, bn_tensors, named):
    fam = copy(good, "fam", tmp_path)
    drop_tensors(fam, prefix, bn_tensors)
    refused(["plot-front", fam], named)


def test_family_member_listed_twice_refused(good, tmp_path, refused):
    from safetensors.torch import load_file, save_file

    fam = copy(good, "fam", tmp_path)
    tensors = load_file(str(fam / "family.safetensors"))
    tensors.update({"m3/" + k[3:]: v.clone() for k, v in tensors.items() if k.startswith("m1/")})
    save_file(tensors, str(fam / "family.safetensors"))
    edit_json(fam / "family.json", lambda d: d.update(members=d["members"] + [d["members"][1]],
                                                      weights_sha256=sha256_file(fam / "family.safetensors")))
    refused(["plot-front", fam], "members[3]: the same architecture as members[1]")


def test_family_bn_statistics_with_nan_refused(good, tmp_path, refused):
    from safetensors.torch import load_file, save_file

    fam = copy(good, "fam", tmp_path)
    tensors = load_file(str(fam / "family.safetensors"))
    key = next(k for k in tensors if k.startswith("m1/") and k.endswith("running_var"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(fam / "family.safetensors"))
    edit_json(fam / "family.json", lambda d: d.update(weights_sha256=sha256_file(fam / "family.safetensors")))
    refused(["plot-front", fam], key[3:])


def test_plot_front_out_that_is_a_directory_or_unwritable_is_refused(good, tmp_path, refused):
    fam = copy(good, "fam", tmp_path)
    (tmp_path / "adir").mkdir()
    refused(["plot-front", fam, "--out", tmp_path / "adir"], "--out")
    refused(["plot-front", fam, "--out", "/proc/dynadnn-test/front.png"], "/proc")


# --- Python callers get the same errors ------------------------------------------------------------------
def test_library_entry_points_check_their_arguments(good, digits):
    from dynadnn.predict.fitting import fit_accuracy_predictor, profile_device
    from dynadnn.selection import choose_family

    net = good["net"]
    for kwargs, named in [({"runs": 0}, "runs:"), ({"warmup": -1}, "warmup:"), ({"members": 5}, "members:"),
                          ({"member_runs": 0}, "member_runs:"), ({"resolutions": [7]}, "resolutions:"),
                          ({"backend": "tvm"}, "backend:")]:
        with pytest.raises(UserError, match=f"^{named}"):
            profile_device(net, ["cpu:1t"], **kwargs)
    with pytest.raises(UserError, match="^contexts: 'cpu:999t'"):
        profile_device(net, ["cpu:999t"])
    with pytest.raises(UserError, match="^calib_images:"):
        fit_accuracy_predictor(net, digits, 20, calib_images=0)
    with pytest.raises(UserError, match="^members:"):
        choose_family(net, None, {}, digits, members=1)
    with pytest.raises(UserError, match="^tables:"):
        choose_family(net, None, {"jetson_cpu": None}, digits, members=2)


def test_a_bad_family_is_never_written(good, tmp_path):
    fam = make_family(good["net"])
    fam.members[1].top1_measured = math.nan
    with pytest.raises(UserError, match="top1_measured"):
        fam.save(tmp_path / "f")
    assert not (tmp_path / "f").exists()


# --- result folders: never replaced without --overwrite, replaced whole, kept when interrupted ------------
def fake_profile_device(calls: list, fail: BaseException | None = None):
    """Stands for `profile_device`: writes a table folder per context into `out` (half of one, then `fail`), then
    profile.json."""
    def profile(net, contexts, out, **kwargs):
        calls.append(Path(out))
        tables = {}
        for ctx in contexts:
            d = Path(out) / ctx.replace(":", "_")
            d.mkdir(parents=True)
            (d / "20_lookup_table.json").write_text("{}")
            if fail is not None:
                raise fail
            report = {"members": 10, "mape_raw": 1.0, "mape_corrected": 0.5, "tau_raw": 0.9, "tau_corrected": 0.95,
                      "measured_min_ms": 1.0, "measured_max_ms": 2.0}
            tables[ctx] = type("T", (), {"meta": {"report": report}})()
        (Path(out) / "profile.json").write_text(json.dumps(  # as profile_device writes it
            {"preset": net.space.name, "contexts": list(tables), "reports": {c: t.meta["report"] for c, t in tables.items()}}))
        return tables
    return profile


def stale_result(out: Path, marker: str) -> dict[str, str]:
    out.mkdir(parents=True)
    files = {marker: "{}", "front.png": "old", "cpu_2t/28_lookup_table.json": "{}"}
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return files


def profile_argv(good, out, *extra):
    return ["profile", str(good["ckpt"]), "--threads", "1", "--cuda", "no", "--out", str(out), *extra]


def test_second_profile_is_refused_and_overwrite_replaces_the_whole_folder(good, tmp_path, refused, monkeypatch):
    calls: list = []
    monkeypatch.setattr("dynadnn.predict.fitting.profile_device", fake_profile_device(calls))
    out = tmp_path / "prof"
    stale_result(out, "profile.json")
    refused(profile_argv(good, out), "--overwrite")
    assert not calls
    assert main(profile_argv(good, out, "--overwrite")) == 0
    assert calls and calls[0].parent == tmp_path and calls[0] != out  # profiled into a folder beside --out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["cpu_1t/20_lookup_table.json", "profile.json"]  # no stale front.png, no table of another context
    assert json.loads((out / "profile.json").read_text())["contexts"] == ["cpu:1t"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof"]  # no temporary folder left


@pytest.mark.parametrize("fail, code", [(KeyboardInterrupt(), 130), (UserError("boom"), 2), (OSError("disk"), None)])
def test_interrupted_profile_leaves_the_earlier_one_intact(good, tmp_path, monkeypatch, fail, code):
    from conftest import snapshot

    monkeypatch.setattr("dynadnn.predict.fitting.profile_device", fake_profile_device([], fail))
    out = tmp_path / "prof"
    stale_result(out, "profile.json")
    before = snapshot(tmp_path)
    if code is None:
        with pytest.raises(OSError):
            main(profile_argv(good, out, "--overwrite"))
    else:
        assert main(profile_argv(good, out, "--overwrite")) == code
    assert snapshot(tmp_path) == before  # the old profile as it was, no half-written folder beside it


def fake_choice(good, seen: dict | None = None):
    from dynadnn.selection import Choice

    def choose(net, predictor, tables, data, **kwargs):
        assert list(tables) == ["cpu:1t"] and predictor is not None
        (seen if seen is not None else {}).update(kwargs)
        return Choice(make_family(good["net"]), [], [], [], None)
    return choose


def test_second_search_is_refused_and_overwrite_keeps_inputs_read_from_inside_out(good, tmp_path, refused,
                                                                                 monkeypatch):
    monkeypatch.setattr("dynadnn.selection.choose_family", fake_choice(good))
    out = tmp_path / "fam"
    stale_result(out, "family.json")
    shutil.copytree(good["prof"], out / "profile")
    shutil.copytree(good["pred"], out / "predictor")
    argv = ["search", str(good["ckpt"]), "--contexts", "cpu:1t", "--profile", str(out / "profile"),
            "--predictor", str(out / "predictor"), "--out", str(out)]
    refused(argv, "--overwrite")
    assert main(argv + ["--overwrite"]) == 0
    assert not (out / "front.png").exists() and not (out / "cpu_2t").exists()  # nothing stale
    assert Family.load(out).members and (out / "search.json").is_file()
    assert (out / "profile" / "cpu_1t" / "table.json").is_file()  # the profile it read is kept
    assert (out / "predictor" / "predictor.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fam"]


def test_search_profiles_into_its_temporary_folder_and_records_the_final_one(good, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("dynadnn.predict.fitting.profile_device", lambda net, ctx, out, **k: calls.append(out) or
                        {"cpu:1t": LatencyTable.from_dynamic_ofa(good["prof"] / "cpu_1t")})
    seen: dict = {}
    monkeypatch.setattr("dynadnn.selection.choose_family", fake_choice(good, seen))
    out = tmp_path / "fam"
    assert main(["search", str(good["ckpt"]), "--contexts", "cpu:1t", "--predictor", str(good["pred"]),
                 "--out", str(out)]) == 0
    assert calls and calls[0].parent.parent == tmp_path and calls[0].parent != out
    assert seen["provenance"]["profile"] == str(out / "profile")  # where the profile ends up, not the temp folder
    assert Family.load(out).members
