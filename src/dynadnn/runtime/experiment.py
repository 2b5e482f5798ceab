"""The contention experiment, shared by `dynadnn run`, the demo and `benchmarks/contention.py`: load a
family, make the manager, pre-resize the frames, optionally calibrate (oracle table, deadline), then run
each policy through the same scenario, one after the other, in this one process.

    result = run_experiment(family, load_scenario("contention"), ["feedback", "dofa"], duration_s=30)
    paths = result.write("runs/run")      # trace(-POLICY).json, trace.png, summary.json
    # or run_experiment(..., out="runs/run"): the result folder written whole, refused up front if unwritable
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from ..errors import UserError
from ..family import Family
from .. import validate
from ..fileio import output_dir, write_json
from .calibrate import Calibration, calibrate_deadline, measure_under_loads, rule_options
from .manager import RuntimeManager, check_backends
from .members import MAX_MEMBERS, FamilySource, family_kind, load_family
from .options import MAX_BATCH, MAX_FPS, Targets
from .policies import REGISTRY, OraclePolicy, Policy, make_policy
from .scenario import Scenario, load_scenario
from .stream import Frames, run_stream
from .trace import Trace, plot_traces

ORACLE_QUANTILE = 0.99  # the oracle runs the most accurate option meeting the deadline for 99 % of frames
DEFAULT_FPS = 100.0  # the stream's frame rate when neither the caller nor the scenario's pacing sets one


@dataclass
class Setup:
    source: FamilySource
    manager: RuntimeManager
    frames: Frames


def setup(family: str | Family | FamilySource, dataset: str, targets: Targets, threads: Sequence[int] | None = None,
          backends: Sequence[str] = ("torch", "ort"), members: int = 5, say: Callable[[str], None] = lambda m: None,
          calib_images: int = 1000, lock_memory: bool = True, record_cpu: bool = False, batch: int = 1) -> Setup:
    from ..data import load_dataset

    if isinstance(family, FamilySource):
        source = family
    elif isinstance(family, Family):
        source = FamilySource.from_family(family)
    else:  # nothing is logged before the family and its data set are read: a bad file gives one line
        source = load_family(family, dataset=dataset, k=members, calib_images=calib_images)
    source.check()
    data = load_dataset(source.dataset)
    if data.in_channels != source.supernet.space.in_channels:
        raise UserError(f"dataset: '{source.dataset}' has {data.in_channels} channel(s); the family's space "
                        f"'{source.supernet.space.name}' expects {source.supernet.space.in_channels}")
    frames = Frames.from_dataset(data, [a.r for a in source.archs], batch=batch)
    say(f"{len(source.archs)} members, top-1 " + ", ".join(f"{t:.1f}" for t in source.top1))
    manager = RuntimeManager(source, "static", targets, threads=threads, backends=backends, progress=say,
                             lock_memory=lock_memory, record_cpu=record_cpu, batch=batch)
    return Setup(source, manager, frames)


def policy_for(name: str, calibration: Calibration | None) -> Policy:
    if name not in REGISTRY:
        raise UserError(f"unknown policy '{name}': expected one of {', '.join(REGISTRY)}")
    if name == "oracle":
        if calibration is None:
            raise UserError("policy 'oracle' needs a calibration of the scenario (it knows the schedule)")
        return OraclePolicy(None, calibration.quantile_table(ORACLE_QUANTILE))
    return make_policy(name)


def run_policies(st: Setup, scenario: Scenario, policies: Sequence[str], duration_s: float, fps: float,
                 calibration: Calibration | None = None, say: Callable[[str], None] = lambda m: None) -> list[Trace]:
    traces = []
    for name in policies:
        say(f"running policy {name} for {duration_s:g} s through scenario '{scenario.name}'")
        st.manager.set_policy(policy_for(name, calibration))
        traces.append(run_stream(st.manager, st.frames, scenario, duration_s, fps))
    return traces


def calibrate(st: Setup, scenario: Scenario, seconds_per_load: float, fps: float,
              say: Callable[[str], None] = lambda m: None) -> Calibration:
    say(f"measuring every option under each load of '{scenario.name}' ({seconds_per_load:g} s each)")
    return measure_under_loads(st.manager, st.frames, scenario, seconds_per_load, fps)


@dataclass
class Experiment:
    """What `run_experiment` measured: one trace per policy, under one deadline."""

    scenario: str
    deadline_ms: float
    traces: list[Trace]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the deadline calibration
    paths: list[Path] = field(default_factory=list)  # what `run_experiment(out=...)` wrote

    def summary(self) -> dict[str, Any]:
        return {"deadline_ms": self.deadline_ms, "scenario": self.scenario,
                "policies": {tr.policy: tr.summary() for tr in self.traces}, **self.extra}

    def write(self, out: str | Path) -> list[Path]:
        """trace.json (or trace-POLICY.json each), trace.png and summary.json, each written atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for tr in self.traces:
            tr.meta.update(self.extra)
            paths.append(tr.write(out, "trace" if len(self.traces) == 1 else f"trace-{tr.policy}")[0])
        paths.append(plot_traces(self.traces, out / "trace.png"))
        paths.append(write_json(out / "summary.json", self.summary(), indent=1))
        return paths


