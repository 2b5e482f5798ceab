"""Analytical multiply-accumulates (MACs) and parameter counts of sub-networks.

Counted as hook-based counters count a model: every convolution contributes out_h * out_w * out_c *
(in_c / groups) * k * k MACs, every linear layer in * out; element-wise work (BN, activations, residual
adds, pooling) is not counted. Parameters are those of the extracted (un-fused) static model:
convolution and linear weights and biases plus BatchNorm affine parameters. As with latency, per
(resolution, block slot, kernel, expand) costs are laid out once so that any number of architectures is
one gather and one masked sum.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..space import Arch, SearchSpace
from .genes import GeneCoding
from .latency import out_size


def _block_cost(space: SearchSpace, f: int, cin: int, cout: int, stride: int, se: bool, k: int, mid: int,
                has_expand: bool) -> tuple[int, int]:
    fo = out_size(f, stride)
    macs = params = 0
    if has_expand:
        macs += f * f * cin * mid
        params += cin * mid + 2 * mid
    macs += fo * fo * mid * k * k
    params += mid * k * k + 2 * mid
    if se:
        s = space.se_width(mid)
        macs += 2 * mid * s
        params += 2 * mid * s + s + mid
    macs += fo * fo * mid * cout
    params += mid * cout + 2 * cout
    return macs, params


class FlopsModel:
    """MACs and parameter counts for every architecture of a space, vectorised over gene arrays."""

    def __init__(self, space: SearchSpace):
        self.space = space
        s = space
        nr, nb, nk, ne = len(s.resolutions), s.n_blocks, len(s.ks_choices), len(s.e_choices)
        self.fixed_macs = np.zeros(nr, dtype=np.int64)
        self.block_macs = np.zeros((nr, nb, nk, ne), dtype=np.int64)
        self.block_params = np.zeros((nb, nk, ne), dtype=np.int64)
        fc, fb = s.first_conv, s.first_block
        for ri, r in enumerate(s.resolutions):
            f = out_size(r, fc.stride)
            macs = f * f * s.in_channels * fc.width * 9
            m, p_first = _block_cost(s, f, fc.width, fb.width, fb.stride, fb.se, 3, fc.width, has_expand=False)
            macs += m
            f, cin = out_size(f, fb.stride), fb.width
            b = 0
            for st in s.stages:
                for i in range(s.max_depth):
                    stride = st.stride if i == 0 else 1
                    for ki, k in enumerate(s.ks_choices):
                        for ei, e in enumerate(s.e_choices):
                            m, p = _block_cost(s, f, cin, st.width, stride, st.se, k, s.middle_width(cin, e), True)
                            self.block_macs[ri, b, ki, ei] = m
                            self.block_params[b, ki, ei] = p
                    f, cin, b = out_size(f, stride), st.width, b + 1
            macs += f * f * cin * s.final_expand + s.final_expand * s.feature_mix + s.feature_mix * s.n_classes
            self.fixed_macs[ri] = macs
        self.fixed_params = int(s.in_channels * fc.width * 9 + 2 * fc.width + p_first
                                + cin * s.final_expand + 2 * s.final_expand + s.final_expand * s.feature_mix
                                + s.feature_mix * s.n_classes + s.n_classes)
        self._r_pos = {r: i for i, r in enumerate(s.resolutions)}

    def _gather(self, genes: np.ndarray, coding: GeneCoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k, e, _, r = coding.split(genes)
        ri = np.array([self._r_pos[v] for v in coding.resolutions])[r]
        return k, e, ri

    def macs_genes(self, genes: np.ndarray, coding: GeneCoding) -> np.ndarray:
        k, e, ri = self._gather(genes, coding)
        per = self.block_macs[ri[:, None], np.arange(coding.nb)[None, :], k, e]
        return self.fixed_macs[ri] + (per * coding.block_mask(genes)).sum(1)

    def params_genes(self, genes: np.ndarray, coding: GeneCoding) -> np.ndarray:
        k, e, _ = self._gather(genes, coding)
        per = self.block_params[np.arange(coding.nb)[None, :], k, e]
        return self.fixed_params + (per * coding.block_mask(genes)).sum(1)

    def macs(self, archs: Sequence[Arch] | Arch) -> np.ndarray:
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        coding = GeneCoding(self.space)
        return self.macs_genes(coding.encode(archs), coding)

    def params(self, archs: Sequence[Arch] | Arch) -> np.ndarray:
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        coding = GeneCoding(self.space)
        return self.params_genes(coding.encode(archs), coding)


def count_macs_params(model, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Hook-based count on any torch model (the cross-check for `FlopsModel`): conv and linear MACs, all
    parameters."""
    import torch
    from torch import nn

    total = [0]

    def conv_hook(m: nn.Conv2d, _inp, out):
        total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        total[0] += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0], sum(p.numel() for p in model.parameters())
