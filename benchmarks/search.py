"""Search benchmark: one multi-objective run vs Dynamic-OFA's per-budget sweep, on real reference data.

Both searchers get the same vectorised predictors (OFA's published accuracy predictor, Dynamic-OFA's
Jetson Xavier NX CPU and GPU latency tables, resolutions 160-224 in steps of 4, which the tables cover),
so the comparison is algorithm against algorithm. Ours is ONE run over both contexts; the sweep is OFA's
evolution (population 100, 500 generations) once per budget and context (16 runs).

Prints a table, then one JSON object as the last line:
  ours_gpu / sweep_gpu / ours_cpu / sweep_cpu: {budget: best predicted top-1 (%) within it}
  hv_ours / hv_sweep: hypervolume (pymoo) of (top-1, GPU ms, CPU ms) normalised to the unit cube
  (top-1 70..90 %, GPU 15..31 ms, CPU 700..2900 ms; reference point at the worst corner)
  time_ours_s / time_sweep_s, evals_ours / evals_sweep: ours runs --repeats times (same seed, same result),
  spread among the sweep's 16 runs so both see the same machine speed; time_ours_s is the mean of its runs
  (time_ours_runs_s lists them), time_sweep_s the sum of the sweep's.
  sweep_failed: budgets where the sweep found no feasible initial population (its value is null there).
Targets (issue 4): ours >= sweep - 0.1 points at every budget; time_ours_s <= time_sweep_s / 20.

With --seeds N the benchmark runs N seeds (from --seed) and adds, across them: budgets met per seed, seeds
with all 16, mean difference per budget, and the sweep measured against itself at another seed (how much of
the per-budget target is the sweep's own seed-to-seed spread). The keys above are then the first seed's.

Usage: python benchmarks/search.py [--quick] [--reference DIR] [--seed N] [--seeds N] [--repeats N]
(--quick runs the same comparison with 2 runs of ours instead of 4; the whole benchmark fits in a minute.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# one thread for numpy's BLAS as for torch (set before numpy loads it): the box is shared and timings compare
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynadnn.predict import reference_predictor, reference_table  # noqa: E402
from dynadnn.search import (BudgetError, EvolutionSweep, NicheConfig, NSGA2Config, NSGA2Search,  # noqa: E402
                            SearchProblem, hypervolume)
from dynadnn.space import load_space

GPU_BUDGETS = [16.5, 17.5, 20, 22, 24, 26, 28, 30.5]
CPU_BUDGETS = [900, 1000, 1200, 1400, 1600, 2000, 2400, 2800]
BOX = {"acc": (70.0, 90.0), "jetson_gpu": (15.0, 31.0), "jetson_cpu": (700.0, 2900.0)}


def find_reference(arg: str | None) -> Path:
    for cand in [arg, os.environ.get("DYNADNN_REFERENCE"), str(Path(__file__).resolve().parents[1].parent / "shared" / "reference")]:
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("benchmarks/search.py: reference data not found; pass --reference or set DYNADNN_REFERENCE")


def normalised_hv(acc: np.ndarray, lat: np.ndarray, contexts: list[str]) -> float:
    """Hypervolume with every objective scaled to [0, 1] (0 = best corner of BOX, 1 = reference point)."""
    lo, hi = BOX["acc"]
    acc_loss = (hi - acc) / (hi - lo)  # minimised; `hypervolume` maximises its first argument, so negate
    cols = [(lat[:, i] - BOX[c][0]) / (BOX[c][1] - BOX[c][0]) for i, c in enumerate(contexts)]
    return hypervolume(-acc_loss, np.column_stack(cols), -1.0, [1.0] * len(contexts))


def run_interleaved(budgets: dict[str, list[float]], seed: int, make_problem, repeats: int):
    """The sweep one budget at a time, with `repeats` runs of ours spread evenly among its 16 runs, so that
    both searchers see the same mix of this shared machine's fast and slow minutes (its speed drifts by up
    to 1.7x within a benchmark; ours alone lasts ~1 s, the sweep ~20 s). Ours is deterministic for a seed,
    so every repeat finds the same architectures; its time is the mean over repeats, the sweep's the sum of
    its runs.

    Each sweep run seeds its own generator from (seed, budget), so one budget at a time gives the same
    results as one `EvolutionSweep` over all budgets, and a budget where the sweep's capped re-draw loop
    finds no feasible initial member (CPU 900 ms at seed 2: ~4e-5 of random architectures meet it) is
    reported as a failure of the sweep instead of ending the benchmark.

    Returns ours (result, problem, per-repeat seconds) and the sweep's (picks, accuracies, latencies,
    problem, seconds)."""
    p_sweep = make_problem()
    jobs = [(ctx, float(b)) for ctx, bs in budgets.items() for b in bs]
    ours_at = {round(i * len(jobs) / repeats) for i in range(repeats)}
    ours, p_ours, t_ours, t_sweep = None, None, [], 0.0
    picks, accs, lats = {}, [], []
    for i, (ctx, b) in enumerate(jobs):
        if i in ours_at:
            p_ours = make_problem()
            t0 = time.perf_counter()
            ours = NSGA2Search(budgets=budgets, seed=seed).search(p_ours)
            t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            res = EvolutionSweep({ctx: [b]}, seed=seed).search(p_sweep)
        except BudgetError as exc:
            print(f"sweep failed: {exc}")
            res = None
        t_sweep += time.perf_counter() - t0
        if res is not None:
            picks[(ctx, b)] = len(accs)
            accs.append(res.accuracy[0])
            lats.append(res.latency[0])
    lat = np.array(lats).reshape(len(lats), len(p_sweep.contexts))
    return (ours, p_ours, t_ours), (picks, np.array(accs), lat, p_sweep, t_sweep)


def run_seed(seed: int, acc, tables: dict, budgets: dict[str, list[float]], repeats: int, show: bool = True) -> dict:
    """One side-by-side comparison at one seed (both searchers get it); the benchmark's JSON keys."""
    (ours, p_ours, t_ours), (sweep_picks, sweep_acc, sweep_lat, p_sweep, time_sweep) = run_interleaved(
        budgets, seed, lambda: SearchProblem.from_predictors(acc, tables), repeats)
    time_ours = float(np.mean(t_ours))

    out: dict = {"seed": seed}
    rows = []
    for ctx, key in (("jetson_gpu", "gpu"), ("jetson_cpu", "cpu")):
        o, s = {}, {}
        for b in budgets[ctx]:
            name = f"{b:g}"
            best = ours.best_within(ctx, b)
            o[name] = round(best[1], 3) if best else None
            row = sweep_picks.get((ctx, float(b)))
            s[name] = None if row is None else round(float(sweep_acc[row]), 3)
            rows.append((ctx, name, o[name], s[name]))
        out[f"ours_{key}"], out[f"sweep_{key}"] = o, s
    out["hv_ours"] = round(normalised_hv(ours.accuracy, ours.latency, ours.contexts), 5)
    out["hv_sweep"] = round(normalised_hv(sweep_acc, sweep_lat, p_sweep.contexts), 5)
    out["time_ours_s"], out["time_sweep_s"] = round(time_ours, 3), round(time_sweep, 3)
    out["time_ours_runs_s"] = [round(t, 3) for t in t_ours]
    out["evals_ours"], out["evals_sweep"] = p_ours.evaluations, p_sweep.evaluations
    out["archive_size"] = len(ours.genes)
    diffs = [r[2] - r[3] for r in rows if r[2] is not None and r[3] is not None]
    out["min_diff"] = round(min(diffs), 3)
    # a budget where the sweep found nothing counts as met when ours found an architecture within it
    out["budgets_within_0.1"] = sum(d >= -0.1 for d in diffs) + sum(r[2] is not None and r[3] is None for r in rows)
    out["sweep_failed"] = [f"{ctx}:{name}" for ctx, name, _, s in rows if s is None]
    out["speedup"] = round(time_sweep / time_ours, 1)
    if show:
        print(f"{'context':11s} {'budget':>7s} {'ours %':>8s} {'sweep %':>8s} {'diff':>7s}")
        for ctx, name, o, s in rows:
            nan = float("nan")
            diff = o - s if o is not None and s is not None else nan
            print(f"{ctx:11s} {name:>7s} {o if o is not None else nan:8.3f} {s if s is not None else nan:8.3f} {diff:+7.3f}")
        print(f"hypervolume (normalised): ours {out['hv_ours']:.4f}  sweep {out['hv_sweep']:.4f}")
        print(f"time: ours {time_ours:.2f} s ({p_ours.evaluations} predictions, archive {len(ours.genes)})  "
              f"sweep {time_sweep:.2f} s ({p_sweep.evaluations} predictions)  speed-up {out['speedup']}x")
    return out


