"""Analytical multiply-accumulates (MACs) and parameter counts of sub-networks.

Counted as hook-based counters count a model: every convolution contributes out_h * out_w * out_c *
(in_c / groups) * k * k MACs, every linear layer in * out; element-wise work (BN, activations, residual
adds, pooling) is not counted. Parameters are those of the extracted (un-fused) static model:
convolution and linear weights and biases plus BatchNorm affine parameters. As with latency, per
(resolution, block slot, kernel, expand) costs are laid out once so that any number of architectures is
one gather and one masked sum. The hook counter that cross-checks it is `evaluate.count_macs_params`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..space import Arch, BlockShape, ConvShape, SearchSpace
from .genes import GeneCoding


def _conv_cost(c: ConvShape) -> tuple[int, int]:
    """(MACs, parameters) of a fixed convolution (its BN's affine parameters included)."""
    weights = c.cin * c.cout * c.kernel * c.kernel
    return c.fout * c.fout * weights, weights + (2 * c.cout if c.bn else 0)


def _block_cost(b: BlockShape, k: int, e: int) -> tuple[int, int]:
    """(MACs, parameters) of block `b` at kernel `k` and expand ratio `e`."""
    f, fo, mid = b.fin, b.fout, b.mid(e)
    macs = params = 0
    if b.expands:
        macs += f * f * b.cin * mid
        params += b.cin * mid + 2 * mid
    macs += fo * fo * mid * k * k
    params += mid * k * k + 2 * mid
    if b.se:
        s = b.se_width(mid)
        macs += 2 * mid * s
        params += 2 * mid * s + s + mid
    macs += fo * fo * mid * b.cout
    params += mid * b.cout + 2 * b.cout
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
        for ri, r in enumerate(s.resolutions):
            lay = s.layout(r)
            first = lay.blocks[0]
            classifier = lay.mix.cout * lay.n_classes
            fixed = [_conv_cost(c) for c in (lay.stem, lay.final, lay.mix)] + [(classifier, classifier + lay.n_classes),
                                                                               _block_cost(first, first.ks_choices[0], first.e_choices[0])]
            self.fixed_macs[ri] = sum(m for m, _ in fixed)
            self.fixed_params = int(sum(p for _, p in fixed))
            for slot, b in enumerate(lay.slots):
                for ki, k in enumerate(b.ks_choices):
                    for ei, e in enumerate(b.e_choices):
                        self.block_macs[ri, slot, ki, ei], self.block_params[slot, ki, ei] = _block_cost(b, k, e)
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
