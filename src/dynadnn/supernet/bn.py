"""The BN statistics one member runs with: which layers, how wide, and the check of a given set.

A member is served with its own calibrated statistics (`SuperNet.calibrate_bn`), never the super-network's
shared ones, so a family file and every other source of members is checked against `bn_widths` before use.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import UserError
from ..space import Arch, SearchSpace


def bn_widths(space: SearchSpace, arch: Arch) -> dict[str, int]:
    """{`first_bn.running_mean`, ..., `blocks.3.dw_bn.running_var`, ...: channels} of what `arch` runs."""
    lay = space.layout(arch.r)
    want = {"first_bn": lay.stem.cout, "final_bn": lay.final.cout}
    blocks = [(0, lay.blocks[0], 1)] + [(1 + b, lay.slots[b], arch.e[b]) for b in space.active_blocks(arch)]
    for idx, blk, e in blocks:
        if blk.expands:
            want[f"blocks.{idx}.expand_bn"] = blk.mid(e)
        want[f"blocks.{idx}.dw_bn"] = blk.mid(e)
        want[f"blocks.{idx}.project_bn"] = blk.cout
    return {f"{k}.{s}": c for k, c in want.items() for s in ("running_mean", "running_var")}


def check_bn_stats(space: SearchSpace, arch: Arch, stats: Any, where: str, *, exact: bool = False,
                   error: type[UserError] = UserError) -> None:
    """Every tensor `arch` needs is there, 1-D of its layer's width, floating point, finite, variances >= 0
    (and, with `exact`, no other tensor); a one-line `error` naming the first that is not."""
    import torch

    if not isinstance(stats, Mapping) or not stats:
        raise error(f"{where}: no BN statistics; expected the member's calibrated statistics "
                    "(serving it on the super-network's shared ones would be uncalibrated)")
    want = bn_widths(space, arch)
    missing = sorted(set(want) - set(stats))
    extra = sorted(set(stats) - set(want)) if exact else []
    if missing or extra:
        what = f"lack '{missing[0]}'" if missing else f"hold '{extra[0]}', which the member does not use"
        raise error(f"{where}: BN statistics {what} ({len(stats)} of {len(want)} tensors)")
    for key, width in want.items():
        t = stats[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (width,) or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise error(f"{where}: BN tensor '{key}': expected {width} floating-point numbers, got {shape}")
        if not bool(torch.isfinite(t).all()) or (key.endswith("running_var") and bool((t < 0).any())):
            raise error(f"{where}: BN tensor '{key}' holds non-finite values or a negative variance")
