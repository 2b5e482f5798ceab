"""Ours: one NSGA-II run over accuracy and every context's latency, then (given budgets) one budget-niche
evolution for all budgets (`niche`) and a local polish of each budget's pick (`polish`).

NSGA-II runs on integer genes with pymoo's non-dominated sorting, crowding distance and hypervolume; every
evaluated architecture goes into an archive whose non-dominated set is the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..predict.genes import GeneCoding
from .niche import NicheConfig, evolve
from .polish import PolishConfig, polish_picks
from .problem import SearchProblem, SearchResult, pareto_mask, unique_rows


@dataclass
class NSGA2Config:
    """The NSGA-II run's knobs (`NSGA2Search.nsga2`)."""

    population: int = 100
    generations: int = 15
    mutate_prob: float = 0.1  # per gene
    engine: str = "arrays"  # "arrays": NSGA-II on numpy arrays with pymoo's sorting; "pymoo": pymoo's NSGA2 class


@dataclass
class NSGA2Search:
    """One NSGA-II run over accuracy and every context's latency, then (given budgets) one budget-niche
    evolution for all budgets and a polish of each budget's pick. The NSGA-II run is short: it only has to
    spread the archive over the whole latency range; per-budget accuracy comes from the niche phase, which
    spends predictions far better (measured: 15 NSGA-II generations give the niches as good a start as 40 or
    80)."""

    budgets: Mapping[str, Sequence[float]] = field(default_factory=dict)  # context -> latency budgets (ms)
    seed: int = 0
    nsga2: NSGA2Config = field(default_factory=NSGA2Config)
    niche: NicheConfig = field(default_factory=NicheConfig)
    polish: PolishConfig = field(default_factory=PolishConfig)
    name: str = "nsga2"

    def search(self, problem: SearchProblem) -> SearchResult:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        init = _initial(problem, self.nsga2.population, rng)
        run = nsga2_pymoo if self.nsga2.engine == "pymoo" else nsga2_arrays
        genes, acc, lat = run(problem, init, self.nsga2, rng, self.seed)
        niches = [(problem.contexts.index(ctx), float(b)) for ctx, bs in self.budgets.items() for b in bs]
        if niches and self.niche.generations:
            genes, acc, lat = evolve(problem, genes, acc, lat, niches, self.niche,
                                     np.random.default_rng(self.seed + 1))
        if self.polish.rounds:
            genes, acc, lat = polish_picks(problem, genes, acc, lat, niches, self.polish)
        result = _archive_result(problem, genes, acc, lat, time.perf_counter() - start)
        for ctx, budgets in self.budgets.items():
            for budget in budgets:
                best = result.best_within(ctx, budget)
                if best is not None:
                    result.picks[(ctx, float(budget))] = best[0]
        return result


