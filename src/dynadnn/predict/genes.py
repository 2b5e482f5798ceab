"""Integer gene coding of architectures, shared by the vectorised predictors and the searches.

Predicting thousands of architectures in milliseconds needs them as one integer array rather than a
list of `Arch` objects. A row holds, in order: the kernel-choice index of every block slot, the
expand-choice index of every block slot, the depth-choice index of every stage, and the resolution
index (into `GeneCoding.resolutions`, which may be a subset of the space's, e.g. the resolutions a
latency table covers). Every row of in-range integers is a valid architecture, so a search over rows
never needs repair or rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..space import Arch, SearchSpace


@dataclass(frozen=True)
class GeneCoding:
    space: SearchSpace
    resolutions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        res = tuple(sorted(self.resolutions)) if self.resolutions else self.space.resolutions
        bad = [r for r in res if r not in self.space.resolutions]
        if bad:
            raise UserError(f"resolutions {bad} are not in preset '{self.space.name}' "
                            f"(allowed {self.space.resolutions[0]}..{self.space.resolutions[-1]})")
        object.__setattr__(self, "resolutions", res)

    # --- layout ---------------------------------------------------------------------------------
    @property
    def nb(self) -> int:
        return self.space.n_blocks

    @property
    def ns(self) -> int:
        return self.space.n_stages

    @property
    def n_genes(self) -> int:
        return 2 * self.nb + self.ns + 1

    @property
    def upper(self) -> np.ndarray:
        """Number of choices per gene (genes take values 0..upper-1)."""
        s = self.space
        return np.array([len(s.ks_choices)] * self.nb + [len(s.e_choices)] * self.nb
                        + [len(s.d_choices)] * self.ns + [len(self.resolutions)], dtype=np.int64)

    def split(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(kernel idx [n, nb], expand idx [n, nb], depth idx [n, ns], resolution idx [n])."""
        g = np.asarray(genes)
        if g.ndim == 1:
            g = g[None]
        nb, ns = self.nb, self.ns
        return g[:, :nb], g[:, nb:2 * nb], g[:, 2 * nb:2 * nb + ns], g[:, -1]

    def block_mask(self, genes: np.ndarray) -> np.ndarray:
        """[n, nb] booleans: which block slots each architecture runs."""
        _, _, d, _ = self.split(genes)
        depths, pos, stage = self._slot_layout
        return pos[None, :] < depths[d][:, stage]

    @cached_property
    def resolution_columns(self) -> np.ndarray:
        """The encoding's column for each resolution index of this coding."""
        s = self.space
        base = self.nb * (len(s.ks_choices) + len(s.e_choices))
        return base + np.array([s._r_index(v) for v in self.resolutions])

    @cached_property
    def _slot_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth per depth index, each slot's position in its stage, each slot's stage): block_mask runs on
        every candidate batch of a search, so these are built once."""
        s = self.space
        return np.asarray(s.d_choices), np.arange(self.nb) % s.max_depth, np.arange(self.nb) // s.max_depth

    # --- conversion -----------------------------------------------------------------------------
    def encode(self, archs: Sequence[Arch]) -> np.ndarray:
        s = self.space
        kidx = {k: i for i, k in enumerate(s.ks_choices)}
        eidx = {e: i for i, e in enumerate(s.e_choices)}
        didx = {d: i for i, d in enumerate(s.d_choices)}
        ridx = {r: i for i, r in enumerate(self.resolutions)}
        out = np.empty((len(archs), self.n_genes), dtype=np.int64)
        for row, a in enumerate(archs):
            s.validate(a)
            if a.r not in ridx:
                raise UserError(f"arch {a.short()}: resolution {a.r} is outside the searched/profiled "
                                f"resolutions {self.resolutions[0]}..{self.resolutions[-1]}")
            out[row, :self.nb] = [kidx[k] for k in a.ks]
            out[row, self.nb:2 * self.nb] = [eidx[e] for e in a.e]
            out[row, 2 * self.nb:2 * self.nb + self.ns] = [didx[d] for d in a.d]
            out[row, -1] = ridx[a.r]
        return out

    def decode(self, genes: np.ndarray) -> list[Arch]:
        s = self.space
        k, e, d, r = self.split(genes)
        ks, es, ds, rs = (np.asarray(s.ks_choices)[k], np.asarray(s.e_choices)[e], np.asarray(s.d_choices)[d],
                          np.asarray(self.resolutions)[r])
        return [Arch(tuple(ks[i].tolist()), tuple(es[i].tolist()), tuple(ds[i].tolist()), int(rs[i]))
                for i in range(len(rs))]

    def canonical(self, genes: np.ndarray) -> np.ndarray:
        """Inactive block slots set to choice 0, so equal networks have equal rows (for de-duplication)."""
        g = np.array(genes, copy=True)
        if g.ndim == 1:
            g = g[None]
        mask = self.block_mask(g)
        g[:, :self.nb] *= mask
        g[:, self.nb:2 * self.nb] *= mask
        return g

    def onehot(self, genes: np.ndarray) -> np.ndarray:
        """`SearchSpace.encode_many` for a gene array, without a Python loop over architectures."""
        k, e, _, r = self.split(genes)
        n = len(k)
        mask = self.block_mask(genes)
        out = np.zeros((n, self.space.encoding_size), dtype=np.float32)
        rows, slots = np.arange(n)[:, None], np.arange(self.nb)[None, :]
        k_cols, e_cols = self.slot_columns
        out[rows, k_cols[slots, k]] = mask
        out[rows, e_cols[slots, e]] = mask
        out[np.arange(n), self.resolution_columns[r]] = 1.0
        return out

    @cached_property
    def slot_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """([nb, kernels], [nb, expands]): the encoding's column of each slot's kernel and expand choices."""
        s, nb = self.space, self.nb
        nk, ne = len(s.ks_choices), len(s.e_choices)
        return (np.arange(nb)[:, None] * nk + np.arange(nk)[None, :],
                nb * nk + np.arange(nb)[:, None] * ne + np.arange(ne)[None, :])

    def slot_choices(self, genes: np.ndarray) -> np.ndarray:
        """[n, nb] each slot's (kernel, expand) as one index, kernel-major: the last axis of
        `LatencyTable.slot_costs_genes` and of a search's per-slot model values."""
        k, e, _, _ = self.split(genes)
        return k * len(self.space.e_choices) + e

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Uniform per gene (OFA's sampling)."""
        return rng.integers(0, self.upper[None, :], size=(n, self.n_genes))
