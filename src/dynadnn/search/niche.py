"""The budget-niche evolution that follows the NSGA-II run when latency budgets are given.

Each (context, budget) niche breeds from its most accurate members within budget and every child counts for
all budgets it meets, so one run serves every budget of every context. Predictions go only to children that
meet their niche's budget (latency is a table look-up, ~20x cheaper than the accuracy MLP) and, among those,
to the ones a local linear model of the predictor ranks highest. A child slightly over its budget is not just
dropped: a repair changes the (kernel, expand) of a few slots, cheapest in predicted accuracy per ms saved
first, until it fits (constructive feasibility; it needs each context's per-slot costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..predict.genes import GeneCoding
from .problem import GeneFn, Pool, SearchProblem, mutate


@dataclass
class NicheConfig:
    """The niche phase's knobs (`NSGA2Search.niche`)."""

    # generations of the niche phase (0: none). With the polish, 58 fill the time that 50 took before the niche
    # phase was made leaner (BENCHMARKS, session 8)
    generations: int = 58
    parents: int = 30  # per budget: its most accurate members within budget
    children: int = 30  # per budget and generation (each one accuracy prediction)
    draws: int = 5  # candidates drawn per child, screened on latency and ranked by the local model
    mutate_prob: float = 0.05  # per resolution, block and stage depth (OFA's mutation operator)
    # a candidate at most this fraction over its niche's budget gets a repaired copy (0: no repair). Measured
    # on the reference benchmark (32 seeds): with repair, 50 generations beat 60 without, in the same time
    repair_slack: float = 0.1
    repair_moves: int = 3  # (kernel, expand) changes a repair may make
    surrogate_size: int = 600  # members within budget that each niche's ridge model is fitted to
    surrogate_every: int = 10  # generations between refits


