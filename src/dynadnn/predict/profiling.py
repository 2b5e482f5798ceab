"""Building latency tables for this device by timing layers, and checking them on whole members.

Each distinct layer of a space (per resolution) is built from standard modules shaped like the layers of
an extracted, BN-folded static member (`StaticNet.fuse()`: biased convolutions, activations, SE, the
residual add) and timed at batch 1 on the backend the runtime serves with: on the CPU, ONNX Runtime, each
layer exported as members are (`deploy`); eager PyTorch on CUDA or on request. Timing: warm-up,
then every layer of every resolution round-robin, in warm bursts, each turn divided by the machine's speed
of the moment (`time_interleaved`). Whole random members are timed the same way; a per-context
`Correction` (linear in the LUT sum and the number of blocks, plus per-resolution offsets where cross-validation
wants them) is fitted on half of them and judged on the other half (MAPE and Kendall tau, raw and corrected),
then refitted on all.
"""

from __future__ import annotations

import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..space import Arch, BlockShape, ConvShape, SearchSpace
from .latency import Correction, Layer, LatencyTable, space_layers


# ------------------------------------------------------------------------------------------------------
# Modules for single layers
# ------------------------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, k: int, stride: int, groups: int, act: str | None, bias: bool = True) -> nn.Sequential:
    from ..supernet.static import act_module

    layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias))]
    if act is not None:
        layers.append(("act", act_module(act)))
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


def layer_module(layer: Layer) -> tuple[nn.Module, tuple[int, ...]]:
    """A module equivalent in work to one layer of a fused static member (built from the layout shape the
    layer stands for: BN folded, so convolutions followed by BN are biased), and its input shape."""
    from ..supernet.static import InvertedResidual, SqueezeExcite

    shape = (1, layer.cin, layer.fin, layer.fin)
    if layer.kind == "AvgPool2D":
        return _Pool(), shape
    if layer.kind == "Logits":
        return _Logits(layer.cin, layer.cout), (1, layer.cin, 1, 1)
    src = layer.shape
    if isinstance(src, ConvShape):
        return _conv(src.cin, src.cout, src.kernel, src.stride, 1, src.act, bias=src.bn), shape
    if not isinstance(src, BlockShape):
        raise ValueError(f"layer '{layer.key}' does not come from a space's layout (see `space_layers`)")
    mid = layer.mid
    expand = _conv(src.cin, mid, 1, 1, 1, src.act) if src.expands else None
    dw = _conv(mid, mid, layer.kernel, src.stride, mid, src.act)
    se = SqueezeExcite(mid, src.se_width(mid)) if src.se else None
    project = _conv(mid, src.cout, 1, 1, 1, None)
    return InvertedResidual(expand, dw, se, project, src.residual), shape


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


def time_interleaved(calls: Sequence[Callable[[], Any]], runs: int, warmup: int, device: str = "cpu",
                     progress=None, window: int = 10, burst: int = 1) -> list[Timing]:
    """Time many callables round-robin, a turn of each in turn until each has `runs` timed runs, and take
    out the machine's speed of the moment before taking medians. With `burst` > 1 a turn is one untimed run
    then `burst` timed runs back to back, and counts as one sample (their mean): a member is served frame
    after frame with its weights in cache, and one run per turn among many others measures it cold,
    1.3-2.3x slower on ONNX Runtime here (benchmarks/cache.py).

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
    burst = max(1, burst)
    rounds = max(1, -(-runs // burst))
    order: list[int] = []  # callable index of each turn, in time order
    times: list[float] = []
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            if burst > 1:
                fn()
                sync()
            t0 = time.perf_counter()
            for _ in range(burst):
                fn()
                sync()
            times.append((time.perf_counter() - t0) * 1e3 / burst)
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


def resolve_backend(backend: str, device: str) -> str:
    """`auto` is ONNX Runtime on the CPU (what the runtime serves there: it was faster for every member
    measured here) and PyTorch on CUDA; ONNX Runtime is CPU-only here."""
    from ..deploy import BACKENDS

    if backend == "auto":
        return "torch" if device.startswith("cuda") else "ort"
    if backend not in BACKENDS:
        raise UserError(f"backend: expected auto, torch or ort, got {backend!r}")
    if backend == "ort" and device != "cpu":
        raise UserError(f"backend: 'ort' profiles CPU contexts only, not {device}")
    return backend


# Timed runs and turn lengths (see `time_interleaved`) per backend when the caller gives none. ONNX Runtime:
# measured here on zoo:animals, 1 thread (BENCHMARKS.md, session 5): two layer tables of 300 runs in bursts
# of 4 ranked 100 members' LUT sums with a Kendall tau of only 0.81 against each other, 1200 runs in bursts
# of 16 with 0.93; a table timed cold (one run per turn) ranked the measured members with a tau of
# only 0.71. Members: 150 runs gave a test-retest tau of 0.83,
# 600 runs 0.94. PyTorch keeps session 4's protocol (300 / 150 runs, one per turn), which met tau 0.93.
DEFAULT_RUNS = {"ort": {"layer_runs": 1200, "layer_burst": 16, "member_runs": 600, "member_burst": 4},
                "torch": {"layer_runs": 300, "layer_burst": 1, "member_runs": 150, "member_burst": 1}}


def _timing_plan(backend: str, device: str, kind: str, runs: int | None, burst: int | None) -> tuple[str, int, int]:
    """(backend, runs, burst) for timing `kind` ("layer" or "member"): the caller's, else `DEFAULT_RUNS`."""
    backend = resolve_backend(backend, device)
    defaults = DEFAULT_RUNS[backend]
    return (backend, defaults[f"{kind}_runs"] if runs is None else runs,
            defaults[f"{kind}_burst"] if burst is None else burst)


