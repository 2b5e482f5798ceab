"""Plans: the plain tensors that run one sub-network, detached from the super-network's modules.

A `Plan` is what `SuperNet.plan` builds (sliced, kernel-transformed and, in eval, BN-folded tensors for
every layer of one architecture), what `run_plan` executes and what `StaticNet.from_plan` copies into
standard modules. It is immutable, so a plan read once by a forward never changes under it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..space import Arch


@dataclass(frozen=True)
class BN:
    """Batch-norm parameters for the active channels. `key` names the layer for calibration records."""

    key: str
    weight: Tensor
    bias: Tensor
    mean: Tensor
    var: Tensor
    eps: float
    momentum: float


@dataclass(frozen=True)
class Conv:
    weight: Tensor
    bias: Tensor | None
    stride: int
    padding: int
    groups: int
    bn: BN | None  # None once folded (or for layers without BN)
    act: str | None


@dataclass(frozen=True)
class SE:
    reduce_w: Tensor
    reduce_b: Tensor
    expand_w: Tensor
    expand_b: Tensor


@dataclass(frozen=True)
class BlockPlan:
    expand: Conv | None
    dw: Conv
    se: SE | None
    project: Conv
    residual: bool


@dataclass(frozen=True)
class Plan:
    """Everything needed to run one sub-network, detached from the super-network's modules."""

    arch: Arch
    stem: Conv
    blocks: tuple[BlockPlan, ...]
    final: Conv
    mix: Conv
    classifier_w: Tensor
    classifier_b: Tensor
    dropout: float
    folded: bool


def detach_plan(plan: Plan) -> Plan:
    """A copy of `plan` whose tensors are detached, cloned and contiguous (no autograd, no sharing)."""
    def t(x):
        return None if x is None else x.detach().clone().contiguous()

    def bn(b: BN | None):
        return None if b is None else BN(b.key, t(b.weight), t(b.bias), t(b.mean), t(b.var), b.eps, b.momentum)

    def conv(c: Conv | None):
        return None if c is None else Conv(t(c.weight), t(c.bias), c.stride, c.padding, c.groups, bn(c.bn), c.act)

    blocks = tuple(BlockPlan(conv(b.expand), conv(b.dw),
                             None if b.se is None else SE(t(b.se.reduce_w), t(b.se.reduce_b), t(b.se.expand_w), t(b.se.expand_b)),
                             conv(b.project), b.residual) for b in plan.blocks)
    return Plan(plan.arch, conv(plan.stem), blocks, conv(plan.final), conv(plan.mix), t(plan.classifier_w),
                t(plan.classifier_b), plan.dropout, plan.folded)