def evolve(problem: SearchProblem, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
           niches: Sequence[tuple[int, float]], cfg: NicheConfig,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine the archive for given (context column, budget) niches in one shared evolution; returns the
    archive plus every evaluated child. Each generation, every niche breeds children (half OFA's mutation,
    half uniform crossover) from its most accurate members within budget; all children are evaluated in one
    batch and join the pool, where each counts for every budget it meets.

    An accuracy prediction costs ~12 us and a latency look-up ~0.5 us, so each niche draws `cfg.draws`
    candidates per child and spends predictions only on the most promising fresh ones within its budget:
    latency screens out over-budget candidates (as OFA's re-draw loop does), and a ridge model on the
    one-hot encoding, fitted every `surrogate_every` generations to the niche's `surrogate_size` best
    members within budget, ranks the rest. Near a niche's best the predictor is close to linear in the
    encoding, so this local model tells which few-gene changes gain accuracy; it only orders candidates, so
    every stored accuracy is still the predictor's."""
    coding = problem.coding
    genes = genes.astype(np.int8)  # every gene has < 128 choices; the phase's array work is memory-bound
    pool = Pool(coding, genes, acc, lat, len(genes) + cfg.generations * len(niches) * cfg.children)
    ctx = np.array([c for c, _ in niches])
    budget = np.array([b for _, b in niches])
    tops = _Parents(pool, ctx, budget, cfg.parents)
    weights = np.zeros((len(niches), coding.space.encoding_size), dtype=np.float32)
    costs = _slot_cost_table(problem) if cfg.repair_slack > 0 else None
    for gen in range(cfg.generations):
        live = np.flatnonzero(tops.count > 0)
        if not len(live):
            break
        if gen % cfg.surrogate_every == 0:
            values, changes = _refit(pool, live, ctx, budget, weights, costs, cfg.surrogate_size)
        cand, owner = _breed(pool, tops, live, cfg, rng)
        own_lat = _per_context(list(problem.latency.values()), cand, ctx[owner])
        if costs is not None:
            cand, owner, own_lat = _with_repaired(problem, cand, owner, own_lat, ctx, budget, changes, cfg)
        ok = np.flatnonzero(own_lat <= budget[owner])
        score = linear_scores(coding, cand[ok], owner[ok], values, weights)
        ok = ok[np.argsort(-score, kind="stable")]  # most promising first
        keep = ok[pool.fresh(cand[ok], owner[ok], cfg.children)]
        if not len(keep):
            continue
        kids = cand[keep]
        tops.update(pool.add(kids, *problem.evaluate(kids)))
    g, a, l = pool.arrays()
    return g.astype(np.int64), a, l


def _refit(pool: Pool, live: np.ndarray, ctx: np.ndarray, budget: np.ndarray, weights: np.ndarray,
           costs: np.ndarray | None, size: int) -> tuple[np.ndarray, tuple | None]:
    """Refit each live niche's ridge model (in `weights`) to its `size` best members within budget; returns
    the models' per-slot-choice values (for scores and repair) and, given `costs`, each niche's best change
    per resolution, slot and current choice (`best_changes`)."""
    for j in live:
        near = _top_within(pool.acc[:pool.size], pool.lat[:pool.size, ctx[j]], budget[j], size)
        weights[j] = _ridge(pool.onehot(near), pool.acc[near])
    values = slot_values(pool.coding, weights)
    changes = best_changes(costs[ctx], values[:, None]) if costs is not None else None
    return values, changes


def _breed(pool: Pool, tops: "_Parents", live: np.ndarray, cfg: NicheConfig,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`cfg.draws` candidates per child for every live niche (canonical rows) and the niche of each: half
    from OFA's mutation, the rest from uniform crossover."""
    n_mut = cfg.children // 2 * cfg.draws  # candidates per niche from mutation; the rest from crossover
    n_cross = (cfg.children - cfg.children // 2) * cfg.draws
    mut, pa, pb = (pool.genes[tops.draw(live, n, rng)] for n in (n_mut, n_cross, n_cross))
    cand = pool.coding.canonical(np.concatenate([
        mutate(pool.coding, mut, rng, cfg.mutate_prob),
        np.where(rng.integers(0, 2, size=pa.shape, dtype=bool), pa, pb)]))
    return cand, np.concatenate([np.repeat(live, n_mut), np.repeat(live, n_cross)])


class _Parents:
    """Each niche's (up to) `k` most accurate pool members within its budget, as one padded index matrix, so
    that drawing parents and taking in a generation's children is a few array operations for all niches."""

    def __init__(self, pool: Pool, ctx: np.ndarray, budget: np.ndarray, k: int):
        self.pool, self.ctx, self.budget, self.k = pool, ctx, budget, k
        self.idx = np.zeros((len(ctx), k), dtype=np.int64)
        self.count = np.zeros(len(ctx), dtype=np.int64)
        self.update(np.arange(pool.size))

    def update(self, new: np.ndarray) -> None:
        """Take in new pool rows: each niche keeps the k most accurate of its parents and the new rows."""
        both = np.concatenate([self.idx, np.broadcast_to(new, (len(self.idx), len(new)))], axis=1)
        valid = np.arange(both.shape[1])[None, :] < self.count[:, None]
        valid[:, self.k:] = True
        feasible = valid & (self.pool.lat[both, self.ctx[:, None]] <= self.budget[:, None])
        score = np.where(feasible, self.pool.acc[both], -np.inf)
        if score.shape[1] > self.k:
            top = np.argpartition(-score, self.k - 1, axis=1)[:, :self.k]
            both, score = np.take_along_axis(both, top, 1), np.take_along_axis(score, top, 1)
        order = np.argsort(np.isneginf(score), axis=1, kind="stable")  # parents first in each row
        self.idx[:, :both.shape[1]] = np.take_along_axis(both, order, 1)
        self.count = np.isfinite(score).sum(1)

    def draw(self, niches: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` parents (pool rows) drawn uniformly for each niche in `niches`, niche-major."""
        pos = (rng.random((len(niches), n)) * self.count[niches, None]).astype(np.int64)
        return self.idx[niches[:, None], pos].reshape(-1)


def _slot_cost_table(problem: SearchProblem) -> np.ndarray | None:
    """[contexts, resolutions, slots, kernels x expands] float32 ms of every slot choice (None when a context
    has no slot costs): looked up per candidate instead of computed per candidate."""
    if not set(problem.slot_costs) >= set(problem.contexts):
        return None
    probe = np.zeros((int(problem.coding.upper[-1]), problem.coding.n_genes), dtype=np.int64)
    probe[:, -1] = np.arange(len(probe))
    return np.stack([problem.slot_costs[name](probe) for name in problem.contexts]).astype(np.float32)


def _with_repaired(problem: SearchProblem, cand: np.ndarray, owner: np.ndarray, own_lat: np.ndarray,
                   ctx: np.ndarray, budget: np.ndarray, changes: tuple[np.ndarray, np.ndarray, np.ndarray],
                   cfg: NicheConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates plus a repaired copy of each one at most `cfg.repair_slack` over its niche's budget
    (constructive feasibility: a near-budget child is pulled within budget, not only discarded). `changes`:
    `best_changes` for every niche, resolution, slot and current choice ([niches, resolutions, slots,
    choices] each)."""
    over = np.flatnonzero((own_lat > budget[owner]) & (own_lat <= budget[owner] * (1 + cfg.repair_slack)))
    if not len(over):
        return cand, owner, own_lat
    rows, niche = cand[over], owner[over]
    at = (niche[:, None], rows[:, -1:], np.arange(problem.coding.nb)[None, :], problem.coding.slot_choices(rows))
    fixed = repair(problem.coding, rows, tuple(t[at] for t in changes), own_lat[over] - budget[niche],
                   cfg.repair_moves)
    fixed_lat = _per_context(list(problem.latency.values()), fixed, ctx[niche])
    return (np.concatenate([cand, fixed]), np.concatenate([owner, niche]),
            np.concatenate([own_lat, fixed_lat]))


def _per_context(fns: Sequence[GeneFn], genes: np.ndarray, context: np.ndarray) -> np.ndarray:
    """`fns[context[i]](genes[i])` for every row, with one call per context."""
    out = None
    for c, fn in enumerate(fns):
        rows = np.flatnonzero(context == c)
        if len(rows):
            part = fn(genes[rows])
            if out is None:
                out = np.empty((len(genes),) + part.shape[1:], dtype=part.dtype)
            out[rows] = part
    return np.empty(0) if out is None else out


def linear_scores(coding: GeneCoding, genes: np.ndarray, model: np.ndarray, values: np.ndarray,
                  weights: np.ndarray) -> np.ndarray:
    """Each row's score under linear model `model[i]` (`weights` [models, encoding]; `values` the same per
    slot choice, from `slot_values`): its running slots' choice values plus its resolution's weight, without
    one-hot rows."""
    per_slot = values[model[:, None], np.arange(coding.nb)[None, :], coding.slot_choices(genes)]
    return (per_slot * coding.block_mask(genes)).sum(1) + weights[model, coding.resolution_columns[genes[:, -1]]]


def slot_values(coding: GeneCoding, weights: np.ndarray) -> np.ndarray:
    """[..., slots, kernels x expands]: a linear model's (on the one-hot encoding) value of each slot choice."""
    k_cols, e_cols = coding.slot_columns
    k, e = weights[..., k_cols], weights[..., e_cols]
    return (k[..., :, None] + e[..., None, :]).reshape(*weights.shape[:-1], coding.nb, -1)


def best_changes(costs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ms `costs` and local-model `values` of every choice ([..., slots, kernels x expands]): from each
    current choice, the change that loses the least value per ms saved, as (new choice, loss per ms, ms
    saved), each [..., slots, current choice]; a choice with nothing cheaper gets ratio inf and saves 0."""
    saved = costs[..., :, None] - costs[..., None, :]  # [..., current, new]
    loss = np.maximum(values[..., :, None] - values[..., None, :], 0.0)
    cheaper = saved > 1e-6
    ratio = np.where(cheaper, loss, np.inf) / np.where(cheaper, saved, 1.0)
    choice = ratio.argmin(-1)
    best = np.take_along_axis(ratio, choice[..., None], -1)[..., 0]
    gain = np.where(np.isfinite(best), np.take_along_axis(saved, choice[..., None], -1)[..., 0], 0.0)
    return choice, best, gain


def repair(coding: GeneCoding, genes: np.ndarray, changes: tuple[np.ndarray, np.ndarray, np.ndarray],
           excess: np.ndarray, moves: int) -> np.ndarray:
    """Bring each row `excess` ms down by changing the (kernel, expand) of up to `moves` running slots, best
    ratio first, until the saved ms cover the excess. `changes`: each slot's best change from its current
    choice (`best_changes` at the row's choices), three [n, slots] arrays. A row the moves cannot fix comes
    back still over budget (the caller's latency screen drops it)."""
    ne, nb = len(coding.space.e_choices), coding.nb
    choice, best, gain = changes
    running = coding.block_mask(genes)
    best = np.where(running, best, np.inf)
    order = np.argsort(best, axis=1, kind="stable")[:, :moves]
    gain = np.take_along_axis(np.where(running, gain, 0.0), order, 1)
    use = (np.cumsum(gain, 1) - gain < excess[:, None]) & (gain > 0)  # still over budget before this move
    row, k = np.nonzero(use)
    slot = order[row, k]
    new = choice[row, slot]
    g = genes.copy()
    g[row, slot] = new // ne
    g[row, nb + slot] = new % ne
    return g


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Weights w (no intercept: only differences between candidates matter) of ridge regression y ~ x w + b."""
    x = np.column_stack([x, np.ones(len(x), dtype=x.dtype)])
    a = x.T @ x + alpha * np.eye(x.shape[1], dtype=x.dtype)
    return np.linalg.solve(a, x.T @ y.astype(x.dtype))[:-1]


def _top_within(acc: np.ndarray, lat_col: np.ndarray, budget: float, k: int) -> np.ndarray:
    """Indices of the (up to) k most accurate rows with latency within budget."""
    ok = np.flatnonzero(lat_col <= budget)
    if len(ok) > k:
        ok = ok[np.argpartition(-acc[ok], k - 1)[:k]]
    return ok
