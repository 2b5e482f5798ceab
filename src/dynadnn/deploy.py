"""Deployment: how a member is served on the CPU, below `predict` and `runtime` so that latency tables,
a family's measured latencies and the runtime manager all time the very thing the runtime serves.

- ONNX export of static members and single layers (`export_onnx`, `export_module`: the TorchScript-based
  exporter, which needs only `onnx`, with `fuse_global_pools` applied) and the ONNX Runtime session the
  runtime serves them with (`ort_session`).
- Runners: a `Runner` is one member compiled for one backend and thread count, ready to call. Backends:
  `torch`: the member from `dynadnn.dynamic.DynamicNetwork` (BN folded, channels-last, TorchScript when it
  compiles); threads through `torch.set_num_threads`, which is process-wide, so it is set only when the
  running thread count differs. `ort`: ONNX Runtime, each member exported once and given one
  `InferenceSession` per thread count, with spinning disabled so idle pool threads do not burn the CPU the
  competitors and we share. At batch 1 on these small networks ORT was measured 4-20x faster than torch
  eager here.
- Measuring them: `member_runners` builds every candidate, `measure_runners` times them the way the manager
  serves them and keeps the faster backend per member and thread count, `deployed_latency` is what a family
  records (`runtime.knobs.build_options` turns the same measurements into the policies' options).
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import resize_batch
from .errors import UserError

BACKENDS = ("torch", "ort")  # what serves a member on the CPU: PyTorch (TorchScript or eager) or ONNX Runtime


def export_onnx(model: torch.nn.Module, r: int, in_channels: int) -> bytes:
    """A member as an ONNX graph (opset 17, dynamic batch), its global poolings made single ops."""
    return export_module(model, (1, in_channels, r, r), dynamic_batch=True)


def export_module(model: torch.nn.Module, shape: Sequence[int], dynamic_batch: bool = False) -> bytes:
    """Any module taking one tensor of `shape` as an ONNX graph (input "x", output "logits"; opset 17, the
    TorchScript-based exporter, which needs only `onnx`), with `fuse_global_pools` applied."""
    import onnx

    buf = io.BytesIO()
    axes = {"x": {0: "n"}, "logits": {0: "n"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(*shape),), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17)
    graph = onnx.load_from_string(buf.getvalue())
    fuse_global_pools(graph.graph)
    return graph.SerializeToString()


def ort_session(onnx_bytes: bytes, threads: int):
    """An ONNX Runtime CPU session as the runtime uses it: `threads` intra-op threads, sequential, all graph
    optimisations, spinning disabled so idle pool threads do not burn the CPU the competitors and we share."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _reduce_mean_axis(node) -> int | None:
    """The single axis a keepdims ReduceMean (opset < 18, axes as an attribute) averages over, else None."""
    if node.op_type != "ReduceMean":
        return None
    attrs = {a.name: a for a in node.attribute}
    keep = attrs["keepdims"].i if "keepdims" in attrs else 1
    axes = list(attrs["axes"].ints) if "axes" in attrs else []
    return axes[0] if keep == 1 and len(axes) == 1 and len(node.input) == 1 else None


def fuse_global_pools(graph) -> int:
    """Rewrite each `ReduceMean(axis 3) -> ReduceMean(axis 2)` chain (OFA's `x.mean(3).mean(2)`, which
    the PyTorch members keep so they match OFA's numbers exactly) into one `GlobalAveragePool`. ONNX
    Runtime runs that op in its blocked NCHWc layout; the two ReduceMeans leave it for plain NCHW and
    back, and cost a third of a small member's latency here (benchmarks/export.py). Outputs change by
    float rounding only (the sum is taken in another order). Returns how many chains were fused."""
    from onnx import helper

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    fused, drop = 0, set()
    for node in list(graph.node):
        if _reduce_mean_axis(node) != 3 or node.output[0] in outputs:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or _reduce_mean_axis(after[0]) != 2:
            continue
        second = after[0]
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], [second.output[0]], name=f"{node.name}_gap")
        graph.node.insert(list(graph.node).index(node), pool)
        drop.update({id(node), id(second)})
        fused += 1
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    return fused


