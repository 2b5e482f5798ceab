"""Checkpoints: our safetensors format, and OFA's PyTorch state dicts in both directions.

Our checkpoint is one `.safetensors` file whose header carries a JSON document under the key `dynadnn`
(preset, data, recipe, seed, steps, metrics, ...). It is written to a temporary file and renamed, so a
crash never leaves half a checkpoint.

OFA's files are PyTorch pickles. They are read with `torch.load(weights_only=True)` only, which refuses
any pickle that would build arbitrary Python objects. Accepted layouts: the elastic network
(`blocks.5.conv.depth_conv.conv.conv.weight`, `...7to5_matrix`), the legacy `mobile_inverted_conv` names,
the static layout of a full-size teacher (`blocks.5.conv.depth_conv.conv.weight`; its kernel matrices
stay identity), optionally wrapped as `{"state_dict": ...}` and/or prefixed with `module.`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..errors import CheckpointError, UserError
from ..fileio import atomic_write, parse_json, read_safetensors, resolve_scheme
from ..space import SearchSpace, list_presets, load_space
from ..validate import field, number
from .network import SuperNet

FORMAT = "dynadnn.checkpoint/1"
_PART = {"inverted_bottleneck": "expand", "depth_conv": "dw", "point_linear": "project"}
_PART_BACK = {v: k for k, v in _PART.items()}
_TOP = {
    "first_conv.conv.weight": "first_conv.weight",
    "final_expand_layer.conv.weight": "final_expand.weight",
    "feature_mix_layer.conv.weight": "feature_mix.weight",
    "classifier.linear.weight": "classifier.weight",
    "classifier.linear.bias": "classifier.bias",
}
_TOP_BN = {"first_conv.bn.": "first_bn.", "final_expand_layer.bn.": "final_bn."}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:conv|mobile_inverted_conv)\.(inverted_bottleneck|depth_conv|point_linear)\.(.+)$")


# ----------------------------------------------------------------------------------------------------
# OFA <-> ours: pure name mappings
# ----------------------------------------------------------------------------------------------------
def ofa_key_to_ours(key: str) -> str | None:
    """Our parameter name for an OFA state-dict key, or None if it is not an OFA-MobileNetV3 key."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key in _TOP:
        return _TOP[key]
    for src, dst in _TOP_BN.items():
        if key.startswith(src):
            return dst + key[len(src):]
    m = _BLOCK.match(key)
    if not m:
        return None
    idx, part, rest = m.group(1), _PART[m.group(2)], m.group(3)
    base = f"blocks.{idx}.{part}"
    if rest in ("conv.conv.weight", "conv.weight"):
        return f"{base}.weight"
    t = re.fullmatch(r"conv\.(\d+to\d+)_matrix", rest)
    if t:
        return f"blocks.{idx}.kernel_transforms.{t.group(1)}"
    for prefix in ("bn.bn.", "bn."):
        if rest.startswith(prefix):
            return f"{base}_bn.{rest[len(prefix):]}"
    s = re.fullmatch(r"se\.fc\.(reduce|expand)\.(weight|bias)", rest)
    if s and part == "dw":
        return f"blocks.{idx}.se_{s.group(1)}.{s.group(2)}"
    return None


def our_key_to_ofa(key: str) -> str:
    """OFA's name (elastic layout; block 0 and the head in OFA's static layout, as OFA stores them)."""
    for ofa, ours in _TOP.items():
        if key == ours:
            return ofa
    for ofa, ours in _TOP_BN.items():
        if key.startswith(ours):
            return ofa + key[len(ours):]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if not m:
        raise KeyError(key)
    idx, rest = int(m.group(1)), m.group(2)
    dyn = idx > 0  # OFA's first block is a static MBConvLayer
    p = f"blocks.{idx}.conv"
    t = re.fullmatch(r"kernel_transforms\.(\d+to\d+)", rest)
    if t:
        return f"{p}.depth_conv.conv.{t.group(1)}_matrix"
    s = re.fullmatch(r"se_(reduce|expand)\.(weight|bias)", rest)
    if s:
        return f"{p}.depth_conv.se.fc.{s.group(1)}.{s.group(2)}"
    part, _, leaf = rest.partition(".")
    if part.endswith("_bn"):
        return f"{p}.{_PART_BACK[part[:-3]]}.bn.{'bn.' if dyn else ''}{leaf}"
    return f"{p}.{_PART_BACK[part]}.conv.{'conv.' if dyn else ''}{leaf}"


