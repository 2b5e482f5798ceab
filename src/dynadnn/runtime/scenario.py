"""Scenarios: real competing processes started and stopped on a schedule while the manager serves.

A scenario is a JSON file (`dynadnn/scenarios/NAME.json` for the shipped ones, or any path):

    {"name": "contention", "phases": [
        {"name": "idle", "duration": 1, "competitors": []},
        {"name": "1 busy loop", "duration": 1, "competitors": [{"kind": "busy"}]},
        {"name": "busy + matmul", "duration": 1, "competitors": [{"kind": "busy"}, {"kind": "matmul", "threads": 2}]},
        {"name": "idle again", "duration": 1, "competitors": []}]}

Durations are relative: a run of S seconds gives each phase its share. Competitor kinds: `busy` (a Python
busy loop: one CPU-bound thread) and `matmul` (numpy matrix products on `threads` BLAS threads, `size` n).

Every competitor runs in its own process group (`start_new_session`), is killed with SIGKILL to the
group when its phase ends, and all are killed when the runner stops, on exceptions and on Ctrl-C (the
`with` block); each child also exits by itself within ~0.2 s if its parent disappears, so a crash of the
manager cannot leave busy loops behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import parse_json

clock = time.perf_counter
KINDS = ("busy", "matmul")

_BUSY = """
import os, sys, time
parent = int(sys.argv[1])  # given by the parent: it may already be gone when this line runs
while True:
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        pass
    if os.getppid() != parent:
        break
"""

_MATMUL = """
import os, sys, time
import numpy as np
n = int(sys.argv[1])
parent = int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n)).astype(np.float32)
b = rng.standard_normal((n, n)).astype(np.float32)
last = time.perf_counter()
while True:
    c = a @ b
    if time.perf_counter() - last > 0.2:
        last = time.perf_counter()
        if os.getppid() != parent:
            break
