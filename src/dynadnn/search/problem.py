"""What a search optimises and what it returns, plus the gene helpers the searchers share.

One `SearchProblem` = predicted accuracy (maximise) and predicted latency in one or more hardware contexts
(minimise), all vectorised over integer gene arrays (see `predict.genes`). Every in-range gene row is a valid
architecture, so the searchers build only valid candidates; only latency budgets can be missed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from ..errors import UserError
from ..predict.genes import GeneCoding
from ..space import Arch

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


# ------------------------------------------------------------------------------------------------------
# Gene helpers shared by the searchers
# ------------------------------------------------------------------------------------------------------
def unique_rows(genes: np.ndarray, coding: GeneCoding) -> np.ndarray:
    """The canonical form of each distinct architecture among `genes`, in first-seen order."""
    canon = coding.canonical(genes)
    _, idx = np.unique(canon, axis=0, return_index=True)
    return canon[np.sort(idx)]


def gene_keys(canon: np.ndarray) -> list[bytes]:
    """One hashable key per canonical gene row (genes are small, so one byte each)."""
    rows = np.ascontiguousarray(canon, dtype=np.uint8)
    return rows.view(np.dtype((np.void, rows.shape[1])))[:, 0].tolist()


def mutate(coding: GeneCoding, parents: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """OFA's mutation: the resolution, each block's (kernel, expand) together and each stage's depth are
    re-drawn, each with probability `prob` (the sweep and the niche phase both breed with it)."""
    upper, nb, ns = coding.upper, coding.nb, coding.ns
    kids = parents.copy()
    n = len(parents)
    m_r = rng.random(n) < prob
    kids[m_r, -1] = rng.integers(0, upper[-1], size=m_r.sum())
    m_b = rng.random((n, nb)) < prob
    kids[:, :nb] = np.where(m_b, rng.integers(0, upper[0], size=(n, nb)), kids[:, :nb])
    kids[:, nb:2 * nb] = np.where(m_b, rng.integers(0, upper[nb], size=(n, nb)), kids[:, nb:2 * nb])
    m_d = rng.random((n, ns)) < prob
    kids[:, 2 * nb:2 * nb + ns] = np.where(m_d, rng.integers(0, upper[2 * nb], size=(n, ns)),
                                           kids[:, 2 * nb:2 * nb + ns])
    return kids


def best_row(acc: np.ndarray, lat_col: np.ndarray, budget: float) -> int | None:
    """The most accurate row with latency within `budget` (None if there is none)."""
    ok = np.flatnonzero(lat_col <= budget)
    return None if not len(ok) else int(ok[np.argmax(acc[ok])])


class Pool:
    """Every architecture evaluated so far, in arrays allocated once for `capacity` rows (so adding a
    generation copies nothing), and the key of every row ever proposed, so no architecture is predicted twice."""

    def __init__(self, coding: GeneCoding, genes: np.ndarray, acc: np.ndarray, lat: np.ndarray, capacity: int):
        self.size = len(genes)
        self.genes = np.empty((max(capacity, self.size), genes.shape[1]), dtype=genes.dtype)
        self.acc = np.empty(len(self.genes))
        self.lat = np.empty((len(self.genes), lat.shape[1]))
        self.genes[:self.size], self.acc[:self.size], self.lat[:self.size] = genes, acc, lat
        self.seen = set(gene_keys(coding.canonical(genes)))
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
        for i, (g, key) in enumerate(zip(group.tolist(), gene_keys(canon))):
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
