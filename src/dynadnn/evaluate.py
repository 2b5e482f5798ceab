"""BN-calibrated evaluation of super-network members.

A member's accuracy means little with the super-network's shared running statistics: they were averaged over
every member trained, so the statistics of any one member are wrong and small members can fall to chance.
As OFA does, each member is evaluated after re-estimating its BN statistics on training images
(`SuperNet.calibrate_bn`, ~2000 images); `calibrate=False` shows the difference.
"""

from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .data import resize_batch
from .errors import UserError
from .space import Arch, SearchSpace
from .supernet import SuperNet
from .validate import count


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameters) of `model` on one input of `input_shape` (no batch dimension), counted with hooks
    (the cross-check for `predict.FlopsModel`): every Conv2d contributes out_h * out_w * out_c * (in_c /
    groups) * k_h * k_w, every Linear out * in; element-wise work is not counted. Parameters: all of them.
    Puts `model` in eval mode."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total, sum(p.numel() for p in model.parameters())


def member_cost(net: SuperNet, arch: Arch) -> tuple[int, int]:
    """(MACs, parameters) of the member as a static network (BN folded, as the runtime runs it)."""
    return count_macs_params(net.extract(arch).fuse(), (net.space.in_channels, arch.r, arch.r))


def _images(batches) -> list[Tensor]:
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not images:
        raise UserError("calibration: no image batches (expected at least one; is the training split empty?)")
    return images


def calibrate_members(net: SuperNet, archs: Sequence[Arch], images, n_images: int = 2000,
                      seed: int = 0) -> list[dict[str, Tensor]]:
    """BN statistics of each member re-estimated on training images resized to its resolution, as OFA
    calibrates a sub-network before using it. `images` is a data set (`n_images` of its training split are
    drawn with `seed`) or a sequence of image batches (or (image, label) pairs), used as given."""
    if hasattr(images, "calibration_batches"):
        images = images.calibration_batches(count(n_images, "calib_images", low=1, high=10_000_000), seed=seed)
    batches = _images(images)
    return [net.calibrate_bn(arch, [resize_batch(x, arch.r) for x in batches]) for arch in archs]


def calibrate(net: SuperNet, arch: Arch, images, n_images: int = 2000, seed: int = 0) -> dict[str, Tensor]:
    """`calibrate_members` for one member."""
    return calibrate_members(net, [arch], images, n_images, seed)[0]


@torch.inference_mode()
def top1(net: SuperNet, arch: Arch, batches, bn_stats: Mapping[str, Tensor] | None = None, *,
         limit: int | None = None, batch_size: int = 500) -> float:
    """Top-1 accuracy (percent) of a member at its resolution: extracted with `bn_stats` (else the
    super-network's shared statistics), BN folded, channels-last (depthwise convolutions run several times
    faster so). `batches` is a data set (its test split) or (image, label) batches; `limit` keeps the first
    images only (the same ones for every member)."""
    if hasattr(batches, "test_batches"):
        batches = batches.test_batches(batch_size)
    model = net.extract(arch, bn_stats=bn_stats).fuse().eval().to(memory_format=torch.channels_last)
    correct = n = 0
    for x, y in batches:
        if limit is not None:
            if n >= limit:
                break
            x, y = x[: limit - n], y[: limit - n]
        pred = model(resize_batch(x, arch.r).contiguous(memory_format=torch.channels_last)).argmax(1)
        correct += int((pred == y).sum())
        n += int(y.numel())
    if n == 0:
        raise UserError("evaluation: the test split is empty")
    return 100.0 * correct / n


MAX_RANDOM = 1000  # random members one evaluation may ask for (each is calibrated and tested)


def subnet_parts(subnets: str) -> list[tuple[str, int]]:
    """The parts of a `--subnets` list, checked without a search space: [("max", 1), ("random", N), ...]."""
    if not isinstance(subnets, str):
        raise UserError(f"subnets: expected a comma list of max, min, random:N, got {subnets!r}")
    parts: list[tuple[str, int]] = []
    for part in [p.strip() for p in subnets.split(",") if p.strip()]:
        if part in ("max", "min"):
            parts.append((part, 1))
        elif part.startswith("random:"):
            n = part[7:].strip()
            if not re.fullmatch(r"[+-]?[0-9]+", n):
                raise UserError(f"subnets: '{part[:40]}': expected random:N with an integer N")
            parts.append(("random", count(int(n), f"subnets: '{part}': N", low=1, high=MAX_RANDOM)))
        else:
            raise UserError(f"subnets: '{part[:40]}': expected max, min or random:N")
    if not parts:
        raise UserError("subnets: empty (expected e.g. max,min,random:20)")
    return parts


def parse_subnets(spec: str, space: SearchSpace, seed: int = 0) -> list[tuple[str, Arch]]:
    """`max,min,random:20`: the members named, random ones seeded by `seed`, at random resolutions."""
    parts = subnet_parts(spec)
    rng = random.Random(count(seed, "seed", low=0))
    out: list[tuple[str, Arch]] = []
    for kind, n in parts:
        if kind == "max":
            out.append(("max", space.max_arch()))
        elif kind == "min":
            out.append(("min", space.min_arch()))
        else:
            first = sum(1 for name, _ in out if name.startswith("random"))
            out += [(f"random{first + i}", space.sample(rng)) for i in range(n)]
    return out


def check_data_fits(net: SuperNet, data) -> None:
    """Refuse data whose channels or classes differ from the network's (one line naming both)."""
    space = net.space
    if data.n_classes != space.n_classes or data.in_channels != space.in_channels:
        raise UserError(f"data: {getattr(data, 'name', 'the data set')}: {data.in_channels} channel(s) and "
                        f"{data.n_classes} classes; the network expects {space.in_channels} and {space.n_classes}")


def evaluate_members(net: SuperNet, data, members: list[tuple[str, Arch]], calibrate_bn: bool = True,
                     n_calib: int = 2000, with_cost: bool = False, progress=None) -> list[dict]:
    """One row per member: name, arch (dict), top1 (%), and with `with_cost` its MACs and parameters."""
    if calibrate_bn:
        count(n_calib, "calib_images", low=1, high=10_000_000)
    if not members:
        raise UserError("subnets: no members to evaluate")
    check_data_fits(net, data)
    rows = []
    test = list(data.test_batches())
    calib = data.calibration_batches(n_calib) if calibrate_bn else None  # the same images for every member
    for name, arch in members:
        stats = calibrate(net, arch, calib) if calibrate_bn else None
        row = {"name": name, "arch": arch.to_dict(), "top1": round(top1(net, arch, test, stats), 3)}
        if with_cost:
            row["macs"], row["params"] = member_cost(net, arch)
        rows.append(row)
        if progress:
            progress(row)
    return rows