def _values(out: dict, who: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for k in ("gpu", "cpu") for v in out[f"{who}_{k}"].values()])


def _met(x: np.ndarray, ref: np.ndarray) -> int:
    """Budgets where x >= ref - 0.1 (one the reference found nothing for counts as met, as above)."""
    return int(np.sum(np.where(np.isnan(ref), ~np.isnan(x), np.nan_to_num(x, nan=-np.inf) >= ref - 0.1)))


def summarise(runs: list[dict]) -> dict:
    """Across seeds: how often ours meets the target at its own seed, and, for scale, how often the sweep
    meets it against itself run at another seed (which says how much of the target is the sweep's luck)."""
    ours = [_values(r, "ours") for r in runs]
    sweep = [_values(r, "sweep") for r in runs]
    n = len(runs)
    cross_sweep = [_met(sweep[a], sweep[b]) for a in range(n) for b in range(n) if a != b]
    cross_ours = [_met(ours[a], sweep[b]) for a in range(n) for b in range(n) if a != b]
    diff = np.nanmean(np.array(ours) - np.array(sweep), axis=0)
    names = [f"{k}:{b}" for k in ("gpu", "cpu") for b in runs[0][f"ours_{k}"]]
    return {
        "seeds": [r["seed"] for r in runs],
        "budgets_within_0.1_per_seed": [r["budgets_within_0.1"] for r in runs],
        "seeds_all_16": sum(r["budgets_within_0.1"] == 16 for r in runs),
        "speedup_per_seed": [r["speedup"] for r in runs],
        "sweep_vs_other_seed_sweep_mean": round(float(np.mean(cross_sweep)), 2) if cross_sweep else None,
        "sweep_vs_other_seed_sweep_all_16": sum(m == 16 for m in cross_sweep),
        "ours_vs_other_seed_sweep_mean": round(float(np.mean(cross_ours)), 2) if cross_ours else None,
        "ours_vs_other_seed_sweep_all_16": sum(m == 16 for m in cross_ours),
        "pairs": len(cross_sweep),
        "mean_diff_per_budget": dict(zip(names, np.round(diff, 3).tolist())),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="same comparison, 2 runs of ours instead of 4 (under a minute)")
    ap.add_argument("--reference", help="shared reference directory (default: $DYNADNN_REFERENCE or ../shared/reference)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=None,
                    help="run N seeds from --seed (each ~40 s) and add a summary across them to the JSON")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of ours, spread among the sweep's runs; its time is their mean (default 4, 2 with --quick)")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 4
    if args.repeats < 1 or (args.seeds is not None and args.seeds < 1):
        ap.error("--repeats and --seeds must be at least 1")
    torch.set_num_threads(1)
    ref = find_reference(args.reference)
    space = load_space("ofa_mbv3_w1.2")
    acc = reference_predictor(ref, space)
    tables = {"jetson_gpu": reference_table(ref, "jetson_gpu", space), "jetson_cpu": reference_table(ref, "jetson_cpu", space)}
    budgets = {"jetson_gpu": GPU_BUDGETS, "jetson_cpu": CPU_BUDGETS}
    # import pymoo's modules before timing (a one-off ~1 s import is not search time)
    import pymoo.indicators.hv  # noqa: F401
    import pymoo.operators.survival.rank_and_crowding.metrics  # noqa: F401
    import pymoo.util.nds.non_dominated_sorting  # noqa: F401

    # one small run of each searcher first, on a throw-away problem: first calls (torch's dispatcher, numpy's
    # and pymoo's code paths) are one-off start-up costs, not search time, and would land on whichever runs first
    warm = SearchProblem.from_predictors(acc, tables)
    NSGA2Search(budgets=budgets, nsga2=NSGA2Config(population=20, generations=2),
                niche=NicheConfig(generations=2)).search(warm)
    EvolutionSweep({"jetson_gpu": [30.5]}, population=20, generations=2).search(warm)

    if args.seeds is None:
        out = run_seed(args.seed, acc, tables, budgets, args.repeats)
    else:
        runs = []
        for seed in range(args.seed, args.seed + args.seeds):
            runs.append(run_seed(seed, acc, tables, budgets, args.repeats, show=False))
            r = runs[-1]
            print(f"seed {seed}: {r['budgets_within_0.1']}/16 budgets within 0.1 (min diff {r['min_diff']:+.3f}), "
                  f"speed-up {r['speedup']}x", flush=True)
        out = {**runs[0], **summarise(runs)}
        print(f"seeds with all 16 budgets: {out['seeds_all_16']} of {args.seeds}; the sweep against itself at "
              f"another seed meets {out['sweep_vs_other_seed_sweep_mean']} of 16 on average "
              f"(all 16 in {out['sweep_vs_other_seed_sweep_all_16']} of {out['pairs']} pairs)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
