"""Scenarios: real pressure on a timeline while the manager serves. The format is documented whole in
docs/scenarios.md; in short, a JSON file (`dynadnn/scenarios/NAME.json` for the shipped ones, or any path):

    {"name": "core_loss", "pacing": {"period_x_p50": 1.3}, "phases": [
        {"name": "idle", "duration": 1},
        {"name": "one core, a pinned busy loop", "duration": 2, "cpus": 1,
         "competitors": [{"kind": "busy", "pin": "app"}]},
        {"name": "capped", "duration": 1, "cpu_quota": 0.3, "targets": {"deadline_x": 0.8}}]}

Durations are relative: a run of S seconds gives each phase its share. Per phase: `competitors` (co-runner
processes, see `corunners`: busy, matmul, paced_app, membw, any of them `"pin": "app"`), `cpus` (the app's
CPU set shrinks to N CPUs), `cpu_quota` (a CPU-bandwidth cap, a fraction of all CPUs, through a child cgroup)
and `targets` (`deadline_ms` or `deadline_x` x the run's deadline, `min_top1`: set with manager.set_targets).
Scenario-level `pacing` (`fps`, or `period_x_p50`: the frame period relative to the most accurate member's
measured p50) is parsed into `Scenario.pacing`; the experiment applies it when no --fps is given.

`ScenarioRunner` applies the phases (`conditions.Conditions`) in a background thread and undoes everything
when it stops, on exceptions and on Ctrl-C (the `with` block); co-runners also exit by themselves within
~0.2 s if the manager disappears. What a scenario may start is capped, refused before anything starts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import parse_json, read_json_object
from .options import MAX_BATCH
from ..validate import MAX_PROCESSES, MAX_SECONDS, choice, count, number, seconds
from ..validate import field as json_field
from .conditions import Conditions
from .corunners import KINDS, MAX_MATMUL, MAX_MEMBW_MB, MAX_THREADS, Competitor, CompetitorPool, check_count, check_load

__all__ = ["Competitor", "CompetitorPool", "Conditions", "KINDS", "MAX_THREADS", "Pacing", "Phase", "Scenario",
           "ScenarioRunner", "list_scenarios", "load_scenario", "parse_scenario"]

clock = time.perf_counter
MAX_CPUS = 4096  # a phase's `cpus`: more than any machine; what the app has is applied (and reported)


@dataclass(frozen=True)
class Pacing:
    """The app's frame rate: absolute `fps`, or a period of `period_x_p50` x the most accurate member's p50;
    `batch`: images per frame (e.g. the object crops of one camera frame), each inference runs them together."""

    fps: float | None = None
    period_x_p50: float | None = None
    batch: int | None = None

    def fps_for(self, p50_ms: float) -> float:
        """Frames per second given the most accurate member's measured p50 (ms)."""
        if self.fps is not None:
            return self.fps
        return 1000.0 / (self.period_x_p50 * float(p50_ms))

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("fps", self.fps), ("period_x_p50", self.period_x_p50), ("batch", self.batch))
                if v is not None}


@dataclass(frozen=True)
class Phase:
    name: str
    duration: float
    competitors: tuple[Competitor, ...]
    cpus: int | None = None               # the app's CPU set shrinks to this many CPUs
    cpu_quota: float | None = None        # CPU-bandwidth cap, fraction (0, 1] of all CPUs
    targets: dict[str, float] | None = None  # deadline_ms | deadline_x, min_top1
    cpu_period_ms: float = 100.0          # the cap's CFS period: short for a model of a few ms

    def load_key(self) -> tuple:
        """What makes two phases the same load for a measurement (targets do not change latency)."""
        comps = tuple(sorted((c.kind, c.threads, c.size, c.pin or "", c.fps, c.layers, c.size_mb)
                             for c in self.competitors))
        return comps, self.cpus, self.cpu_quota, self.cpu_period_ms if self.cpu_quota else None

    def pressure(self, n_cpus: int) -> float:
        """Competing threads (+ the app) per CPU the app may use: how hard the phase squeezes it."""
        capacity = float(min(self.cpus or n_cpus, n_cpus))
        if self.cpu_quota is not None:
            capacity = min(capacity, self.cpu_quota * n_cpus)
        return (1 + sum(c.threads for c in self.competitors)) / max(capacity, 1e-3)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "duration": self.duration,
               "competitors": [{k: getattr(c, k) for k in COMPETITOR_KEYS[c.kind] if getattr(c, k) is not None}
                               for c in self.competitors]}
        for key in ("cpus", "cpu_quota", "targets"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.cpu_period_ms != 100.0:
            out["cpu_period_ms"] = self.cpu_period_ms
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    pacing: Pacing | None = None

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
        """The phase that squeezes the app most (`Phase.pressure`; the first of equals)."""
        import os

        n = os.cpu_count() or 1
        return max(range(len(self.phases)), key=lambda i: self.phases[i].pressure(n))

    def check_limits(self) -> "Scenario":
        """Refuse (before anything starts) a phase over the caps (`corunners.check_load`: co-runners,
        threads, memory), or no phase at all: a scenario built in Python is held to the same caps."""
        if not self.phases:
            raise UserError(f"scenario '{self.name}': expected at least one phase")
        for i, ph in enumerate(self.phases):
            check_load(ph.competitors, f"scenario '{self.name}': phases[{i}]")
            number(ph.duration, f"scenario '{self.name}': phases[{i}].duration", low=0.0, low_open=True)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "description": self.description, "phases": [p.to_dict() for p in self.phases]}
        if self.pacing is not None:
            out["pacing"] = self.pacing.to_dict()
        return out