def _runner(module: nn.Module, shape: Sequence[int], device: str, backend: str = "torch",
            threads: int = 1, onnx_cache: dict | None = None, key: str = "") -> Callable[[], Any]:
    """A zero-argument call running `module` once at batch 1: eagerly in PyTorch, or exported to ONNX (the
    graph the runtime serves, `deploy`) in an ONNX Runtime session of `threads` threads. Exports
    are kept in `onnx_cache` under `key` when given (one export serves every thread count)."""
    if backend == "ort":
        from ..deploy import export_module, ort_session

        blob = onnx_cache.get(key) if onnx_cache is not None and key else None
        if blob is None:
            blob = export_module(module.eval(), shape)
            if onnx_cache is not None and key:
                onnx_cache[key] = blob
        run = ort_session(blob, threads).run
        feed = {"x": torch.randn(*shape).numpy()}
        return lambda: run(None, feed)
    module = module.to(device).eval()
    x = torch.randn(*shape, device=device)

    def call():
        with torch.inference_mode():
            return module(x)
    return call


def system_load() -> dict[str, float]:
    import psutil

    load1, load5, _ = os.getloadavg()
    return {"loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2),
            "cpu_percent": psutil.cpu_percent(interval=0.2), "cpus": os.cpu_count() or 0}


def context_device(context: str) -> tuple[str, int]:
    """(`cpu` or `cuda`, threads) for a local context name: `cpu:1t`, `cpu:2t`, `cuda`."""
    if context == "cuda" or context.startswith("cuda:"):
        return "cuda", 1
    if context.startswith("cpu:") and context.endswith("t") and context[4:-1].isdigit() and int(context[4:-1]) > 0:
        return "cpu", int(context[4:-1])
    raise UserError(f"context '{context}' cannot be measured here: expected cpu:<N>t (e.g. cpu:1t) or cuda")


def check_contexts(contexts: Sequence[str], name: str = "contexts") -> list[str]:
    """Contexts this machine can measure, checked before any work: `cpu:<N>t` with N within the CPUs this
    process may run on, `cuda` / `cuda:N` where such a device exists; no repeats. Errors start with `name`."""
    from ..validate import device as check_device, threads as check_threads

    if isinstance(contexts, str) or not isinstance(contexts, Sequence) or not contexts:
        raise UserError(f"{name}: expected a non-empty list of contexts such as cpu:1t, got {contexts!r}")
    out: list[str] = []
    for ctx in contexts:
        if not isinstance(ctx, str):
            raise UserError(f"{name}: expected context names such as cpu:1t, got {ctx!r}")
        try:
            device, n = context_device(ctx)
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
        if device == "cpu":
            check_threads(n, f"{name}: '{ctx}'")
        else:
            check_device(ctx, f"{name}: '{ctx}'")
        if ctx in out:
            raise UserError(f"{name}: context '{ctx}' is listed twice")
        out.append(ctx)
    return out


