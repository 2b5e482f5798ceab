"""Switching benchmark: how long it takes to change the running sub-network, three ways.

1. Resident members (`DynamicNetwork`): K members extracted, BN-folded, channels-last, compiled and warm;
   a switch is a pointer swap. We time `switch(i)` over many random switches among >= 6 members, and the
   first inference after a switch against the same member's steady-state latency (interleaved rounds).
2. In-place on the shared weights (`mode="inplace"`): prepared plans, switched with `SuperNet.use_plan`.
3. Restart, as Dynamic-OFA's demo switches: a fresh Python process imports torch, builds the super-network,
   loads the weights from a checkpoint file, extracts the member and runs its first inference. Timed from
   the launch to the moment the child has the first logits.

Weights are random with BN statistics calibrated on random images (latency does not depend on the weights'
values). Both presets: `tiny` (the embedded default) and `ofa_mbv3_w1.0` (ImageNet, r 128-224).

Prints a table, then one JSON object as the last line. Flat keys are the worst preset:
  switch_p50_us, switch_p99_us, switch_arch_p99_us (switch by Arch: a dict lookup more),
  first_after_switch_ratio (per member median(first after switch) / median(steady), geometric mean over members),
  first_after_switch_worst_member, unwarmed_first_ratio (a member's first call without the load-time warm-up),
  extract_ms (median `extract(arch, bn_stats).fuse()`, timed while building the members), build_ms (extract + fold + compile + warm-up),
  inplace_switch_p99_us, inplace_prepare_ms (plan slicing + folding), restart_s (smallest over presets: conservative),
  restart_over_switch; per-preset figures under "presets"; load_avg before/after.
Targets (issue 2): switch_p99_us <= 100, first_after_switch_ratio <= 1.2.

Usage: python benchmarks/switch.py [--quick] [--threads N] [--members K] [--presets tiny,ofa_mbv3_w1.0]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit_json, load_average, percentile, print_table, random_batches, set_threads

import torch  # noqa: E402

from dynadnn.dynamic import DynamicNetwork, calibrate_members, compile_static  # noqa: E402
from dynadnn.space import Arch, SearchSpace, load_space  # noqa: E402
from dynadnn.supernet import SuperNet, save_checkpoint  # noqa: E402

RESTART_CHILD = r"""
import sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from dynadnn.space import Arch
from dynadnn.supernet import load_checkpoint
net, _ = load_checkpoint(sys.argv[1])
net.eval()
arch = Arch.from_json(sys.argv[2])
member = net.extract(arch)
with torch.no_grad():
    member(torch.randn(1, net.space.in_channels, arch.r, arch.r))
print(f"FIRST_LOGITS_AT {time.time():.6f}", flush=True)
"""


def member_archs(space: SearchSpace, k: int, seed: int) -> list[Arch]:
    """max, min and k-2 random members at random resolutions (distinct networks)."""
    rng = random.Random(seed)
    archs = [space.max_arch(), space.min_arch()]
    seen = {space.canonical(a) for a in archs}
    while len(archs) < k:
        a = space.canonical(space.sample(rng))
        if a not in seen:
            seen.add(a)
            archs.append(a)
    return archs


def time_switches(dyn: DynamicNetwork, n: int, seed: int, by_arch: bool = False) -> list[float]:
    """Microseconds per `switch`, to a uniformly random member each time (timer overhead included)."""
    rng = random.Random(seed)
    targets = [rng.randrange(len(dyn)) for _ in range(n)]
    if by_arch:
        targets = [dyn.members[i].arch for i in targets]
    clock = time.perf_counter_ns
    out = []
    for t in targets:
        t0 = clock()
        dyn.switch(t)
        out.append((clock() - t0) / 1e3)
    return out


def first_after_switch(dyn: DynamicNetwork, rounds: int, seed: int) -> tuple[float, float]:
    """Each round visits every member in a random order: switch, then 4 inferences; the first is 'first
    after switch', the other 3 are steady state. Returns (geometric mean, worst) over members of
    median(first) / median(steady)."""
    rng = random.Random(seed)
    xs = [torch.randn(1, m.in_channels, m.arch.r, m.arch.r) for m in dyn.members]
    first = [[] for _ in dyn.members]
    steady = [[] for _ in dyn.members]
    order = list(range(len(dyn)))
    prev = None
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            if i == prev:  # a switch to the member already active is not a switch
                continue
            dyn.switch(i)
            for k in range(4):
                t = time.perf_counter()
                dyn.predict(xs[i])
                (first if k == 0 else steady)[i].append(time.perf_counter() - t)
            prev = i
    ratios = [statistics.median(f) / statistics.median(s) for f, s in zip(first, steady)]
    return math.exp(statistics.fmean(math.log(r) for r in ratios)), max(ratios)


def unwarmed_first_ratio(net: SuperNet, arch: Arch, stats) -> float:
    """First inference of a freshly compiled member (no warm-up) over its steady median: what the
    load-time warm-up saves the first request after a switch to a new member."""
    static = net.extract(arch, bn_stats=stats).fuse().to(memory_format=torch.channels_last)
    x = torch.randn(1, net.space.in_channels, arch.r, arch.r).contiguous(memory_format=torch.channels_last)
    module = compile_static(static, x)
    times = []
    with torch.inference_mode():
        for _ in range(12):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
    return times[0] / statistics.median(times[4:])


def restart_seconds(checkpoint: Path, arch: Arch, threads: int) -> float:
    """Launch-to-first-logits time of a fresh process (the Dynamic-OFA way to switch)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", RESTART_CHILD, str(checkpoint), arch.to_json(), str(threads)],
                          capture_output=True, text=True, cwd=REPO, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"restart child failed: {proc.stderr.strip().splitlines()[-1:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST_LOGITS_AT")][-1]
    return float(line.split()[1]) - t0


