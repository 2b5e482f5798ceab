"""`dynadnn run`: serve a stream of test images under the runtime manager while real competing processes
come and go, and write what happened."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="serve a frame stream under the runtime manager while competing processes come and go",
        description="Load a family (a family directory written by `dynadnn family`/`search`, or a checkpoint such "
                    "as zoo:animals, from which a default hand-picked ladder of members is made), keep every member "
                    "resident and warm on the faster of torch/ONNX Runtime per thread count, and serve frames from "
                    "the dataset's test split at --fps while a scenario starts and stops real competing processes. "
                    "Writes DIR/trace.json (per frame: time, member, threads, backend, latency, deadline met, the "
                    "member's accuracy), DIR/trace.png (latency vs deadline, switches, competitor phases shaded) and "
                    "prints a summary. With several policies (--policy feedback,dofa) each gets its own "
                    "trace-POLICY.json and one stacked trace.png. Competitors are killed on exit and on Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("family", help="family directory, checkpoint path, zoo:NAME, or random:PRESET (untrained, for tests)")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="latency deadline per inference; 'auto' when omitted: calibrated from measured latencies so "
                        "the most accurate member misses >= 20%% of frames in the heaviest phase")
    p.add_argument("--policy", default="feedback", help="policy name(s), comma separated: static, dofa, feedback, oracle")
    p.add_argument("--scenario", default="contention", help="a shipped scenario (contention, flood) or a JSON file")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per policy run")
    p.add_argument("--fps", type=float, default=100.0, help="frame rate of the stream")
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
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise UserError(f"--{what}: expected positive integers, got {text!r}")
    return vals


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    from rich.console import Console

    from ..runtime.calibrate import calibrate_deadline
    from ..runtime.experiment import calibrate, run_policies, setup
    from ..runtime.options import Targets
    from ..runtime.policies import REGISTRY
    from ..runtime.scenario import load_scenario
    from ..runtime.trace import plot_traces, print_summary

    console = Console(stderr=True)
    say = lambda msg: console.log(msg)  # noqa: E731
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    for p in policies:
        if p not in REGISTRY:
            raise UserError(f"--policy: unknown policy '{p}'; expected one of {', '.join(REGISTRY)}")
    if args.duration <= 0 or args.fps <= 0:
        raise UserError("--duration and --fps must be > 0")
    if args.deadline_ms is not None and args.deadline_ms <= 0:
        raise UserError(f"--deadline-ms must be > 0, got {args.deadline_ms}")
    scenario = load_scenario(args.scenario)
    out = Path(args.out)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    targets = Targets(deadline_ms=args.deadline_ms or 1000.0, min_top1=args.min_top1).validate()

    # Ctrl-C and SIGTERM both unwind through the `with` blocks that kill the competitors
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    if args.calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {args.calib_images}")
    st = setup(args.family, args.dataset, targets, _ints(args.threads, "threads"), backends, args.members, say,
               lock_memory=args.lock_memory,
               calib_images=args.calib_images)
    try:
        calibration = None
        extra = {}
        if args.deadline_ms is None or "oracle" in policies:
            calibration = calibrate(st, scenario, args.calibrate_s, args.fps, say)
        if args.deadline_ms is None:
            choice = calibrate_deadline(st.manager, calibration)
            st.manager.set_targets(deadline_ms=choice.deadline_ms)
            extra = {"deadline_calibration": choice.__dict__}
            say(f"deadline {choice.deadline_ms:.3f} ms: static most-accurate misses {choice.static_heavy_miss:.1%} "
                f"of heavy-phase frames, fastest meets it for {choice.fastest_heavy_on_time:.2%}"
                + ("" if choice.feasible else " (the rule could not be met exactly)"))
        traces = run_policies(st, scenario, policies, args.duration, args.fps, calibration, say)
    finally:
        st.manager.close()
        signal.signal(signal.SIGTERM, old_term)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for tr in traces:
        tr.meta.update(extra)
        name = "trace" if len(traces) == 1 else f"trace-{tr.policy}"
        jpath, _ = tr.write(out, name)
        paths.append(jpath)
    png = plot_traces(traces, out / "trace.png")
    print_summary(traces, Console(), title=f"scenario '{scenario.name}', deadline {st.manager.targets.deadline_ms:.3f} ms")
    summary = {tr.policy: tr.summary() for tr in traces}
    from ..fileio import write_json

    write_json(out / "summary.json", {"deadline_ms": st.manager.targets.deadline_ms, "scenario": scenario.name,
                                      "policies": summary, **extra}, indent=1)
    for p in paths + [png, out / "summary.json"]:
        print(p)
    return 0
