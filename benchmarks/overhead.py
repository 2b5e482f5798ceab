"""Overhead benchmark: what running a sub-network dynamically costs at batch 1 on this CPU.

For the max and min members of `tiny` and `ofa_mbv3_w1.0`, at 1 and 2 threads, side by side in one
interleaved run (the machine is shared: each round runs every candidate once, in a shuffled order):
  inplace      the in-place dynamic path: the super-network's prepared plan (sliced, kernel-transformed,
               BN-folded, channels-last) run by the functional forward; what `mode="inplace"` runs
  static       the extracted static member (`extract(arch).fuse()`, channels-last), eager PyTorch modules
  resident     our resident member as `DynamicNetwork` runs it (static + frozen TorchScript), via
               `Member.__call__` (inference mode, layout conversion of the input included)
  resident_nchw  the same compiled member in the default NCHW layout (is channels-last worth it here?)
  ofa_static   `ofa`'s own extracted model (`get_active_subnet(preserve_weight=True)`, eval) for the same
               weights (ofa_mbv3_w1.0 only; `ofa` cannot build the tiny space)
Outputs are checked to agree before timing (same weights, same BN statistics).

Prints tables, then one JSON object as the last line:
  dynamic_over_static       worst median(inplace) / median(static)      (target <= 1.3)
  member_over_ofa_static    worst median(resident) / median(ofa_static) (target <= 0.95)
  inplace_over_resident     worst median(inplace) / median(resident)
  channels_last_speedup     min and max of median(resident_nchw) / median(resident)
  results: per preset/member/threads medians (ms); runs, load averages.

Usage: python benchmarks/overhead.py [--quick] [--runs N] [--presets tiny,ofa_mbv3_w1.0] [--threads 1,2]
(--quick: 1 thread, 40 runs for tiny and 15 for ofa_mbv3_w1.0, no NCHW candidate; the full run takes
200 runs of every candidate at 1 and 2 threads, several minutes.)
"""

from __future__ import annotations

import argparse

from _common import emit_json, interleaved, load_average, median_ms, print_table, random_batches, set_threads

import torch  # noqa: E402

from dynadnn.dynamic import build_inplace_member, build_member, calibrate_members  # noqa: E402
from dynadnn.space import Arch, load_space  # noqa: E402
from dynadnn.supernet import SuperNet, to_ofa_state_dict  # noqa: E402

CL = torch.channels_last


