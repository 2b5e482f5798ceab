"""Multi-objective architecture search over a space's gene coding.

One `SearchProblem` = predicted accuracy (maximise) and predicted latency in one or more hardware
contexts (minimise), all vectorised over integer gene arrays (see `predict.genes`). Every in-range gene
row is a valid architecture, so both searchers build only valid candidates; only latency budgets can be
missed.

* `NSGA2Search`: one NSGA-II run over all objectives at once (integer genes; pymoo's non-dominated sorting,
  crowding distance and hypervolume); every evaluated architecture goes into an archive whose
  non-dominated set is the result. Given latency budgets, a budget-niche evolution follows: each budget
  breeds from its best members within budget and every child counts for all budgets it meets, so one run
  serves every budget of every context. Predictions go only to children that meet their niche's budget
  (latency is a table look-up, ~20x cheaper than the accuracy MLP) and, among those, to the ones a local
  linear model of the predictor ranks highest. A child slightly over its budget is not just dropped: a
  repair changes the (kernel, expand) of a few slots, cheapest in predicted accuracy per ms saved first,
  until it fits (constructive feasibility; it needs each context's per-slot costs). A batched local search
  (`polish_rounds`) then tries all one-step moves and compound moves (one that gains accuracy plus the
  cheapest latency savings that bring it back within budget) from each budget's pick.
* `EvolutionSweep`: Dynamic-OFA's procedure, kept faithful as the baseline: OFA's regularised evolution
  (population 100, 500 generations, 25 % parents, half mutation half crossover, mutation probability 0.1),
  one run per latency budget and context, feasibility by re-drawing infeasible children; with a retry cap
  where OFA loops forever, and an up-front error when a budget is below the fastest member.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from .errors import UserError
from .predict.genes import GeneCoding
from .space import Arch

GeneFn = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------------
# Problem and result
# ------------------------------------------------------------------------------------------------------
@dataclass
class SearchProblem:
    """What to optimise: `accuracy(genes)` in percent (higher is better) and `latency[ctx](genes)` in ms."""

    coding: GeneCoding
    accuracy: GeneFn
    latency: Mapping[str, GeneFn]
    fastest: Mapping[str, float] = field(default_factory=dict)  # lowest reachable latency per context
    evaluations: int = 0
    # per context, [n, block slots, kernels x expands] ms of every slot's choices at each row's resolution
    # (`LatencyTable.slot_costs_genes`: they depend on the resolution only); with it for every context, the
    # niche phase repairs near-budget candidates instead of discarding them
    slot_costs: Mapping[str, GeneFn] = field(default_factory=dict)

    @property
    def contexts(self) -> list[str]:
        return list(self.latency)

    def evaluate(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy [n], latency [n, contexts])."""
        return self.predict_accuracy(genes), self.latencies(genes)

    def predict_accuracy(self, genes: np.ndarray) -> np.ndarray:
        """Accuracy [n]; counted in `evaluations` (the accuracy MLP is what a search's cost is made of)."""
        self.evaluations += len(genes)
        return self.accuracy(genes)

    def latencies(self, genes: np.ndarray) -> np.ndarray:
        """Latency [n, contexts]: table look-ups, ~1 us per architecture, so not counted (nor are OFA's)."""
        return np.column_stack([fn(genes) for fn in self.latency.values()])

    @classmethod
    def from_predictors(cls, accuracy_predictor, tables: Mapping[str, object],
                        resolutions: Sequence[int] | None = None) -> "SearchProblem":
        """From an `AccuracyPredictor` and `LatencyTable`s; the searched resolutions are those every table
        covers (or `resolutions`, which they must cover)."""
        if not tables:
            raise UserError("search: at least one latency context is needed")
        space = accuracy_predictor.space
        common = set(space.resolutions)
        for t in tables.values():
            common &= set(t.resolutions)
        res = tuple(sorted(resolutions)) if resolutions else tuple(sorted(common))
        if not res:
            raise UserError("search: the latency tables share no resolution of preset "
                            f"'{space.name}'")
        coding = GeneCoding(space, res)
        latency = {ctx: (lambda g, t=t: t.predict_genes(g, coding)) for ctx, t in tables.items()}
        fastest = {ctx: t.fastest(coding)[1] for ctx, t in tables.items()}
        slot_costs = {ctx: (lambda g, t=t: t.slot_costs_genes(g, coding)) for ctx, t in tables.items()
                      if hasattr(t, "slot_costs_genes")}
        return cls(coding, lambda g: accuracy_predictor.predict_genes(g, coding), latency, fastest,
                   slot_costs=slot_costs)