def to_ofa_state_dict(net: SuperNet) -> dict[str, Tensor]:
    """Our super-network's weights under OFA's names: loads into `ofa`'s OFAMobileNetV3 with strict=True."""
    return {our_key_to_ofa(k): v.detach().clone() for k, v in net.state_dict().items()}


def _fit(net: SuperNet, ours: Mapping[str, Tensor], source: str, optional: tuple[str, ...] = ()) -> None:
    """Copy `ours` into `net`, checking names and shapes first so that nothing is half-loaded."""
    target = net.state_dict()
    for key, value in ours.items():
        if key not in target:
            raise CheckpointError(f"{source}: unexpected tensor '{key}' for preset '{net.space.name}'")
        if tuple(value.shape) != tuple(target[key].shape):
            raise CheckpointError(f"{source}: '{key}' has shape {list(value.shape)}, preset '{net.space.name}' "
                                  f"expects {list(target[key].shape)}")
    missing = [k for k in target if k not in ours and not k.endswith("num_batches_tracked")
               and not any(o in k for o in optional)]
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensor(s) for preset '{net.space.name}', "
                              f"first '{missing[0]}'")
    with torch.no_grad():
        for key, value in ours.items():
            target[key].copy_(value.to(target[key].dtype))
    net.invalidate()


def load_ofa_state_dict(net: SuperNet, state: Mapping[str, Any], source: str = "checkpoint") -> None:
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors (or {{'state_dict': ...}})")
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        name = ofa_key_to_ours(key)
        if name is None:
            raise CheckpointError(f"{source}: '{key}' is not an OFA-MobileNetV3 tensor")
        ours[name] = value
    _fit(net, ours, source, optional=("kernel_transforms",))


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
_EXPECTED = "expected a dynadnn .safetensors file or a PyTorch .pth state dict"


def _read_torch(path: Path) -> Any:
    """`torch.load(weights_only=True)` with its many failure types turned into one-line errors: a pickle
    that names a callable is refused (it would run code), anything else unreadable is 'not a checkpoint'."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        called = re.search(r"GLOBAL ([\w.]+)", text)
        if called:
            raise CheckpointError(f"{path}: refusing to load: the file would call {called.group(1)} when unpickled "
                                  "(only tensors and plain containers are accepted)") from None
        if _looks_like_pickle(path):
            raise CheckpointError(f"{path}: refusing to load: a Python pickle holding more than tensors and plain "
                                  "containers (unpickling it could run code)") from None
        raise CheckpointError(f"{path}: not a checkpoint ({_EXPECTED}; this is unreadable as either)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises KeyError, IndexError, EOFError... on garbage
        detail = (str(exc).splitlines() or [""])[0][:80]
        raise CheckpointError(f"{path}: not a checkpoint ({_EXPECTED}; reading it failed with "
                              f"{type(exc).__name__}{': ' + detail if detail else ''})") from None


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{_shown(path)}: cannot read it ({exc.strerror or exc})") from None


def _looks_like_pickle(path: Path) -> bool:
    head = _head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_safetensors(path: Path) -> bool:
    head = _head(path, 9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _shown(path: Path | str) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


# The metadata fields this package writes, and their JSON types: a field of another type is refused when read.
_META_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "preset": (str,), "space": (dict,), "data": (str,), "dataset": (dict, str),
    "recipe": (dict,), "seed": (int,), "steps": (int,), "metrics": (dict,), "command": (str,),
    "world_size": (int,), "norm": (dict,), "train_seconds": (float,), "source": (str,),
}


def check_meta(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """Refuse checkpoint metadata whose known fields have the wrong JSON type (`space: 5`), or a negative
    step count or training time: one line naming the file and the field."""
    for key, kinds in _META_FIELDS.items():
        field(doc, key, kinds, source, required=False, error=CheckpointError)
    for key in ("steps", "world_size", "train_seconds"):
        if key in doc:
            number(doc[key], f"{source}: field '{key}'", low=0, error=CheckpointError)
    return doc


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of one of our checkpoints (empty for OFA files)."""
    path = resolve_checkpoint_path(path)
    if not _is_safetensors(path):
        return {}
    raw = read_safetensors(path, CheckpointError, tensors=False)[1].get("dynadnn")
    if raw is None:
        return {}
    doc = parse_json(raw, f"{path}: metadata field 'dynadnn'", CheckpointError)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: metadata field 'dynadnn' must be a JSON object, got {type(doc).__name__}")
    return check_meta(doc, f"{_shown(path)}: metadata")