def nsga2_arrays(problem: SearchProblem, init: np.ndarray, cfg: NSGA2Config, rng: np.random.Generator,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NSGA-II (Deb et al. 2002) on plain arrays: binary tournaments on (rank, crowding), uniform crossover,
    per-gene re-draw mutation, duplicate elimination, and (mu + lambda) survival by pymoo's non-dominated
    sorting and crowding distance. pymoo's own NSGA2 class runs the same steps but spends ~30 ms per
    generation on per-individual bookkeeping, ten times the cost of evaluating the generation here. Returns
    every evaluated architecture; `seed` is unused (`rng` draws everything)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    coding, n = problem.coding, cfg.population
    nds = NonDominatedSorting()
    pop = unique_rows(init, coding)
    acc, lat = problem.evaluate(pop)
    archive = [(pop, acc, lat)]
    seen = {row.tobytes() for row in pop}
    f = np.column_stack([-acc, lat])
    rank, crowd, _ = _rank_crowd(nds, f)
    for _ in range(cfg.generations - 1):
        p1, p2 = _tournament(rank, crowd, rng, n), _tournament(rank, crowd, rng, n)
        kids = np.where(rng.random((n, coding.n_genes)) < 0.5, pop[p1], pop[p2])
        kids = coding.canonical(_redraw(kids, rng, coding.upper, cfg.mutate_prob))
        fresh = [i for i, row in enumerate(kids) if (key := row.tobytes()) not in seen and not seen.add(key)]
        if fresh:
            kids = kids[fresh]
            k_acc, k_lat = problem.evaluate(kids)
            archive.append((kids, k_acc, k_lat))
            pop = np.concatenate([pop, kids])
            f = np.concatenate([f, np.column_stack([-k_acc, k_lat])])
        rank, crowd, fronts = _rank_crowd(nds, f)
        keep = _survivors(fronts, crowd, n)
        pop, f, rank, crowd = pop[keep], f[keep], rank[keep], crowd[keep]
    return tuple(np.concatenate([x[i] for x in archive]) for i in range(3))


def _rank_crowd(nds, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Each row's front (0 = non-dominated) and crowding distance within it, and the fronts."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    fronts = nds.do(f)
    rank = np.empty(len(f), dtype=np.int64)
    crowd = np.empty(len(f))
    for i, fr in enumerate(fronts):
        rank[fr] = i
        crowd[fr] = calc_crowding_distance(f[fr])
    return rank, crowd, fronts


def _tournament(rank: np.ndarray, crowd: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` binary tournaments: lower rank wins, then larger crowding distance."""
    a, b = rng.integers(0, len(rank), size=(2, n))
    return np.where((rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowd[a] >= crowd[b])), a, b)


def _survivors(fronts: list, crowd: np.ndarray, n: int) -> np.ndarray:
    """(mu + lambda) survival: whole fronts, the last one cut by crowding distance."""
    keep: list[int] = []
    for fr in fronts:
        if len(keep) + len(fr) <= n:
            keep.extend(fr)
        else:
            keep.extend(fr[np.argsort(-crowd[fr], kind="stable")[: n - len(keep)]])
            break
    return np.array(keep)


def _redraw(x: np.ndarray, rng: np.random.Generator, upper: np.ndarray, prob: float) -> np.ndarray:
    """NSGA-II's mutation: each gene re-drawn uniformly with probability `prob`."""
    redraw = rng.random(x.shape) < prob
    return np.where(redraw, rng.integers(0, upper[None, :], size=x.shape), x)


def nsga2_pymoo(problem: SearchProblem, init: np.ndarray, cfg: NSGA2Config, rng: np.random.Generator,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same search through pymoo's `NSGA2` class, seeded with `seed` (slower; kept as the cross-check of
    `nsga2_arrays`)."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling
    from pymoo.operators.crossover.ux import UniformCrossover
    from pymoo.optimize import minimize

    coding, upper = problem.coding, problem.coding.upper
    archive: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    class _Problem(Problem):
        def __init__(self):
            super().__init__(n_var=coding.n_genes, n_obj=1 + len(problem.contexts), xl=0, xu=upper - 1, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            g = coding.canonical(np.asarray(x, dtype=np.int64))
            acc, lat = problem.evaluate(g)
            archive.append((g, acc, lat))
            out["F"] = np.column_stack([-acc, lat])

    class _Sampling(Sampling):
        def _do(self, prob, n_samples, random_state=None, **kwargs):
            return init[:n_samples]

    class _Mutation(Mutation):
        def _do(self, prob, x, random_state=None, **kwargs):
            return _redraw(x, random_state or rng, upper, cfg.mutate_prob).astype(np.int64)

    algorithm = NSGA2(pop_size=cfg.population, sampling=_Sampling(), crossover=UniformCrossover(),
                      mutation=_Mutation(), eliminate_duplicates=True)
    minimize(_Problem(), algorithm, ("n_gen", cfg.generations), seed=seed, verbose=False)
    return tuple(np.concatenate([x[i] for x in archive]) for i in range(3))


def _initial(problem: SearchProblem, population: int, rng: np.random.Generator) -> np.ndarray:
    """Random rows, plus the fastest member of every context and the non-dominated 'uniform'
    architectures, so the front spans the whole latency range from the first generation."""
    coding = problem.coding
    g = coding.random(rng, population)
    seeds = [_fastest_genes(problem, ctx) for ctx in problem.contexts]
    uni = _uniform_seeds(coding)
    acc, lat = problem.evaluate(uni)
    front = uni[pareto_mask(acc, lat)]
    seeds = np.concatenate([np.stack(seeds), front])[:population]
    g[: len(seeds)] = seeds
    return g


def _uniform_seeds(coding: GeneCoding) -> np.ndarray:
    """Every 'uniform' architecture: one kernel, one expand ratio and one depth for all stages, at every
    resolution (a few hundred rows that already trace the whole accuracy/latency range)."""
    nb, ns = coding.nb, coding.ns
    nk, ne, nd, nr = coding.upper[0], coding.upper[nb], coding.upper[2 * nb], coding.upper[-1]
    grid = np.stack(np.meshgrid(np.arange(nk), np.arange(ne), np.arange(nd), np.arange(nr), indexing="ij"), -1)
    grid = grid.reshape(-1, 4)
    out = np.empty((len(grid), coding.n_genes), dtype=np.int64)
    out[:, :nb] = grid[:, :1]
    out[:, nb:2 * nb] = grid[:, 1:2]
    out[:, 2 * nb:2 * nb + ns] = grid[:, 2:3]
    out[:, -1] = grid[:, 3]
    return out


def _fastest_genes(problem: SearchProblem, context: str) -> np.ndarray:
    """The fastest architecture of a context, found from the gene coding: cheapest choice per slot by
    evaluating each single-slot choice, shallowest depths, every resolution."""
    coding = problem.coding
    best, best_lat = None, np.inf
    fn = problem.latency[context]
    nb, ns = coding.nb, coding.ns
    nk, ne = coding.upper[0], coding.upper[nb]
    for r in range(coding.upper[-1]):
        base = np.zeros(coding.n_genes, dtype=np.int64)
        base[-1] = r
        # try every (k, e) of every slot at full depth, holding others at 0: costs are additive per slot
        cand = np.repeat(base[None], nb * nk * ne, axis=0)
        cand[:, 2 * nb:2 * nb + ns] = coding.upper[2 * nb] - 1
        idx = np.arange(nb * nk * ne)
        slot, ke = idx // (nk * ne), idx % (nk * ne)
        cand[idx, slot] = ke // ne
        cand[idx, nb + slot] = ke % ne
        cost = fn(cand).reshape(nb, nk * ne)
        choice = cost.argmin(1)
        g = base.copy()
        g[:nb], g[nb:2 * nb] = choice // ne, choice % ne
        lat = float(fn(g[None])[0])
        if lat < best_lat:
            best, best_lat = g, lat
    return best


def _archive_result(problem: SearchProblem, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
                    seconds: float) -> SearchResult:
    """The non-dominated rows, canonical and without duplicates, as a `SearchResult`."""
    mask = pareto_mask(acc, lat)
    canon, acc, lat = problem.coding.canonical(genes[mask]), acc[mask], lat[mask]
    _, idx = np.unique(canon, axis=0, return_index=True)
    idx = np.sort(idx)
    return SearchResult(problem.coding, problem.contexts, canon[idx], acc[idx], lat[idx], problem.evaluations,
                        seconds)
