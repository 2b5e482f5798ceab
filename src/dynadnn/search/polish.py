"""The batched local search that ends an `NSGA2Search` with budgets: from each budget's pick, every one-step
move and compound moves (one that gains accuracy plus the cheapest latency savings that bring it back within
budget) are evaluated at once, and the pick moves to the best feasible improvement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..predict.genes import GeneCoding
from .problem import SearchProblem, best_row


@dataclass
class PolishConfig:
    """The polish's knobs (`NSGA2Search.polish`)."""

    # local search rounds per budget at the end (0: none): each round moves a budget's pick to the best of its
    # one-step and compound moves, if one gains. On the reference benchmark (64 seeds), 2 rounds after 58
    # generations met all budgets about as often as 65 generations without (43 % vs 42 % of the pairs with
    # the sweep's 16 seeds), in the same time
    rounds: int = 2
    pair_candidates: int = 32  # accuracy-gaining moves per round that get a compound (latency-saving) partner


def polish_picks(problem: SearchProblem, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
                 niches: Sequence[tuple[int, float]], cfg: PolishConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The archive plus one polished architecture per (context column, budget) niche that has a feasible
    start: its best row, or an earlier (tighter) budget's polished pick when that one is better."""
    polished: list[tuple[np.ndarray, float, np.ndarray]] = []  # joined to the pool once, at the end
    for c, budget in sorted(niches):
        row = best_row(acc, lat[:, c], budget)
        origin = None if row is None else (genes[row], acc[row], lat[row])
        for p in polished:  # an earlier budget's polished pick may be this one's best origin
            if p[2][c] <= budget and (origin is None or p[1] > origin[1]):
                origin = p
        if origin is not None:
            polished.append(polish(problem, *origin, c, budget, cfg.rounds, cfg.pair_candidates))
    if polished:
        genes = np.concatenate([genes, np.stack([p[0] for p in polished])])
        acc = np.append(acc, [p[1] for p in polished])
        lat = np.concatenate([lat, np.stack([p[2] for p in polished])])
    return genes, acc, lat


def _moves(coding: GeneCoding, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every one-step neighbour of `g` (a slot's kernel and/or expand, a stage's depth, the resolution) and
    the group each move belongs to (slot index, then one group per stage depth, then one for resolution)."""
    nb = coding.nb
    upper = coding.upper
    nk, ne = upper[0], upper[nb]
    slot = np.repeat(np.arange(nb), nk * ne)
    ke = np.tile(np.arange(nk * ne), nb)
    joint = np.repeat(g[None], len(slot), axis=0)
    joint[np.arange(len(slot)), slot] = ke // ne
    joint[np.arange(len(slot)), nb + slot] = ke % ne
    gi = np.concatenate([np.full(upper[i], i) for i in range(2 * nb, coding.n_genes)])
    vi = np.concatenate([np.arange(upper[i]) for i in range(2 * nb, coding.n_genes)])
    other = np.repeat(g[None], len(gi), axis=0)
    other[np.arange(len(gi)), gi] = vi
    group = np.concatenate([slot, gi - nb])  # depth of stage s -> nb + s, resolution -> nb + ns
    cand = np.concatenate([joint, other])
    keep = ~np.all(cand == g[None], axis=1)
    return cand[keep], group[keep]


def polish(problem: SearchProblem, g0: np.ndarray, a0: float, l0: np.ndarray, c: int, budget: float,
           rounds: int, pair_candidates: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Batched local search for the most accurate architecture with latency[c] <= budget, from a feasible
    start. Each round evaluates every one-step move; then, for each move that gains accuracy but breaks the
    budget, the latency-saving moves of other groups that cost least accuracy per ms saved are added until
    the budget holds again (a compound move); the best feasible improvement is taken."""
    g, a, l = g0.copy(), float(a0), np.asarray(l0, float).copy()
    for _ in range(rounds):
        cand, group = _moves(problem.coding, g)
        ca, cl = problem.evaluate(cand)
        gain, dlat = ca - a, cl[:, c] - l[c]
        feasible = cl[:, c] <= budget
        options = [(cand[i], float(ca[i]), cl[i]) for i in np.flatnonzero(feasible & (gain > 1e-9))]
        down = np.flatnonzero(dlat < 0)
        down = down[np.argsort(np.maximum(-gain[down], 0.0) / -dlat[down], kind="stable")]
        up = np.flatnonzero((gain > 1e-9) & ~feasible)
        up = up[np.argsort(-gain[up])][:pair_candidates]
        compound = []
        for u in up:
            row = _compound(g, cand, group, dlat, down, u, l[c] + dlat[u] - budget)
            if row is not None:
                compound.append(row)
        if compound:
            rows = np.stack(compound)
            pa, pl = problem.evaluate(rows)
            for i in np.flatnonzero((pl[:, c] <= budget) & (pa > a + 1e-9)):
                options.append((rows[i], float(pa[i]), pl[i]))
        if not options:
            break
        g, a, l = max(options, key=lambda o: o[1])
        g, l = g.copy(), np.asarray(l, float)
    return g, a, l


def _compound(g: np.ndarray, cand: np.ndarray, group: np.ndarray, dlat: np.ndarray, down: np.ndarray,
              u: int, excess: float) -> np.ndarray | None:
    """Move `u` (`excess` ms over budget) plus latency-saving moves of other groups, in the order of `down`,
    until the budget holds; None if they cannot cover the excess."""
    used, row = {group[u]}, cand[u].copy()
    for d in down:
        if excess <= 0:
            break
        if group[d] in used:
            continue
        changed = cand[d] != g
        row[changed] = cand[d][changed]
        used.add(group[d])
        excess += dlat[d]
    return row if excess <= 0 else None