def parse_scenario(doc: Any, source: str) -> Scenario:
    """A scenario from its JSON document, every field checked (type, range, finiteness, known keys); a phase
    over the caps (co-runners, threads, memory: `corunners.check_load`) is refused here, before any start."""
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
    pacing = _parse_pacing(doc.get("pacing"), f"{source}: pacing") if "pacing" in doc else None
    return Scenario(name if name is not None else Path(source).stem, tuple(out), description or "", pacing)


TOP_KEYS = ("name", "description", "phases", "format", "pacing")
PHASE_KEYS = ("name", "duration", "competitors", "cpus", "cpu_quota", "cpu_period_ms", "targets")
COMPETITOR_KEYS = {"busy": ("kind", "threads", "pin"), "matmul": ("kind", "threads", "size", "pin"),
                   "paced_app": ("kind", "threads", "size", "layers", "fps", "pin"),
                   "membw": ("kind", "threads", "size_mb", "pin")}
TARGET_KEYS = ("deadline_ms", "deadline_x", "min_top1")
MAX_PHASES = 1000  # phases of one scenario: each starts and stops processes, and a run gives each its share
MAX_LAYERS = 64    # a paced app's layers
MAX_APP_FPS = 1000.0


def _known_keys(doc: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = [k for k in doc if k not in keys]
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}; expected only {', '.join(keys)}")


def _parse_pacing(doc: Any, where: str) -> Pacing:
    if isinstance(doc, dict):
        _known_keys(doc, ("fps", "period_x_p50", "batch"), where)
    if not isinstance(doc, dict) or len(set(doc) & {"fps", "period_x_p50"}) != 1:
        raise UserError(f"{where}: expected an object with one of fps, period_x_p50 (and optionally batch), "
                        f"got {doc!r:.40}")
    batch = count(doc["batch"], f"{where}.batch", low=1, high=MAX_BATCH) if "batch" in doc else None
    if "fps" in doc:
        return Pacing(fps=number(doc["fps"], f"{where}.fps", low=0.0, low_open=True, high=MAX_APP_FPS * 10), batch=batch)
    return Pacing(period_x_p50=number(doc["period_x_p50"], f"{where}.period_x_p50", low=1.0, high=1000.0), batch=batch)


def _parse_targets(doc: Any, where: str) -> dict[str, float]:
    if not isinstance(doc, dict) or not doc:
        raise UserError(f"{where}: expected an object with deadline_ms or deadline_x and/or min_top1, "
                        f"got {doc!r:.40}")
    _known_keys(doc, TARGET_KEYS, where)
    if "deadline_ms" in doc and "deadline_x" in doc:
        raise UserError(f"{where}: give deadline_ms or deadline_x, not both")
    out = {}
    if "deadline_ms" in doc:
        out["deadline_ms"] = number(doc["deadline_ms"], f"{where}.deadline_ms", low=0.0, low_open=True,
                                    high=MAX_SECONDS * 1e3)
    if "deadline_x" in doc:
        out["deadline_x"] = number(doc["deadline_x"], f"{where}.deadline_x", low=0.0, low_open=True, high=1000.0)
    if "min_top1" in doc:
        out["min_top1"] = number(doc["min_top1"], f"{where}.min_top1", low=0.0, high=100.0)
    return out


def _parse_phase(ph: Any, i: int, where: str) -> Phase:
    if not isinstance(ph, dict):
        raise UserError(f"{where}: expected an object with duration and competitors, got {ph!r:.40}")
    _known_keys(ph, PHASE_KEYS, where)
    if "duration" not in ph:
        raise UserError(f"{where}.duration: missing; expected a relative duration > 0")
    dur = number(ph["duration"], f"{where}.duration", low=0.0, low_open=True, high=MAX_SECONDS)
    comps = json_field(ph, "competitors", list, where, required=False) or []
    check_count(len(comps), f"{where}.competitors")  # before a million entries are parsed
    cs = tuple(_parse_competitor(c, f"{where}.competitors[{j}]") for j, c in enumerate(comps))
    check_load(cs, f"{where}.competitors")
    cpus = count(ph["cpus"], f"{where}.cpus", low=1, high=MAX_CPUS) if "cpus" in ph else None
    quota = number(ph["cpu_quota"], f"{where}.cpu_quota", low=0.0, low_open=True, high=1.0) \
        if "cpu_quota" in ph else None
    targets = _parse_targets(ph["targets"], f"{where}.targets") if "targets" in ph else None
    name = json_field(ph, "name", str, where, required=False)
    period = number(ph.get("cpu_period_ms", 100.0), f"{where}.cpu_period_ms", low=1.0, high=1000.0)
    return Phase(name if name is not None else f"phase {i}", dur, cs, cpus, quota, targets, period)