def pareto_mask(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Non-dominated rows for (max acc, min each latency column)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    f = np.column_stack([-acc, lat])
    mask = np.zeros(len(f), dtype=bool)
    if len(f):
        mask[NonDominatedSorting().do(f, only_non_dominated_front=True)] = True
    return mask


@dataclass
class SearchResult:
    """Architectures found (gene rows) with their predicted objectives; `archive` rows are non-dominated."""

    coding: GeneCoding
    contexts: list[str]
    genes: np.ndarray
    accuracy: np.ndarray
    latency: np.ndarray  # [n, contexts]
    evaluations: int
    seconds: float
    picks: dict[tuple[str, float], int] = field(default_factory=dict)  # (context, budget) -> row

    def archs(self) -> list[Arch]:
        return self.coding.decode(self.genes)

    def best_within(self, context: str, budget: float) -> tuple[int, float] | None:
        """(row, accuracy) of the most accurate architecture whose latency in `context` is within `budget`."""
        col = self.latency[:, self.contexts.index(context)]
        ok = np.flatnonzero(col <= budget)
        if not len(ok):
            return None
        i = ok[np.argmax(self.accuracy[ok])]
        return int(i), float(self.accuracy[i])

    def front(self, context: str) -> np.ndarray:
        """Rows on the 2-D (accuracy, latency in `context`) front, by increasing latency."""
        col = self.latency[:, self.contexts.index(context)]
        mask = pareto_mask(self.accuracy, col[:, None])
        rows = np.flatnonzero(mask)
        return rows[np.argsort(col[rows])]


def hypervolume(acc: np.ndarray, lat: np.ndarray, ref_acc: float, ref_lat: Sequence[float]) -> float:
    """Hypervolume (pymoo) of (-acc, latencies...) against the reference point (-ref_acc, ref_lat)."""
    from pymoo.indicators.hv import HV

    f = np.column_stack([-np.asarray(acc, float), np.asarray(lat, float)])
    ref = np.array([-ref_acc, *ref_lat], dtype=float)
    keep = np.all(f < ref, axis=1)
    if not keep.any():
        return 0.0
    return float(HV(ref_point=ref)(f[keep]))


class Searcher(Protocol):
    """Anything that turns a `SearchProblem` into a `SearchResult`."""

    name: str

    def search(self, problem: SearchProblem) -> SearchResult: ...


def _unique_rows(genes: np.ndarray, coding: GeneCoding) -> np.ndarray:
    canon = coding.canonical(genes)
    _, idx = np.unique(canon, axis=0, return_index=True)
    return canon[np.sort(idx)]


def _keys(canon: np.ndarray) -> list[bytes]:
    """One hashable key per canonical gene row (genes are small, so one byte each)."""
    rows = np.ascontiguousarray(canon, dtype=np.uint8)
    return rows.view(np.dtype((np.void, rows.shape[1])))[:, 0].tolist()


class _Pool:
    """Every architecture evaluated so far, in arrays allocated once for `capacity` rows (so adding a
    generation copies nothing), and the key of every row ever proposed, so no architecture is predicted twice."""

    def __init__(self, coding: GeneCoding, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray, capacity: int):
        self.size = len(genes)
        self.genes = np.empty((max(capacity, self.size), genes.shape[1]), dtype=genes.dtype)
        self.acc = np.empty(len(self.genes))
        self.lat = np.empty((len(self.genes), lat.shape[1]))
        self.genes[:self.size], self.acc[:self.size], self.lat[:self.size] = genes, acc, lat
        self.seen = set(_keys(coding.canonical(genes)))
        self.coding = coding
        self.x = np.empty((len(self.genes), coding.space.encoding_size), dtype=np.float32)
        self.encoded = 0

    def onehot(self, rows: np.ndarray) -> np.ndarray:
        """The encoding of the given rows; each row is encoded once, when first asked for."""
        if self.encoded < self.size:
            self.x[self.encoded:self.size] = self.coding.onehot(self.genes[self.encoded:self.size])
            self.encoded = self.size
        return self.x[rows]

    def fresh(self, canon: np.ndarray, group: np.ndarray, limit: int) -> np.ndarray:
        """Positions of the rows of `canon` to predict: in order, each row never proposed before, up to
        `limit` per `group` (small non-negative ints); marks them as proposed."""
        taken = [0] * (int(group.max()) + 1 if len(group) else 0)
        out: list[int] = []
        for i, (g, key) in enumerate(zip(group.tolist(), _keys(canon))):
            if taken[g] < limit and key not in self.seen:
                self.seen.add(key)
                taken[g] += 1
                out.append(i)
        return np.array(out, dtype=np.int64)

    def add(self, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Append evaluated rows (within capacity); returns their indices."""
        idx = np.arange(self.size, self.size + len(genes))
        self.genes[idx], self.acc[idx], self.lat[idx] = genes, acc, lat
        self.size += len(genes)
        return idx

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.genes[:self.size], self.acc[:self.size], self.lat[:self.size]


def _mutate(par: np.ndarray, rng: np.random.Generator, upper: np.ndarray, nb: int, ns: int,
            prob: float) -> np.ndarray:
    """OFA's mutation: the resolution, each block's (kernel, expand) together and each stage's depth are
    re-drawn, each with probability `prob`."""
    kids = par.copy()
    n = len(par)
    m_r = rng.random(n) < prob
    kids[m_r, -1] = rng.integers(0, upper[-1], size=m_r.sum())
    m_b = rng.random((n, nb)) < prob
    kids[:, :nb] = np.where(m_b, rng.integers(0, upper[0], size=(n, nb)), kids[:, :nb])
    kids[:, nb:2 * nb] = np.where(m_b, rng.integers(0, upper[nb], size=(n, nb)), kids[:, nb:2 * nb])
    m_d = rng.random((n, ns)) < prob
    kids[:, 2 * nb:2 * nb + ns] = np.where(m_d, rng.integers(0, upper[2 * nb], size=(n, ns)),
                                           kids[:, 2 * nb:2 * nb + ns])
    return kids


# ------------------------------------------------------------------------------------------------------
# Ours: NSGA-II + archive + budget niches (+ optional local polish)
# ------------------------------------------------------------------------------------------------------
@dataclass
class NSGA2Search:
    """One NSGA-II run over accuracy and every context's latency, then (given budgets) one budget-niche
    evolution for all budgets. The NSGA-II run is short: it only has to spread the archive over the whole
    latency range; per-budget accuracy comes from the niche phase, which spends predictions far better
    (measured: 15 NSGA-II generations give the niches as good a start as 40 or 80)."""

    population: int = 100
    generations: int = 15
    mutate_prob: float = 0.1  # per gene
    seed: int = 0
    budgets: Mapping[str, Sequence[float]] = field(default_factory=dict)  # context -> latency budgets (ms)
    # budget-niche evolution after the NSGA-II run (0: none). With the polish below, 58 fill the time that 50
    # took before the niche phase was made leaner (BENCHMARKS, session 8)
    refine_generations: int = 58
    refine_parents: int = 30  # per budget: its most accurate members within budget
    refine_children: int = 30  # per budget and generation (each one accuracy prediction)
    refine_draws: int = 5  # candidates drawn per child, screened on latency and ranked by the local model
    refine_mutate_prob: float = 0.05  # per resolution, block and stage depth (OFA's mutation operator)
    # a candidate at most this fraction over its niche's budget gets a repaired copy (0: no repair). Measured
    # on the reference benchmark (32 seeds): with repair, 50 generations beat 60 without, in the same time
    refine_repair_slack: float = 0.1
    refine_repair_moves: int = 3  # (kernel, expand) changes a repair may make
    surrogate_size: int = 600  # members within budget that each niche's ridge model is fitted to
    surrogate_every: int = 10  # generations between refits
    # local search rounds per budget at the end (0: none): each round moves a budget's pick to the best of its
    # one-step and compound moves, if one gains. On the reference benchmark (64 seeds), 2 rounds after 58
    # generations met all budgets about as often as 65 generations without (43 % vs 42 % of the pairs with
    # the sweep's 16 seeds), in the same time
    polish_rounds: int = 2
    pair_candidates: int = 32  # accuracy-gaining moves per round that get a compound (latency-saving) partner
    engine: str = "arrays"  # "arrays": NSGA-II on numpy arrays with pymoo's sorting; "pymoo": pymoo's NSGA2 class
    name: str = "nsga2"

    def _initial(self, problem: SearchProblem, rng: np.random.Generator) -> np.ndarray:
        """Random rows, plus the fastest member of every context and the non-dominated 'uniform'
        architectures, so the front spans the whole latency range from the first generation."""
        coding = problem.coding
        g = coding.random(rng, self.population)
        seeds = [_fastest_genes(problem, ctx, rng) for ctx in problem.contexts]
        uni = _uniform_seeds(coding)
        acc, lat = problem.evaluate(uni)
        front = uni[pareto_mask(acc, lat)]
        seeds = np.concatenate([np.stack(seeds), front])[: self.population]
        g[: len(seeds)] = seeds
        return g

    def search(self, problem: SearchProblem) -> SearchResult:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        init = self._initial(problem, rng)
        run = _nsga2_pymoo if self.engine == "pymoo" else _nsga2_arrays
        genes, acc, lat = run(problem, init, self, rng)
        niches = [(problem.contexts.index(ctx), float(b)) for ctx, bs in self.budgets.items() for b in bs]
        if niches and self.refine_generations:
            genes, acc, lat = _niche_evolution(problem, genes, acc, lat, niches, self,
                                               np.random.default_rng(self.seed + 1))
        if self.polish_rounds:
            polished: list[tuple[np.ndarray, float, np.ndarray]] = []  # joined to the pool once, at the end
            for c, budget in sorted(niches):
                row = _best_row(acc, lat[:, c], budget)
                origin = None if row is None else (genes[row], acc[row], lat[row])
                for p in polished:  # an earlier budget's polished pick may be this one's best origin
                    if p[2][c] <= budget and (origin is None or p[1] > origin[1]):
                        origin = p
                if origin is not None:
                    polished.append(_polish(problem, *origin, c, budget, self.polish_rounds, self.pair_candidates))
            if polished:
                genes = np.concatenate([genes, np.stack([p[0] for p in polished])])
                acc = np.append(acc, [p[1] for p in polished])
                lat = np.concatenate([lat, np.stack([p[2] for p in polished])])
        result = _archive_result(problem, genes, acc, lat, time.perf_counter() - start)
        for ctx, budgets in self.budgets.items():
            for budget in budgets:
                best = result.best_within(ctx, budget)
                if best is not None:
                    result.picks[(ctx, float(budget))] = best[0]
        return result


def _nsga2_arrays(problem: SearchProblem, init: np.ndarray, cfg: NSGA2Search,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NSGA-II (Deb et al. 2002) on plain arrays: binary tournaments on (rank, crowding), uniform crossover,
    per-gene re-draw mutation, duplicate elimination, and (mu + lambda) survival by pymoo's non-dominated
    sorting and crowding distance. pymoo's own NSGA2 class runs the same steps but spends ~30 ms per
    generation on per-individual bookkeeping, ten times the cost of evaluating the generation here."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    coding, upper, n = problem.coding, problem.coding.upper, cfg.population
    nds = NonDominatedSorting()
    pop = _unique_rows(init, coding)
    acc, lat = problem.evaluate(pop)
    archive = [(pop, acc, lat)]
    seen = {row.tobytes() for row in pop}

    def rank_crowd(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        fronts = nds.do(f)
        rank = np.empty(len(f), dtype=np.int64)
        crowd = np.empty(len(f))
        for i, fr in enumerate(fronts):
            rank[fr] = i
            crowd[fr] = calc_crowding_distance(f[fr])
        return rank, crowd, fronts

    f = np.column_stack([-acc, lat])
    rank, crowd, _ = rank_crowd(f)
    for _ in range(cfg.generations - 1):
        # binary tournaments: lower rank wins, then larger crowding distance
        a, b = rng.integers(0, len(pop), size=(2, n))
        a_wins = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowd[a] >= crowd[b]))
        p1 = np.where(a_wins, a, b)
        a, b = rng.integers(0, len(pop), size=(2, n))
        p2 = np.where((rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowd[a] >= crowd[b])), a, b)
        kids = np.where(rng.random((n, coding.n_genes)) < 0.5, pop[p1], pop[p2])
        redraw = rng.random(kids.shape) < cfg.mutate_prob
        kids = np.where(redraw, rng.integers(0, upper[None, :], size=kids.shape), kids)
        kids = coding.canonical(kids)
        fresh = [i for i, row in enumerate(kids) if (key := row.tobytes()) not in seen and not seen.add(key)]
        if fresh:
            kids = kids[fresh]
            k_acc, k_lat = problem.evaluate(kids)
            archive.append((kids, k_acc, k_lat))
            pop = np.concatenate([pop, kids])
            f = np.concatenate([f, np.column_stack([-k_acc, k_lat])])
        # (mu + lambda) survival: whole fronts, the last one cut by crowding distance
        rank, crowd, fronts = rank_crowd(f)
        keep: list[int] = []
        for fr in fronts:
            if len(keep) + len(fr) <= n:
                keep.extend(fr)
            else:
                keep.extend(fr[np.argsort(-crowd[fr], kind="stable")[: n - len(keep)]])
                break
        keep_idx = np.array(keep)
        pop, f, rank, crowd = pop[keep_idx], f[keep_idx], rank[keep_idx], crowd[keep_idx]
    return (np.concatenate([x[0] for x in archive]), np.concatenate([x[1] for x in archive]),
            np.concatenate([x[2] for x in archive]))


def _nsga2_pymoo(problem: SearchProblem, init: np.ndarray, cfg: NSGA2Search,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same search through pymoo's `NSGA2` class (slower; kept as the cross-check of `_nsga2_arrays`)."""
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
            r = random_state or rng
            redraw = r.random(x.shape) < cfg.mutate_prob
            return np.where(redraw, r.integers(0, upper[None, :], size=x.shape), x).astype(np.int64)

    algorithm = NSGA2(pop_size=cfg.population, sampling=_Sampling(), crossover=UniformCrossover(),
                      mutation=_Mutation(), eliminate_duplicates=True)
    minimize(_Problem(), algorithm, ("n_gen", cfg.generations), seed=cfg.seed, verbose=False)
    return (np.concatenate([x[0] for x in archive]), np.concatenate([x[1] for x in archive]),
            np.concatenate([x[2] for x in archive]))


def _best_row(acc: np.ndarray, lat_col: np.ndarray, budget: float) -> int | None:
    ok = np.flatnonzero(lat_col <= budget)
    return None if not len(ok) else int(ok[np.argmax(acc[ok])])


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


def _fastest_genes(problem: SearchProblem, context: str, rng: np.random.Generator) -> np.ndarray:
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


def _niche_evolution(problem: SearchProblem, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
                     niches: Sequence[tuple[int, float]], cfg: "NSGA2Search",
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine the archive for given budgets in one shared evolution. Each generation, every (context,
    budget) niche breeds children (half OFA's mutation, half uniform crossover) from its most accurate
    members within budget; all children are evaluated in one batch and join the pool, where each counts for
    every budget it meets.

    An accuracy prediction costs ~12 us and a latency look-up ~0.5 us, so each niche draws `refine_draws`
    candidates per child and spends predictions only on the most promising fresh ones within its budget:
    latency screens out over-budget candidates (as OFA's re-draw loop does), and a ridge model on the
    one-hot encoding, fitted every `surrogate_every` generations to the niche's `surrogate_size` best
    members within budget, ranks the rest. Near a niche's best the predictor is close to linear in the
    encoding, so this local model tells which few-gene changes gain accuracy; it only orders candidates, so
    every stored accuracy is still the predictor's."""
    coding = problem.coding
    genes = genes.astype(np.int8)  # every gene has < 128 choices; the phase's array work is memory-bound
    n_par, n_kids = cfg.refine_parents, cfg.refine_children
    pool = _Pool(coding, genes, acc, lat, len(genes) + cfg.refine_generations * len(niches) * n_kids)
    ctx = np.array([c for c, _ in niches])
    budget = np.array([b for _, b in niches])
    tops = _Parents(pool, ctx, budget, n_par)
    n_mut = n_kids // 2 * cfg.refine_draws  # candidates per niche from mutation; the rest from crossover
    n_cross = (n_kids - n_kids // 2) * cfg.refine_draws
    weights = np.zeros((len(niches), coding.space.encoding_size), dtype=np.float32)
    costs = _slot_cost_table(problem) if cfg.refine_repair_slack > 0 else None
    for gen in range(cfg.refine_generations):
        live = np.flatnonzero(tops.count > 0)
        if not len(live):
            break
        if gen % cfg.surrogate_every == 0:
            for j in live:
                near = _top_within(pool.acc[:pool.size], pool.lat[:pool.size, ctx[j]], budget[j], cfg.surrogate_size)
                weights[j] = _ridge(pool.onehot(near), pool.acc[near])
            values = _slot_values(coding, weights)  # the same model per slot choice, for scores and repair
            if costs is not None:  # each niche's best change per resolution, slot and current choice
                changes = _best_changes(costs[ctx], values[:, None])
        mut, pa, pb = (pool.genes[tops.draw(live, n, rng)] for n in (n_mut, n_cross, n_cross))
        cand = coding.canonical(np.concatenate([
            _mutate(mut, rng, coding.upper, coding.nb, coding.ns, cfg.refine_mutate_prob),
            np.where(rng.integers(0, 2, size=pa.shape, dtype=bool), pa, pb)]))
        owner = np.concatenate([np.repeat(live, n_mut), np.repeat(live, n_cross)])
        own_lat = _per_context(list(problem.latency.values()), cand, ctx[owner])
        if costs is not None:
            cand, owner, own_lat = _with_repaired(problem, cand, owner, own_lat, ctx, budget, changes, cfg)
        ok = np.flatnonzero(own_lat <= budget[owner])
        score = _linear_scores(coding, cand[ok], owner[ok], values, weights)
        ok = ok[np.argsort(-score, kind="stable")]  # most promising first
        keep = ok[pool.fresh(cand[ok], owner[ok], n_kids)]
        if not len(keep):
            continue
        kids = cand[keep]
        tops.update(pool.add(kids, *problem.evaluate(kids)))
    g, a, l = pool.arrays()
    return g.astype(np.int64), a, l


class _Parents:
    """Each niche's (up to) `k` most accurate pool members within its budget, as one padded index matrix, so
    that drawing parents and taking in a generation's children is a few array operations for all niches."""

    def __init__(self, pool: _Pool, ctx: np.ndarray, budget: np.ndarray, k: int):
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
                   cfg: "NSGA2Search") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates plus a repaired copy of each one at most `refine_repair_slack` over its niche's budget
    (constructive feasibility: a near-budget child is pulled within budget, not only discarded). `changes`:
    `_best_changes` for every niche, resolution, slot and current choice ([niches, resolutions, slots,
    choices] each)."""
    over = np.flatnonzero((own_lat > budget[owner]) & (own_lat <= budget[owner] * (1 + cfg.refine_repair_slack)))
    if not len(over):
        return cand, owner, own_lat
    rows, niche = cand[over], owner[over]
    at = (niche[:, None], rows[:, -1:], np.arange(problem.coding.nb)[None, :], problem.coding.slot_choices(rows))
    fixed = _repair(problem.coding, rows, tuple(t[at] for t in changes), own_lat[over] - budget[niche],
                    cfg.refine_repair_moves)
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


def _linear_scores(coding: GeneCoding, genes: np.ndarray, model: np.ndarray, values: np.ndarray,
                   weights: np.ndarray) -> np.ndarray:
    """Each row's score under linear model `model[i]` (`weights` [models, encoding]; `values` the same per
    slot choice): its running slots' choice values plus its resolution's weight, without one-hot rows."""
    per_slot = values[model[:, None], np.arange(coding.nb)[None, :], coding.slot_choices(genes)]
    return (per_slot * coding.block_mask(genes)).sum(1) + weights[model, coding.resolution_columns[genes[:, -1]]]


def _slot_values(coding: GeneCoding, weights: np.ndarray) -> np.ndarray:
    """[..., slots, kernels x expands]: a linear model's (on the one-hot encoding) value of each slot choice."""
    k_cols, e_cols = coding.slot_columns
    k, e = weights[..., k_cols], weights[..., e_cols]
    return (k[..., :, None] + e[..., None, :]).reshape(*weights.shape[:-1], coding.nb, -1)


def _best_changes(costs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _repair(coding: GeneCoding, genes: np.ndarray, changes: tuple[np.ndarray, np.ndarray, np.ndarray],
            excess: np.ndarray, moves: int) -> np.ndarray:
    """Bring each row `excess` ms down by changing the (kernel, expand) of up to `moves` running slots, best
    ratio first, until the saved ms cover the excess. `changes`: each slot's best change from its current
    choice (`_best_changes` at the row's choices), three [n, slots] arrays. A row the moves cannot fix comes
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


def _moves(coding: GeneCoding, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every one-step neighbour of `g` (a slot's kernel and/or expand, a stage's depth, the resolution) and
    the group each move belongs to (slot index, then one group per stage depth, then one for resolution)."""
    nb, ns = coding.nb, coding.ns
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


def _polish(problem: SearchProblem, g0: np.ndarray, a0: float, l0: np.ndarray, c: int, budget: float,
            rounds: int, pair_candidates: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Batched local search for the most accurate architecture with latency[c] <= budget, from a feasible
    start. Each round evaluates every one-step move; then, for each move that gains accuracy but breaks the
    budget, the latency-saving moves of other groups that cost least accuracy per ms saved are added until
    the budget holds again (a compound move); the best feasible improvement is taken."""
    coding = problem.coding
    g, a, l = g0.copy(), float(a0), np.asarray(l0, float).copy()
    for _ in range(rounds):
        cand, group = _moves(coding, g)
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
            excess, used, row = l[c] + dlat[u] - budget, {group[u]}, cand[u].copy()
            for d in down:
                if excess <= 0:
                    break
                if group[d] in used:
                    continue
                changed = cand[d] != g
                row[changed] = cand[d][changed]
                used.add(group[d])
                excess += dlat[d]
            if excess <= 0:
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


def _archive_result(problem: SearchProblem, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
                    seconds: float) -> SearchResult:
    mask = pareto_mask(acc, lat)
    canon, acc, lat = problem.coding.canonical(genes[mask]), acc[mask], lat[mask]
    _, idx = np.unique(canon, axis=0, return_index=True)
    idx = np.sort(idx)
    return SearchResult(problem.coding, problem.contexts, canon[idx], acc[idx], lat[idx], problem.evaluations,
                        seconds)


# ------------------------------------------------------------------------------------------------------
# Baseline: Dynamic-OFA's sweep of OFA's evolution, one constrained run per budget
# ------------------------------------------------------------------------------------------------------
class BudgetError(UserError):
    """A latency budget that no architecture of the space can meet."""


@dataclass
class EvolutionSweep:
    """OFA's `EvolutionFinder.run_evolution_search`, once per (context, budget)."""

    budgets: Mapping[str, Sequence[float]]
    population: int = 100
    generations: int = 500
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    max_retries: int = 200  # re-draws per child before giving up (OFA: unbounded)
    seed: int = 0
    name: str = "dynamic-ofa-sweep"

    def search(self, problem: SearchProblem) -> SearchResult:
        start = time.perf_counter()
        rows, accs, lats = [], [], []
        picks = {}
        for ctx, budgets in self.budgets.items():
            for budget in budgets:
                g, a, l = self.run_one(problem, ctx, float(budget))
                picks[(ctx, float(budget))] = len(rows)
                rows.append(g)
                accs.append(a)
                lats.append(l)
        return SearchResult(problem.coding, problem.contexts, np.stack(rows), np.array(accs), np.stack(lats),
                            problem.evaluations, time.perf_counter() - start, picks)

    def run_one(self, problem: SearchProblem, context: str, budget: float) -> tuple[np.ndarray, float, np.ndarray]:
        """One evolution under `latency[context] <= budget`; returns the best (genes, accuracy, latencies)."""
        coding = problem.coding
        fastest = problem.fastest.get(context)
        if fastest is not None and budget < fastest:
            raise BudgetError(f"latency budget {budget:g} ms in context '{context}' cannot be met: the fastest "
                              f"architecture of the space takes {fastest:.4g} ms")
        rng = np.random.default_rng((self.seed, int(budget * 1000)))
        lat_fn = problem.latency[context]
        upper = coding.upper
        n_mut = int(round(self.mutation_ratio * self.population))
        n_par = int(round(self.parent_ratio * self.population))

        def feasible(g: np.ndarray) -> np.ndarray:
            # latency-only checks (the re-draw loop) are not counted as evaluations; accuracy calls are
            return lat_fn(g) <= budget

        # random initial population, each sample re-drawn until feasible
        pop = coding.random(rng, self.population)
        ok = feasible(pop)
        for _ in range(self.max_retries):
            if ok.all():
                break
            bad = np.flatnonzero(~ok)
            pop[bad] = coding.random(rng, len(bad))
            ok[bad] = feasible(pop[bad])
        if not ok.any():
            raise BudgetError(f"latency budget {budget:g} ms in context '{context}': no feasible architecture in "
                              f"{self.max_retries} random draws per sample (fastest possible: "
                              f"{fastest if fastest is not None else float('nan'):.4g} ms)")
        pop[~ok] = pop[ok][rng.integers(0, ok.sum(), size=(~ok).sum())]
        acc, _ = problem.evaluate(pop)
        best_g, best_a = None, -np.inf
        nb, ns = coding.nb, coding.ns
        for _ in range(self.generations):
            order = np.argsort(-acc, kind="stable")[:n_par]
            parents, p_acc = pop[order], acc[order]
            if p_acc[0] > best_a:
                best_g, best_a = parents[0].copy(), float(p_acc[0])
            # mutation: r, each block's (k, e) together, each stage's d, each with mutate_prob
            par = parents[rng.integers(0, n_par, size=n_mut)]
            kids_m = self._mutate(par, rng, upper, nb, ns)
            ok = feasible(kids_m)
            for _ in range(self.max_retries):
                if ok.all():
                    break
                bad = np.flatnonzero(~ok)
                kids_m[bad] = self._mutate(par[bad], rng, upper, nb, ns)
                ok[bad] = feasible(kids_m[bad])
            kids_m[~ok] = par[~ok]  # retry cap hit: keep the (feasible) parent
            # crossover: each gene from either parent
            pa = parents[rng.integers(0, n_par, size=self.population - n_mut)]
            pb = parents[rng.integers(0, n_par, size=self.population - n_mut)]
            kids_c = np.where(rng.random(pa.shape) < 0.5, pa, pb)
            ok = feasible(kids_c)
            for _ in range(self.max_retries):
                if ok.all():
                    break
                bad = np.flatnonzero(~ok)
                kids_c[bad] = np.where(rng.random(pa[bad].shape) < 0.5, pa[bad], pb[bad])
                ok[bad] = feasible(kids_c[bad])
            kids_c[~ok] = pa[~ok]
            kids = np.concatenate([kids_m, kids_c])
            k_acc, _ = problem.evaluate(kids)
            pop, acc = np.concatenate([parents, kids]), np.concatenate([p_acc, k_acc])
        lat = np.array([fn(best_g[None])[0] for fn in problem.latency.values()])
        return coding.canonical(best_g[None])[0], best_a, lat

    def _mutate(self, par: np.ndarray, rng: np.random.Generator, upper: np.ndarray, nb: int, ns: int) -> np.ndarray:
        return _mutate(par, rng, upper, nb, ns, self.mutate_prob)
