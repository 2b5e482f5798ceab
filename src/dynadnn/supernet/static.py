"""Static sub-networks: what `SuperNet.extract` returns and what the runtime keeps resident.

A `StaticNet` is built only from standard `nn.Conv2d`, `nn.BatchNorm2d`, `nn.Linear` and activation
modules, holds its own copies of the weights and knows nothing of the super-network, so it can be
saved, exported to ONNX or quantised like any torchvision model. `fuse()` folds every BatchNorm into
the convolution before it, which removes a third of the layers a batch-1 inference walks through.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..space import SearchSpace
from .plan import Conv, Plan


# The activation table: each activation a preset may name (`space.ACTIVATIONS`) as a function (what
# `run_plan` applies) and as a module (what static members and profiled layers hold).
ACTIVATION_TABLE: dict[str, tuple[Callable[[Tensor], Tensor], type[nn.Module]]] = {
    "relu": (F.relu, nn.ReLU),
    "h_swish": (F.hardswish, nn.Hardswish),
}


def act_fn(name: str | None) -> Callable[[Tensor], Tensor] | None:
    """The function for activation `name` (None: no activation)."""
    return None if name is None else ACTIVATION_TABLE[name][0]


def act_module(name: str | None) -> nn.Module | None:
    """A new module for activation `name` (None: no activation)."""
    return None if name is None else ACTIVATION_TABLE[name][1]()


def _conv_layer(c: Conv) -> nn.Sequential:
    out_c, in_per_group, k, _ = c.weight.shape
    conv = nn.Conv2d(in_per_group * c.groups, out_c, k, c.stride, c.padding, groups=c.groups, bias=c.bias is not None)
    conv.weight.data.copy_(c.weight)
    if c.bias is not None:
        conv.bias.data.copy_(c.bias)
    layers: list[tuple[str, nn.Module]] = [("conv", conv)]
    if c.bn is not None:
        bn = nn.BatchNorm2d(out_c, eps=c.bn.eps, momentum=c.bn.momentum)
        bn.weight.data.copy_(c.bn.weight)
        bn.bias.data.copy_(c.bn.bias)
        bn.running_mean.copy_(c.bn.mean)
        bn.running_var.copy_(c.bn.var)
        layers.append(("bn", bn))
    act = act_module(c.act)
    if act is not None:
        layers.append(("act", act))
    return nn.Sequential(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(3, keepdim=True).mean(2, keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, expand: nn.Module | None, dw: nn.Module, se: nn.Module | None, project: nn.Module,
                 residual: bool):
        super().__init__()
        self.expand, self.dw, self.se, self.project, self.residual = expand, dw, se, project, residual

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class StaticNet(nn.Module):
    """A fixed MobileNetV3 sub-network."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], final: nn.Module, mix: nn.Module,
                 classifier: nn.Linear, dropout: float, arch=None, preset: str = ""):
        super().__init__()
        self.stem, self.blocks, self.final, self.mix = stem, nn.Sequential(*blocks), final, mix
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier
        self.arch, self.preset = arch, preset

    @classmethod
    def from_plan(cls, plan: Plan, space: SearchSpace) -> "StaticNet":
        blocks = []
        for b in plan.blocks:
            se = None
            if b.se is not None:
                se = SqueezeExcite(b.se.reduce_w.shape[1], b.se.reduce_w.shape[0])
                se.reduce.weight.data.copy_(b.se.reduce_w)
                se.reduce.bias.data.copy_(b.se.reduce_b)
                se.expand.weight.data.copy_(b.se.expand_w)
                se.expand.bias.data.copy_(b.se.expand_b)
            blocks.append(InvertedResidual(None if b.expand is None else _conv_layer(b.expand), _conv_layer(b.dw), se,
                                           _conv_layer(b.project), b.residual))
        linear = nn.Linear(plan.classifier_w.shape[1], plan.classifier_w.shape[0])
        linear.weight.data.copy_(plan.classifier_w)
        linear.bias.data.copy_(plan.classifier_b)
        net = cls(_conv_layer(plan.stem), blocks, _conv_layer(plan.final), _conv_layer(plan.mix), linear,
                  plan.dropout, plan.arch, space.name)
        return net.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        x = self.final(x).mean(3, keepdim=True).mean(2, keepdim=True)
        x = self.mix(x).flatten(1)
        return self.classifier(self.dropout(x))

    @torch.no_grad()
    def fuse(self) -> "StaticNet":
        """A copy with every Conv+BN pair folded into one biased Conv (for inference only)."""
        net = copy.deepcopy(self).eval()
        for module in net.modules():
            if isinstance(module, nn.Sequential) and "bn" in module._modules:
                conv, bn = module.conv, module.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  groups=conv.groups, bias=True)
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(bn.bias - bn.running_mean * scale + (0 if conv.bias is None else conv.bias * scale))
                module.conv = fused
                del module._modules["bn"]
        return net
