"""`dynadnn run`: serve a stream of test images under the runtime manager while real processes compete.

Load a family (a family directory written by `dynadnn search`, or a checkpoint such as zoo:animals, from which
a default hand-picked ladder of members is made), keep every member resident and warm on the faster of
torch/ONNX Runtime per thread count, and serve frames from the dataset's test split at --fps while a scenario
starts and stops real competing processes. Writes DIR/trace.json (per frame: time, member, threads, backend,
latency, deadline met, the member's accuracy), DIR/trace.png (latency vs deadline, switches, competitor phases
shaded) and prints a summary. With several policies (--policy feedback,dofa) each gets its own trace-
POLICY.json and one stacked trace.png. Competitors are killed on exit and on Ctrl-C (exit 130, no half-written
DIR). Bad numbers and an unusable DIR are refused before anything is loaded or started.
"""

from __future__ import annotations

import argparse
import signal

from .common import add_command, parse_int_list, parse_names


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "run", __doc__, "serve a frame stream under the runtime manager while competing processes come and go",
                    ["dynadnn run runs/family --policy feedback,dofa --scenario contention --out runs/run",
                     "dynadnn run zoo:animals --members 5 --deadline-ms 3 --duration 10 --out runs/run"],
                    show_defaults=True)
    p.add_argument("family", help="family directory, checkpoint path, zoo:NAME, or random:PRESET (untrained, for tests)")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="latency deadline per inference; 'auto' when omitted: calibrated from latencies measured "
                        "under the scenario's loads at its pacing (the most accurate member misses ~20%% of the heavy "
                        "load's frames, or 'static suffices' when the scenario does not bite)")
    p.add_argument("--policy", default="feedback", help="policy name(s), comma separated: static, dofa, feedback, oracle")
    p.add_argument("--scenario", default="contention", help="a shipped scenario (contention, flood) or a JSON file")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per policy run")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the stream (default: the scenario's "
                   "pacing, else 100)")
    p.add_argument("--batch", type=int, default=None, help="images per frame, run together (default: the "
                   "scenario's pacing, else 1)")
    p.add_argument("--min-top1", type=float, default=0.0, help="minimum accuracy target (percent)")
    p.add_argument("--dataset", default="animals", help="dataset whose test split feeds the stream (if the family "
                   "does not name one)")
    p.add_argument("--threads", default=None, help="thread counts to consider, e.g. 1,2 (default: 1..CPUs)")
    p.add_argument("--backends", default="torch,ort", help="backends to consider")
    p.add_argument("--members", type=int, default=5, help="hand-picked members when FAMILY is a checkpoint")
    p.add_argument("--calib-images", type=int, default=1000,
                   help="training images for each hand-picked member's BN calibration (checkpoint families only)")
    p.add_argument("--calibrate-s", type=float, default=3.0, help="seconds per distinct load when calibrating")
    p.add_argument("--lock-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the process's pages resident (mlockall), as real-time serving does: a kernel that "
                        "reclaims cold pages otherwise stalls some frames by 50-700 us; refused -> logged, served "
                        "unlocked")
    p.add_argument("--out", required=True, help="output directory, written whole when the run succeeds (an unwritable "
                   "one is refused before anything is served)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that already holds a run (or other files)")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    from rich.console import Console

    from ..runtime.experiment import check_arguments, run_experiment
    from ..runtime.scenario import load_scenario
    from ..runtime.trace import print_summary

    console = Console(stderr=True)
    threads = parse_int_list(args.threads, "--threads") if args.threads is not None else None
    options = dict(duration_s=args.duration, fps=args.fps, deadline_ms=args.deadline_ms, min_top1=args.min_top1,
                   threads=threads, backends=parse_names(args.backends, "--backends"), members=args.members,
                   calib_images=args.calib_images, calibrate_s=args.calibrate_s, batch=args.batch)
    policies = parse_names(args.policy, "--policy")
    check_arguments(policies, **options)  # every number, before the scenario or the family is read
    scenario = load_scenario(args.scenario)
    old_term = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C: competitors are stopped
    try:
        result = run_experiment(args.family, scenario, policies, dataset=args.dataset, lock_memory=args.lock_memory,
                                out=args.out, overwrite=args.overwrite, say=console.log, **options)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print_summary(result.traces, Console(), title=f"scenario '{scenario.name}', deadline {result.deadline_ms:.3f} ms")
    for p in result.paths:
        print(p)
    return 0
