"""Shipped models, listed the way timm lists pretrained weights.

Each model is two files in this package: `NAME.safetensors` (a dynadnn checkpoint: weights plus JSON metadata
with the preset, data, recipe and metrics) and `NAME.json` (description, metrics and the exact command that
reproduces it). `zoo:NAME` is accepted wherever a checkpoint path is (`load_checkpoint("zoo:animals")`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError


def _root():
    return resources.files(__name__)


def list_models() -> dict[str, str]:
    """`{name: one-line description}` of every shipped model."""
    out = {}
    for entry in sorted(_root().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json") and _root().joinpath(entry.name[:-5] + ".safetensors").is_file():
            try:
                out[entry.name[:-5]] = json.loads(entry.read_text()).get("description", "")
            except json.JSONDecodeError:
                continue
    return out


def model_card(name: str) -> dict:
    """The JSON card of a shipped model (description, metrics, command)."""
    zoo_path(name)
    return json.loads(_root().joinpath(f"{name}.json").read_text())


def zoo_path(name: str) -> Path:
    """The checkpoint file of shipped model `name`; one-line error listing the available ones otherwise."""
    f = _root().joinpath(f"{name}.safetensors")
    if not name or "/" in name or not f.is_file():
        available = ", ".join(f"zoo:{n}" for n in list_models()) or "none"
        raise CheckpointError(f"zoo:{name}: no such shipped model (available: {available})")
    return Path(str(f))
