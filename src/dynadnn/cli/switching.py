"""Part 1 of `dynadnn demo`: a few members resident in a `DynamicNetwork`, timed, switched among, measured."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..space import Arch, SearchSpace


@dataclass
class Source:  # where the super-network and the images come from, and what to tell the user about it
    supernet: object
    data: object | None  # dynadnn.data.TensorData, when the animal images load
    note: str
    trained: bool


def load_source() -> Source:
    """`zoo:animals` (trained) if available, else a random-init tiny super-network; real images if possible."""
    from ..data import load_animals
    from ..space import load_space
    from ..supernet import SuperNet, load_checkpoint

    try:
        net, _ = load_checkpoint("zoo:animals")
        note, trained = "weights: zoo:animals (trained on animal-mnist)", True
    except (UserError, OSError) as exc:
        torch.manual_seed(0)
        net, trained = SuperNet(load_space("tiny")), False
        note = (f"weights: RANDOM, zoo:animals is not available ({str(exc).splitlines()[0][:100]}); "
                "latencies and switching are real, predictions are not")
    data = None
    try:
        data = load_animals()
    except Exception as exc:  # noqa: BLE001 - the demo must run without the data set
        note += f"; images: random (animal-mnist unavailable: {type(exc).__name__})"
    return Source(net.eval(), data, note, trained)


def choose_members(space: SearchSpace, k: int, seed: int) -> list[Arch]:
    """The largest and smallest members plus k-2 random ones in between (distinct networks)."""
    rng = random.Random(seed)
    archs = [space.max_arch(), space.min_arch()]
    seen = {space.canonical(a) for a in archs}
    for _ in range(1000):
        if len(archs) >= k:
            break
        a = space.canonical(space.sample(rng))
        if a not in seen:
            seen.add(a)
            archs.append(a)
    return archs[:k]


def calibration_images(source: Source) -> list[torch.Tensor]:
    space = source.supernet.space
    if source.data is not None and source.data.in_channels == space.in_channels:
        return source.data.calibration_batches(n_images=500, batch_size=250)
    r = max(space.resolutions)
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(250, space.in_channels, r, r, generator=gen) for _ in range(2)]


def time_members(dyn, runs: int) -> list[float]:
    """Median batch-1 latency (ms) of every member, measured in interleaved rounds."""
    xs, times = [torch.randn(1, m.in_channels, m.arch.r, m.arch.r) for m in dyn.members], [[] for _ in dyn.members]
    for _ in range(runs):
        for i, x in enumerate(xs):
            dyn.switch(i)
            t = time.perf_counter()
            dyn.predict(x)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def time_switches(dyn, n: int = 20000) -> tuple[float, float]:
    """p50 and p99 of `switch(i)` in microseconds over random switches."""
    rng, out = random.Random(1), []
    for _ in range(n):
        i = rng.randrange(len(dyn))
        t = time.perf_counter_ns()
        dyn.switch(i)
        out.append((time.perf_counter_ns() - t) / 1e3)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def describe(space: SearchSpace, arch: Arch) -> str:
    """A short name: depths, resolution, mean kernel and expand ratio of the active blocks."""
    active = space.active_blocks(arch)
    k = sum(arch.ks[b] for b in active) / len(active)
    e = sum(arch.e[b] for b in active) / len(active)
    return f"d{''.join(map(str, arch.d))} r{arch.r} k{k:.1f} e{e:.1f}"


def show(source: Source, dyn, latency_ms: list[float], switch_us: tuple[float, float], accs) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..predict import FlopsModel

    console = Console(width=None if Console().is_terminal else 120)
    console.print(f"[bold]dynadnn demo[/bold]: {source.note}")
    table = Table(title=f"{len(dyn)} resident members of '{dyn.space.name}' (batch 1, {torch.get_num_threads()} thread(s))")
    macs = FlopsModel(dyn.space).macs([m.arch for m in dyn.members])
    for col in ("#", "member", "MMACs", "latency ms", "build ms", "backend", "top-1 %"):
        table.add_column(col, justify="left" if col == "member" else "right", no_wrap=True)
    for i, (m, lat, acc) in enumerate(zip(dyn.members, latency_ms, accs)):
        table.add_row(str(i), describe(dyn.space, m.arch), f"{macs[i] / 1e6:.1f}", f"{lat:.2f}", f"{m.build_ms:.0f}",
                      m.backend, "-" if acc is None else f"{acc:.1f}")
    console.print(table)
    console.print(f"switch (pointer swap): p50 {switch_us[0]:.2f} us, p99 {switch_us[1]:.2f} us; "
                  f"latency range {min(latency_ms):.2f}-{max(latency_ms):.2f} ms. "
                  "Restarting a process to switch (the Dynamic-OFA way) takes seconds: benchmarks/switch.py.")