@dataclass(frozen=True)
class RunArguments:
    """`run_experiment`'s numbers and lists, checked (`check_arguments`)."""

    policies: tuple[str, ...]
    duration_s: float
    fps: float | None  # None: the scenario's pacing (`stream_fps`)
    deadline_ms: float | None
    min_top1: float
    threads: tuple[int, ...] | None
    backends: tuple[str, ...]
    members: int
    calib_images: int
    calibrate_s: float
    batch: int | None  # None: the scenario's pacing.batch, else 1


def _names(value: Any, name: str, options: Sequence[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise UserError(f"{name}: expected a non-empty list of {', '.join(options)}, got {value!r:.60}")
    return tuple(validate.choice(v, name, options) for v in items)


def check_arguments(policies: Sequence[str] = ("feedback",), *, duration_s: float = 20.0, fps: float | None = None,
                    deadline_ms: float | None = None, min_top1: float = 0.0, threads: Sequence[int] | None = None,
                    backends: Sequence[str] = ("torch", "ort"), members: int = 5, calib_images: int = 1000,
                    calibrate_s: float = 3.0, batch: int | None = None) -> RunArguments:
    """Every argument of `run_experiment` checked before anything is loaded or started: one-line errors that
    start with the parameter's name as the CLI spells it (`duration`, `fps`, `threads`, ...)."""
    pols = _names(policies, "policy", list(REGISTRY))
    duration = validate.seconds(duration_s, "duration")
    if fps is not None:
        fps = _check_fps(fps, duration)
    else:  # the scenario's pacing is known only once the family is profiled: at least the default is checked now
        _check_fps(DEFAULT_FPS, duration)
    if deadline_ms is not None:
        deadline_ms = validate.number(deadline_ms, "deadline_ms", low=0.0, low_open=True,
                                      high=validate.MAX_SECONDS * 1e3)
    if threads is not None:
        threads = validate.thread_counts(threads, "threads")
    return RunArguments(
        pols, duration, fps, deadline_ms, validate.number(min_top1, "min_top1", low=0.0, high=100.0), threads,
        check_backends([backends] if isinstance(backends, str) else backends), validate.count(members, "members", low=2, high=MAX_MEMBERS),
        validate.count(calib_images, "calib_images", low=1), validate.seconds(calibrate_s, "calibrate_s"),
        None if batch is None else validate.count(batch, "batch", low=1, high=MAX_BATCH))


def _check_fps(fps: Any, duration: float, where: str = "fps") -> float:
    fps = validate.number(fps, where, low=0.0, low_open=True, high=MAX_FPS)
    if duration * fps < 1:
        raise UserError(f"duration: {duration:g} s at {fps:g} fps serves no frame; expected at least {1 / fps:g} s")
    return fps


def stream_fps(scenario: Scenario, manager: RuntimeManager, fps: float | None, duration_s: float) -> tuple[float, str]:
    """The stream's frame rate and where it came from: `fps` when given; else the scenario's pacing (`fps`
    absolute, or a period of `period_x_p50` x the most accurate option's profiled p50); else 100."""
    if fps is not None:
        return fps, f"{fps:g} fps (given)"
    pacing = scenario.pacing
    if pacing is not None and pacing.fps is not None:
        fps = _check_fps(pacing.fps, duration_s, "scenario pacing.fps")
        return fps, f"{fps:g} fps (the scenario's pacing)"
    if pacing is not None and pacing.period_x_p50 is not None:
        x = validate.number(pacing.period_x_p50, "scenario pacing.period_x_p50", low=0.0, low_open=True)
        p50 = manager.options[rule_options(manager)[0]].p50_ms
        fps = _check_fps(min(MAX_FPS, pacing.fps_for(p50)), duration_s, "scenario pacing")
        return fps, f"{fps:.4g} fps (the scenario's pacing: a period of {x:g}x the most accurate option's p50, {p50:.3f} ms)"
    return DEFAULT_FPS, f"{DEFAULT_FPS:g} fps (default)"


def check_out(out: Any, what: str) -> Path:
    """A result folder: a non-empty path (`fileio.output_dir` refuses the working, home or root folder, which
    it would replace whole)."""
    if not isinstance(out, (str, Path)) or not str(out).strip():
        raise UserError(f"out: expected a folder for the {what}'s results, got {str(out)!r:.60}")
    return Path(out)


def _check_dataset(dataset: Any) -> None:
    from ..data import DATASETS

    if not isinstance(dataset, str) or not (dataset in DATASETS or dataset.startswith("imagefolder:")):
        raise UserError(f"dataset: unknown dataset {str(dataset)[:80]!r}: expected one of {', '.join(DATASETS)}")
    if dataset == "imagefolder:":
        raise UserError("dataset: 'imagefolder:' names no folder: expected imagefolder:PATH")


def run_experiment(family: str | Family | FamilySource, scenario: Scenario | str, policies: Sequence[str], *,
                   duration_s: float = 20.0, fps: float | None = None, deadline_ms: float | None = None,
                   min_top1: float = 0.0, dataset: str = "animals", threads: Sequence[int] | None = None,
                   backends: Sequence[str] = ("torch", "ort"), members: int = 5, calib_images: int = 1000,
                   calibrate_s: float = 3.0, batch: int | None = None, lock_memory: bool = True,
                   out: str | Path | None = None,
                   overwrite: bool = False, say: Callable[[str], None] = lambda m: None) -> Experiment:
    """Serve the family's frame stream through `scenario` under each policy in turn, at `fps` (default: the
    scenario's pacing, else 100; `stream_fps`). Without `deadline_ms`, the deadline is calibrated first
    under the scenario's loads at that pacing (`calibrate_deadline`: "static suffices" when the scenario does
    not bite, else the most accurate member misses about 20 % of the heavy load's frames). Competing
    processes are stopped on return and on errors.
    Every argument is checked before anything is loaded (`check_arguments`). With `out`, the result folder
    (trace(-POLICY).json, trace.png, summary.json) is written whole through `fileio.output_dir`: an `out`
    that cannot be written, or that holds files without `overwrite`, is refused before the work starts."""
    a = check_arguments(policies, duration_s=duration_s, fps=fps, deadline_ms=deadline_ms, min_top1=min_top1,
                        threads=threads, backends=backends, members=members, calib_images=calib_images,
                        calibrate_s=calibrate_s, batch=batch)
    scenario = load_scenario(scenario)
    if not isinstance(family, (Family, FamilySource)):
        family_kind(family)  # a path that is not there: refused before --out is touched
    _check_dataset(dataset)
    if out is not None:
        check_out(out, "run")
    if out is None:
        return _experiment(family, scenario, a, dataset, lock_memory, say)
    with output_dir(out, "run", "summary.json", overwrite) as tmp:
        result = _experiment(family, scenario, a, dataset, lock_memory, say)
        result.paths = [Path(out) / p.relative_to(tmp) for p in result.write(tmp)]
    return result


def _experiment(family: str | Family | FamilySource, scenario: Scenario, a: RunArguments, dataset: str,
                lock_memory: bool, say: Callable[[str], None]) -> Experiment:
    targets = Targets(deadline_ms=a.deadline_ms or 1000.0, min_top1=a.min_top1).validate()
    batch = a.batch or (scenario.pacing.batch if scenario.pacing else None) or 1
    st = setup(family, dataset, targets, a.threads, a.backends, a.members, say, calib_images=a.calib_images,
               lock_memory=lock_memory, batch=batch)
    try:
        fps, how = stream_fps(scenario, st.manager, a.fps, a.duration_s)
        say(f"pacing: {how}")
        calibration, extra = None, {"fps": fps, "batch": batch}
        if a.deadline_ms is None or "oracle" in a.policies:
            calibration = calibrate(st, scenario, a.calibrate_s, fps, say)
        if a.deadline_ms is None:
            choice = calibrate_deadline(st.manager, calibration)
            st.manager.set_targets(deadline_ms=choice.deadline_ms)
            extra["deadline_calibration"] = choice.__dict__
            say(choice.message())
        traces = run_policies(st, scenario, a.policies, a.duration_s, fps, calibration, say)
        return Experiment(scenario.name, st.manager.targets.deadline_ms, traces, extra)
    finally:
        st.manager.close()
