"""The demo's pipeline, end to end on a trained super-network: profile this machine -> fit the accuracy
predictor -> choose a Pareto family on measurements -> plot it -> run a scenario (`SCENARIO`) under static
(the most accurate member), the dofa baseline, the feedback manager and the oracle -> the trade-off. Each part is written whole into its folder of `out`
(`fileio.output_dir`), and a finished pipeline leaves `out/demo.json` (`MARKER`), by which a later demo
knows the folder is its own to replace.

    run_pipeline(net, data, Path("runs/demo.partial"), duration=30, shown=Path("runs/demo"))
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from .fileio import output_dir, write_json

MARKER = "demo.json"
SCENARIO = "core_loss"  # the shipped scenario the demo runs: of the suite, the one static did worst in on a 2-vCPU box
POLICIES = ("static", "dofa", "feedback", "oracle")


def _quiet(task: str, done: int, total: int) -> None:
    pass


class Steps:
    """Numbered step headings and the time each step took."""

    def __init__(self, console, total: int = 5):
        self.console, self.total, self.timings = console, total, []

    def __call__(self, title: str, command: str) -> None:
        self.timings.append((title, time.perf_counter()))
        self.console.rule(f"[bold]step {len(self.timings)}/{self.total}: {title}")
        self.console.print(f"(the library calls behind `dynadnn {command}`)", style="dim")

    def seconds(self) -> dict[str, float]:
        ends = [t for _, t in self.timings[1:]] + [time.perf_counter()]
        return {title.split(" (")[0]: end - start for (title, start), end in zip(self.timings, ends)}


def profile_part(net, out: Path, progress: Callable = _quiet) -> dict:
    from .predict.fitting import profile_device

    with output_dir(out, "profile", "profile.json") as prof:
        tables = profile_device(net, ["cpu:1t", "cpu:2t"], prof, runs=320, members=30, member_runs=120,
                                checkpoint="zoo:animals", progress=progress)  # writes profile.json too
    return tables


def family_part(net, data, tables: dict, out: Path, shown: Path, step: Steps, progress: Callable = _quiet):
    import torch

    from .predict.fitting import fit_accuracy_predictor
    from .report import plot_front
    from .selection import choose_family

    with output_dir(out, "family", "family.json") as fam_dir:
        step("fit the accuracy predictor on 60 BN-calibrated members", "search (its predictor step)")
        torch.manual_seed(0)
        predictor, fit = fit_accuracy_predictor(net, data, 60, calib_images=500, eval_images=1000,
                                                out=fam_dir / "predictor", checkpoint="zoo:animals", progress=progress)
        step("choose a Pareto family on measurements (NSGA-II, 16 candidates measured)", f"search --out {shown}")
        family = choose_family(net, predictor, tables, data, members=8, candidates=16, calib_images=500,
                               checkpoint="zoo:animals", progress=progress,
                               provenance={"command": "dynadnn demo", "dataset": "animals",
                                           "profile": str(shown.parent / "profile"),
                                           "predictor_fit": fit.to_dict()}).family
        family.save(fam_dir)
        step("plot the front", f"plot-front {shown}")
        plot_front(family, fam_dir / "front.png")
    return family


def run_pipeline(net, data, out: str | Path, duration: float, shown: str | Path | None = None,
                 progress_bar: Callable | None = None, console=None) -> list[Path]:
    """The whole pipeline into `out` (`shown`: the path printed for it, e.g. where the caller will move it);
    returns the paths worth showing (the front and the run's files), under `shown`. `progress_bar()` gives a
    context manager yielding a `progress(task, done, total)` callback, shown during the first four steps."""
    from rich.console import Console

    from .runtime.experiment import check_arguments, run_experiment
    from .runtime.members import FamilySource
    from .runtime.trace import print_summary, tradeoff

    check_arguments(POLICIES, duration_s=duration)  # before an hour of work, not after
    out = Path(out)
    shown = Path(shown or out)
    console = console or Console(width=None if Console().is_terminal else 120)
    step = Steps(console)
    with (progress_bar() if progress_bar else nullcontext(_quiet)) as progress:
        step("profile this machine (per-layer latency tables, 1 and 2 threads)", f"profile zoo:animals --out {shown / 'profile'}")
        tables = profile_part(net, out / "profile", progress)
        family = family_part(net, data, tables, out / "family", shown / "family", step, progress)
    step(f"run the '{SCENARIO}' scenario ({duration:.0f} s per policy: {', '.join(POLICIES)})",
         f"run {shown / 'family'} --scenario {SCENARIO} --policy {','.join(POLICIES)}")
    result = run_experiment(FamilySource.from_family(family, net, dataset="animals"), SCENARIO,
                            POLICIES, duration_s=duration, out=out / "run", say=console.log)
    print_summary(result.traces, console, title=f"scenario '{SCENARIO}', deadline {result.deadline_ms:.3f} ms")
    for line in tradeoff(result.traces):
        console.print(f"  {line}")
    console.rule("[bold]demo summary")
    spent = step.seconds()
    for title, secs in spent.items():
        console.print(f"  {title:<50s} {secs:7.1f} s")
    paths = [shown / p.relative_to(out) for p in [out / "family" / "front.png", *result.paths]]
    for path in paths:
        console.print(f"  {path}")
    write_json(out / MARKER, {"format": "dynadnn.demo/1", "duration_s": duration, "seconds": spent}, indent=1)
    return paths
