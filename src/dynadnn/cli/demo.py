"""`dynadnn demo`: the main job end to end on the embedded default.

Part 1 (`--switch-only` stops after it, in well under a minute): load the super-network (`zoo:animals`,
else random weights, said so), calibrate a few members, make them resident in a `DynamicNetwork`, switch
among them and time it. Part 2, the pipeline, runs the same sub-commands a user would, in this process:
profile this machine, search a Pareto family, plot it, then run the contention scenario (real competing
processes) under the `feedback` manager and the `dofa` baseline, and print a summary with the paths."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..space import Arch, SearchSpace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="make the tiny super-network dynamic: resident members, switching, timings",
        description="Build the tiny super-network (trained weights from zoo:animals when available, else "
                    "random weights), make a few sub-networks resident (BN-calibrated, folded, compiled, "
                    "warm), switch among them and print batch-1 latency, switch time and, with trained "
                    "weights, test accuracy per member. Runs in well under a minute on one CPU thread.")
    p.add_argument("--members", type=int, default=5, help="resident members (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 inferences per member (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for the member choice (default 0)")
    p.add_argument("--switch-only", action="store_true",
                   help="stop after part 1 (switching among resident members)")
    p.add_argument("--out", default="runs/demo", help="directory for the pipeline's artifacts (default runs/demo)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of the contention scenario per policy (default 30)")
    p.set_defaults(func=run)


@dataclass
class Source:
    """Where the super-network and the images come from, and what to tell the user about it."""

    supernet: object
    data: object | None  # dynadnn.data.TensorData, when the animal images load
    note: str
    trained: bool


def load_source() -> Source:
    """`zoo:animals` (trained) if available, else a random-init tiny super-network; real images if possible."""
    from ..space import load_space
    from ..supernet import SuperNet, load_checkpoint

    try:
        from ..zoo import zoo_path  # noqa: F401 - shipped models appear with the training work

        net, _ = load_checkpoint("zoo:animals")
        note, trained = "weights: zoo:animals (trained on animal-mnist)", True
    except (ImportError, UserError, KeyError, OSError) as exc:
        torch.manual_seed(0)
        net = SuperNet(load_space("tiny"))
        why = "no dynadnn.zoo yet" if isinstance(exc, ImportError) else str(exc).splitlines()[0][:100]
        trained = False
        note = (f"weights: RANDOM, zoo:animals is not available ({why}); "
                "latencies and switching are real, predictions are not")
    data = None
    try:
        from ..data import load_animals

        data = load_animals()
    except Exception as exc:  # noqa: BLE001 - the demo must run without the data set
        note += f"; images: random (animal-mnist unavailable: {type(exc).__name__})"
    return Source(net.eval(), data, note, trained)


def choose_members(space: SearchSpace, k: int, seed: int) -> list[Arch]:
    """The largest and smallest members plus k-2 random ones in between (distinct networks)."""
    rng = random.Random(seed)
    archs = [space.max_arch(), space.min_arch()]
    seen = {space.canonical(a) for a in archs}
    tries = 0
    while len(archs) < k and tries < 1000:
        a = space.canonical(space.sample(rng))
        tries += 1
        if a not in seen:
            seen.add(a)
            archs.append(a)
    return archs[:k]


def calibration_images(source: Source) -> list[Tensor]:
    space = source.supernet.space
    if source.data is not None and source.data.in_channels == space.in_channels:
        return source.data.calibration_batches(n_images=500, batch_size=250)
    r = max(space.resolutions)
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(250, space.in_channels, r, r, generator=gen) for _ in range(2)]


def build(source: Source, archs: list[Arch]):
    """Calibrate each member's BN statistics, then make all members resident (with a progress bar)."""
    from rich.progress import Progress

    from ..dynamic import DynamicNetwork, calibrate_members

    with Progress(transient=True) as bar:
        task = bar.add_task("calibrating BN statistics", total=None)
        stats = calibrate_members(source.supernet, archs, calibration_images(source))
        bar.update(task, description="extracting, folding, compiling, warming members", total=len(archs), completed=0)
        dyn = DynamicNetwork(source.supernet, archs, bn_stats=stats,
                             progress=lambda i, m: bar.update(task, completed=i + 1))
    return dyn


