"""Cache benchmark: how a member's batch-1 latency depends on whether it ran just before (warm, as when
serving frame after frame) or after many other members (cold, as a one-run-per-turn round-robin measures).

The shipped model (zoo:animals): the space's smallest members at its smallest and largest resolution, its
largest member, and 21 members of random sizes (`SearchSpace.sample_sized`), each an ONNX Runtime session
at 1 intra-op thread, as `dynadnn search` measures a family. Two protocols, alternated twice in one run:
  round_robin  each turn runs every member once in turn (each run follows 23 other members' runs)
  burst        each turn runs every member once untimed, then --burst times timed, back to back (what
               `deploy.measure_runners` does, so a family's latencies are the ones served)
  after_switch each turn serves another member (chosen at random) for 20 frames, then times this member's
               first frame: what the first frame after a switch costs when the manager switches members

Prints a table, then one JSON object as the last line:
  ratio_median / ratio_min / ratio_max   per member median(round_robin) / median(burst)
  switch_ratio_median / switch_ratio_max  per member median(after_switch) / median(burst)
  span_round_robin / span_burst          largest member / fastest smallest member, per protocol
  results                                per protocol and pass: smallest and largest members' medians (ms)

Usage: python benchmarks/cache.py [--quick] [--runs N] [--burst B]   (--quick: 40 runs; default 100, ~1 min)
"""

from __future__ import annotations

import argparse
import random
import time

from _common import emit_json, load_average, print_table

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynadnn.deploy import member_runners  # noqa: E402
from dynadnn.supernet.checkpoint import load_checkpoint  # noqa: E402


def measure(runners, x, runs: int, burst: int, skip: int) -> list[float]:
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(-(-runs // burst)):
        for i, rn in enumerate(runners):
            for _ in range(skip):
                rn(x)
            for _ in range(burst):
                t0 = time.perf_counter()
                rn(x)
                samples[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(s)) for s in samples]


def measure_after_switch(runners, x, runs: int, frames: int = 20, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for i, rn in enumerate(runners):
            other = runners[(i + 1 + int(rng.integers(len(runners) - 1))) % len(runners)]
            for _ in range(frames):
                other(x)
            t0 = time.perf_counter()
            rn(x)
            samples[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(s)) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--burst", type=int, default=4)
    args = ap.parse_args()
    runs = args.runs or (40 if args.quick else 100)
    torch.set_num_threads(1)
    net, _ = load_checkpoint("zoo:animals")
    space = net.space
    rng = random.Random(0)
    lo, hi = min(space.resolutions), max(space.resolutions)
    archs = [space.min_arch(lo), space.min_arch(hi), space.max_arch(hi)] + [space.sample_sized(rng) for _ in range(21)]
    cands = member_runners(net, archs, [None] * len(archs), [1], backends=("ort",))
    runners = [cands[(i, 1)][0] for i in range(len(archs))]
    x = torch.randn(1, space.in_channels, hi, hi)
    for rn in runners:
        for _ in range(5):
            rn(x)
    rr, bu, sw, results = [], [], [], {}
    for p in range(2):
        rr.append(measure(runners, x, runs, 1, 0))
        bu.append(measure(runners, x, runs, args.burst, 1))
        sw.append(measure_after_switch(runners, x, max(10, runs // 5), seed=p))
        for name, m in (("round_robin", rr[-1]), ("burst", bu[-1])):
            results[f"{name}_{p}"] = {"min_r%d" % lo: round(m[0], 4), "min_r%d" % hi: round(m[1], 4), "max": round(m[2], 4)}
    rr_m, bu_m, sw_m = np.median(rr, axis=0), np.median(bu, axis=0), np.median(sw, axis=0)
    ratio, sw_ratio = rr_m / bu_m, sw_m / bu_m
    rows = [(a.short()[:24], float(r), float(b), float(q), float(w), float(wq))
            for a, r, b, q, w, wq in zip(archs, rr_m, bu_m, ratio, sw_m, sw_ratio)]
    print_table(f"ONNX Runtime, 1 thread, 24 members, {runs} runs each per pass (median of 2 passes, ms)",
                ["member", "round-robin", f"burst 1+{args.burst}", "ratio", "after switch", "ratio"], rows)
    emit_json({"ratio_median": round(float(np.median(ratio)), 3), "ratio_min": round(float(ratio.min()), 3),
               "ratio_max": round(float(ratio.max()), 3),
               "switch_ratio_median": round(float(np.median(sw_ratio)), 3),
               "switch_ratio_max": round(float(sw_ratio.max()), 3),
               "span_round_robin": round(float(rr_m[2] / min(rr_m[0], rr_m[1])), 3),
               "span_burst": round(float(bu_m[2] / min(bu_m[0], bu_m[1])), 3),
               "results": results, "runs": runs, "burst": args.burst, "load_average": load_average()})


if __name__ == "__main__":
    main()
