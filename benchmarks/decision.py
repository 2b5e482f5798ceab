"""Decision benchmark: what the manager's per-inference path (latency monitor update + policy step) costs,
with warm caches and with caches as an inference leaves them.

Why: `benchmarks/contention.py` measures `decision_p99_us` inside the serving loop, where every decision
runs right after an ONNX Runtime inference (or a sleep until the next frame). There the same code costs
10-30x more than in a tight loop. This benchmark isolates the cause. It feeds a synthetic latency stream
(the same one for every candidate) and times one step of each candidate:
  warm    back to back, as a micro-benchmark would
  cold    after touching `--evict-mb` MB of memory (default 32, this machine's L3), which is roughly
          what an inference plus the time slices of other processes do to the caches

Candidates: `static`, `dofa` and `feedback` (the Python monitor update + policy step), `feedback-native`
(the same law and monitor in C, `runtime/_native.c`, two calls from Python here; the manager makes none:
its serving path calls them from C), and `floor`: a three-statement Python function (one list store, one
EWMA, one compare), the least any Python-level decision can do. If `floor` is cold above the budget, no
Python policy can meet it.

    .venv/bin/python benchmarks/decision.py            # ~1 min
    .venv/bin/python benchmarks/decision.py --quick    # a few seconds (`make bench`)
    .venv/bin/python benchmarks/decision.py --steps 20000 --evict-mb 64

Prints a table, then one JSON object (last line): per candidate and mode p50/p99 in us, and
`cold_over_warm` (p50 ratio, feedback).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time

import numpy as np
from _common import emit_json, load_average, percentile, print_table

from dynadnn.runtime.monitors import NativeLatencyMonitor, PyLatencyMonitor
from dynadnn.runtime.options import Option, Targets
from dynadnn.runtime.policies import FeedbackPolicy, NativeFeedbackPolicy, make_policy

clock = time.perf_counter


def ladder() -> tuple[Option, ...]:
    """Ten options like the shipped family's: five members at 1 and 2 threads, p50 1-3.3 ms."""
    p50 = [1.0, 1.1, 1.7, 3.2, 3.3]
    top1 = [96.1, 96.7, 97.2, 97.55, 98.45]
    return tuple(Option(member=m, threads=t, backend="ort", top1=top1[m], p50_ms=p50[m] * (1.05 if t == 2 else 1.0),
                        p95_ms=p50[m] * 1.2, name=f"m{m}") for m in range(5) for t in (1, 2))


def latency_stream(n: int, seed: int = 0) -> list[float]:
    """Idle, then contention (x1.5 body, heavy tail), then idle again: enough to make policies switch."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        phase = (k * 3) // n
        base = 2.0 if phase != 1 else 3.0
        tail = rng.expovariate(1.0) * (2.0 if phase == 1 else 0.2)
        out.append(base + tail)
    return out


def floor_step(state: list, latency_ms: float, deadline_ms: float) -> bool:
    state[0] = latency_ms
    state[1] += 0.1 * (latency_ms - state[1])
    return latency_ms > deadline_ms


def run(candidate: str, stream: list[float], evict: np.ndarray | None) -> list[float]:
    targets = Targets(deadline_ms=5.0)
    options = ladder()
    spans = []
    if candidate == "floor":
        state = [0.0, 0.0]
        for lat in stream:
            if evict is not None:
                evict += 1.0
            t0 = clock()
            floor_step(state, lat, 5.0)
            spans.append(clock() - t0)
        return spans
    if candidate == "feedback-native":
        policy, monitor = NativeFeedbackPolicy(), NativeLatencyMonitor()
    else:
        policy = FeedbackPolicy() if candidate == "feedback" else make_policy(candidate)
        monitor = PyLatencyMonitor()
    current = policy.reset(options, targets)
    t = 0.0
    for lat in stream:
        if evict is not None:
            evict += 1.0
        lat_now = lat * options[current].p50_ms / 2.0
        t += 0.01
        t0 = clock()
        monitor.update(lat_now, options[current].p50_ms, 5.0)
        current = policy.step(t, lat_now, current, targets)
        spans.append(clock() - t0)
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 steps per candidate and mode (a few seconds)")
    ap.add_argument("--steps", type=int, default=None, help="decisions per candidate and mode (default 2000)")
    ap.add_argument("--evict-mb", type=float, default=32.0, help="memory touched before each cold step (MB)")
    args = ap.parse_args()
    args.steps = args.steps or (500 if args.quick else 2000)
    stream = latency_stream(args.steps)
    evict = np.zeros(int(args.evict_mb * 2 ** 20 / 8))
    gc.collect()
    gc.freeze()
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for candidate in ("floor", "static", "dofa", "feedback", "feedback-native"):
        results[candidate] = {}
        for mode in ("warm", "cold"):
            spans = run(candidate, stream, evict if mode == "cold" else None)
            us = [s * 1e6 for s in spans[len(spans) // 10:]]  # skip the first tenth (start-up)
            p50, p99 = percentile(us, 50), percentile(us, 99)
            results[candidate][mode] = {"p50_us": round(p50, 2), "p99_us": round(p99, 2)}
            rows.append([candidate, mode, f"{p50:.2f}", f"{p99:.2f}"])
    print_table(f"decision path, {args.steps} steps, cold = after touching {args.evict_mb:g} MB",
                ["candidate", "mode", "p50 us", "p99 us"], rows)
    fb = results["feedback"]
    emit_json({
        "benchmark": "decision", "steps": args.steps, "evict_mb": args.evict_mb, "results": results,
        "cold_over_warm": round(fb["cold"]["p50_us"] / fb["warm"]["p50_us"], 2) if fb["warm"]["p50_us"] else math.nan,
        "feedback_cold_p99_us": fb["cold"]["p99_us"], "floor_cold_p99_us": results["floor"]["cold"]["p99_us"],
        "feedback_native_cold_p99_us": results["feedback-native"]["cold"]["p99_us"],
        "load_average": load_average(),
    })


if __name__ == "__main__":
    main()