def time_members(dyn, runs: int) -> list[float]:
    """Median batch-1 latency (ms) of every member, measured in interleaved rounds."""
    xs = [torch.randn(1, m.in_channels, m.arch.r, m.arch.r) for m in dyn.members]
    times = [[] for _ in dyn.members]
    for _ in range(runs):
        for i, x in enumerate(xs):
            dyn.switch(i)
            t = time.perf_counter()
            dyn.predict(x)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def time_switches(dyn, n: int = 20000) -> tuple[float, float]:
    """p50 and p99 of `switch(i)` in microseconds over random switches."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        i = rng.randrange(len(dyn))
        t = time.perf_counter_ns()
        dyn.switch(i)
        out.append((time.perf_counter_ns() - t) / 1e3)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def accuracy(dyn, data) -> list[float | None]:
    """Top-1 on the test split per member (only meaningful with trained weights)."""
    if data is None:
        return [None] * len(dyn)
    accs = []
    for i in range(len(dyn)):
        dyn.switch(i)
        correct = sum(int((dyn.predict(x).argmax(1) == y).sum()) for x, y in data.test_batches(500))
        accs.append(100.0 * correct / data.n_test)
    return accs


def describe(space: SearchSpace, arch: Arch) -> str:
    """A short name: depths, resolution, mean kernel and expand ratio of the active blocks."""
    active = space.active_blocks(arch)
    k = sum(arch.ks[b] for b in active) / len(active)
    e = sum(arch.e[b] for b in active) / len(active)
    return f"d{''.join(map(str, arch.d))} r{arch.r} k{k:.1f} e{e:.1f}"


def report(source: Source, dyn, latency_ms: list[float], switch_us: tuple[float, float], accs) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 120)
    console.print(f"[bold]dynadnn demo[/bold]: {source.note}")
    table = Table(title=f"{len(dyn)} resident members of '{dyn.space.name}' (batch 1, {torch.get_num_threads()} thread(s))")
    from ..predict import FlopsModel

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


def run(args: argparse.Namespace) -> int:
    if args.members < 2:
        raise UserError(f"--members: expected at least 2, got {args.members}")
    if args.threads < 1 or args.runs < 1:
        raise UserError("--threads and --runs: expected positive integers")
    torch.set_num_threads(args.threads)
    source = load_source()
    archs = choose_members(source.supernet.space, args.members, args.seed)
    dyn = build(source, archs)
    latency = time_members(dyn, args.runs)
    switch_us = time_switches(dyn)
    accs = accuracy(dyn, source.data if source.trained else None)
    report(source, dyn, latency, switch_us, accs)
    if args.switch_only:
        return 0
    if not source.trained:
        raise UserError("the pipeline needs the shipped model zoo:animals, which is not available; "
                        "run `dynadnn demo --switch-only` or train one with `dynadnn train`")
    return pipeline(Path(args.out), args.duration)


def pipeline(out: Path, duration: float) -> int:
    """profile -> search -> plot -> run (feedback and dofa under contention) -> summary."""
    from rich.console import Console

    from . import main as cli

    console = Console(width=None if Console().is_terminal else 120)
    steps = [
        ("profile this machine (per-layer latency tables, 1 and 2 threads)",
         ["profile", "zoo:animals", "--threads", "1,2", "--out", str(out / "profile"), "--runs", "320",
          "--members", "30", "--member-runs", "120"]),
        ("search a Pareto family (NSGA-II over accuracy and both contexts; members calibrated and re-measured)",
         ["search", "zoo:animals", "--contexts", "cpu:1t,cpu:2t", "--members", "8", "--candidates", "16",
          "--profile", str(out / "profile"),
          "--samples", "60", "--eval-images", "1000", "--calib-images", "500", "--out", str(out / "family")]),
        ("plot the front", ["plot-front", str(out / "family")]),
        (f"run the contention scenario ({duration:.0f} s per policy; 0 -> 1 -> 2 -> 0 competing processes)",
         ["run", str(out / "family"), "--policy", "feedback,dofa", "--scenario", "contention",
          "--duration", str(duration), "--out", str(out / "run")]),
    ]
    timings = []
    for i, (title, argv) in enumerate(steps, 1):
        console.rule(f"[bold]step {i}/{len(steps)}: {title}")
        console.print("$ dynadnn " + " ".join(argv), style="dim")
        t = time.perf_counter()
        code = cli(argv)
        timings.append((title.split(" (")[0], time.perf_counter() - t))
        if code:
            console.print(f"[red]step {i} failed (exit {code})")
            return code
    console.rule("[bold]demo summary")
    for title, seconds in timings:
        console.print(f"  {title:<40s} {seconds:7.1f} s")
    for path in (out / "family" / "front.png", out / "run" / "trace.png", out / "run" / "summary.json"):
        if path.exists():
            console.print(f"  {path}")
    return 0