def ofa_static_model(net: SuperNet, arch: Arch):
    """`ofa`'s extracted static sub-network for our super-network's weights (and current BN buffers), or a
    reason string if `ofa` is unavailable or cannot represent the preset."""
    if not net.space.name.startswith("ofa_mbv3_w"):
        return "ofa cannot build this search space"
    try:
        from ofa_peer import import_ofa

        OFAMobileNetV3, _ = import_ofa()
    except ImportError as exc:
        return f"ofa not installed ({exc}); `make test` installs it"
    width = float(net.space.name.split("_w")[-1])
    ofa = OFAMobileNetV3(n_classes=net.space.n_classes, dropout_rate=0, width_mult=width, ks_list=[3, 5, 7],
                         expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    ofa.load_state_dict(to_ofa_state_dict(net))
    ofa.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    return ofa.get_active_subnet(preserve_weight=True).eval()


def bench_member(net: SuperNet, arch: Arch, threads: list[int], runs: int,
                 layouts: bool = True) -> tuple[dict, str | None, float]:
    """Medians (ms) per candidate and thread count for one member; also the worst output disagreement."""
    space = net.space
    x = torch.randn(1, space.in_channels, arch.r, arch.r, generator=torch.Generator().manual_seed(0))
    inplace = build_inplace_member(net, arch)
    static = net.extract(arch).fuse().to(memory_format=CL)
    resident = build_member(net, arch, backend="torchscript")
    candidates = {
        "inplace": lambda: inplace(x),
        "static": lambda: static(x.contiguous(memory_format=CL)),
        "resident": lambda: resident(x),
    }
    if layouts:
        resident_nchw = build_member(net, arch, backend="torchscript", channels_last=False)
        candidates["resident_nchw"] = lambda: resident_nchw(x)
    ofa = ofa_static_model(net, arch)
    note = None
    if isinstance(ofa, str):
        note = ofa
    else:
        candidates["ofa_static"] = lambda: ofa(x)
    with torch.inference_mode():
        ref = net.extract(arch)(x)
        scale = max(1.0, float(ref.abs().max()))
        diff = max(float((fn() - ref).abs().max()) / scale for fn in candidates.values())
    out = {}
    for t in threads:
        set_threads(t)
        times = interleaved(candidates, runs=runs, warmup=5, seed=t)
        out[t] = {name: median_ms(v) for name, v in times.items()}
    return out, note, diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 thread, 40 runs (tiny) / 15 (ofa), no NCHW layout candidate: finishes in < 60 s")
    p.add_argument("--runs", type=int, default=None, help="timed runs per candidate (default 200)")
    p.add_argument("--presets", default="tiny,ofa_mbv3_w1.0")
    p.add_argument("--threads", default=None, help="thread counts to measure (default 1,2; quick 1)")
    args = p.parse_args()
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    presets = [s for s in args.presets.split(",") if s]
    load_before = load_average()
    results, notes, rows, worst_diff = {}, set(), [], 0.0
    for name in presets:
        space = load_space(name)
        runs = args.runs or ((40 if name == "tiny" else 15) if args.quick else 200)
        torch.manual_seed(0)
        net = SuperNet(space).eval()
        for label, arch in (("max", space.max_arch()), ("min", space.min_arch())):
            set_threads(1)
            # calibrated statistics (on random images) written into the shared buffers, so every candidate,
            # `ofa`'s included, runs the same weights and statistics
            stats = calibrate_members(net, [arch], random_batches(space.in_channels, arch.r, 1, 8))[0]
            net.load_bn_stats(stats)
            medians, note, diff = bench_member(net, arch, threads, runs, layouts=not args.quick)
            worst_diff = max(worst_diff, diff)
            if note:
                notes.add(f"{name}: ofa_static skipped: {note}")
            for t, m in medians.items():
                results[f"{name}/{label}/{t}t"] = {"runs": runs, **m}
                rows.append([f"{name} {label} r{arch.r}", t, m["inplace"], m["static"], m["resident"],
                             m.get("resident_nchw", "-"), m.get("ofa_static", "-"), m["inplace"] / m["static"],
                             (m["resident"] / m["ofa_static"]) if "ofa_static" in m else "-"])
    set_threads(1)
    print_table(f"Batch-1 CPU latency, median ms (load {load_before})",
                ["member", "threads", "inplace", "static", "resident", "resident_nchw", "ofa_static",
                 "inplace/static", "resident/ofa"], rows)
    for n in sorted(notes):
        print(n)
    print(f"outputs agree: worst |diff| / max(1, max|logit|) = {worst_diff:.2e}")

    r = results.values()
    out = {
        "dynamic_over_static": max(m["inplace"] / m["static"] for m in r),
        "member_over_ofa_static": max((m["resident"] / m["ofa_static"] for m in r if "ofa_static" in m), default=None),
        "inplace_over_resident": max(m["inplace"] / m["resident"] for m in r),
        "channels_last_speedup": [min((m["resident_nchw"] / m["resident"] for m in r if "resident_nchw" in m), default=None),
                                  max((m["resident_nchw"] / m["resident"] for m in r if "resident_nchw" in m), default=None)],
        "threads": threads,
        "output_rel_diff": worst_diff,
        "quick": args.quick, "load_avg_before": load_before, "load_avg_after": load_average(),
        "targets": {"dynamic_over_static": 1.3, "member_over_ofa_static": 0.95},
        "skipped": sorted(notes),
        "results": results,
    }
    emit_json(out)


if __name__ == "__main__":
    main()
