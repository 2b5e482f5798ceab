"""Export benchmark: what the ONNX graph the runtime serves costs at batch 1, with and without fusing
OFA's two-step global pooling (`x.mean(3).mean(2)`, two ReduceMean nodes) into one GlobalAveragePool
(`dynadnn.deploy.fuse_global_pools`, applied by `export_onnx`).

For the shipped model (zoo:animals, BN statistics as shipped) and the space's smallest and largest members
at each of its smallest and largest resolutions, one ONNX Runtime session per (member, graph) at 1 intra-op
thread, all timed interleaved in one run (the machine is shared). Outputs are checked against the PyTorch
member first. Each turn runs each session once, so every run is cold (benchmarks/cache.py): the spans here are
the cold ones; served warm, members are faster and the span wider.

Prints a table, then one JSON object as the last line:
  speedup            per member: median(two ReduceMeans) / median(GlobalAveragePool)
  span_fused         median(largest member) / median(fastest smallest member), fused graphs
  span_reducemean    the same for the unfused graphs
  results            per member and graph: median and p95 in ms; runs; load average.

Usage: python benchmarks/export.py [--quick] [--runs N]   (--quick: 60 runs; default 400, ~1 minute)
"""

from __future__ import annotations

import argparse

from _common import emit_json, interleaved, load_average, median_ms, percentile, print_table

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from dynadnn.deploy import OrtRunner, export_onnx  # noqa: E402
from dynadnn.supernet.checkpoint import load_checkpoint  # noqa: E402


def unfused(model: torch.nn.Module, r: int, in_channels: int) -> bytes:
    """The plain `torch.onnx.export` graph, as `export_onnx` made it before the pooling pass."""
    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, in_channels, r, r),), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (60 if args.quick else 400)
    torch.set_num_threads(1)
    net, _ = load_checkpoint("zoo:animals")
    space = net.space
    lo, hi = min(space.resolutions), max(space.resolutions)
    archs = {f"min-r{lo}": space.min_arch(lo), f"min-r{hi}": space.min_arch(hi),
             f"max-r{lo}": space.max_arch(lo), f"max-r{hi}": space.max_arch(hi)}
    candidates, nodes = {}, {}
    for name, arch in archs.items():
        member = net.extract(arch).fuse()
        x = torch.randn(1, space.in_channels, arch.r, arch.r)
        with torch.no_grad():
            ref = member(x).numpy()
        for graph, blob in (("fused", export_onnx(member, arch.r, space.in_channels)),
                            ("reducemean", unfused(member, arch.r, space.in_channels))):
            runner = OrtRunner(0, blob, arch.r, 1)
            got = runner(x).numpy()
            assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), f"{name}/{graph} output differs"
            nodes[(name, graph)] = len(onnx.load_from_string(blob).graph.node)
            candidates[f"{name}/{graph}"] = (lambda rn=runner, xi=x: rn(xi))
    times = interleaved(candidates, runs=runs, warmup=20)
    results = {k: {"median_ms": round(median_ms(v), 4), "p95_ms": round(percentile(v, 95) * 1e3, 4)} for k, v in times.items()}
    rows, speedup = [], {}
    for name in archs:
        f, u = results[f"{name}/fused"]["median_ms"], results[f"{name}/reducemean"]["median_ms"]
        speedup[name] = round(u / f, 3)
        rows.append((name, nodes[(name, "reducemean")], u, nodes[(name, "fused")], f, speedup[name]))
    print_table(f"ONNX Runtime, 1 thread, batch 1, {runs} interleaved runs (median ms)",
                ["member", "nodes (2x ReduceMean)", "ms", "nodes (GlobalAveragePool)", "ms", "speed-up"], rows)

    def span(graph: str) -> float:
        return round(max(results[f"max-r{hi}/{graph}"]["median_ms"], results[f"max-r{lo}/{graph}"]["median_ms"])
                     / min(results[f"min-r{lo}/{graph}"]["median_ms"], results[f"min-r{hi}/{graph}"]["median_ms"]), 3)

    emit_json({"speedup": speedup, "span_fused": span("fused"), "span_reducemean": span("reducemean"),
               "results": results, "runs": runs, "load_average": load_average()})


if __name__ == "__main__":
    main()