"""


@dataclass(frozen=True)
class Competitor:
    kind: str
    threads: int = 1
    size: int = 384

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.kind == "busy":
            return [sys.executable, "-c", _BUSY, str(os.getpid())], env
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        return [sys.executable, "-c", _MATMUL, str(self.size), str(os.getpid())], env

    def label(self) -> str:
        return "busy" if self.kind == "busy" else f"matmul x{self.threads}t"


@dataclass(frozen=True)
class Phase:
    name: str
    duration: float
    competitors: tuple[Competitor, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""

    @property
    def total(self) -> float:
        return sum(p.duration for p in self.phases)

    def boundaries(self, duration_s: float) -> list[tuple[float, float]]:
        """(start, end) seconds of each phase in a run of `duration_s` seconds."""
        out, t = [], 0.0
        for p in self.phases:
            d = p.duration / self.total * duration_s
            out.append((t, t + d))
            t += d
        return out

    def heaviest(self) -> int:
        """The phase with the most competing threads."""
        return max(range(len(self.phases)),
                   key=lambda i: sum(c.threads for c in self.phases[i].competitors))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "phases": [{"name": p.name, "duration": p.duration,
                            "competitors": [c.__dict__ for c in p.competitors]} for p in self.phases]}


def parse_scenario(doc: Any, source: str) -> Scenario:
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a JSON object with 'phases'")
    phases = doc.get("phases")
    if not isinstance(phases, list) or not phases:
        raise UserError(f"{source}: field 'phases' must be a non-empty list")
    out = []
    for i, ph in enumerate(phases):
        where = f"{source}: phases[{i}]"
        if not isinstance(ph, dict):
            raise UserError(f"{where}: expected an object with duration and competitors")
        dur = ph.get("duration")
        if isinstance(dur, bool) or not isinstance(dur, (int, float)) or dur <= 0:
            raise UserError(f"{where}.duration: expected a positive number, got {dur!r}")
        comps = ph.get("competitors", [])
        if not isinstance(comps, list):
            raise UserError(f"{where}.competitors: expected a list")
        cs = []
        for j, c in enumerate(comps):
            cw = f"{where}.competitors[{j}]"
            if not isinstance(c, dict) or c.get("kind") not in KINDS:
                raise UserError(f"{cw}.kind: expected one of {', '.join(KINDS)}, got "
                                f"{(c.get('kind') if isinstance(c, dict) else c)!r}")
            threads, size = c.get("threads", 1), c.get("size", 384)
            if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
                raise UserError(f"{cw}.threads: expected an integer 1..64, got {threads!r}")
            if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 8192:
                raise UserError(f"{cw}.size: expected an integer 16..8192, got {size!r}")
            cs.append(Competitor(c["kind"], threads, size))
        out.append(Phase(str(ph.get("name", f"phase {i}")), float(dur), tuple(cs)))
    return Scenario(str(doc.get("name", Path(source).stem)), tuple(out), str(doc.get("description", "")))


def list_scenarios() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dynadnn.scenarios").iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`contention`, `flood`) or a JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"scenario file '{path}' not found")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("dynadnn.scenarios") / f"{name_or_path}.json"
        if not res.is_file():
            raise UserError(f"unknown scenario '{name_or_path}': expected a JSON file or one of {', '.join(list_scenarios())}")
        text, source = res.read_text(), f"scenario '{name_or_path}'"
    return parse_scenario(parse_json(text, source), source)


class CompetitorPool:
    """The competing processes alive now. Each in its own process group; `stop_all` kills every group."""

    def __init__(self) -> None:
        self.procs: list[tuple[Competitor, subprocess.Popen]] = []
        self.started = 0

    def start(self, comp: Competitor) -> subprocess.Popen:
        cmd, env = comp.command()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((comp, proc))
        self.started += 1
        return proc

    def pids(self) -> list[int]:
        return [p.pid for _, p in self.procs]

    def stop_all(self) -> None:
        procs, self.procs = self.procs, []
        for _, p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the child leads its own group
            except (ProcessLookupError, PermissionError):
                pass
        for _, p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


@dataclass
class PhaseRecord:
    index: int
    name: str
    planned: tuple[float, float]             # seconds since the scenario start
    started: float = 0.0                     # manager clock
    ended: float = 0.0
    pids: list[int] = field(default_factory=list)


class ScenarioRunner:
    """Runs a scenario's schedule in a background thread; use as a context manager.

        with ScenarioRunner(scenario, duration_s=20) as sc:
            while not sc.done: mgr.predict(...)
    """

    def __init__(self, scenario: Scenario, duration_s: float, t0: float | None = None):
        if duration_s <= 0:
            raise UserError(f"scenario duration: expected > 0 s, got {duration_s}")
        self.scenario, self.duration_s = scenario, duration_s
        self.plan = scenario.boundaries(duration_s)
        self.pool = CompetitorPool()
        self.records = [PhaseRecord(i, p.name, b) for i, (p, b) in enumerate(zip(scenario.phases, self.plan))]
        self.t_start = t0 if t0 is not None else clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def phase_at(self, t: float) -> int:
        """Planned phase index at manager clock time t (clamped to the first/last phase)."""
        rel = t - self.t_start
        for i, (a, b) in enumerate(self.plan):
            if rel < b:
                return i
        return len(self.plan) - 1

    @property
    def done(self) -> bool:
        return clock() - self.t_start >= self.duration_s

    def start(self) -> "ScenarioRunner":
        self.t_start = clock()
        self._thread = threading.Thread(target=self._run, name="dynadnn-scenario", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for rec, phase in zip(self.records, self.scenario.phases):
                wait = self.t_start + rec.planned[0] - clock()
                if wait > 0 and self._stop.wait(wait):
                    return
                self.pool.stop_all()
                rec.started = clock()
                for comp in phase.competitors:
                    rec.pids.append(self.pool.start(comp).pid)
                end = self.t_start + rec.planned[1]
                if self._stop.wait(max(0.0, end - clock())):
                    rec.ended = clock()
                    return
                rec.ended = clock()
            self.pool.stop_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the owner, never lost
            self.error = exc
        finally:
            self.pool.stop_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.pool.stop_all()

    def __enter__(self) -> "ScenarioRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> dict:
        return {"scenario": self.scenario.to_dict(), "duration_s": self.duration_s,
                "phases": [{"index": r.index, "name": r.name, "planned_s": list(r.planned),
                            "started_s": r.started - self.t_start if r.started else None,
                            "ended_s": r.ended - self.t_start if r.ended else None,
                            "competitors": [c.label() for c in self.scenario.phases[r.index].competitors],
                            "pids": r.pids} for r in self.records]}
