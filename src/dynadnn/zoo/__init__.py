"""Shipped models, listed the way timm lists pretrained weights.

Each model is two files in this package: `NAME.safetensors` (a dynadnn checkpoint: weights plus JSON metadata
with the preset, data, recipe and metrics) and `NAME.json` (description, metrics and the exact command that
reproduces it). `zoo:NAME` is accepted wherever a checkpoint path is (`load_checkpoint("zoo:animals")`):
importing this package registers the `zoo` scheme (`fileio.register_scheme`; `import dynadnn` does), and
imports nothing heavier, so `import dynadnn` stays light.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError, UserError
from ..fileio import read_json_object, register_scheme


def _root():
    return resources.files(__name__)


def list_models() -> dict[str, str]:
    """`{name: one-line description}` of every shipped model."""
    out = {}
    for entry in sorted(_root().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json") and _root().joinpath(entry.name[:-5] + ".safetensors").is_file():
            try:
                out[entry.name[:-5]] = read_json_object(Path(str(entry))).get("description", "")
            except UserError:
                continue
    return out


def model_card(name: str) -> dict:
    """The JSON card of a shipped model (description, metrics, command)."""
    zoo_path(name)
    return read_json_object(Path(str(_root().joinpath(f"{name}.json"))), error=CheckpointError)


def zoo_path(name: str) -> Path:
    """The checkpoint file of shipped model `name`; one-line error listing the available ones otherwise."""
    ok = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name) is not None
    if not ok or not _root().joinpath(f"{name}.safetensors").is_file():
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:57] + "..."
        available = ", ".join(f"zoo:{n}" for n in list_models()) or "none"
        raise CheckpointError(f"zoo:{shown}: no such shipped model (available: {available})")
    return Path(str(_root().joinpath(f"{name}.safetensors")))


register_scheme("zoo", zoo_path)