def profile_layers(space: SearchSpace, context: str, resolutions: Sequence[int] | None = None,
                   runs: int | None = None, warmup: int = 10, progress=None, backend: str = "auto",
                   burst: int | None = None, onnx_cache: dict | None = None
                   ) -> tuple[dict[int, dict[str, dict]], dict[str, Any]]:
    """Time every distinct layer of `space` at each resolution in one context, on `backend` (see
    `resolve_backend`; runs and burst default per backend, `DEFAULT_RUNS`). Returns (entries per
    resolution, meta with the backend and the system load before and after)."""
    device, threads = context_device(context)
    backend, runs, burst = _timing_plan(backend, device, "layer", runs, burst)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    resolutions = list(resolutions or space.resolutions)
    meta: dict[str, Any] = {"load_before": system_load(), "threads": threads, "device": device, "backend": backend,
                            "runs": runs, "burst": burst, "warmup": warmup, "torch": torch.__version__}
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
            calls = [_runner(*layer_module(layer), device, backend, threads, onnx_cache,
                             f"{space.name}/{layer.key}/{int(first)}") for _, layer, first in todo]
            timings = time_interleaved(calls, runs, warmup, device,
                                       progress=(lambda k: progress(k)) if progress else None, burst=burst)
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

    @property
    def resolutions(self) -> np.ndarray:
        return np.array([a.r for a in self.archs])

    def fit(self, seed: int = 0) -> Correction:
        """Fit on a random half, report MAPE / Kendall tau raw and corrected on the other half, then refit
        on all members (the returned correction). Per-resolution offsets are used when 5-fold
        cross-validation on the fitting half ranks its members better with them (`wants_offsets`)."""
        from .accuracy import kendall_tau

        n = len(self.archs)
        r = self.resolutions
        order = np.random.default_rng(seed).permutation(n)
        fit_idx, test_idx = order[: n // 2], order[n // 2:]
        offsets, cv = self.wants_offsets(fit_idx, seed)
        half = Correction.fit(self.lut_ms[fit_idx], self.n_blocks[fit_idx], self.measured_ms[fit_idx],
                              r[fit_idx] if offsets else None)
        corr = half.apply(self.lut_ms[test_idx], self.n_blocks[test_idx], r[test_idx])
        true = self.measured_ms[test_idx]
        full = Correction.fit(self.lut_ms, self.n_blocks, self.measured_ms, r if offsets else None)
        self.report = {
            "members": n, "held_out": len(test_idx),
            "mape_raw": round(mape(self.lut_ms[test_idx], true), 2), "mape_corrected": round(mape(corr, true), 2),
            "tau_raw": round(kendall_tau(self.lut_ms[test_idx], true), 4),
            "tau_corrected": round(kendall_tau(corr, true), 4),
            "resolution_offsets": offsets, "cv_tau_global": cv[0], "cv_tau_offsets": cv[1],
            "measured_min_ms": round(float(self.measured_ms.min()), 3),
            "measured_max_ms": round(float(self.measured_ms.max()), 3),
        }
        return full

    def wants_offsets(self, idx: np.ndarray, seed: int = 0, folds: int = 5,
                      min_per_resolution: int = 5) -> tuple[bool, tuple[float | None, float | None]]:
        """Whether per-resolution offsets rank the members `idx` better than one intercept, by the Kendall
        tau of 5-fold out-of-fold predictions; never with fewer than `min_per_resolution` members of some
        resolution. Returns (decision, (cv tau global, cv tau with offsets))."""
        from .accuracy import kendall_tau

        r = self.resolutions[idx]
        counts = np.unique(r, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < min_per_resolution or len(idx) < 2 * folds:
            return False, (None, None)
        lut, nb, y = self.lut_ms[idx], self.n_blocks[idx], self.measured_ms[idx]
        chunks = np.array_split(np.random.default_rng(seed + 1).permutation(len(idx)), folds)
        taus = []
        for with_offsets in (False, True):
            pred = np.empty(len(idx))
            for k, test in enumerate(chunks):
                train = np.concatenate([c for j, c in enumerate(chunks) if j != k])
                corr = Correction.fit(lut[train], nb[train], y[train], r[train] if with_offsets else None)
                pred[test] = corr.apply(lut[test], nb[test], r[test])
            taus.append(round(kendall_tau(pred, y), 4))
        return taus[1] > taus[0], (taus[0], taus[1])


def time_members(net, archs: Sequence[Arch], context: str, runs: int | None = None, warmup: int = 5,
                 progress=None, backend: str = "auto", burst: int | None = None,
                 onnx_cache: dict | None = None) -> list[Timing]:
    """Batch-1 latency of each member as the runtime runs it: extracted from the super-network, BN folded,
    on `backend` (`resolve_backend`; runs and burst default per backend, `DEFAULT_RUNS`)."""
    device, threads = context_device(context)
    backend, runs, burst = _timing_plan(backend, device, "member", runs, burst)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = [_runner(net.extract(arch).fuse(), (1, net.space.in_channels, arch.r, arch.r), device, backend, threads,
                         onnx_cache, f"member/{arch.to_json()}") for arch in archs]
        out = time_interleaved(calls, runs, warmup, device,
                               progress=(lambda k: progress(k)) if progress else None, burst=burst)
    finally:
        torch.set_num_threads(old)
    return out


def check_members(net, table: LatencyTable, n: int = 100, seed: int = 0, runs: int | None = None, warmup: int = 5,
                  progress=None, backend: str = "auto", burst: int | None = None,
                  onnx_cache: dict | None = None) -> MemberCheck:
    """Time `n` random members (plus the smallest and largest) and compare them with the table."""
    space = net.space
    rng = random.Random(seed)
    res = list(table.resolutions)
    archs = [space.min_arch(res[0]), space.max_arch(res[-1])]
    archs += [space.sample(rng, rng.choice(res)) for _ in range(max(0, n - 2))]
    timings = time_members(net, archs, table.context, runs, warmup, progress, backend, burst, onnx_cache)
    lut = table.predict(archs, corrected=False)
    nblk = np.array([len(space.active_blocks(a)) for a in archs], dtype=float)
    return MemberCheck(table.context, archs, np.array([t.median for t in timings]), np.array([t.p95 for t in timings]),
                       lut, nblk)
