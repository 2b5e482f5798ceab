"""Helpers shared by the benchmarks: timing on a shared, noisy machine, and the output format (a readable
table, then ONE JSON object as the last stdout line).

The machine the figures come from is shared with other jobs, so comparisons are interleaved: each round
runs every candidate once, in turn, and medians are taken per candidate. A burst of load then slows all
candidates of that round alike instead of one of them."""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests"))  # the `ofa` test peer (tests/ofa_peer.py)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(candidates: Mapping[str, Callable[[], Any]], runs: int, warmup: int = 5,
                seed: int = 0) -> dict[str, list[float]]:
    """Per candidate, `runs` timings in seconds, measured round-robin (in a shuffled order each round)
    after `warmup` untimed rounds, all under `torch.inference_mode`."""
    names = list(candidates)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                candidates[n]()
        for _ in range(runs):
            rng.shuffle(names)
            for n in names:
                times[n].append(time_once(candidates[n]))
    return times


def median_ms(times: Sequence[float]) -> float:
    return statistics.median(times) * 1e3


def default_family() -> str:
    """zoo:animals when it is shipped, else random:tiny (untrained weights: real latency, chance accuracy)."""
    try:
        from dynadnn.supernet.checkpoint import resolve_checkpoint_path

        resolve_checkpoint_path("zoo:animals")
        return "zoo:animals"
    except Exception:  # noqa: BLE001 - no shipped model
        return "random:tiny"


def load_average() -> float:
    """1-minute load average (the machine has os.cpu_count() cores), to note beside the figures."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout (plain text when not a terminal, so logs stay readable)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console(width=160).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def emit_json(result: Mapping[str, Any]) -> None:
    """The machine-readable result: one JSON object, the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def random_batches(in_channels: int, r: int, n: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Random image batches for BN calibration: latency does not depend on the weights' values, but
    calibrated statistics keep activations O(1) (no denormals, no saturation) as with real weights."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, in_channels, r, r, generator=gen) for _ in range(n)]
