"""Checkpoints: our safetensors round trip, atomic writes, and every kind of bad input giving a one-line
error that names the problem while nothing on disk changes."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import struct
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

from dynadnn.errors import ArchError, CheckpointError, UserError
from dynadnn.space import Arch, SearchSpace, load_space
from dynadnn.supernet import SuperNet, load_checkpoint, read_checkpoint_meta, save_checkpoint
from dynadnn.supernet import checkpoint as ckpt_module
from dynadnn.fileio import atomic_write
from dynadnn.supernet.checkpoint import to_ofa_state_dict


@pytest.fixture(scope="module")
def tiny_net() -> SuperNet:
    torch.manual_seed(0)
    net = SuperNet(load_space("tiny"))
    with torch.no_grad():  # non-default buffers and matrices, so a round trip that dropped them would show
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
        for blk in net.blocks:
            for m in blk.kernel_transforms.values():
                m.add_(0.05 * torch.randn_like(m))
    net.invalidate()
    return net.eval()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: 'nothing was written or overwritten' is equality."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(exc: BaseException, *fragments: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 300, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


# --- round trip ---------------------------------------------------------------------------------
def test_save_load_round_trip_keeps_weights_metadata_and_outputs(tiny_net, tmp_path):
    meta = {"data": "animal-mnist", "recipe": {"epochs": 3, "sandwich": True}, "seed": 7, "metrics": {"top1": 0.91}}
    path = save_checkpoint(tiny_net, tmp_path / "tiny.safetensors", meta)
    assert path == tmp_path / "tiny.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary file left behind

    net, got = load_checkpoint(path)
    assert not net.training
    for key, value in meta.items():
        assert got[key] == value
    assert got["preset"] == "tiny" and got["format"] == "dynadnn.checkpoint/1"
    assert read_checkpoint_meta(path) == got
    expected = tiny_net.state_dict()
    loaded = net.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)

    arch = net.space.sample(random.Random(1), r=28)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tiny_net.set_active(arch)
        net.set_active(arch)
        assert torch.equal(net(x), tiny_net(x))


def test_checkpoint_is_plain_safetensors_with_json_metadata(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "c.safetensors", {"note": "x"})
    tensors = safetensors.torch.load_file(str(path))  # any safetensors reader can open it
    assert "first_conv.weight" in tensors and len(tensors) == len(tiny_net.state_dict())
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])
    doc = json.loads(header["__metadata__"]["dynadnn"])
    assert doc["note"] == "x" and doc["space"]["name"] == "tiny"


def test_custom_space_checkpoint_loads_without_its_preset_file(tmp_path):
    data = load_space("tiny").to_dict()
    data.update(name="my_space", n_classes=4, resolutions=[24, 28])
    space = SearchSpace.from_dict(data)
    net = SuperNet(space)
    path = save_checkpoint(net, tmp_path / "custom.safetensors")
    loaded, meta = load_checkpoint(path)  # 'my_space' is no preset: the space travels in the metadata
    assert loaded.space == space and meta["preset"] == "my_space"
    assert loaded.classifier.weight.shape == (4, space.feature_mix)


# --- atomic writes ---------------------------------------------------------------------------------
def test_failed_save_keeps_the_existing_file_and_leaves_no_temp_files(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "model.safetensors", {"version": 1})
    before = snapshot(tmp_path)
    with pytest.raises(TypeError):  # metadata that is not JSON fails inside the write
        save_checkpoint(tiny_net, path, {"version": 2, "bad": object()})
    assert snapshot(tmp_path) == before
    assert read_checkpoint_meta(path)["version"] == 1


def test_a_crash_half_way_through_the_write_changes_nothing(tiny_net, tmp_path, monkeypatch):
    path = save_checkpoint(tiny_net, tmp_path / "model.safetensors")
    before = snapshot(tmp_path)

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 1000)  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_net, path, {"version": 2})
    assert snapshot(tmp_path) == before


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, lambda tmp: Path(tmp).write_text("one"))
    assert target.read_text() == "one"
    def fails_half_way(tmp: str) -> None:
        Path(tmp).write_text("tw")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fails_half_way)
    assert target.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_saving_where_no_folder_can_be_made_is_a_user_error(tiny_net, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tiny_net, blocker / "model.safetensors")
    assert_one_line(info.value, "cannot write here")
    assert blocker.read_text() == "I am a file, not a folder"


# --- bad input: one line, names the problem, nothing written ----------------------------------------
def test_invalid_architecture_names_the_field(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "m.safetensors")
    net, _ = load_checkpoint(path)
    bad = Arch.from_dict({"ks": [3] * 20, "e": [3] * 19 + [2], "d": [2] * 5, "r": 28})
    for action in (net.set_active, net.extract):
        with pytest.raises(ArchError) as info:
            action(bad)
        assert_one_line(info.value, "'e[19]' is 2", "[3, 4, 6]")
    with pytest.raises(ArchError) as info:
        net.set_active(Arch.from_dict({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "image_size": 224}))
    assert_one_line(info.value, "'r' is 224", "[20, 24, 28, 32]")


def test_unknown_preset_names_the_choices(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "m.safetensors")
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path, preset="mobilenet_v9")
    assert_one_line(info.value, "unknown preset 'mobilenet_v9'", "ofa_mbv3_w1.0", "tiny")
    assert snapshot(tmp_path) == before


def test_shape_mismatch_names_the_key_and_both_shapes(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "tiny.safetensors")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, preset="ofa_mbv3_w1.0")
    assert_one_line(info.value, str(path), "ofa_mbv3_w1.0")
    found = re.search(r"'([\w.]+)' has shape (\[[\d, ]+\]), preset '[\w.]+' expects (\[[\d, ]+\])", str(info.value))
    assert found, str(info.value)
    key, got, want = found.group(1), json.loads(found.group(2)), json.loads(found.group(3))
    assert got == list(tiny_net.state_dict()[key].shape)
    assert want == list(SuperNet(load_space("ofa_mbv3_w1.0")).state_dict()[key].shape) != got
    assert snapshot(tmp_path) == before


def test_ofa_state_dict_of_the_wrong_width_names_the_key_and_both_shapes(tmp_path):
    state = to_ofa_state_dict(SuperNet(load_space("ofa_mbv3_w1.0")))
    path = tmp_path / "ofa_w10.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, preset="ofa_mbv3_w1.2")
    assert_one_line(info.value, str(path), "ofa_mbv3_w1.2")
    found = re.search(r"'([\w.]+)' has shape (\[[\d, ]+\]), preset '[\w.]+' expects (\[[\d, ]+\])", str(info.value))
    assert found and found.group(2) != found.group(3), str(info.value)


def test_checkpoint_with_missing_or_unexpected_tensors(tiny_net, tmp_path):
    tensors = {k: v.contiguous() for k, v in tiny_net.state_dict().items()}
    tensors.pop("classifier.bias")
    path = tmp_path / "missing.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, preset="tiny")
    assert_one_line(info.value, "missing 1 tensor", "'classifier.bias'")

    tensors = {k: v.contiguous() for k, v in tiny_net.state_dict().items()}
    tensors["head.extra"] = torch.zeros(3)
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, preset="tiny")
    assert_one_line(info.value, "unexpected tensor 'head.extra'")

    with pytest.raises(CheckpointError) as info:  # plain safetensors without our metadata: which preset?
        load_checkpoint(path)
    assert_one_line(info.value, "no 'preset'", "--preset")


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    files = {}
    rnd = random.Random(0)
    files["random bytes"] = folder / "random.bin"
    files["random bytes"].write_bytes(bytes(rnd.randrange(256) for _ in range(4096)))
    files["text"] = folder / "notes.txt"
    files["text"].write_text("this is a text file\nnot a checkpoint\n")
    files["empty"] = folder / "empty.pth"
    files["empty"].write_bytes(b"")
    files["fake safetensors header"] = folder / "fake.safetensors"
    files["fake safetensors header"].write_bytes(struct.pack("<Q", 40) + b'{"a": {"dtype": "F32", "shape"')
    files["a list, not a state dict"] = folder / "list.pth"
    torch.save([1, 2, 3], files["a list, not a state dict"])
    files["tensors with foreign names"] = folder / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, files["tensors with foreign names"])
    return files


def test_files_that_are_not_checkpoints_give_one_line_errors(tmp_path):
    files = _not_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    expected = {"random bytes": "not a checkpoint", "text": "not a checkpoint", "empty": "not a checkpoint",
                "fake safetensors header": "safetensors", "a list, not a state dict": "state dict",
                "tensors with foreign names": "match none of the presets"}
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert_one_line(info.value, str(path), expected[kind])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.safetensors")
    assert_one_line(info.value, "no such checkpoint file")
    with pytest.raises(CheckpointError) as info:  # a folder that is not a training run
        load_checkpoint(tmp_path)
    assert_one_line(info.value, str(tmp_path), "is a directory, not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / ("x" * 5000))
    assert_one_line(info.value, "File name too long")
    assert snapshot(tmp_path) == before


def test_truncated_checkpoint_is_refused(tiny_net, tmp_path):
    path = save_checkpoint(tiny_net, tmp_path / "full.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(cut)
    assert_one_line(info.value, str(cut))


class _RunsCode:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused(tmp_path, how):
    marker = tmp_path / "PWNED"
    payload = {"state_dict": {"first_conv.conv.weight": torch.zeros(16, 3, 3, 3)}, "hook": _RunsCode(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    before = snapshot(tmp_path)
    with warnings.catch_warnings(), pytest.raises(CheckpointError) as info:
        warnings.simplefilter("ignore")  # torch warns about pickle protocols it does not expect
        load_checkpoint(path)
    assert_one_line(info.value, str(path), "refusing to load")
    assert not marker.exists(), "the pickle ran code"
    assert snapshot(tmp_path) == before


def test_metadata_that_is_not_an_object(tiny_net, tmp_path):
    tensors = {k: v.contiguous() for k, v in tiny_net.state_dict().items()}
    path = tmp_path / "odd.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"dynadnn": "[1, 2]"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(info.value, "'dynadnn'", "JSON object")
    safetensors.torch.save_file(tensors, str(path), metadata={"dynadnn": "{not json"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert_one_line(info.value, "'dynadnn'", "not valid JSON")


def test_a_training_folder_stands_for_its_final_else_its_last_checkpoint(tiny_net, tmp_path):
    from dynadnn.supernet.checkpoint import resolve_checkpoint_path

    last = save_checkpoint(tiny_net, tmp_path / "run" / "last.safetensors", {"steps": 3})
    assert resolve_checkpoint_path(tmp_path / "run") == last
    assert read_checkpoint_meta(tmp_path / "run")["steps"] == 3
    final = save_checkpoint(tiny_net, tmp_path / "run" / "final.safetensors", {"steps": 5})
    assert resolve_checkpoint_path(str(tmp_path / "run")) == final
    net, meta = load_checkpoint(tmp_path / "run")
    assert meta["steps"] == 5 and net.space.name == "tiny"


@pytest.mark.parametrize("change, named", [
    ({"space": 5}, "field 'space': expected an object"),
    ({"space": {"stages": 5}}, "'space'"),
    ({"preset": ["tiny"]}, "field 'preset': expected a string"),
    ({"steps": "12"}, "field 'steps': expected an integer"),
    ({"steps": -1}, "field 'steps'"),
    ({"train_seconds": "NaN"}, "field 'train_seconds'"),
    ({"recipe": "fast"}, "field 'recipe': expected an object"),
    ({"metrics": [1]}, "field 'metrics'"),
])
def test_metadata_fields_of_the_wrong_type_are_one_line_errors(tiny_net, tmp_path, change, named):
    path = save_checkpoint(tiny_net, tmp_path / "ok.safetensors", {"steps": 1})
    doc = {**read_checkpoint_meta(path), **change}
    bad = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_net.state_dict().items()}
    safetensors.torch.save_file(tensors, str(bad), metadata={"dynadnn": json.dumps(doc)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert_one_line(info.value, str(bad), named)
