"""`dynadnn demo`: the main job end to end on the embedded default, through the library.

Part 1: make a few sub-networks of zoo:animals resident (BN-calibrated, folded, compiled, warm), switch among
them and print batch-1 latency, switch time and test accuracy. Part 2: profile this machine, fit the accuracy
predictor, choose a family on measurements, plot it, and run the contention scenario under the feedback
manager and the dofa baseline (about 6-10 minutes on 2 CPUs). Example: dynadnn demo --out runs/demo --duration
30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import UserError
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", __doc__, "the whole path on the shipped model: switching, profile, family, runtime under contention",
                    ["dynadnn demo",
                     "dynadnn demo --switch-only",
                     "dynadnn demo --out runs/demo --duration 10"])
    p.add_argument("--members", type=int, default=5, help="resident members in part 1 (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in part 1 (default 1)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 inferences per member (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for the member choice (default 0)")
    p.add_argument("--switch-only", action="store_true", help="stop after part 1 (switching among resident members)")
    p.add_argument("--out", default="runs/demo", help="directory for the pipeline's artifacts (default runs/demo)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of the contention scenario per policy (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..dynamic import DynamicNetwork
    from ..evaluate import top1
    from . import switching

    if args.members < 2:
        raise UserError(f"--members: expected at least 2, got {args.members}")
    if args.threads < 1 or args.runs < 1:
        raise UserError("--threads and --runs: expected positive integers")
    if not args.duration > 0:
        raise UserError(f"--duration: expected seconds > 0, got {args.duration}")
    torch.set_num_threads(args.threads)
    source = switching.load_source()
    archs = switching.choose_members(source.supernet.space, args.members, args.seed)
    dyn = DynamicNetwork.calibrated(source.supernet, archs, switching.calibration_images(source))
    latency, switch_us = switching.time_members(dyn, args.runs), switching.time_switches(dyn)
    trained = source.trained and source.data is not None
    accs = [top1(source.supernet, m.arch, source.data, m.bn_stats) if trained else None for m in dyn.members]
    switching.show(source, dyn, latency, switch_us, accs)
    if args.switch_only:
        return 0
    if not source.trained:
        raise UserError("the pipeline needs the shipped model zoo:animals, which is not available; "
                        "run `dynadnn demo --switch-only` or train one with `dynadnn train`")
    return pipeline(source.supernet, source.data, Path(args.out), args.duration)


def pipeline(net, data, out: Path, duration: float) -> int:
    """profile -> predictor -> family -> plot -> run (feedback and dofa under contention) -> summary."""
    import torch
    from rich.console import Console

    from ..predict.fitting import fit_accuracy_predictor, profile_device
    from ..report import plot_front
    from ..runtime.experiment import run_experiment
    from ..runtime.members import FamilySource
    from ..runtime.scenario import load_scenario
    from ..runtime.trace import print_summary
    from ..selection import choose_family
    from .common import progress_bar

    console = Console(width=None if Console().is_terminal else 120)
    timings: list[tuple[str, float]] = []

    def step(title: str, command: str) -> None:
        timings.append((title, time.perf_counter()))
        console.rule(f"[bold]step {len(timings)}/5: {title}")
        console.print(f"(the library calls behind `dynadnn {command}`)", style="dim")

    with progress_bar() as progress:
        step("profile this machine (per-layer latency tables, 1 and 2 threads)", f"profile zoo:animals --out {out / 'profile'}")
        tables = profile_device(net, ["cpu:1t", "cpu:2t"], out / "profile", runs=320, members=30, member_runs=120,
                                checkpoint="zoo:animals", progress=progress)
        step("fit the accuracy predictor on 60 BN-calibrated members", "search (its predictor step)")
        torch.manual_seed(0)
        predictor, fit = fit_accuracy_predictor(net, data, 60, calib_images=500, eval_images=1000,
                                                out=out / "family" / "predictor", checkpoint="zoo:animals",
                                                progress=progress)
        step("choose a Pareto family on measurements (NSGA-II, 16 candidates measured)", f"search --out {out / 'family'}")
        family = choose_family(net, predictor, tables, data, members=8, candidates=16, calib_images=500,
                               checkpoint="zoo:animals", progress=progress,
                               provenance={"command": "dynadnn demo", "dataset": "animals",
                                           "profile": str(out / "profile"), "predictor_fit": fit.to_dict()}).family
        family.save(out / "family")
        step("plot the front", f"plot-front {out / 'family'}")
        plot_front(family, out / "family" / "front.png")
    step(f"run the contention scenario ({duration:.0f} s per policy; 0 -> 1 -> 2 -> 0 competing processes)",
         f"run {out / 'family'} --policy feedback,dofa")
    result = run_experiment(FamilySource.from_family(family, net, dataset="animals"), load_scenario("contention"), ["feedback", "dofa"], duration_s=duration,
                            say=console.log)
    paths = result.write(out / "run")
    print_summary(result.traces, console, title=f"scenario 'contention', deadline {result.deadline_ms:.3f} ms")
    console.rule("[bold]demo summary")
    ends = [t for _, t in timings[1:]] + [time.perf_counter()]
    for (title, start), end in zip(timings, ends):
        console.print(f"  {title.split(' (')[0]:<50s} {end - start:7.1f} s")
    for path in [out / "family" / "front.png", *paths]:
        console.print(f"  {path}")
    return 0