def _child_env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def bench_preset(name: str, args, tmp: Path) -> dict:
    space = load_space(name)
    torch.manual_seed(0)
    net = SuperNet(space).eval()
    archs = member_archs(space, args.members, seed=1)
    batches = random_batches(space.in_channels, max(space.resolutions), n=1, batch=4 if args.quick else 8)
    stats = calibrate_members(net, archs, batches)

    dyn = DynamicNetwork(net, archs, bn_stats=stats)
    n_switch = 20000 if args.quick else 100000
    sw = time_switches(dyn, n_switch, seed=2)
    sw_arch = time_switches(dyn, n_switch // 4, seed=3, by_arch=True)
    ratio, worst = first_after_switch(dyn, rounds=6 if args.quick else 30, seed=4)
    unwarmed = unwarmed_first_ratio(net, archs[0], stats[0])
    steady_ms = {}
    for i, m in enumerate(dyn.members):
        x = torch.randn(1, m.in_channels, m.arch.r, m.arch.r)
        dyn.switch(i)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            dyn.predict(x)
            ts.append(time.perf_counter() - t)
        steady_ms[m.arch.short()] = statistics.median(ts) * 1e3

    inplace = DynamicNetwork(net, archs, bn_stats=stats, mode="inplace")
    isw = time_switches(inplace, n_switch, seed=5)
    prepare = [m.extract_ms for m in inplace.members]

    ckpt = save_checkpoint(net, tmp / f"{name}.safetensors", {"note": "switch benchmark, random weights"})
    restarts = [restart_seconds(ckpt, archs[0], args.threads) for _ in range(1 if args.quick else 3)]
    return {
        "members": len(dyn),
        "backends": sorted({m.backend for m in dyn.members}),
        "switch_p50_us": percentile(sw, 50), "switch_p99_us": percentile(sw, 99), "switch_max_us": max(sw),
        "switch_arch_p99_us": percentile(sw_arch, 99),
        "first_after_switch_ratio": ratio, "first_after_switch_worst_member": worst,
        "unwarmed_first_ratio": unwarmed,
        "extract_ms": statistics.median(m.extract_ms for m in dyn.members), "build_ms": statistics.median(m.build_ms for m in dyn.members),
        "inplace_switch_p50_us": percentile(isw, 50), "inplace_switch_p99_us": percentile(isw, 99),
        "inplace_prepare_ms": statistics.median(prepare),
        "restart_s": statistics.median(restarts),
        "steady_ms": steady_ms,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer switches, rounds and restarts (< 60 s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--members", type=int, default=6, help="resident members per preset (>= 6)")
    p.add_argument("--presets", default="tiny,ofa_mbv3_w1.0")
    args = p.parse_args()
    set_threads(args.threads)
    load_before = load_average()
    presets = [s for s in args.presets.split(",") if s]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in presets:
            results[name] = bench_preset(name, args, Path(tmp))

    rows = []
    keys = ["switch_p50_us", "switch_p99_us", "switch_arch_p99_us", "first_after_switch_ratio",
            "first_after_switch_worst_member", "unwarmed_first_ratio", "extract_ms", "build_ms",
            "inplace_switch_p99_us", "inplace_prepare_ms", "restart_s"]
    for k in keys:
        rows.append([k] + [results[n][k] for n in presets])
    rows.append(["backends"] + [",".join(results[n]["backends"]) for n in presets])
    print_table(f"Switching among {args.members} resident members ({args.threads} thread(s), load {load_before})",
                ["figure"] + presets, rows)
    for n in presets:
        print_table(f"{n}: steady batch-1 latency per member (ms)", ["member", "ms"],
                    [[a, v] for a, v in results[n]["steady_ms"].items()])

    worst = lambda key: max(results[n][key] for n in presets)  # noqa: E731
    out = {k: worst(k) for k in keys if k != "restart_s"}
    out["restart_s"] = min(results[n]["restart_s"] for n in presets)
    out["restart_over_switch"] = out["restart_s"] * 1e6 / out["switch_p99_us"]
    out.update({"threads": args.threads, "members": args.members, "quick": args.quick,
                "load_avg_before": load_before, "load_avg_after": load_average(),
                "targets": {"switch_p99_us": 100, "first_after_switch_ratio": 1.2},
                "presets": {n: {k: v for k, v in r.items() if k != "steady_ms"} for n, r in results.items()}})
    emit_json(out)


if __name__ == "__main__":
    main()
