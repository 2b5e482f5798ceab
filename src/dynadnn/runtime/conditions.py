"""What one scenario phase asks of this machine, applied for real and undone: co-runners started, the app's
CPU set shrunk (`cpus`), its CPU bandwidth capped (`cpu_quota`, a child cgroup), its targets changed.

    cond = Conditions(manager)               # manager optional: without one, `targets` events are skipped
    try:
        events = cond.enter(phase, index=1)  # the previous phase's conditions are replaced whole
        ...
    finally:
        cond.close()                         # co-runners killed, affinity and targets restored, cgroup removed

A phase is self-contained: one without `cpus`, `cpu_quota` or `targets` runs on the app's whole initial CPU
set, uncapped, at the targets the run started with. A knob this machine does not give (no writable cgroup,
affinity refused, no manager) is skipped and reported as an event with `applied: false` and a `reason`;
it never stops the run. Events also go to the manager's log (so they are in the trace's `events`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..platform.cgroup import DEFAULT_ROOT, CapUnavailable, CpuCap
from ..platform.local import ProcessAffinity
from .corunners import CompetitorPool

clock = time.perf_counter


class Conditions:
    """Applies phases one after the other to this process; see the module docstring."""

    def __init__(self, manager: Any = None, cgroup_root: str | Path = DEFAULT_ROOT):
        self.manager = manager
        self.pool = CompetitorPool()
        self.affinity = ProcessAffinity()
        self.cap = CpuCap(cgroup_root)
        self.targets0 = getattr(manager, "targets", None)
        self.events: list[dict[str, Any]] = []
        self._phase: Any = None
        self._index: int | None = None

    def _event(self, event: str, applied: bool, reason: str | None = None, **detail) -> dict:
        e = {"t": clock(), "kind": "scenario_event", "phase": self._index, "event": event, "applied": applied,
             **detail, **({"reason": reason} if reason else {})}
        self.events.append(e)
        log = getattr(self.manager, "_log", None)
        if log is not None:
            log("scenario_event", **{k: v for k, v in e.items() if k not in ("t", "kind")})
        return e

    def enter(self, phase: Any, index: int | None = None) -> list[dict]:
        """Replace the current phase's conditions with `phase`'s; returns the events it made."""
        before = len(self.events)
        prev, self._phase, self._index = self._phase, phase, index
        self.pool.stop_all()
        self._cpus(phase.cpus, prev is not None and prev.cpus is not None)
        self._quota(phase.cpu_quota, prev is not None and prev.cpu_quota is not None,
                    int(phase.cpu_period_ms * 1000))
        self._targets(phase.targets, prev is not None and prev.targets is not None)
        app_cpus = self.affinity.current()
        for comp in phase.competitors:
            proc = self.pool.start(comp, app_cpus, self.affinity.initial)
            if comp.pin:
                self._event("pin", True, corunner=comp.label(), pid=proc.pid, cpus=app_cpus)
        return self.events[before:]

    def _cpus(self, n: int | None, was_set: bool) -> None:
        if n is None:
            if was_set:
                problems = self.affinity.restore()
                self._event("cpus", not problems, "; ".join(problems) or None, cpus=self.affinity.initial)
            return
        try:
            got = self.affinity.limit(n)
        except OSError as exc:
            self._event("cpus", False, f"sched_setaffinity refused: {exc.strerror or exc}", asked=n)
            return
        reason = None if len(got) == n else f"{n} CPUs asked for, the app started with {len(got)}: kept {len(got)}"
        self._event("cpus", True, reason, asked=n, cpus=got)

    def _quota(self, fraction: float | None, was_set: bool, period_us: int = 100_000) -> None:
        if fraction is None:
            if was_set and self.cap.active:
                problems = self.cap.release()
                self._event("cpu_quota", not problems, "; ".join(problems) or None, fraction=None)
            return
        try:
            quota = self.cap.apply(fraction, period_us)
        except CapUnavailable as exc:
            self._event("cpu_quota", False, f"skipped: {exc}", fraction=fraction)
            return
        self._event("cpu_quota", True, fraction=fraction, quota_us=quota, period_us=period_us, group=str(self.cap.group),
                    cpus_equivalent=round(fraction * (os.cpu_count() or 1), 3))

    def _targets(self, spec: dict | None, was_set: bool) -> None:
        if spec is None and not was_set:
            return
        if self.manager is None or self.targets0 is None:
            self._event("targets", False, "no runtime manager to tell", asked=spec)
            return
        base = self.targets0
        changes = {} if spec is None else dict(spec)
        if "deadline_x" in changes:
            changes["deadline_ms"] = round(base.deadline_ms * changes.pop("deadline_x"), 6)
        try:
            new = self.manager.set_targets(base.with_(**changes))
        except Exception as exc:  # noqa: BLE001 - a refused target is reported, the run goes on
            self._event("targets", False, f"{type(exc).__name__}: {exc}", asked=spec)
            return
        self._event("targets", True, deadline_ms=new.deadline_ms, min_top1=new.min_top1)

    def close(self) -> list[dict]:
        """Undo everything (never raises): co-runners killed, CPU set, cap and targets restored."""
        before = len(self.events)
        self.pool.stop_all()
        prev, self._phase = self._phase, None
        if prev is None:
            return []
        self._cpus(None, prev.cpus is not None)
        self._quota(None, self.cap.active)
        if prev.targets is not None:
            try:
                self._targets(None, True)
            except Exception:  # noqa: BLE001 - close must finish
                pass
        return self.events[before:]
