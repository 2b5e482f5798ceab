"""A family chosen on measurements: the search proposes, the measurements decide.

    family, report = choose_family(net, predictor, tables, data, members=8, checkpoint="zoo:animals")

Predictors rank members coarsely (similar-size members differ by less than the accuracy predictor's error,
and batch-1 latency on a CPU follows per-op overhead more than arithmetic). So the search only proposes:
`propose_candidates` spreads latency targets over the first context's predicted range and takes the best
predicted member within each, plus the space's smallest and largest. `measure_candidates` then
BN-calibrates each one and measures it as the runtime will serve it (top-1 on the test split; batch-1
latency on the faster of resident TorchScript and ONNX Runtime). The family is the measured Pareto front
in the first context, thinned to `members` spread in latency.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .deploy import deployed_latency
from .errors import UserError
from .evaluate import calibrate, top1
from .family import Family, Member, archive_entries, pick_spread
from .predict.flops import FlopsModel
from .predict.profiling import check_contexts, context_device, time_members
from .provenance import checkpoint_ref
from .search import NSGA2Search, SearchProblem, SearchResult
from .space import Arch


@dataclass
class Candidate:
    """One proposed member: its predictions, then (after `measure_candidates`) its measurements."""

    arch: Arch
    top1_predicted: float
    latency_predicted_ms: dict[str, float]
    top1: float | None = None
    bn_stats: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)  # context -> {"median", "p95"[, "backend"]}

    def latency(self, context: str) -> float:
        return float(self.latency_ms[context]["median"])


@dataclass
class Proposal:
    result: SearchResult
    candidates: list[Candidate]
    targets_ms: list[float]


def propose_candidates(predictor, tables: Mapping[str, Any], n: int, seed: int = 0) -> Proposal:
    """`n` candidates along the predicted front of the first context (one NSGA-II search over every
    context at once, budget niches at `n` latency targets), plus the space's smallest and largest member."""
    if n < 2:
        raise UserError(f"candidates: expected at least 2, got {n}")
    problem = SearchProblem.from_predictors(predictor, tables)
    contexts = list(tables)
    c0, space = contexts[0], problem.coding.space
    res = problem.coding.resolutions or space.resolutions
    slowest = float(tables[c0].predict([space.max_arch(max(res))])[0])
    targets = [float(t) for t in np.exp(np.linspace(np.log(problem.fastest[c0] * 1.02), np.log(slowest), n))]
    result = NSGA2Search(budgets={c0: targets}, seed=seed).search(problem)
    rows: list[int] = []
    for t in targets:
        best = result.best_within(c0, t)
        if best is not None and best[0] not in rows:
            rows.append(best[0])
    if len(rows) < n:
        front = result.front(c0)
        extra = [int(front[i]) for i in pick_spread(result.latency[front, 0], result.accuracy[front], n)]
        rows += [r for r in extra if r not in rows][: n - len(rows)]
    archs = result.archs()
    cands = [Candidate(archs[r], float(result.accuracy[r]), {c: float(result.latency[r, i]) for i, c in enumerate(contexts)})
             for r in rows]
    # the largest member is trained at every step and is usually the most accurate in fact, even where the
    # predictor ranks another one above it; the smallest anchors the fast end
    for arch in (space.min_arch(min(res)), space.max_arch(max(res))):
        if all(arch != c.arch for c in cands):
            cands.append(Candidate(arch, float(predictor.predict([arch])[0]),
                                   {c: float(tables[c].predict([arch])[0]) for c in contexts}))
    return Proposal(result, cands, targets)


def measure_candidates(net, candidates: Sequence[Candidate], data, contexts: Sequence[str], *, calib_images: int = 1000,
                       seed: int = 0, runs: int = 100, progress: Callable[[str, int, int], None] = lambda *a: None) -> None:
    """Fill each candidate's BN statistics, measured top-1 and measured latency per context, in place."""
    calib = data.calibration_batches(calib_images, 200, seed=seed)
    for i, cand in enumerate(candidates):
        cand.bn_stats = calibrate(net, cand.arch, calib)
        cand.top1 = top1(net, cand.arch, data, cand.bn_stats)
        progress("calibrating and measuring candidates (top-1)", i + 1, len(candidates))
    progress(f"timing candidates in {', '.join(contexts)}", 0, 1)
    devices = {c: context_device(c) for c in contexts}
    cpu = {c: threads for c, (device, threads) in devices.items() if device == "cpu"}
    if cpu:
        per_member = deployed_latency(net, [c.arch for c in candidates], [c.bn_stats for c in candidates],
                                      sorted(set(cpu.values())), n=runs)
        for cand, lat in zip(candidates, per_member):
            cand.latency_ms = {c: lat[t] for c, t in cpu.items()}
    for c in contexts:
        if c not in cpu:  # CUDA: the extracted, BN-folded member (BN values do not change its time)
            timings = time_members(net, [cand.arch for cand in candidates], c, runs=runs, warmup=10)
            for cand, t in zip(candidates, timings):
                cand.latency_ms[c] = {"median": round(t.median, 4), "p95": round(t.p95, 4)}
    progress(f"timing candidates in {', '.join(contexts)}", 1, 1)


