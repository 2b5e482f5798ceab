"""Predictor benchmark: how fast the vectorised predictors score many architectures, and that the fast
path equals the per-key reference path.

On the reference data (Dynamic-OFA's Jetson tables, OFA's accuracy predictor, preset ofa_mbv3_w1.2,
resolutions 160-224): time to predict latency (per context), MACs/params and accuracy for N random
architectures given as gene arrays, and for comparison OFA's way (one dict per architecture, one key
look-up per layer) on a sample. Prints a table, then one JSON object as the last line.

Usage: python benchmarks/predictors.py [--quick] [--reference DIR] [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dynadnn.predict import FlopsModel, reference_predictor, reference_table
from dynadnn.space import load_space


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--reference", help="shared reference directory (default: $DYNADNN_REFERENCE or ../shared/reference)")
    ap.add_argument("--n", type=int, default=10_000, help="architectures per batch (default 10000)")
    args = ap.parse_args()
    ref = next((Path(c) for c in (args.reference, os.environ.get("DYNADNN_REFERENCE"),
                                  str(Path(__file__).resolve().parents[1].parent / "shared" / "reference"))
                if c and Path(c).is_dir()), None)
    if ref is None:
        sys.exit("benchmarks/predictors.py: reference data not found; pass --reference or set DYNADNN_REFERENCE")
    torch.set_num_threads(1)
    repeat = 3 if args.quick else 10
    space = load_space("ofa_mbv3_w1.2")
    tables = {c: reference_table(ref, c, space) for c in ("jetson_cpu", "jetson_gpu")}
    coding = tables["jetson_cpu"].coding()
    genes = coding.random(np.random.default_rng(0), args.n)
    acc = reference_predictor(ref, space)
    flops = FlopsModel(space)
    out: dict = {"n": args.n, "threads": 1}
    rows = []
    for ctx, t in tables.items():
        ms = best_of(lambda: t.predict_genes(genes, coding), repeat)
        out[f"latency_{ctx}_ms"] = round(ms, 3)
        rows.append((f"latency LUT ({ctx})", ms))
    ms = best_of(lambda: (flops.macs_genes(genes, coding), flops.params_genes(genes, coding)), repeat)
    out["macs_params_ms"] = round(ms, 3)
    rows.append(("MACs + params", ms))
    ms = best_of(lambda: acc.predict_genes(genes, coding), repeat)
    out["accuracy_ms"] = round(ms, 3)
    rows.append(("accuracy MLP", ms))
    # OFA's way on a sample: per-architecture dicts and per-layer key look-ups
    sample = coding.decode(genes[:500])
    t0 = time.perf_counter()
    slow = np.array([tables["jetson_cpu"].layer_sum(a) for a in sample])
    per_arch_ms = (time.perf_counter() - t0) * 1e3 / len(sample)
    out["per_key_ms_per_arch"] = round(per_arch_ms, 4)
    out["per_key_extrapolated_ms"] = round(per_arch_ms * args.n, 1)
    fast = tables["jetson_cpu"].predict_genes(genes[:500], coding)
    out["max_abs_diff_ms"] = float(np.abs(fast - slow).max())
    print(f"{'predictor':28s} {'ms for ' + str(args.n):>14s} {'us / arch':>10s}")
    for name, ms in rows:
        print(f"{name:28s} {ms:14.2f} {ms * 1e3 / args.n:10.3f}")
    print(f"{'per-key sum (OFA way)':28s} {per_arch_ms * args.n:14.1f} {per_arch_ms * 1e3:10.3f}   (max |diff| "
          f"{out['max_abs_diff_ms']:.2e} ms)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
