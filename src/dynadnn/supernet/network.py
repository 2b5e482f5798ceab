"""The elastic MobileNetV3 super-network (Once-for-All compatible).

Parameters live in ordinary `nn.Conv2d`/`nn.BatchNorm2d`/`nn.Linear` modules sized for the largest
sub-network. Running a sub-network means building a `Plan`: the sliced, kernel-transformed (and in eval,
BN-folded) tensors for every layer of that architecture. Training builds a plan on every step (autograd
flows through the slicing); inference builds it once at `set_active` and reuses it, so a forward costs
the same as a static model's. A plan is immutable and `forward` reads the active one once, so a switch
from another thread never mixes two members within one inference.

Semantics follow OFA exactly (elastic kernel via the 7to5 / 5to3 transformation matrices applied to the
centre crop; expand ratio by prefix slicing; depth = the first d blocks of each stage; SE width from the
active middle width; h-swish/h-sigmoid), which the parity test checks against the `ofa` package.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArchError
from ..space import Arch, BlockShape, SearchSpace
from .plan import BN, SE, BlockPlan, Conv, Plan, detach_plan
from .static import StaticNet, act_fn


# ----------------------------------------------------------------------------------------------------
# Modules that hold the parameters (OFA's layout is a name mapping away: see checkpoint.py)
# ----------------------------------------------------------------------------------------------------
def _bn(c: int, space: SearchSpace) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=space.bn_eps, momentum=space.bn_momentum)


class ElasticBlock(nn.Module):
    """An inverted-residual block at its largest size (`shape`, from the space's layout); `plan` slices it
    for a kernel and expand ratio."""

    def __init__(self, space: SearchSpace, shape: BlockShape):
        super().__init__()
        self.shape = shape
        self.cin, self.cout, self.stride, self.act, self.use_se = shape.cin, shape.cout, shape.stride, shape.act, shape.se
        self.ks_choices, self.e_choices = tuple(sorted(shape.ks_choices)), tuple(sorted(shape.e_choices))
        self.residual = shape.residual
        max_mid, kmax = shape.max_mid, max(self.ks_choices)
        if shape.expands:
            self.expand = nn.Conv2d(shape.cin, max_mid, 1, bias=False)
            self.expand_bn = _bn(max_mid, space)
        else:  # OFA's first block: no expansion, the middle width is the input width
            self.expand, self.expand_bn = None, None
        self.dw = nn.Conv2d(max_mid, max_mid, kmax, shape.stride, kmax // 2, groups=max_mid, bias=False)
        self.dw_bn = _bn(max_mid, space)
        # OFA's kernel transformation matrices, largest first: "7to5", "5to3", each initialised to identity.
        self.kernel_transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for small, big in zip(self.ks_choices[:-1], self.ks_choices[1:])
        })
        if shape.se:
            se_mid = shape.se_width(max_mid)
            self.se_reduce = nn.Conv2d(max_mid, se_mid, 1, bias=True)
            self.se_expand = nn.Conv2d(se_mid, max_mid, 1, bias=True)
        self.project = nn.Conv2d(max_mid, shape.cout, 1, bias=False)
        self.project_bn = _bn(shape.cout, space)

    def middle(self, e: int) -> int:
        return self.shape.mid(e)

    def dw_filter(self, mid: int, k: int) -> Tensor:
        """Depthwise filter for kernel `k`: the centre crop of the largest kernel, transformed step by step
        (7 -> 5 -> 3) by the learned matrices, exactly as OFA's DynamicSeparableConv2d does."""
        w = self.dw.weight[:mid]
        size = w.shape[-1]
        if k == size:
            return w
        if k not in self.ks_choices:
            raise ArchError(f"kernel size {k} is not one of {list(self.ks_choices)}")
        for big, small in zip(reversed(self.ks_choices[1:]), reversed(self.ks_choices[:-1])):
            if big <= k:
                break
            start = (big - small) // 2
            crop = w[:, :, start:start + small, start:start + small].reshape(-1, small * small)
            w = F.linear(crop, self.kernel_transforms[f"{big}to{small}"]).view(mid, 1, small, small)
        return w

    @torch.no_grad()
    def reorganize_middle(self, expand_ratio_stage: int = 0) -> None:
        """Permute the middle channels by descending importance (see `SuperNet.reorganize_channels`);
        mirrors OFA's `DynamicMBConvLayer.re_organize_middle_weights` step by step."""
        importance = self.project.weight.abs().sum(dim=(0, 2, 3))
        if expand_ratio_stage > 0:
            targets = [self.shape.mid(e) for e in sorted(self.e_choices, reverse=True)]
            right, base = len(importance), -len(targets) * 1e5
            for i in range(expand_ratio_stage + 1):
                left = targets[i]
                importance[left:right] += base
                base += 1e5
                right = left
        order = torch.sort(importance, dim=0, descending=True)[1]

        def permute(t: Tensor, dim: int, idx: Tensor) -> None:
            t.copy_(torch.index_select(t, dim, idx))

        permute(self.project.weight, 1, order)
        for t in (self.dw_bn.weight, self.dw_bn.bias, self.dw_bn.running_mean, self.dw_bn.running_var):
            permute(t, 0, order)
        permute(self.dw.weight, 0, order)
        if self.use_se:
            permute(self.se_expand.weight, 0, order)
            permute(self.se_expand.bias, 0, order)
            permute(self.se_reduce.weight, 1, order)
            se_order = torch.sort(self.se_expand.weight.abs().sum(dim=(0, 2, 3)), dim=0, descending=True)[1]
            permute(self.se_expand.weight, 1, se_order)
            permute(self.se_reduce.weight, 0, se_order)
            permute(self.se_reduce.bias, 0, se_order)
        if self.expand is not None:
            for t in (self.expand_bn.weight, self.expand_bn.bias, self.expand_bn.running_mean,
                      self.expand_bn.running_var):
                permute(t, 0, order)
            permute(self.expand.weight, 0, order)


class SuperNet(nn.Module):
    """OFA's elastic MobileNetV3 for any `SearchSpace`."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        # channels, kernels, strides and activations do not depend on the resolution: any layout serves
        self.layout = lay = space.layout(space.resolutions[-1])
        stem, final, mix = lay.stem, lay.final, lay.mix
        self.first_conv = nn.Conv2d(stem.cin, stem.cout, stem.kernel, stem.stride, stem.kernel // 2, bias=False)
        self.first_bn = _bn(stem.cout, space)
        self.blocks = nn.ModuleList([ElasticBlock(space, shape) for shape in lay.blocks])
        self.final_expand = nn.Conv2d(final.cin, final.cout, final.kernel, bias=False)
        self.final_bn = _bn(final.cout, space)
        self.feature_mix = nn.Conv2d(mix.cin, mix.cout, mix.kernel, bias=False)
        self.classifier = nn.Linear(mix.cout, lay.n_classes)
        self._lock = threading.Lock()
        self._plan_cache: OrderedDict[tuple, Plan] = OrderedDict()
        self.plan_cache_size = 32
        self.active_arch = space.max_arch()
        self._plan: Plan | None = None
        self.reset_parameters()

    # --- initialisation ---------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """He (fan-out) init for convolutions, unit BN, uniform linear: OFA's `init_model('he_fout')`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.weight.shape[1] ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
        self.invalidate()

    # --- plans ------------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached plans: call after the weights or BN buffers change outside `train()`."""
        with self._lock:
            self._plan_cache.clear()
            self._plan = None

    def train(self, mode: bool = True) -> "SuperNet":
        super().train(mode)
        self.invalidate()
        return self

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: D401 - torch hook
        self.invalidate()
        return super()._load_from_state_dict(*args, **kwargs)

    def plan(self, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None, fold_bn: bool = False) -> Plan:
        """Tensors for `arch`. In no-grad mode they are detached copies (safe to keep); with grad they are
        views that back-propagate into the super-network. `bn_stats` (from `calibrate_bn`) replaces the
        shared running statistics for this member only."""
        space = self.space
        space.validate(arch)
        stats = bn_stats or {}

        def bn(module: nn.BatchNorm2d, key: str, c: int) -> BN:
            mean = stats.get(f"{key}.running_mean", module.running_mean[:c])
            var = stats.get(f"{key}.running_var", module.running_var[:c])
            if mean.shape[0] != c or var.shape[0] != c:
                raise ArchError(f"BN statistics '{key}' have {mean.shape[0]} channels, the member needs {c}")
            return BN(key, module.weight[:c], module.bias[:c], mean, var, module.eps, module.momentum or 0.0)

        def conv(weight: Tensor, stride: int, groups: int, bn_: BN | None, act: str | None) -> Conv:
            k = weight.shape[-1]
            if fold_bn and bn_ is not None:
                scale = bn_.weight / torch.sqrt(bn_.var + bn_.eps)
                return Conv((weight * scale.view(-1, 1, 1, 1)).contiguous(), (bn_.bias - bn_.mean * scale).contiguous(),
                            stride, k // 2, groups, None, act)
            return Conv(weight, None, stride, k // 2, groups, bn_, act)

        lay = self.layout
        stem = conv(self.first_conv.weight, lay.stem.stride, 1, bn(self.first_bn, "first_bn", lay.stem.cout), lay.stem.act)
        active = [0] + [1 + b for b in space.active_blocks(arch)]
        blocks = []
        for idx in active:
            blk: ElasticBlock = self.blocks[idx]
            k, e = (3, 1) if idx == 0 else (arch.ks[idx - 1], arch.e[idx - 1])
            mid = blk.middle(e)
            p = f"blocks.{idx}"
            expand = None
            if blk.expand is not None:
                expand = conv(blk.expand.weight[:mid], 1, 1, bn(blk.expand_bn, f"{p}.expand_bn", mid), blk.act)
            dw = conv(blk.dw_filter(mid, k), blk.stride, mid, bn(blk.dw_bn, f"{p}.dw_bn", mid), blk.act)
            se = None
            if blk.use_se:
                s = blk.shape.se_width(mid)
                se = SE(blk.se_reduce.weight[:s, :mid], blk.se_reduce.bias[:s],
                        blk.se_expand.weight[:mid, :s], blk.se_expand.bias[:mid])
            project = conv(blk.project.weight[:, :mid], 1, 1, bn(blk.project_bn, f"{p}.project_bn", blk.cout), None)
            blocks.append(BlockPlan(expand, dw, se, project, blk.residual))
        final = conv(self.final_expand.weight, lay.final.stride, 1, bn(self.final_bn, "final_bn", lay.final.cout),
                     lay.final.act)
        mix = Conv(self.feature_mix.weight, None, lay.mix.stride, 0, 1, None, lay.mix.act)
        plan = Plan(arch, stem, tuple(blocks), final, mix, self.classifier.weight, self.classifier.bias,
                    space.dropout, fold_bn)
        if not torch.is_grad_enabled():
            plan = detach_plan(plan)
        return plan

    def set_active(self, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None, fold_bn: bool = True) -> Plan:
        """Make `arch` the network that `forward` runs. In eval mode its weights are sliced, transformed
        and (by default) BN-folded now, once; plans without custom `bn_stats` are cached (LRU)."""
        self.space.validate(arch)
        self.active_arch = arch
        if self.training:
            self._plan = None
            return None  # type: ignore[return-value]
        key = (self.space.canonical(arch), fold_bn)
        with self._lock:
            plan = self._plan_cache.get(key) if bn_stats is None else None
            if plan is not None:
                self._plan_cache.move_to_end(key)
        if plan is None:
            with torch.no_grad():
                plan = self.plan(arch, bn_stats, fold_bn)
            if bn_stats is None:
                with self._lock:
                    self._plan_cache[key] = plan
                    while len(self._plan_cache) > self.plan_cache_size:
                        self._plan_cache.popitem(last=False)
        self._plan = plan  # a single reference swap: atomic for concurrent readers
        return plan

    def use_plan(self, plan: Plan) -> None:
        """Switch to a prepared plan: a pointer swap, no tensor work."""
        self.active_arch = plan.arch
        self._plan = plan

    # --- running ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return run_plan(self.plan(self.active_arch), x, mode="train")
        plan = self._plan
        if plan is None:
            plan = self.set_active(self.active_arch)
        return run_plan(plan, x)

    @torch.no_grad()
    def calibrate_bn(self, arch: Arch, batches: Iterable[Tensor]) -> dict[str, Tensor]:
        """Re-estimate BN statistics of `arch` on `batches` as OFA's `set_running_statistics` does: each BN
        normalises with its batch mean and biased variance, and the statistics are the batch-size-weighted
        means over all batches. Returns a small dict `{"blocks.3.dw_bn.running_mean": ..., ...}` holding
        only the member's active channels; the super-network is left untouched."""
        plan = self.plan(arch, fold_bn=False)
        sums: dict[str, list] = {}
        for x in batches:
            if isinstance(x, (tuple, list)):
                x = x[0]
            # channels-last: depthwise convolutions at calibration batch sizes run up to 16x faster
            run_plan(plan, x.contiguous(memory_format=torch.channels_last), mode="calibrate", record=sums)
        if not sums:
            raise ValueError("calibrate_bn: no batches were given")
        out: dict[str, Tensor] = {}
        for key, (n, mean_sum, var_sum) in sums.items():
            out[f"{key}.running_mean"] = (mean_sum / n).contiguous()
            out[f"{key}.running_var"] = (var_sum / n).contiguous()
        return out

    @torch.no_grad()
    def load_bn_stats(self, stats: Mapping[str, Tensor]) -> None:
        """Write member statistics into the shared running buffers (prefix slices), as OFA does after
        calibration. Prefer passing `bn_stats=` to `set_active`/`extract`, which leaves the buffers alone."""
        buffers = dict(self.named_buffers())
        for key, value in stats.items():
            if key not in buffers:
                raise KeyError(f"BN statistics name unknown buffer '{key}'")
            buffers[key][: value.shape[0]].copy_(value)
        self.invalidate()

    @torch.no_grad()
    def reorganize_channels(self, expand_ratio_stage: int = 0) -> None:
        """Sort every elastic block's middle channels by importance (L1 norm of the projection weights that
        read them), so that prefix slicing for a smaller expand ratio keeps the most important ones. This is
        OFA's `re_organize_middle_weights`, applied before training the elastic expand ratio: with
        `expand_ratio_stage` = s > 0 the channels already reserved for the s largest ratios keep their
        tiers (OFA's progressive shrinking). SE's hidden units are sorted likewise. The function computed
        by the full network does not change; it permutes weights in place (parameters keep their identity,
        so an optimizer holding them stays valid) and forgets cached plans."""
        for blk in list(self.blocks)[1:]:
            blk.reorganize_middle(expand_ratio_stage)
        self.invalidate()

    def extract(self, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None) -> StaticNet:
        """A standalone static model of standard Conv2d/BatchNorm2d/Linear layers with copied weights."""
        with torch.no_grad():
            plan = self.plan(arch, bn_stats, fold_bn=False)
        return StaticNet.from_plan(plan, self.space)


# ----------------------------------------------------------------------------------------------------
# The functional forward shared by training, calibration and in-place inference
# ----------------------------------------------------------------------------------------------------
def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = x.mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
    var = ((x - mean) * (x - mean)).mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
    return mean.flatten(), var.flatten()


def _conv(c: Conv, x: Tensor, mode: str, record: dict | None) -> Tensor:
    x = F.conv2d(x, c.weight, c.bias, c.stride, c.padding, 1, c.groups)
    b = c.bn
    if b is not None:
        if mode == "eval":
            x = F.batch_norm(x, b.mean, b.var, b.weight, b.bias, False, 0.0, b.eps)
        elif mode == "train":
            x = F.batch_norm(x, b.mean, b.var, b.weight, b.bias, True, b.momentum, b.eps)
        else:  # calibrate: normalise with batch statistics and accumulate them (OFA's recipe)
            mean, var = _batch_stats(x)
            n = x.shape[0]
            acc = record.get(b.key)
            record[b.key] = [n, mean * n, var * n] if acc is None else [acc[0] + n, acc[1] + mean * n, acc[2] + var * n]
            x = F.batch_norm(x, mean, var, b.weight, b.bias, False, 0.0, b.eps)
    act = act_fn(c.act)
    return x if act is None else act(x)


def run_plan(plan: Plan, x: Tensor, mode: str = "eval", record: dict | None = None) -> Tensor:
    """Run a sub-network. `mode`: "eval" (stored statistics), "train" (batch statistics, running
    statistics updated in place), "calibrate" (batch statistics recorded into `record`)."""
    x = _conv(plan.stem, x, mode, record)
    for blk in plan.blocks:
        y = x if blk.expand is None else _conv(blk.expand, x, mode, record)
        y = _conv(blk.dw, y, mode, record)
        if blk.se is not None:
            s = y.mean(3, keepdim=True).mean(2, keepdim=True)
            s = F.relu(F.conv2d(s, blk.se.reduce_w, blk.se.reduce_b))
            y = y * F.hardsigmoid(F.conv2d(s, blk.se.expand_w, blk.se.expand_b))
        y = _conv(blk.project, y, mode, record)
        x = x + y if blk.residual else y
    x = _conv(plan.final, x, mode, record)
    x = x.mean(3, keepdim=True).mean(2, keepdim=True)
    x = _conv(plan.mix, x, mode, record).flatten(1)
    if mode == "train" and plan.dropout > 0:
        x = F.dropout(x, plan.dropout, True)
    return F.linear(x, plan.classifier_w, plan.classifier_b)
