"""Building latency tables for this device by timing layers, and checking them on whole members.

Each distinct layer of a space (per resolution) is built from standard modules shaped like the layers of
an extracted, BN-folded static member (`StaticNet.fuse()`: biased convolutions, activations, SE, the
residual add) and timed at batch 1: warm-up, then the median of many runs, every layer of every resolution
round-robin and each run divided by the machine's speed of the moment (`time_interleaved`). Whole random
members are timed the same way; a per-context `Correction` (linear in the LUT sum and the number of blocks) is fitted on
half of them and judged on the other half (MAPE and Kendall tau, raw and corrected), then refitted on all.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..space import Arch, SearchSpace
from .latency import Correction, Layer, LatencyTable, arch_layers, space_layers


# ------------------------------------------------------------------------------------------------------
# Modules for single layers
# ------------------------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, k: int, stride: int, groups: int, act: str | None, bias: bool = True) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias))]
    if act == "relu":
        layers.append(("act", nn.ReLU()))
    elif act == "h_swish":
        layers.append(("act", nn.Hardswish()))
    return nn.Sequential(OrderedDict(layers))


class _Pool(nn.Module):
    def forward(self, x):
        return x.mean(3, keepdim=True).mean(2, keepdim=True)


class _Logits(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout)

    def forward(self, x):
        return self.linear(x.flatten(1))


def layer_module(layer: Layer, space: SearchSpace, first_block: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """A module equivalent in work to one layer of a fused static member, and its input shape."""
    from ..supernet.static import InvertedResidual, SqueezeExcite

    shape = (1, layer.cin, layer.fin, layer.fin)
    if layer.kind == "Conv":
        return _conv(layer.cin, layer.cout, 3, space.first_conv.stride, 1, space.first_conv.act), shape
    if layer.kind == "Conv_1":
        return _conv(layer.cin, layer.cout, 1, 1, 1, "h_swish"), shape
    if layer.kind == "AvgPool2D":
        return _Pool(), shape
    if layer.kind == "Conv_2":
        return _conv(layer.cin, layer.cout, 1, 1, 1, "h_swish", bias=False), shape
    if layer.kind == "Logits":
        return _Logits(layer.cin, layer.cout), (1, layer.cin, 1, 1)
    act = "h_swish" if layer.hs else "relu"
    mid = layer.mid
    expand = None if first_block else _conv(layer.cin, mid, 1, 1, 1, act)
    dw = _conv(mid, mid, layer.kernel, layer.stride, mid, act)
    se = SqueezeExcite(mid, space.se_width(mid)) if layer.se else None
    project = _conv(mid, layer.cout, 1, 1, 1, None)
    return InvertedResidual(expand, dw, se, project, bool(layer.idskip)), shape


# ------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    median: float
    p95: float
    mean: float
    std: float
    count: int

    def entry(self) -> dict[str, float]:
        """Dynamic-OFA's table entry (`mean` is what a LUT sums; we store the speed-normalised median there,
        robust to preempted runs and slow spells on a shared machine) plus our extra fields."""
        return {"count": self.count, "mean": self.median, "std": self.std, "p95": self.p95, "arith_mean": self.mean}


def time_call(fn: Callable[[], Any], runs: int, warmup: int, device: str = "cpu") -> Timing:
    """Batch-1 wall time of `fn()` in ms; CUDA work is synchronised around every run."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(samples)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 95)), float(arr.mean()),
                  float(arr.std()), len(samples))