RUN_CHECKPOINTS = ("final.safetensors", "last.safetensors")  # what a training folder stands for, in order


def resolve_checkpoint_path(path: str | Path) -> Path:
    """The file behind a checkpoint path: a registered `SCHEME:NAME` (`fileio.register_scheme`; `dynadnn.zoo`
    registers `zoo`), an existing file, or a training folder (`dynadnn train --out`), which stands for its
    final.safetensors, else its last.safetensors (an interrupted run). Any other folder is refused as one."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise CheckpointError(f"checkpoint: expected a file path or zoo:NAME, got {path!r}")
    found = resolve_scheme(path)
    if found is not None:
        return found
    p = Path(str(path))
    try:
        if p.is_dir():
            for name in RUN_CHECKPOINTS:
                if (p / name).is_file():
                    return p / name
            raise CheckpointError(f"{_shown(p)}: is a directory, not a checkpoint (expected a .safetensors or "
                                  f".pth file, or a training folder holding {' or '.join(RUN_CHECKPOINTS)})")
        if not p.is_file():
            what = "not a regular file" if p.exists() else "no such checkpoint file"
            raise CheckpointError(f"{_shown(p)}: {what}")
    except OSError as exc:
        raise CheckpointError(f"{_shown(p)}: cannot read it ({exc.strerror or exc})") from None
    return p


def _guess_space(state: Mapping[str, Tensor], source: str) -> SearchSpace:
    """Pick the preset whose shapes match an OFA state dict (w1.0 and w1.2 differ in every width)."""
    for name in list_presets():
        space = load_space(name)
        try:
            _fit(SuperNet(space), {ofa_key_to_ours(k) or k: v for k, v in state.items()}, source, ("kernel_transforms",))
            return space
        except CheckpointError:
            continue
    raise CheckpointError(f"{source}: its shapes match none of the presets {list_presets()}; pass --preset")


def load_checkpoint(path: str | Path, preset: str | SearchSpace | None = None) -> tuple[SuperNet, dict[str, Any]]:
    """A super-network from one of our `.safetensors` checkpoints, an OFA `.pth`, or `zoo:NAME`."""
    p = resolve_checkpoint_path(path)
    if _is_safetensors(p):
        meta = read_checkpoint_meta(p)
        # an explicit preset wins; else the space description the checkpoint carries (custom spaces load
        # without their JSON file); else the preset it names
        if preset is not None:
            space = preset if isinstance(preset, SearchSpace) else load_space(preset)
        elif meta.get("space"):
            space = _space_of(meta["space"], f"{_shown(p)}: metadata field 'space'")
        elif meta.get("preset"):
            space = load_space(meta["preset"])
        else:
            raise CheckpointError(f"{p}: no 'preset' in its metadata; pass --preset")
        tensors = read_safetensors(p, CheckpointError)[0]
        net = SuperNet(space)
        _fit(net, tensors, str(p))
        return net.eval(), meta
    state = _read_torch(p)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: not a model checkpoint (expected a state dict of tensors)")
    if preset is None:
        space = _guess_space(state, str(p))
    else:
        space = preset if isinstance(preset, SearchSpace) else load_space(preset)
    net = SuperNet(space)
    load_ofa_state_dict(net, state, str(p))
    return net.eval(), {"preset": space.name, "source": str(p), "format": "ofa"}


def _space_of(doc: dict, source: str) -> SearchSpace:
    """The search space a checkpoint describes; a description that does not build one is a one-line error."""
    try:
        return SearchSpace.from_dict(doc, source)
    except CheckpointError:
        raise
    except UserError as exc:
        raise CheckpointError(str(exc)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{source}: not a valid search space ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:80]})") from None


def save_checkpoint(net: SuperNet, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write weights + metadata atomically. The preset's full description travels in the metadata, so a
    checkpoint of a custom space loads without its JSON file."""
    doc = {"format": FORMAT, "preset": net.space.name, "space": net.space.to_dict(), **(meta or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"dynadnn": json.dumps(doc)}),
                        CheckpointError)
