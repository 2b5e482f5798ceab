"""`dynadnn demo`: the main job end to end on the embedded default, through the library.

Part 1: make a few sub-networks of zoo:animals resident (BN-calibrated, folded, compiled, warm), switch among
them and print batch-1 latency, switch time and test accuracy. Part 2: profile this machine, fit the accuracy
predictor, choose a family on measurements, plot it, and run the core_loss scenario under four policies
(static, dofa, feedback, oracle; about 6-10 minutes on 2 CPUs), written whole into --out (a folder holding an
earlier demo is replaced; any other non-empty folder only with --overwrite). Example: dynadnn demo --out
runs/demo --duration 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..fileio import output_dir
from ..pipeline import MARKER, POLICIES, SCENARIO
from .common import add_command


PARTS = {"profile", "family", "run"}  # a demo from before the marker: only these folders


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", __doc__, "the whole path on the shipped model: switching, profile, family, runtime under contention",
                    ["dynadnn demo", "dynadnn demo --switch-only", "dynadnn demo --out runs/demo --duration 10"])
    p.add_argument("--members", type=int, default=5, help="resident members in part 1 (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in part 1 (default 1)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 inferences per member (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for the member choice (default 0)")
    p.add_argument("--switch-only", action="store_true", help="stop after part 1 (switching among resident members)")
    p.add_argument("--out", default="runs/demo", help="directory for the pipeline's artifacts (default runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that holds files other than a demo")
    p.add_argument("--duration", type=float, default=30.0, help=f"seconds of the {SCENARIO} scenario per policy (default 30)")
    p.set_defaults(func=run)


def previous_demo(out: Path) -> bool:
    """`out` holds what an earlier demo wrote (its marker, or only the parts an older demo made)."""
    try:
        names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    except OSError:
        return False
    return MARKER in names or (bool(names) and names <= PARTS)


def run(args: argparse.Namespace) -> int:
    from .. import validate
    from ..runtime.experiment import check_arguments, check_out
    from ..pipeline import run_pipeline
    from .common import progress_bar

    validate.count(args.members, "members", low=2, high=32, why="at least 2 members to switch among")
    validate.threads(args.threads, "threads")
    validate.count(args.runs, "runs", low=1, high=100_000)
    check_arguments(POLICIES, duration_s=args.duration)  # before part 1 loads anything
    if args.switch_only:
        part1(args)
        return 0
    out = check_out(args.out, "demo")
    with output_dir(out, "demo", MARKER, args.overwrite or previous_demo(out)) as tmp:  # a bad --out: refused now
        source = part1(args)
        if not source.trained:
            raise UserError("the pipeline needs the shipped model zoo:animals, which is not available; "
                            "run `dynadnn demo --switch-only` or train one with `dynadnn train`")
        run_pipeline(source.supernet, source.data, tmp, args.duration, shown=out, progress_bar=progress_bar)
    return 0


def part1(args: argparse.Namespace):
    import torch

    from ..dynamic import DynamicNetwork
    from ..evaluate import top1
    from . import switching

    torch.set_num_threads(args.threads)
    source = switching.load_source()
    archs = switching.choose_members(source.supernet.space, args.members, args.seed)
    dyn = DynamicNetwork.calibrated(source.supernet, archs, switching.calibration_images(source))
    latency, switch_us = switching.time_members(dyn, args.runs), switching.time_switches(dyn)
    trained = source.trained and source.data is not None
    accs = [top1(source.supernet, m.arch, source.data, m.bn_stats) if trained else None for m in dyn.members]
    switching.show(source, dyn, latency, switch_us, accs)
    return source
