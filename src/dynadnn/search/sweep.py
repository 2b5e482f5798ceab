"""The baseline: Dynamic-OFA's sweep of OFA's evolution, one constrained run per latency budget.

OFA's regularised evolution (population 100, 500 generations, 25 % parents, half mutation half crossover,
mutation probability 0.1), one run per latency budget and context, feasibility by re-drawing infeasible
children; with a retry cap where OFA loops forever, and an up-front error when a budget is below the fastest
member. Kept faithful, as the reference `NSGA2Search` is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from .problem import SearchProblem, SearchResult, mutate


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

        def feasible(g: np.ndarray) -> np.ndarray:
            # latency-only checks (the re-draw loop) are not counted as evaluations; accuracy calls are
            return lat_fn(g) <= budget

        pop = self._initial(problem, feasible, rng, context, budget)
        acc, _ = problem.evaluate(pop)
        best_g, best_a = None, -np.inf
        n_par = int(round(self.parent_ratio * self.population))
        for _ in range(self.generations):
            order = np.argsort(-acc, kind="stable")[:n_par]
            parents, p_acc = pop[order], acc[order]
            if p_acc[0] > best_a:
                best_g, best_a = parents[0].copy(), float(p_acc[0])
            kids = self._children(problem, parents, feasible, rng)
            k_acc, _ = problem.evaluate(kids)
            pop, acc = np.concatenate([parents, kids]), np.concatenate([p_acc, k_acc])
        lat = np.array([fn(best_g[None])[0] for fn in problem.latency.values()])
        return coding.canonical(best_g[None])[0], best_a, lat

    def _initial(self, problem: SearchProblem, feasible: Callable[[np.ndarray], np.ndarray],
                 rng: np.random.Generator, context: str, budget: float) -> np.ndarray:
        """A random initial population, each sample re-drawn until feasible (up to the retry cap; samples
        still infeasible then copy feasible ones)."""
        pop = problem.coding.random(rng, self.population)
        ok = self._redraw(pop, feasible(pop), feasible, lambda bad: problem.coding.random(rng, len(bad)))
        if not ok.any():
            fastest = problem.fastest.get(context)
            raise BudgetError(f"latency budget {budget:g} ms in context '{context}': no feasible architecture in "
                              f"{self.max_retries} random draws per sample (fastest possible: "
                              f"{fastest if fastest is not None else float('nan'):.4g} ms)")
        pop[~ok] = pop[ok][rng.integers(0, ok.sum(), size=(~ok).sum())]
        return pop

    def _children(self, problem: SearchProblem, parents: np.ndarray, feasible: Callable[[np.ndarray], np.ndarray],
                  rng: np.random.Generator) -> np.ndarray:
        """One generation's children, all feasible: `mutation_ratio` of them by OFA's mutation, the rest by
        uniform crossover; a child still infeasible at the retry cap is replaced by its (first) parent."""
        n_mut = int(round(self.mutation_ratio * self.population))
        n_par = len(parents)
        par = parents[rng.integers(0, n_par, size=n_mut)]
        kids_m = mutate(problem.coding, par, rng, self.mutate_prob)
        ok = self._redraw(kids_m, feasible(kids_m), feasible,
                          lambda bad: mutate(problem.coding, par[bad], rng, self.mutate_prob))
        kids_m[~ok] = par[~ok]
        pa = parents[rng.integers(0, n_par, size=self.population - n_mut)]
        pb = parents[rng.integers(0, n_par, size=self.population - n_mut)]
        kids_c = np.where(rng.random(pa.shape) < 0.5, pa, pb)
        ok = self._redraw(kids_c, feasible(kids_c), feasible,
                          lambda bad: np.where(rng.random(pa[bad].shape) < 0.5, pa[bad], pb[bad]))
        kids_c[~ok] = pa[~ok]
        return np.concatenate([kids_m, kids_c])

    def _redraw(self, rows: np.ndarray, ok: np.ndarray, feasible: Callable[[np.ndarray], np.ndarray],
                draw: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Re-draw the infeasible `rows` in place (`draw(bad positions)`), up to `max_retries` times; returns
        which rows are feasible now."""
        for _ in range(self.max_retries):
            if ok.all():
                break
            bad = np.flatnonzero(~ok)
            rows[bad] = draw(bad)
            ok[bad] = feasible(rows[bad])
        return ok