def time_interleaved(calls: Sequence[Callable[[], Any]], runs: int, warmup: int, device: str = "cpu",
                     progress=None, window: int = 10) -> list[Timing]:
    """Time many callables round-robin, one run of each in turn until each has `runs`, and take out the
    machine's speed of the moment before taking medians.

    Why: on a shared VM one callable's runs spread +-25 % and neighbouring runs are correlated (measured
    here: autocorrelation 0.7 between consecutive 7 ms runs, 0.14 at 20 runs apart): the whole machine
    speeds up and slows down. Round-robin spreads a slow spell over all callables instead of spoiling one;
    then each run is divided by the speed at that moment, read off the `window` runs on either side (the
    median of their ratios to their own callables' medians, the run itself left out). On 100 members x 150
    runs measured twice, this raised the test-retest Kendall tau from 0.91 to 0.95. `median` is that
    speed-normalised median; `p95`, `mean` and `std` are of the raw runs."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in calls:
        for _ in range(warmup):
            fn()
    sync()
    rounds = max(1, runs)
    order: list[int] = []  # callable index of each run, in time order
    times: list[float] = []
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
            order.append(i)
        if progress:
            progress(len(calls) / rounds)
    who, seq = np.asarray(order), np.asarray(times)
    medians = speed_normalised_medians(who, seq, len(calls), window)
    out = []
    for i in range(len(calls)):
        arr = seq[who == i]
        out.append(Timing(float(medians[i]), float(np.percentile(arr, 95)), float(arr.mean()), float(arr.std()),
                          len(arr)))
    return out


def speed_normalised_medians(who: np.ndarray, seq: np.ndarray, n: int, window: int, iters: int = 2) -> np.ndarray:
    """Per-callable medians of time-ordered runs `seq` (callable `who`), each run divided by the machine's
    speed at its moment (see `time_interleaved`). With fewer than 3 callables there is nothing to read the
    speed from, and the plain medians come back."""
    med = np.array([np.median(seq[who == i]) for i in range(n)])
    if n < 3 or window < 1 or len(seq) < 2 * window + 1:
        return med
    for _ in range(iters):
        log_ratio = np.log(seq / med[who])
        win = np.lib.stride_tricks.sliding_window_view(np.pad(log_ratio, window, mode="edge"), 2 * window + 1)
        speed = np.exp(np.median(np.delete(win, window, axis=1), axis=1))
        norm = seq / speed
        med = np.array([np.median(norm[who == i]) for i in range(n)])
    return med


def _runner(module: nn.Module, shape: Sequence[int], device: str) -> Callable[[], Any]:
    module = module.to(device).eval()
    x = torch.randn(*shape, device=device)

    def call():
        with torch.inference_mode():
            return module(x)
    return call


def time_module(module: nn.Module, shape: Sequence[int], runs: int, warmup: int, device: str = "cpu") -> Timing:
    module = module.to(device).eval()
    x = torch.randn(*shape, device=device)
    with torch.inference_mode():
        return time_call(lambda: module(x), runs, warmup, device)


def system_load() -> dict[str, float]:
    import psutil

    load1, load5, _ = os.getloadavg()
    return {"loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2),
            "cpu_percent": psutil.cpu_percent(interval=0.2), "cpus": os.cpu_count() or 0}


def context_device(context: str) -> tuple[str, int]:
    """(`cpu` or `cuda`, threads) for a local context name: `cpu:1t`, `cpu:2t`, `cuda`."""
    from ..errors import UserError

    if context == "cuda" or context.startswith("cuda:"):
        return "cuda", 1
    if context.startswith("cpu:") and context.endswith("t") and context[4:-1].isdigit() and int(context[4:-1]) > 0:
        return "cpu", int(context[4:-1])
    raise UserError(f"context '{context}' cannot be measured here: expected cpu:<N>t (e.g. cpu:1t) or cuda")


def profile_layers(space: SearchSpace, context: str, resolutions: Sequence[int] | None = None, runs: int = 100,
                   warmup: int = 10, progress=None) -> tuple[dict[int, dict[str, dict]], dict[str, Any]]:
    """Time every distinct layer of `space` at each resolution in one context. Returns (entries per
    resolution, meta with the system load before and after)."""
    device, threads = context_device(context)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    resolutions = list(resolutions or space.resolutions)
    meta: dict[str, Any] = {"load_before": system_load(), "threads": threads, "device": device, "runs": runs,
                            "warmup": warmup, "torch": torch.__version__}
    todo = []
    for r in resolutions:
        sl = space_layers(space, r)
        seen = set()
        for i, layer in enumerate(sl.fixed):
            todo.append((r, layer, i == 1))
        for per_k in sl.blocks:
            for per_e in per_k:
                for layer in per_e:
                    if layer.key not in seen:
                        seen.add(layer.key)
                        todo.append((r, layer, False))
    entries: dict[int, dict[str, dict]] = {r: {} for r in resolutions}
    try:
        with torch.inference_mode():
            # every resolution's layers in one round-robin: timed one resolution after another, each
            # resolution's entries carried the machine's speed of its own minute (measured here: that bias
            # was what made corrected predictions mis-rank members of different resolutions)
            calls = [_runner(*layer_module(layer, space, first_block=first), device) for _, layer, first in todo]
            timings = time_interleaved(calls, runs, warmup, device,
                                       progress=(lambda k: progress(k)) if progress else None)
            for (r, layer, _), t in zip(todo, timings):
                entries[r][layer.key] = t.entry()
    finally:
        torch.set_num_threads(old)
    meta["load_after"] = system_load()
    meta["layers"] = sum(len(v) for v in entries.values())
    return entries, meta


def count_layers(space: SearchSpace, resolutions: Sequence[int]) -> int:
    n = 0
    for r in resolutions:
        sl = space_layers(space, r)
        n += len(sl.fixed) + len({layer.key for per_k in sl.blocks for per_e in per_k for layer in per_e})
    return n


# ------------------------------------------------------------------------------------------------------
# Whole members and the correction
# ------------------------------------------------------------------------------------------------------
def mape(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - true) / true) * 100.0)


@dataclass
class MemberCheck:
    """Whole-member timings in one context and how the table predicts them."""

    context: str
    archs: list[Arch]
    measured_ms: np.ndarray
    p95_ms: np.ndarray
    lut_ms: np.ndarray
    n_blocks: np.ndarray
    report: dict[str, float] = field(default_factory=dict)

    def fit(self, seed: int = 0) -> Correction:
        """Fit on a random half, report MAPE / Kendall tau raw and corrected on the other half, then refit
        on all members (the returned correction)."""
        from .accuracy import kendall_tau

        n = len(self.archs)
        order = np.random.default_rng(seed).permutation(n)
        fit_idx, test_idx = order[: n // 2], order[n // 2:]
        half = Correction.fit(self.lut_ms[fit_idx], self.n_blocks[fit_idx], self.measured_ms[fit_idx])
        corr = half.apply(self.lut_ms[test_idx], self.n_blocks[test_idx])
        true = self.measured_ms[test_idx]
        full = Correction.fit(self.lut_ms, self.n_blocks, self.measured_ms)
        self.report = {
            "members": n, "held_out": len(test_idx),
            "mape_raw": round(mape(self.lut_ms[test_idx], true), 2), "mape_corrected": round(mape(corr, true), 2),
            "tau_raw": round(kendall_tau(self.lut_ms[test_idx], true), 4),
            "tau_corrected": round(kendall_tau(corr, true), 4),
            "measured_min_ms": round(float(self.measured_ms.min()), 3),
            "measured_max_ms": round(float(self.measured_ms.max()), 3),
        }
        return full


def time_members(net, archs: Sequence[Arch], context: str, runs: int = 30, warmup: int = 5,
                 progress=None) -> list[Timing]:
    """Batch-1 latency of each member as the runtime runs it: extracted from the super-network, BN folded."""
    device, threads = context_device(context)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = [_runner(net.extract(arch).fuse(), (1, net.space.in_channels, arch.r, arch.r), device) for arch in archs]
        out = time_interleaved(calls, runs, warmup, device,
                               progress=(lambda k: progress(k)) if progress else None)
    finally:
        torch.set_num_threads(old)
    return out


def check_members(net, table: LatencyTable, n: int = 100, seed: int = 0, runs: int = 30, warmup: int = 5,
                  progress=None) -> MemberCheck:
    """Time `n` random members (plus the smallest and largest) and compare them with the table."""
    space = net.space
    rng = random.Random(seed)
    res = list(table.resolutions)
    archs = [space.min_arch(res[0]), space.max_arch(res[-1])]
    archs += [space.sample(rng, rng.choice(res)) for _ in range(max(0, n - 2))]
    timings = time_members(net, archs, table.context, runs, warmup, progress)
    lut = table.predict(archs, corrected=False)
    nblk = np.array([len(space.active_blocks(a)) for a in archs], dtype=float)
    return MemberCheck(table.context, archs, np.array([t.median for t in timings]), np.array([t.p95 for t in timings]),
                       lut, nblk)


def statistics_summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
