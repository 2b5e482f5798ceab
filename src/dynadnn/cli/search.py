"""`dynadnn search`: a Pareto family of sub-networks for this device, written as a family artifact."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search a Pareto family of sub-networks and write family.json + family.safetensors",
        description="One multi-objective search (NSGA-II plus budget-niche refinement) over the checkpoint's "
                    "space, maximising predicted top-1 and minimising predicted latency in every context at "
                    "once. Candidates spread along the predicted front of the first context are BN-calibrated "
                    "on training images and measured here (top-1 on the whole test split; batch-1 latency "
                    "median/p95 per context on the faster of the resident TorchScript member and ONNX "
                    "Runtime, as the runtime serves it); the family is the measured Pareto front among them "
                    "(accuracy rises with latency), thinned to --members spread in latency. Latency comes from "
                    "a profile directory (`dynadnn profile`) or is profiled on the fly; accuracy from a "
                    "trained predictor directory or from one trained now on BN-calibrated evaluations of "
                    "random members.")
    p.add_argument("checkpoint", help="super-network checkpoint (.safetensors, OFA .pth, or zoo:NAME)")
    p.add_argument("--contexts", default="cpu:1t,cpu:2t", help="comma-separated contexts (default cpu:1t,cpu:2t)")
    p.add_argument("--members", type=int, default=8, help="family size: at most this many members (default 8)")
    p.add_argument("--candidates", type=int, default=None,
                   help="architectures from the predicted front measured before choosing the family, besides the "
                        "space's smallest and largest members (default 3 x --members): predicted top-1 "
                        "differences of a few tenths of a point are within the predictor's error, so the "
                        "choice is made on measurements")
    p.add_argument("--out", required=True, help="family directory to write")
    p.add_argument("--profile", help="profile directory from `dynadnn profile` (default: profile now into OUT/profile)")
    p.add_argument("--predictor", help="accuracy predictor directory (default: train one now into OUT/predictor)")
    p.add_argument("--samples", type=int, default=300, help="random members measured to train the predictor (default 300)")
    p.add_argument("--data", help="dataset for calibration and evaluation (default: the checkpoint's, else animals)")
    p.add_argument("--calib-images", type=int, default=1000, help="training images for BN calibration (default 1000)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="test images per member when measuring the predictor's training set (default: the "
                        "whole test split, as for family members; measured on the animals model, its two halves "
                        "rank the same members with a Kendall tau of only 0.46)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", help="preset for an OFA checkpoint without metadata")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------------
# Measuring members
# ------------------------------------------------------------------------------------------------------
def measure_top1(net, arch, data, calib: list, bn_stats=None, limit: int | None = None) -> tuple[float, dict]:
    """BN-calibrate `arch` on `calib` (training images) unless stats are given, then top-1 (%) on the
    test split (its first `limit` images when given: the same ones for every member) at the member's
    resolution."""
    import torch

    from ..data import resize_batch

    with torch.no_grad():
        if bn_stats is None:
            bn_stats = net.calibrate_bn(arch, [resize_batch(x, arch.r) for x in calib])
        plan = net.plan(arch, bn_stats, fold_bn=True)
        from ..supernet.network import run_plan

        correct = total = 0
        for x, y in data.test_batches(500):
            if limit is not None and total >= limit:
                break
            if limit is not None:
                x, y = x[: limit - total], y[: limit - total]
            out = run_plan(plan, resize_batch(x, arch.r))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1), bn_stats


def train_predictor(net, data, calib, n: int, seed: int, out: Path, limit: int | None = None):
    """Measure `n` members of random sizes (`SearchSpace.sample_sized`) and fit an accuracy predictor on them."""
    from rich.progress import Progress

    from ..predict.accuracy import AccuracyPredictor

    space = net.space
    rng = random.Random(seed)
    archs = [space.min_arch(), space.max_arch()] + [space.sample_sized(rng) for _ in range(max(0, n - 2))]
    top1 = []
    with Progress(transient=True) as bar:
        task = bar.add_task("measuring members for the accuracy predictor", total=len(archs))
        for a in archs:
            top1.append(measure_top1(net, a, data, calib, limit=limit)[0])
            bar.advance(task)
    pred, report = AccuracyPredictor.fit(space, archs, top1, hidden=(128, 128), epochs=150, seed=seed)
    pred.meta["samples"] = [{"arch": a.to_dict(), "top1": t} for a, t in zip(archs, top1)]
    pred.save(out)
    return pred, report


def measure_latency(net, rows: list[dict], contexts: list[str], runs: int = 100) -> None:
    """Fill each row's "lat_full" ({context: {median, p95, backend}}) and "lat" ({context: median}): CPU
    contexts as the runtime serves the member (faster of resident TorchScript and ONNX Runtime), CUDA
    contexts with the extracted, BN-folded member."""
    from ..predict.profiling import context_device, time_members
    from ..runtime.knobs import deployed_latency

    devices = {c: context_device(c) for c in contexts}
    cpu = {c: threads for c, (device, threads) in devices.items() if device == "cpu"}
    if cpu:
        per_member = deployed_latency(net, [r["arch"] for r in rows], [r["stats"] for r in rows],
                                      sorted(set(cpu.values())), n=runs)
        for row, lat in zip(rows, per_member):
            row["lat_full"] = {c: lat[t] for c, t in cpu.items()}
    for c in contexts:
        if c in cpu:
            continue
        timings = time_members(net, [r["arch"] for r in rows], c, runs=runs, warmup=10)  # BN values do not change it
        for row, t in zip(rows, timings):
            row.setdefault("lat_full", {})[c] = {"median": round(t.median, 4), "p95": round(t.p95, 4)}
    for row in rows:
        row["lat"] = {c: row["lat_full"][c]["median"] for c in contexts}


def drop_dominated(rows: list[dict], contexts: list[str]) -> tuple[list[dict], list[dict]]:
    """Split members into (kept, dropped): dropped ones have another member at least as accurate and at
    least as fast in the given (measured) contexts, and strictly better somewhere. The CLI passes the
    first context, the one the family is spread along, so accuracy rises with latency there."""
    kept, dropped = [], []
    for i, a in enumerate(rows):
        dominated = False
        for j, b in enumerate(rows):
            if i == j:
                continue
            ge = b["top1"] >= a["top1"] and all(b["lat"][c] <= a["lat"][c] for c in contexts)
            gt = b["top1"] > a["top1"] or any(b["lat"][c] < a["lat"][c] for c in contexts)
            if ge and gt:
                dominated = True
                break
        (dropped if dominated else kept).append(a)
    return kept, dropped


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import Progress

    from ..data import load_dataset
    from ..family import Family, Member, archive_entries, pick_spread, sha256_file
    from ..predict.accuracy import MIN_PAIRS, AccuracyPredictor
    from ..predict.flops import FlopsModel
    from ..predict.latency import load_tables
    from ..predict.profiling import context_device
    from ..search import NSGA2Search, SearchProblem
    from ..fileio import write_json
    from ..supernet.checkpoint import load_checkpoint, resolve_checkpoint_path
    from .profile import profile_device

    contexts = [c.strip() for c in args.contexts.split(",") if c.strip()]
    if not contexts:
        raise UserError("--contexts: expected at least one context, e.g. cpu:1t,cpu:2t")
    for c in contexts:
        context_device(c)  # only locally measurable contexts: the family is measured here
    if args.members < 2:
        raise UserError("--members: a family needs at least 2 members")
    if args.eval_images is not None and args.eval_images < 1:
        raise UserError(f"--eval-images: expected a positive number of test images, got {args.eval_images}")
    if not args.predictor and args.samples < MIN_PAIRS:
        raise UserError(f"--samples: the accuracy predictor needs at least {MIN_PAIRS} measured members, "
                        f"got {args.samples}")
    out = Path(args.out)
    ckpt_path = resolve_checkpoint_path(args.checkpoint)
    ckpt_sha = sha256_file(ckpt_path)  # hashed before loading: the file may be replaced while we search
    net, meta = load_checkpoint(args.checkpoint, args.preset)
    space = net.space
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    # latency tables
    if args.profile:
        tables = load_tables(args.profile, space, contexts)
        profile_dir = Path(args.profile)
    else:
        profile_dir = out / "profile"
        print(f"profiling this device into {profile_dir}/ (pass --profile DIR to reuse one)")
        profile_device(net, contexts, profile_dir, warmup=5, members=60, checkpoint=str(args.checkpoint))
        tables = load_tables(profile_dir, space, contexts)

    # accuracy
    data_spec = args.data or next((v for v in (meta.get("data"), meta.get("dataset")) if isinstance(v, str)), "animals")
    data = load_dataset(data_spec, image_size=max(space.resolutions), in_channels=space.in_channels)
    calib = data.calibration_batches(args.calib_images, 200, seed=args.seed)
    if args.predictor:
        predictor = AccuracyPredictor.load(args.predictor, space)
        fit = predictor.meta.get("fit", {})
    else:
        print(f"training an accuracy predictor on {args.samples} BN-calibrated members (pass --predictor DIR to reuse one)")
        predictor, report = train_predictor(net, data, calib, args.samples, args.seed, out / "predictor",
                                            args.eval_images)
        fit = report.to_dict()
        print(f"accuracy predictor: {report.model}, held-out RMSE {report.rmse:.2f} points, Kendall tau "
              f"{report.kendall_tau:.3f} (5-fold cross-validation over {report.n_test} measured members"
              + (", best of " + ", ".join(f"{k} {v:.3f}" for k, v in report.candidates.items()) if report.candidates else "")
              + ")")

    # search: spread targets in the first context, refined by budget niches
    problem = SearchProblem.from_predictors(predictor, tables)
    c0 = contexts[0]
    fastest = problem.fastest[c0]
    slowest = float(tables[c0].predict([space.max_arch(max(problem.coding.resolutions))])[0])
    n_cand = args.candidates or 3 * args.members
    if n_cand < args.members:
        raise UserError(f"--candidates: expected at least --members ({args.members}), got {n_cand}")
    targets = list(np.exp(np.linspace(np.log(fastest * 1.02), np.log(slowest), n_cand)))
    result = NSGA2Search(budgets={c0: targets}, seed=args.seed).search(problem)
    front = result.front(c0)
    picked_rows = []
    for t in targets:
        best = result.best_within(c0, t)
        if best is not None and best[0] not in picked_rows:
            picked_rows.append(best[0])
    if len(picked_rows) < n_cand:
        extra = [int(front[i]) for i in pick_spread(result.latency[front, 0], result.accuracy[front], n_cand)]
        picked_rows += [r for r in extra if r not in picked_rows][: n_cand - len(picked_rows)]
    archs = result.archs()
    flops = FlopsModel(space)

    cands = [(archs[r], float(result.accuracy[r]), {c: float(result.latency[r, i]) for i, c in enumerate(contexts)})
             for r in picked_rows]
    # the space's two extremes are always measured too: the largest member is trained at every step and is
    # usually the most accurate in fact, even where the predictor ranks another one above it
    res = problem.coding.resolutions or space.resolutions
    for arch in (space.min_arch(min(res)), space.max_arch(max(res))):
        if all(arch != a for a, _, _ in cands):
            cands.append((arch, float(predictor.predict([arch])[0]),
                          {c: float(tables[c].predict([arch])[0]) for c in contexts}))

    # calibrate and measure the candidates here
    rows = []
    with Progress(transient=True) as bar:
        task = bar.add_task(f"calibrating and measuring {len(cands)} candidates (top-1)", total=len(cands))
        for arch, pred, pred_lat in cands:
            top1, stats = measure_top1(net, arch, data, calib)
            rows.append({"arch": arch, "top1": top1, "stats": stats, "pred": pred, "pred_lat": pred_lat})
            bar.advance(task)
    print(f"timing {len(rows)} candidates in {', '.join(contexts)} (resident TorchScript vs ONNX Runtime)")
    measure_latency(net, rows, contexts)
    kept, dropped = drop_dominated(rows, contexts[:1])
    thinned = []
    if len(kept) > args.members:
        keep = set(pick_spread([r["lat"][c0] for r in kept], [r["top1"] for r in kept], args.members))
        thinned = [r for i, r in enumerate(kept) if i not in keep]
        kept = [r for i, r in enumerate(kept) if i in keep]
    members = [Member(r["arch"], {k: v.detach().clone() for k, v in r["stats"].items()}, round(r["pred"], 4),
                      round(r["top1"], 4), {c: round(v, 5) for c, v in r["pred_lat"].items()}, r["lat_full"],
                      int(flops.macs(r["arch"])[0]), int(flops.params(r["arch"])[0])) for r in kept]
    ck_name = str(args.checkpoint) if str(args.checkpoint).startswith("zoo:") else str(Path(args.checkpoint).resolve())
    fam = Family(space.name, contexts, members, ck_name, ckpt_sha,
                 archive_entries(archs, result.accuracy, {c: result.latency[:, i] for i, c in enumerate(contexts)}),
                 {"command": "dynadnn search", "dataset": data_spec, "profile": str(profile_dir),
                  "predictor_fit": fit, "search": {"evaluations": result.evaluations, "seconds": round(result.seconds, 3),
                                                   "archive": len(archs), "targets_ms": [round(t, 4) for t in targets]},
                  "candidates": [{"arch": r["arch"].to_dict(), "top1_measured": round(r["top1"], 4),
                                  "top1_predicted": round(r["pred"], 4), "latency_ms": r["lat_full"]} for r in rows],
                  "dropped_dominated": [r["arch"].to_dict() for r in dropped],
                  "thinned": [r["arch"].to_dict() for r in thinned],
                  "seconds_total": round(time.perf_counter() - t_start, 1)})
    fam.sort()
    fam.save(out)

    print(f"{'#':>2s} {'arch':44s} {'top1 meas':>9s} {'pred':>6s} " + " ".join(f"{c + ' ms':>12s}" for c in contexts)
          + f" {'MMACs':>7s}")
    for i, m in enumerate(fam.members):
        print(f"{i:2d} {m.arch.short()[:44]:44s} {m.top1_measured:9.2f} {m.top1_predicted:6.2f} "
              + " ".join(f"{m.latency_ms[c]['median']:12.3f}" for c in contexts) + f" {m.macs / 1e6:7.2f}")
    print(f"{len(rows)} candidates measured: {len(dropped)} dominated by the measurements, {len(thinned)} more "
          f"thinned out to keep at most {args.members}")
    print(f"family of {len(fam.members)} written to {out}/ (archive of {len(archs)} non-dominated architectures)")
    write_json(out / "search.json", {"predictor_fit": fit, "members": len(fam.members), "candidates": len(rows),
                                     "dropped": len(dropped), "thinned": len(thinned)}, indent=1)
    return 0
