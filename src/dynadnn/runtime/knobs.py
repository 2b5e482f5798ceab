"""What the manager turns: which member runs, on how many intra-op threads, on which backend, pinned to
which CPUs.

The runners themselves (one member compiled for one backend and thread count) and their measurement live
in `dynadnn.deploy`, below `predict` and `runtime`, so that a family's latencies are measured the way the
runtime serves. Here `build_options` turns those measurements into the policies' options: per member and
thread count, whichever backend was faster at load.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..deploy import Runner, measure_runners
from .options import Option


def build_options(candidates: dict[tuple[int, int], list[Runner]], top1: Sequence[float], names: Sequence[str],
                  x: Tensor, n: int = 40, burst: int = 4) -> tuple[tuple[Option, ...], list[Runner], list[dict]]:
    """Measure every candidate runner for each (member, threads) and keep the faster backend (by median;
    `deploy.measure_runners`: round-robin, in bursts of `burst` timed runs). Returns the options, the runner
    for each option (same order) and all measurements (for the log)."""
    kept, report = measure_runners(candidates, x, n, burst)
    options = tuple(Option(member=m.member, threads=m.threads, backend=m.runner.backend, top1=float(top1[m.member]),
                           p50_ms=m.profile.p50_ms, p95_ms=m.profile.p95_ms, name=names[m.member]) for m in kept)
    return options, [m.runner for m in kept], report
