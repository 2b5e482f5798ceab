"""Scenario suite benchmark: static (most accurate member), dofa (Dynamic-OFA's ladder controller), feedback
(ours) and oracle (knows the schedule) through each scenario, one after the other in this one process, by
`run_experiment` (the path `dynadnn run FAMILY --scenario S --policy static,dofa,feedback,oracle` takes):
the deadline calibrated under each scenario's own loads at its pacing (`--deadline-ms auto`).

    .venv/bin/python benchmarks/scenarios.py --quick --scenarios contention   # ~1 minute
    .venv/bin/python benchmarks/scenarios.py                                  # every shipped scenario
    .venv/bin/python benchmarks/scenarios.py --family runs/demo/family        # the demo's family

Default family: the hand-picked ladder of zoo:animals (`--members`), fast to load; `--family DIR` takes a
family built as the demo builds it. Default scenarios: every shipped one (src/dynadnn/scenarios/).

Prints a table, then one JSON object (last line): `scenarios` -> {name: {deadline_ms, fps, calibration
(does it bite by the calibration, its message), static_on_time_heavy (static's on-time rate in the phase
it does worst in, `heavy_phase`), policies -> {policy: {on_time, mean_top1, switches, p99_ms, ...}}}};
`bites` (scenarios where static is on time < 0.95); `never_worse` (in every scenario feedback's on_time >=
static's - 0.005, and wherever it is not on time at least 0.005 more often than static, its mean_top1 >=
static's - 0.2); `better_where_it_bites` (in every scenario where static is on time < 0.95, feedback is on
time >= 0.99 with mean_top1 >= oracle's - 1.0). A scenario that fails gets `error` and fails both.
"""

from __future__ import annotations

import argparse
import time

from _common import default_family, emit_json, load_average, print_table

from dynadnn.errors import UserError
from dynadnn.runtime.experiment import run_experiment
from dynadnn.runtime.scenario import list_scenarios, load_scenario

POLICIES = ("static", "dofa", "feedback", "oracle")
BITES = 0.95  # static on time below this: the scenario bites


def heavy_phase(trace) -> tuple[str, float]:
    """The phase static does worst in (of those with >= 2 % of the frames): its name and on-time rate."""
    n = trace.summary()["frames"]
    rows = [(p["name"], trace.summary(p["index"])) for p in trace.phases]
    rows = [(name, s["on_time"]) for name, s in rows if s["frames"] and s["frames"] >= 0.02 * n]
    return min(rows, key=lambda r: r[1]) if rows else ("", trace.summary().get("on_time", 0.0))


def one_scenario(name: str, family: str, args, say) -> dict:
    """Every policy through one scenario; the numbers the summaries read."""
    result = run_experiment(family, load_scenario(name), POLICIES, duration_s=args.duration, fps=args.fps,
                            dataset=args.dataset, threads=args.threads, backends=args.backends, members=args.members,
                            calibrate_s=args.calibrate_s, batch=args.batch, say=say)
    pol = {}
    for tr in result.traces:
        s = tr.summary()
        pol[tr.policy] = {"on_time": round(s["on_time"], 4), "mean_top1": round(s["mean_top1"], 3),
                          "switches": s["switches"], "p99_ms": round(s["p99_ms"], 3), "p95_ms": round(s["p95_ms"], 3),
                          "frames": s["frames"], "dropped": s["dropped"], "decision_p99_us": round(s["decision_p99_us"], 2)}
    static = next(tr for tr in result.traces if tr.policy == "static")
    phase, heavy = heavy_phase(static)
    cal = result.extra.get("deadline_calibration", {})
    return {"deadline_ms": result.deadline_ms, "fps": result.extra.get("fps"), "batch": result.extra.get("batch"),
            "calibration": {"bites": cal.get("bites"), "heavy_load": cal.get("heavy_load"),
                            "capped": cal.get("capped"), "static_heavy_miss": cal.get("static_heavy_miss")},
            "static_on_time_heavy": round(heavy, 4), "heavy_phase": phase, "policies": pol}


def judge(res: dict) -> dict:
    """Per scenario: does it bite, is feedback never worse than static, better where it bites."""
    if "error" in res:
        return {"bites": False, "never_worse": False, "better_where_it_bites": False}
    p = res["policies"]
    st, fb, orc = p["static"], p["feedback"], p["oracle"]
    bites = st["on_time"] < BITES
    gain = fb["on_time"] >= st["on_time"] + 0.005
    never_worse = fb["on_time"] >= st["on_time"] - 0.005 and (gain or fb["mean_top1"] >= st["mean_top1"] - 0.2)
    better = not bites or (fb["on_time"] >= 0.99 and fb["mean_top1"] >= orc["mean_top1"] - 1.0)
    return {"bites": bites, "never_worse": never_worse, "better_where_it_bites": better}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute per scenario)")
    ap.add_argument("--family", default=None, help="family dir or checkpoint (default: zoo:animals' hand-picked ladder)")
    ap.add_argument("--scenarios", default=None, help="comma-separated names or JSON files (default: every shipped one)")
    ap.add_argument("--dataset", default="animals")
    ap.add_argument("--members", type=int, default=5, help="hand-picked members when the family is a checkpoint")
    ap.add_argument("--duration", type=float, default=None, help="seconds per policy (quick: 5, else 24)")
    ap.add_argument("--calibrate-s", type=float, default=None, help="seconds per distinct load (quick: 3, else 12)")
    ap.add_argument("--fps", type=float, default=None, help="frame rate (default: each scenario's pacing, else 100)")
    ap.add_argument("--batch", type=int, default=None, help="images per frame (default: each scenario's pacing, else 1)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--backends", default=None, help="default torch,ort; --quick: ort")
    args = ap.parse_args()
    args.duration = args.duration or (5.0 if args.quick else 24.0)
    args.calibrate_s = args.calibrate_s or (3.0 if args.quick else 12.0)
    args.threads = [int(v) for v in args.threads.split(",")]
    args.backends = (args.backends or ("ort" if args.quick else "torch,ort")).split(",")
    return args


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    family = args.family or default_family()
    names = args.scenarios.split(",") if args.scenarios else list_scenarios()
    say = lambda m: print(f"[{time.perf_counter() - t_start:6.1f}s] {m}", flush=True)  # noqa: E731
    results, rows = {}, []
    for name in names:
        say(f"scenario '{name}'")
        try:
            res = one_scenario(name, family, args, say)
        except UserError as exc:
            say(f"scenario '{name}' failed: {exc}")
            res = {"error": str(exc)}
        res.update(judge(res))
        results[name] = res
        for pol, s in res.get("policies", {}).items():
            rows.append([name, pol, res["deadline_ms"], s["on_time"], s["mean_top1"], s["switches"], s["p99_ms"]])
    print_table(f"scenarios: {args.duration:g} s per policy, family {family}",
                ["scenario", "policy", "deadline ms", "on time", "mean top-1", "switches", "p99 ms"], rows)
    emit_json({
        "benchmark": "scenarios", "quick": args.quick, "family": family, "duration_s": args.duration,
        "calibrate_s": args.calibrate_s, "scenarios": results,
        "bites": sum(bool(r["bites"]) for r in results.values()),
        "never_worse": all(r["never_worse"] for r in results.values()),
        "better_where_it_bites": all(r["better_where_it_bites"] for r in results.values()),
        "load_average": load_average(), "wall_s": round(time.perf_counter() - t_start, 1),
    })


if __name__ == "__main__":
    main()