class Runner:
    """One member on one backend at one thread count. `__call__(x)` takes an NCHW float batch at any
    resolution (a {resolution: batch} mapping avoids the resize) and returns logits as a tensor."""

    backend = "?"

    def __init__(self, member: int, r: int, threads: int):
        self.member, self.r, self.threads = member, r, threads

    def input(self, x) -> Tensor:
        if isinstance(x, dict):
            got = x.get(self.r)
            return got if got is not None else resize_batch(next(iter(x.values())), self.r)
        return resize_batch(x, self.r)

    def close(self) -> None:
        pass


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, member: int, module: Callable[[Tensor], Tensor], r: int, threads: int, channels_last: bool = True):
        super().__init__(member, r, threads)
        self.module, self.channels_last = module, channels_last

    def __call__(self, x) -> Tensor:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        xi = self.input(x)
        if self.channels_last:
            xi = xi.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(xi)


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, member: int, onnx_bytes: bytes, r: int, threads: int):
        super().__init__(member, r, threads)
        self.session = ort_session(onnx_bytes, threads)
        self._run = self.session.run

    def __call__(self, x) -> Tensor:
        xi = self.input(x)
        arr = xi.numpy() if xi.is_contiguous() else xi.contiguous().numpy()
        return torch.from_numpy(self._run(None, {"x": arr})[0])

    def close(self) -> None:
        self.session = None
        self._run = None


@dataclass(frozen=True)
class Profile:
    p50_ms: float
    p95_ms: float
    n: int


def screen(cands: list[Runner], x: Tensor, n: int = 5, keep_within: float = 1.5) -> list[Runner]:
    """Drop backends that are clearly slower for this member and thread count after a few runs (torch
    at 2 threads under load can take 100x longer than ORT: not worth measuring at length)."""
    if len(cands) < 2:
        return cands
    medians = []
    for rn in cands:
        for _ in range(3):
            rn(x)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            rn(x)
            lat.append(time.perf_counter() - t0)
        medians.append(float(np.median(lat)))
    best = min(medians)
    kept = [rn for rn, m in zip(cands, medians) if m <= keep_within * best]
    for rn in cands:
        if rn not in kept:
            rn.close()
    return kept


