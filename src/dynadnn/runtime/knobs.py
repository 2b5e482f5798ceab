"""What the manager turns: which member runs, on how many intra-op threads, on which backend, pinned to
which CPUs.

A `Runner` is one member compiled for one backend and thread count, ready to call. Backends:
- `torch`: the member from `dynadnn.dynamic.DynamicNetwork` (BN folded, channels-last, TorchScript when it
  compiles); threads through `torch.set_num_threads`, which is process-wide, so it is set only when the
  running option changes.
- `ort`: ONNX Runtime. Each member is exported to ONNX once (`supernet.export.export_onnx`: the
  TorchScript-based exporter needs only `onnx`) and gets one `InferenceSession` per thread count, with
  spinning disabled so idle pool threads do not burn the CPU the competitors and we share. At batch 1 on
  these small networks ORT was measured 4-20x faster than torch eager here.
`profile_runner` measures a runner the way the manager uses it, and `build_options` keeps, per member and
thread count, whichever backend was faster at load: those are the policies' options.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..supernet.export import BACKENDS, export_onnx, ort_session
from .options import Option


def resize(x: Tensor, r: int) -> Tensor:
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


class Runner:
    """One member on one backend at one thread count. `__call__(x)` takes an NCHW float batch at any
    resolution (a {resolution: batch} mapping avoids the resize) and returns logits as a tensor."""

    backend = "?"

    def __init__(self, member: int, r: int, threads: int):
        self.member, self.r, self.threads = member, r, threads

    def input(self, x) -> Tensor:
        if isinstance(x, dict):
            got = x.get(self.r)
            return got if got is not None else resize(next(iter(x.values())), self.r)
        return resize(x, self.r)

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


def profile_runner(runner: Runner, x: Tensor, n: int = 40, warmup: int = 5) -> Profile:
    """Latency of `runner` on `x` as the manager measures it (resize included)."""
    for _ in range(warmup):
        runner(x)
    lat = np.empty(n)
    for k in range(n):
        t0 = time.perf_counter()
        runner(x)
        lat[k] = (time.perf_counter() - t0) * 1e3
    return Profile(float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), n)


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


def build_options(candidates: dict[tuple[int, int], list[Runner]], top1: Sequence[float], names: Sequence[str],
                  x: Tensor, n: int = 40, burst: int = 4) -> tuple[tuple[Option, ...], list[Runner], list[dict]]:
    """Measure every candidate runner for each (member, threads) and keep the faster backend (by median).
    Runners of one thread count are measured round-robin, so a passing load spike hits all of them alike;
    but in bursts: each turn runs a runner once untimed, then `burst` times timed, back to back. Served,
    a member runs frame after frame with its weights in cache; timed one run per turn among 26 others, it
    started cold every time and measured 1.3-2.3x slower, the smallest members most (benchmarks/cache.py).
    Returns the options, the runner for each option (same order) and all measurements (for the log)."""
    candidates = {key: screen(cands, x) for key, cands in candidates.items()}
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
    options, runners, report = [], [], []
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
        options.append(Option(member=member, threads=threads, backend=best.backend, top1=float(top1[member]),
                              p50_ms=prof.p50_ms, p95_ms=prof.p95_ms, name=names[member]))
        runners.append(best)
    return tuple(options), runners, report


def member_runners(supernet, archs: Sequence, bn_stats: Sequence, threads: Sequence[int],
                   backends: Sequence[str] = BACKENDS, say: Callable[[str], None] = lambda msg: None,
                   on_export_error: Callable[[int, Exception], None] | None = None) -> dict[tuple[int, int], list[Runner]]:
    """Every member on every requested backend at every thread count, ready to be measured: the resident
    TorchScript member (from `DynamicNetwork`) and one ONNX Runtime session per thread count. A member that
    does not export runs on torch only (`on_export_error(member, exc)` hears of it); a member no backend
    can run is an error."""
    from ..errors import UserError

    dyn = None
    if "torch" in backends:
        from ..dynamic import DynamicNetwork

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
        options, runners, _ = build_options(candidates, [0.0] * len(archs), [""] * len(archs), example, n=n)
    finally:
        torch.set_num_threads(old)
    for rn in runners:
        rn.close()
    out: list[dict[int, dict]] = [{} for _ in archs]
    for o in options:
        out[o.member][o.threads] = {"median": round(o.p50_ms, 4), "p95": round(o.p95_ms, 4), "backend": o.backend}
    return out
