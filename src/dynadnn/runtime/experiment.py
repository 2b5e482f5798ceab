"""The contention experiment, shared by `dynadnn run` and `benchmarks/contention.py`: load a family,
make the manager, pre-resize the frames, optionally calibrate (oracle table, deadline), then run each
policy through the same scenario, one after the other, in this one process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


from ..errors import UserError
from .calibrate import Calibration, measure_under_loads
from .manager import RuntimeManager
from .members import FamilySource, load_family
from .options import Targets
from .policies import REGISTRY, OraclePolicy, Policy, make_policy
from .scenario import Scenario
from .stream import Frames, run_stream
from .trace import Trace

ORACLE_QUANTILE = 0.99  # the oracle runs the most accurate option meeting the deadline for 99 % of frames


@dataclass
class Setup:
    source: FamilySource
    manager: RuntimeManager
    frames: Frames


def setup(family: str, dataset: str, targets: Targets, threads: Sequence[int] | None = None,
          backends: Sequence[str] = ("torch", "ort"), members: int = 5, say: Callable[[str], None] = lambda m: None,
          calib_images: int = 1000, lock_memory: bool = True, record_cpu: bool = False) -> Setup:
    from ..data import load_dataset

    say(f"loading family {family}")
    source = load_family(family, dataset=dataset, k=members, calib_images=calib_images)
    say(f"{len(source.archs)} members, top-1 " + ", ".join(f"{t:.1f}" for t in source.top1))
    manager = RuntimeManager(source, "static", targets, threads=threads, backends=backends, progress=say,
                             lock_memory=lock_memory, record_cpu=record_cpu)
    frames = Frames.from_dataset(load_dataset(source.dataset), [a.r for a in source.archs])
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