def _parse_competitor(c: Any, where: str) -> Competitor:
    if not isinstance(c, dict):
        raise UserError(f"{where}: expected an object such as {{\"kind\": \"busy\"}}, got {c!r:.40}")
    kind = choice(c.get("kind"), f"{where}.kind", KINDS)
    _known_keys(c, COMPETITOR_KEYS[kind], f"{where} ({kind})")
    threads = count(c.get("threads", 1), f"{where}.threads", low=1, high=MAX_PROCESSES)
    if kind == "busy" and threads != 1:
        raise UserError(f"{where}.threads: a busy loop is one thread; expected 1 (or a matmul), got {threads}")
    pin = choice(c["pin"], f"{where}.pin", ("app",)) if "pin" in c else None
    return Competitor(kind, threads, count(c.get("size", 384), f"{where}.size", low=16, high=MAX_MATMUL), pin,
                      number(c.get("fps", 30.0), f"{where}.fps", low=0.0, low_open=True, high=MAX_APP_FPS),
                      count(c.get("layers", 4), f"{where}.layers", low=1, high=MAX_LAYERS),
                      count(c.get("size_mb", 0), f"{where}.size_mb", low=0, high=MAX_MEMBW_MB))


def list_scenarios() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dynadnn.scenarios").iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`contention`, `flood`) or a JSON file; errors name `scenario` or the file.
    Either way it is checked against the caps (`parse_scenario`, or `Scenario.check_limits` for one built in
    Python)."""
    if isinstance(name_or_path, Scenario):
        return name_or_path.check_limits()
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


@dataclass
class PhaseRecord:
    index: int
    name: str
    planned: tuple[float, float]             # seconds since the scenario start
    started: float = 0.0                     # manager clock
    ended: float = 0.0
    pids: list[int] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # what `Conditions.enter` did (applied or skipped)


class ScenarioRunner:
    """Runs a scenario's schedule in a background thread; use as a context manager.

        with ScenarioRunner(scenario, duration_s=20, manager=mgr) as sc:
            while not sc.done: mgr.predict(...)

    With `manager`, phases' `targets` are applied to it and every event is logged in its event log; without
    one, `targets` are skipped (reported). `cgroup_root` is where `cpu_quota` makes its child group."""

    def __init__(self, scenario: Scenario, duration_s: float, t0: float | None = None, manager: Any = None,
                 cgroup_root: str | Path | None = None):
        duration_s = seconds(duration_s, "duration")
        scenario.check_limits()
        self.scenario, self.duration_s = scenario, duration_s
        self.plan = scenario.boundaries(duration_s)
        self.manager, self._cgroup_root = manager, cgroup_root
        self.conditions: Conditions | None = None
        self._idle_pool = CompetitorPool()
        self.records = [PhaseRecord(i, p.name, b) for i, (p, b) in enumerate(zip(scenario.phases, self.plan))]
        self.t_start = t0 if t0 is not None else clock()
        self._stop = threading.Event()
        self._finish_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def pool(self) -> CompetitorPool:
        """The co-runners alive now."""
        return self.conditions.pool if self.conditions is not None else self._idle_pool

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
        self.conditions = Conditions(self.manager, *(() if self._cgroup_root is None else (self._cgroup_root,)))
        self.t_start = clock()
        self._thread = threading.Thread(target=self._run, name="dynadnn-scenario", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        cond = self.conditions
        try:
            for rec, phase in zip(self.records, self.scenario.phases):
                wait = self.t_start + rec.planned[0] - clock()
                if wait > 0 and self._stop.wait(wait):
                    return
                rec.started = clock()
                rec.events = cond.enter(phase, rec.index)
                rec.pids = cond.pool.pids()
                end = self.t_start + rec.planned[1]
                stopped = self._stop.wait(max(0.0, end - clock()))
                rec.ended = clock()
                if stopped:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to the owner, never lost
            self.error = exc
        finally:
            self._finish()

    def _finish(self) -> None:
        """Undo the conditions (idempotent; from the runner thread at the end, or from `stop`)."""
        with self._finish_lock:
            cond = self.conditions
            if cond is not None:
                last = max((r for r in self.records if r.started), key=lambda r: r.index, default=self.records[-1])
                last.events = last.events + cond.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._finish()

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
                            "pids": r.pids, "events": [{**e, "t": round(e["t"] - self.t_start, 6)}
                                                        for e in r.events]} for r in self.records]}
