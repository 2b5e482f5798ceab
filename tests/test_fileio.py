"""The artifact I/O leaf: JSON and safetensors readers give one-line errors naming the file; writers are
atomic; checkpoint path schemes resolve through the registry that `dynadnn.zoo` fills."""

from __future__ import annotations

import subprocess
import sys

import pytest
import safetensors.torch
import torch

from dynadnn.errors import CheckpointError, UserError
from dynadnn import fileio
from dynadnn.fileio import parse_json, read_json_object, read_safetensors, write_json
from dynadnn.supernet import checkpoint as ckpt_module


def one_line(exc: BaseException, *fragments: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 300, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_json_round_trip_and_every_bad_file_is_one_line(tmp_path):
    good = write_json(tmp_path / "a" / "doc.json", {"format": "x/1", "n": 3}, indent=1)
    assert read_json_object(good, "x/1") == {"format": "x/1", "n": 3}
    with pytest.raises(UserError) as info:
        read_json_object(good, "y/1")
    one_line(info.value, str(good), "'format'", "y/1")
    cases = {"broken.json": "{\"a\": ", "list.json": "[1, 2]", "binary.json": b"\xff\xfe\x00"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(CheckpointError) as info:
            read_json_object(path, error=CheckpointError)
        one_line(info.value, str(path))
    with pytest.raises(UserError) as info:
        read_json_object(tmp_path / "missing.json")
    one_line(info.value, "missing.json", "cannot read")
    with pytest.raises(UserError) as info:
        parse_json("{not json", "arch")
    one_line(info.value, "arch: not valid JSON", "line 1")


def test_a_document_that_cannot_be_serialised_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "out.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_safetensors_reader_returns_tensors_and_metadata_or_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"a": torch.arange(4.0)}, str(path), metadata={"step": "7"})
    tensors, meta = read_safetensors(path)
    assert torch.equal(tensors["a"], torch.arange(4.0)) and meta == {"step": "7"}
    assert read_safetensors(path, tensors=False) == ({}, {"step": "7"})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    for target in (bad, tmp_path / "absent.safetensors"):
        with pytest.raises(CheckpointError) as info:
            read_safetensors(target, CheckpointError)
        one_line(info.value, str(target), "not a readable safetensors file")


def test_registered_scheme_resolves_and_unknown_text_is_a_path(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"x")
    monkeypatch.setitem(fileio._SCHEMES, "mine", lambda name: tmp_path / f"{name}.safetensors")
    assert ckpt_module.resolve_checkpoint_path("mine:m") == target
    with pytest.raises(CheckpointError, match="nope:m: no such checkpoint file"):
        ckpt_module.resolve_checkpoint_path("nope:m")
    with pytest.raises(ValueError):
        fileio.register_scheme("C", lambda name: target)


def test_zoo_scheme_works_whatever_module_is_imported_first_and_import_dynadnn_stays_light():
    code = ("import sys; import dynadnn; light = 'torch' not in sys.modules; "
            "from dynadnn.supernet.checkpoint import resolve_checkpoint_path as r; "
            "print(r('zoo:animals').name, light)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["animals.safetensors", "True"]
