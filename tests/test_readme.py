"""Every ```python block of README.md runs, so the examples cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_library_example():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("choose_family" in b and "RuntimeManager" in b for b in blocks)


@pytest.fixture
def readme_inputs(tmp_path: Path) -> dict:
    """The names the README says its blocks take from outside: a small checkpoint in OFA's format, images."""
    from dynadnn.space import load_space
    from dynadnn.supernet import SuperNet, to_ofa_state_dict

    torch.manual_seed(0)
    net = SuperNet(load_space("tiny"))
    path = tmp_path / "ofa_tiny.pth"
    torch.save({"state_dict": to_ofa_state_dict(net)}, path)
    r = max(net.space.resolutions)
    return {"ofa_checkpoint": str(path), "images": [torch.randn(16, net.space.in_channels, r, r)]}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int, readme_inputs: dict, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = python_blocks()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme", **readme_inputs})