def pareto_split(candidates: Sequence[Candidate], context: str) -> tuple[list[Candidate], list[Candidate]]:
    """(kept, dropped): a dropped candidate has another at least as accurate and at least as fast in
    `context`, and strictly better in one of the two (measured values)."""
    kept, dropped = [], []
    for a in candidates:
        dominated = any(b is not a and b.top1 >= a.top1 and b.latency(context) <= a.latency(context)
                        and (b.top1 > a.top1 or b.latency(context) < a.latency(context)) for b in candidates)
        (dropped if dominated else kept).append(a)
    return kept, dropped


@dataclass
class Choice:
    """What `choose_family` did: the family, and every candidate measured on the way."""

    family: Family
    candidates: list[Candidate]
    dropped: list[Candidate]
    thinned: list[Candidate]
    proposal: Proposal


def _member(cand: Candidate, flops: FlopsModel) -> Member:
    return Member(cand.arch, {k: v.detach().clone() for k, v in cand.bn_stats.items()}, round(cand.top1_predicted, 4),
                  round(cand.top1, 4), {c: round(v, 5) for c, v in cand.latency_predicted_ms.items()}, cand.latency_ms,
                  int(flops.macs(cand.arch)[0]), int(flops.params(cand.arch)[0]))


def carry_inputs(out: str | Path, tmp: str | Path, inputs: Sequence[str | Path | None]) -> None:
    """Copy each input folder that lies inside `out` to the same place in `tmp`, the result folder that will
    replace `out`: a `--profile out/profile` read by a search into `out` is kept, not lost with the old folder."""
    out = Path(out).resolve()
    for item in inputs:
        if not item:
            continue
        src = Path(item).resolve()
        if src.is_dir() and src != out and src.is_relative_to(out):
            shutil.copytree(src, Path(tmp) / src.relative_to(out), dirs_exist_ok=True)


MAX_CANDIDATES = 1000  # each candidate is BN-calibrated and measured here: seconds each


def check_family_sizes(members: int, candidates: int | None = None, calib_images: int = 1000, seed: int = 0) -> int:
    """The checks `choose_family` makes first; returns the number of candidates (default 3 x members)."""
    from .predict.fitting import check_measure_sizes
    from .validate import count

    count(members, "members", low=2, high=MAX_CANDIDATES, why="a family of at least 2 members")
    n_cand = 3 * members if candidates is None else count(candidates, "candidates", low=2, high=MAX_CANDIDATES)
    if n_cand < members:
        raise UserError(f"candidates: expected at least members ({members}), got {n_cand}")
    check_measure_sizes(calib_images, seed)
    return n_cand


def choose_family(net, predictor, tables: Mapping[str, Any], data, *, members: int = 8, candidates: int | None = None,
                  calib_images: int = 1000, seed: int = 0, checkpoint: str | None = None,
                  provenance: Mapping[str, Any] | None = None,
                  progress: Callable[[str, int, int], None] = lambda *a: None) -> Choice:
    """Propose candidates with the predictors, measure them here, keep the measured Pareto front of the
    first context (accuracy rises with latency), thinned to at most `members` spread in latency.
    `checkpoint` (a path or zoo:NAME) is recorded with its sha256 so the family can be reloaded alone."""
    n_cand = check_family_sizes(members, candidates, calib_images, seed)
    if not isinstance(tables, Mapping) or not tables:
        raise UserError("tables: expected a non-empty {context: LatencyTable} mapping")
    contexts = check_contexts(list(tables), "tables")  # measured here: local contexts only
    t_start = time.perf_counter()
    ck_name, ck_sha = checkpoint_ref(checkpoint)  # hashed before the work: the file may be replaced meanwhile
    proposal = propose_candidates(predictor, tables, n_cand, seed)
    measure_candidates(net, proposal.candidates, data, contexts, calib_images=calib_images, seed=seed,
                       progress=progress)
    kept, dropped = pareto_split(proposal.candidates, contexts[0])
    thinned: list[Candidate] = []
    if len(kept) > members:
        keep = set(pick_spread([c.latency(contexts[0]) for c in kept], [c.top1 for c in kept], members))
        thinned = [c for i, c in enumerate(kept) if i not in keep]
        kept = [c for i, c in enumerate(kept) if i in keep]
    flops, result = FlopsModel(net.space), proposal.result
    archs = result.archs()
    prov = {**dict(provenance or {}), "search": {
        "evaluations": result.evaluations, "seconds": round(result.seconds, 3), "archive": len(archs),
        "targets_ms": [round(t, 4) for t in proposal.targets_ms]},
        "candidates": [{"arch": c.arch.to_dict(), "top1_measured": round(c.top1, 4),
                        "top1_predicted": round(c.top1_predicted, 4), "latency_ms": c.latency_ms}
                       for c in proposal.candidates],
        "dropped_dominated": [c.arch.to_dict() for c in dropped], "thinned": [c.arch.to_dict() for c in thinned],
        "seconds_total": round(time.perf_counter() - t_start, 1)}
    fam = Family(net.space.name, contexts, [_member(c, flops) for c in kept], ck_name, ck_sha,
                 archive_entries(archs, result.accuracy, {c: result.latency[:, i] for i, c in enumerate(contexts)}),
                 prov, search_space=net.space)
    fam.sort()
    return Choice(fam, proposal.candidates, dropped, thinned, proposal)
