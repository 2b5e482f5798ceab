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
from ..fileio import parse_json, read_json_object
from ..validate import MAX_PROCESSES, MAX_SECONDS, choice, count, number, seconds
from ..validate import field as json_field

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

    def check_limits(self) -> "Scenario":
        """Refuse (before anything starts) a phase of more than `MAX_PROCESSES` competitors, or none at all:
        a scenario built in Python rather than parsed is held to the same cap."""
        if not self.phases:
            raise UserError(f"scenario '{self.name}': expected at least one phase")
        for i, ph in enumerate(self.phases):
            if len(ph.competitors) > MAX_PROCESSES:
                raise UserError(f"scenario '{self.name}': phases[{i}]: {len(ph.competitors)} competing processes "
                                f"asked for, at most {MAX_PROCESSES} allowed (dynadnn.validate.MAX_PROCESSES)")
            number(ph.duration, f"scenario '{self.name}': phases[{i}].duration", low=0.0, low_open=True)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "phases": [{"name": p.name, "duration": p.duration,
                            "competitors": [c.__dict__ for c in p.competitors]} for p in self.phases]}


def parse_scenario(doc: Any, source: str) -> Scenario:
    """A scenario from its JSON document, every field checked (type, range, finiteness, known keys); a phase
    asking for more than `MAX_PROCESSES` competing processes, or a matmul load bigger than this machine's
    free memory, is refused here, before any process is started."""
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a JSON object with 'phases'")
    _known_keys(doc, TOP_KEYS, source)
    phases = json_field(doc, "phases", list, source)
    if not phases:
        raise UserError(f"{source}: field 'phases': expected a non-empty list of phases")
    if len(phases) > MAX_PHASES:
        raise UserError(f"{source}: field 'phases': {len(phases)} phases, at most {MAX_PHASES} allowed")
    out = [_parse_phase(ph, i, f"{source}: phases[{i}]") for i, ph in enumerate(phases)]
    name = json_field(doc, "name", str, source, required=False)
    description = json_field(doc, "description", str, source, required=False)
    return Scenario(name if name is not None else Path(source).stem, tuple(out), description or "")


TOP_KEYS = ("name", "description", "phases", "format")
PHASE_KEYS = ("name", "duration", "competitors")
COMPETITOR_KEYS = ("kind", "threads", "size")
MAX_PHASES = 1000  # phases of one scenario: each starts and stops processes, and a run gives each its share
MAX_MATMUL = 4096  # a matmul competitor's n: three n x n float32 matrices (192 MiB at the cap)


def _known_keys(doc: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = [k for k in doc if k not in keys]
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}; expected only {', '.join(keys)}")


def _parse_phase(ph: Any, i: int, where: str) -> Phase:
    if not isinstance(ph, dict):
        raise UserError(f"{where}: expected an object with duration and competitors, got {ph!r:.40}")
    _known_keys(ph, PHASE_KEYS, where)
    if "duration" not in ph:
        raise UserError(f"{where}.duration: missing; expected a relative duration > 0")
    dur = number(ph["duration"], f"{where}.duration", low=0.0, low_open=True, high=MAX_SECONDS)
    comps = json_field(ph, "competitors", list, where, required=False) or []
    if len(comps) > MAX_PROCESSES:
        raise UserError(f"{where}.competitors: {len(comps)} competing processes asked for, at most "
                        f"{MAX_PROCESSES} allowed (dynadnn.validate.MAX_PROCESSES)")
    cs = tuple(_parse_competitor(c, f"{where}.competitors[{j}]") for j, c in enumerate(comps))
    _check_memory(cs, where)
    name = json_field(ph, "name", str, where, required=False)
    return Phase(name if name is not None else f"phase {i}", dur, cs)


def _parse_competitor(c: Any, where: str) -> Competitor:
    if not isinstance(c, dict):
        raise UserError(f"{where}: expected an object such as {{\"kind\": \"busy\"}}, got {c!r:.40}")
    _known_keys(c, COMPETITOR_KEYS, where)
    kind = choice(c.get("kind"), f"{where}.kind", KINDS)
    threads = count(c.get("threads", 1), f"{where}.threads", low=1, high=MAX_PROCESSES)
    if kind == "busy" and threads != 1:
        raise UserError(f"{where}.threads: a busy loop is one thread; expected 1 (or a matmul), got {threads}")
    size = count(c.get("size", 384), f"{where}.size", low=16, high=MAX_MATMUL)
    return Competitor(kind, threads, size)


def _check_memory(comps: tuple[Competitor, ...], where: str) -> None:
    need = sum(3 * 4 * c.size ** 2 for c in comps if c.kind == "matmul")
    if not need:
        return
    import psutil

    free = psutil.virtual_memory().available
    if need > free // 2:
        raise UserError(f"{where}.competitors: the matmuls need {need / 2**20:.0f} MiB, more than half of this "
                        f"machine's free memory ({free / 2**20:.0f} MiB)")


def list_scenarios() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dynadnn.scenarios").iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`contention`, `flood`) or a JSON file; errors name `scenario` or the file."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise UserError(f"scenario: expected a shipped name ({', '.join(list_scenarios())}) or a JSON file, "
                        f"got {name_or_path!r:.60}")
    text = str(name_or_path)
    if text in list_scenarios():
        res = resources.files("dynadnn.scenarios") / f"{text}.json"
        return parse_scenario(parse_json(res.read_text(), f"scenario '{text}'"), f"scenario '{text}'")
    try:
        is_file = Path(text).is_file()
    except (OSError, ValueError) as exc:
        raise UserError(f"scenario: cannot read {text[:60]!r}... ({getattr(exc, 'strerror', None) or exc})") from None
    if not is_file:
        if Path(text).suffix == ".json" or Path(text).exists():
            raise UserError(f"scenario: '{text[:120]}' is not a readable file")
        raise UserError(f"scenario: unknown scenario '{text[:60]}': expected a JSON file or one of "
                        f"{', '.join(list_scenarios())}")
    return parse_scenario(read_json_object(text, error=UserError), text)


class CompetitorPool:
    """The competing processes alive now. Each in its own process group; `stop_all` kills every group."""

    def __init__(self) -> None:
        self.procs: list[tuple[Competitor, subprocess.Popen]] = []
        self.started = 0

    def start(self, comp: Competitor) -> subprocess.Popen:
        if len(self.procs) >= MAX_PROCESSES:  # the last guard: parse_scenario and check_limits refuse earlier
            raise UserError(f"competitors: at most {MAX_PROCESSES} may run at once (dynadnn.validate.MAX_PROCESSES)")
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
        duration_s = seconds(duration_s, "duration")
        scenario.check_limits()
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