def _timed_round_robin(candidates: dict[tuple[int, int], list[Runner]], x: Tensor, n: int,
                       burst: int) -> dict[int, list[float]]:
    """Latency samples (ms) of every runner, by `id(runner)`: runners of one thread count measured round-robin,
    each turn one untimed run then `burst` timed ones back to back."""
    by_threads: dict[int, list[Runner]] = {}
    for (member, threads), cands in candidates.items():
        by_threads.setdefault(threads, []).extend(cands)
    samples: dict[int, list[float]] = {}
    for threads, runners_t in sorted(by_threads.items()):
        for rn in runners_t:
            for _ in range(5):
                rn(x)
            samples[id(rn)] = []
        for _ in range(-(-n // burst)):
            for rn in runners_t:
                rn(x)
                for _ in range(burst):
                    t0 = time.perf_counter()
                    rn(x)
                    samples[id(rn)].append((time.perf_counter() - t0) * 1e3)
    return samples


@dataclass(frozen=True)
class Measured:
    """The faster runner of one member at one thread count, and its latency."""

    member: int
    threads: int
    runner: Runner
    profile: Profile


def measure_runners(candidates: dict[tuple[int, int], list[Runner]], x: Tensor, n: int = 40,
                    burst: int = 4) -> tuple[list[Measured], list[dict]]:
    """Measure every candidate runner for each (member, threads) and keep the faster backend (by median);
    the slower runners are closed. Runners of one thread count are measured round-robin, so a passing load
    spike hits all of them alike; but in bursts: each turn runs a runner once untimed, then `burst` times
    timed, back to back. Served, a member runs frame after frame with its weights in cache; timed one run
    per turn among 26 others, it started cold every time and measured 1.3-2.3x slower, the smallest members
    most (benchmarks/cache.py). Returns the kept runners by (member, threads) and all measurements (for
    the log)."""
    candidates = {key: screen(cands, x) for key, cands in candidates.items()}
    samples = _timed_round_robin(candidates, x, n, burst)
    kept, report = [], []
    for (member, threads), cands in sorted(candidates.items()):
        measured = []
        for rn in cands:
            lat = np.asarray(samples[id(rn)])
            prof = Profile(float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), len(lat))
            measured.append((prof, rn))
            report.append({"member": member, "threads": threads, "backend": rn.backend, "p50_ms": prof.p50_ms,
                           "p95_ms": prof.p95_ms})
        prof, best = min(measured, key=lambda pr: pr[0].p50_ms)
        for _, rn in measured:
            if rn is not best:
                rn.close()
        kept.append(Measured(member, threads, best, prof))
    return kept, report


def member_runners(supernet, archs: Sequence, bn_stats: Sequence, threads: Sequence[int],
                   backends: Sequence[str] = BACKENDS, say: Callable[[str], None] = lambda msg: None,
                   on_export_error: Callable[[int, Exception], None] | None = None) -> dict[tuple[int, int], list[Runner]]:
    """Every member on every requested backend at every thread count, ready to be measured: the resident
    TorchScript member (from `DynamicNetwork`) and one ONNX Runtime session per thread count. A member that
    does not export runs on torch only (`on_export_error(member, exc)` hears of it); a member no backend
    can run is an error."""
    dyn = None
    if "torch" in backends:
        from .dynamic import DynamicNetwork

        say("building torch members")
        dyn = DynamicNetwork(supernet, archs, bn_stats=bn_stats)
    onnx_models: list[bytes | None] = [None] * len(archs)
    if "ort" in backends:
        say("exporting members to ONNX")
        for i, (arch, bn) in enumerate(zip(archs, bn_stats)):
            try:
                onnx_models[i] = export_onnx(supernet.extract(arch, bn_stats=bn).fuse(), arch.r, supernet.space.in_channels)
            except Exception as exc:  # noqa: BLE001 - torch still serves this member
                if on_export_error is not None:
                    on_export_error(i, exc)
    candidates: dict[tuple[int, int], list[Runner]] = {}
    for i, arch in enumerate(archs):
        for t in threads:
            cands: list[Runner] = []
            if dyn is not None:
                m = dyn.members[i]
                cands.append(TorchRunner(i, m.module, arch.r, t, channels_last=m.channels_last))
            if onnx_models[i] is not None:
                cands.append(OrtRunner(i, onnx_models[i], arch.r, t))
            if not cands:
                raise UserError(f"member {i}: no backend could run it (backends: {', '.join(backends)})")
            candidates[(i, t)] = cands
    return candidates


def deployed_latency(supernet, archs: Sequence, bn_stats: Sequence, threads: Sequence[int], n: int = 100,
                     backends: Sequence[str] = BACKENDS) -> list[dict[int, dict]]:
    """Batch-1 latency of each member as the manager would serve it: per thread count, every backend
    (resident TorchScript member, ONNX Runtime session) measured round-robin and the faster one kept.
    Returns, per member, {threads: {"median", "p95", "backend"}} in ms: what a family records, so the
    latencies it promises are the ones the runtime gets."""
    candidates = member_runners(supernet, archs, bn_stats, threads, backends)
    r = max(a.r for a in archs)
    example = torch.randn(1, supernet.space.in_channels, r, r)
    old = torch.get_num_threads()
    try:
        kept, _ = measure_runners(candidates, example, n=n)
    finally:
        torch.set_num_threads(old)
    for m in kept:
        m.runner.close()
    out: list[dict[int, dict]] = [{} for _ in archs]
    for m in kept:
        out[m.member][m.threads] = {"median": round(m.profile.p50_ms, 4), "p95": round(m.profile.p95_ms, 4),
                                    "backend": m.runner.backend}
    return out
