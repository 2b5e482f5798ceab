"""The `RuntimeManager`: a family's members resident and warm on every backend and thread count worth
having, a latency monitor updated at every inference, a background system monitor, and a policy that
picks the option for the next inference.

    mgr = RuntimeManager(family, policy="feedback", targets=Targets(deadline_ms=5), supernet=net)
    # or RuntimeManager(load_family("zoo:animals" or a family directory), ...)
    logits = mgr.predict(images)          # runs the current option, measures, lets the policy decide
    mgr.set_targets(deadline_ms=3.0)      # from any thread, at any time
    mgr.close()                           # joins the monitor thread, drops the ORT sessions

Thread safety: `predict` is meant to be called from one serving thread. Targets are an immutable object
replaced by reference (readers never lock). The event log is append-only.

Faults never stop the serving: a failing system-monitor read is logged and the policy stops trusting its
samples; an actuator that raises (e.g. affinity refused) is logged and the manager falls back to the
safe option (the fastest one) without that actuator; an inference that raises is logged, the frame is
re-run on the safe option, and the policy is told to start again from there.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import validate
from ..errors import UserError
from ..family import Family
from ..platform.local import LocalPlatform, cpu_count
from ..supernet import SuperNet
from ..deploy import BACKENDS, member_runners
from .knobs import build_options
from .members import FamilySource
from .monitors import LatencyMonitor, SystemMonitor
from .options import MAX_BATCH, Targets, fastest
from .policies import Policy, make_policy
from .serving import Records, Serving

clock = time.perf_counter


class InferenceFailed(RuntimeError):
    """Even the safe option could not run the frame."""


def check_backends(backends: Sequence[str], name: str = "backends") -> tuple[str, ...]:
    """A non-empty list of backends (`deploy.BACKENDS`), as a tuple."""
    if isinstance(backends, (str, bytes)) or not isinstance(backends, Sequence) or not backends:
        raise UserError(f"{name}: expected a non-empty list of {', '.join(BACKENDS)}, got {backends!r:.60}")
    return tuple(validate.choice(b, name, BACKENDS) for b in backends)


def _check_arguments(backends: Sequence[str], threads: Sequence[int] | None, profile_frames: int,
                     system_period_s: float) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """The manager's arguments, checked before any member is built (names as `dynadnn run` spells them)."""
    backends = check_backends(backends)
    if threads is not None:
        threads = validate.thread_counts(threads, "threads")
    validate.count(profile_frames, "profile_frames", low=1, high=100_000)
    validate.number(system_period_s, "system_period_s", low=0.0, low_open=True, high=60.0)
    return backends, threads


class RuntimeManager:
    def __init__(self, source: FamilySource | Family, policy: Policy | str = "feedback", targets: Targets | None = None,
                 *, supernet: SuperNet | None = None, threads: Sequence[int] | None = None,
                 backends: Sequence[str] = BACKENDS,
                 platform: LocalPlatform | None = None, system_period_s: float = 0.1,
                 system_reader: Callable | None = None, profile_frames: int = 40, batch: int = 1,
                 pin_affinity: bool = False,
                 lock_memory: bool = False, record: bool = True, record_cpu: bool = False,
                 progress: Callable[[str], None] | None = None):
        backends, threads = _check_arguments(backends, threads, profile_frames, system_period_s)
        self.batch = validate.count(batch, "batch", low=1, high=MAX_BATCH)  # images per frame: what is profiled
        if isinstance(source, Family):  # in memory: its members on `supernet` (else its checkpoint, loaded)
            source = FamilySource.from_family(source, supernet)
        if not isinstance(source, FamilySource):
            raise UserError(f"source: expected a Family or a FamilySource, got {type(source).__name__}")
        self.source = source.check()  # e.g. a member without BN statistics is refused, not served uncalibrated
        self.platform = platform or LocalPlatform()
        self.threads = threads or tuple(range(1, min(cpu_count(), 4) + 1))
        self.pin_affinity = pin_affinity
        self.memory_locked = False
        self._targets = (targets or Targets()).validate()
        self._events: list[dict[str, Any]] = []
        self.t0 = clock()
        self._closed = False
        say = progress or (lambda msg: None)

        self._torch_threads_before = torch.get_num_threads()
        self.in_channels = source.supernet.space.in_channels
        self._build_options(backends, profile_frames, say)

        # --- monitors and policy ---------------------------------------------------------------------
        self.monitor = LatencyMonitor()
        self.system = SystemMonitor(period_s=system_period_s, n_cpus=self.platform.n_cpus,
                                    on_event=lambda kind, detail: self._log(kind, **detail),
                                    **({"reader": system_reader} if system_reader else {}))
        self.serving = Serving(self.runners, [o.p50_ms for o in self.options], self._switched, self._recover,
                               record=record, record_cpu=record_cpu)
        self.serving.set_targets(self._targets)
        self.serving.set_sample(self.system.sample)
        self.system.on_sample = self.serving.set_sample
        self._sync_knobs()
        self.predict = self.serving.predict  # callers reach the serving path directly (no Python frame)
        if lock_memory:  # after the members are resident: their pages are the ones to keep
            try:
                self.platform.lock_memory()
                self.memory_locked = True
            except OSError as exc:  # an actuator refused: serve anyway, unlocked
                self._log("actuator_failed", knob="lock_memory", error=str(exc))
        self.system.start()
        self.policy: Policy = make_policy(policy) if isinstance(policy, str) else policy
        self.current = self.policy.reset(self.options, self._targets)
        self.serving.set_policy(self.policy, self.monitor)
        self._apply(self.current, initial=True)
        self._log("ready", policy=self.policy.name, options=[o.label() for o in self.options],
                  current=self.options[self.current].label(), targets=self._targets.__dict__)
        self._note_ignored(self._targets)

    def _build_options(self, backends: Sequence[str], profile_frames: int, say: Callable[[str], None]) -> None:
        """Members resident on every backend x thread count, then measured: the options."""
        src = self.source
        candidates = member_runners(
            src.supernet, src.archs, src.bn_stats, self.threads, backends, say,
            on_export_error=lambda i, exc: self._log("export_failed", member=i, error=f"{type(exc).__name__}: {exc}"))
        say("measuring every member on every backend and thread count")
        r = max(a.r for a in src.archs)
        example = torch.randn(self.batch, self.in_channels, r, r)
        self.options, self.runners, report = build_options(candidates, src.top1, src.names, example, n=profile_frames)
        self._log("profiled", measurements=report)
        self.safe = fastest(self.options)
        self.labels = [o.label() for o in self.options]  # formatted once: a switch only looks them up

    # --- targets --------------------------------------------------------------------------------------
    @property
    def targets(self) -> Targets:
        return self._targets

    def set_targets(self, targets: Targets | None = None, **changes) -> Targets:
        """Replace the targets (whole, or some fields); safe from any thread, effective next inference."""
        new = (targets or self._targets).with_(**changes).validate()
        self._targets = new
        self.serving.set_targets(new)
        self._log("targets", **new.__dict__)
        self._note_ignored(new)
        return new

    def _note_ignored(self, targets: Targets) -> None:
        if targets.power_w is not None:
            self._log("target_ignored", field="power_w", reason="no policy models power on this platform yet")

    # --- events ---------------------------------------------------------------------------------------
    def _log(self, kind: str, **detail) -> None:
        self._events.append({"t": clock(), "kind": kind, **detail})

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every decision and fault in time order: the manager's own log plus the serving path's switches."""
        switches = [{"t": t, "kind": "switch", "frm": self.labels[a], "to": self.labels[b], "latency_ms": lat}
                    for t, a, b, lat in self.serving.switches()]  # (which policy: the last "policy" event before)
        return sorted(self._events + switches, key=lambda e: e["t"])

    def _sync_knobs(self) -> None:
        """Tell the serving path which switches need Python: a torch option (threads) or affinity."""
        self.serving.set_knobs([o.backend != "ort" or self.pin_affinity for o in self.options])

    # --- knobs ----------------------------------------------------------------------------------------
    def _apply(self, idx: int, initial: bool = False) -> int:
        """Turn the knobs for option idx; on an actuator failure fall back to the safe option."""
        opt = self.options[idx]
        try:
            if opt.backend == "torch":
                self.platform.set_torch_threads(opt.threads)
            if self.pin_affinity:
                self.platform.set_affinity(self.platform.cpus[:opt.threads])
        except Exception as exc:  # noqa: BLE001 - an actuator must not stop the serving
            self._log("actuator_failed", option=opt.label(), error=f"{type(exc).__name__}: {exc}")
            if self.pin_affinity:
                self.pin_affinity = False
                self._sync_knobs()
                self._log("fallback", reason="affinity disabled after a failure", option=self.options[self.safe].label())
            idx = self.safe
            self.policy.force(idx)
        self.current = idx
        return idx

    # --- serving --------------------------------------------------------------------------------------
    @property
    def current(self) -> int:
        """The option the next inference runs."""
        return self.serving.current

    @current.setter
    def current(self, idx: int) -> None:
        self.serving.current = idx

    def predict(self, x, released_at: float | None = None) -> torch.Tensor:
        """Logits for an image batch (NCHW at any resolution, or a {resolution: batch} mapping): runs the
        current option, measures it, lets the policy decide (`serving.Serving`; instances bind
        `self.predict` to it directly). `released_at` (`time.perf_counter()` seconds): when the frame was
        captured; the latency measured, and held to the deadline, then counts from it (waiting included)."""
        return self.serving.predict(x, released_at)

    def _switched(self, nxt: int, lat: float, t: float) -> int:
        """The policy chose an option with knobs to turn (`_sync_knobs`): turn them; the option now current."""
        return self._apply(nxt)

    def _recover(self, x, idx: int, exc: Exception):
        self._log("inference_failed", option=self.options[idx].label(), error=f"{type(exc).__name__}: {exc}")
        safe = self.safe
        if safe == idx:
            raise InferenceFailed(f"the safe option {self.options[safe].label()} failed: {exc}") from exc
        self._log("fallback", reason="inference failed", option=self.options[safe].label())
        self.policy.force(safe)
        self.current = self._apply(safe)
        try:
            return self.runners[safe](x), safe
        except Exception as exc2:  # noqa: BLE001
            raise InferenceFailed(f"the safe option {self.options[safe].label()} failed too: {exc2}") from exc2

    # --- policy and runs ------------------------------------------------------------------------------
    def set_policy(self, policy: Policy | str) -> Policy:
        """Start a (new) policy from scratch; the next inference follows it."""
        pol = make_policy(policy) if isinstance(policy, str) else policy
        self.policy = pol
        self.monitor = LatencyMonitor()
        self.current = self._apply(pol.reset(self.options, self._targets))
        self.serving.set_policy(pol, self.monitor)
        self._log("policy", policy=pol.name, current=self.options[self.current].label())
        return pol

    @property
    def records(self) -> Records:
        """Per-inference records since the last `reset_records` (a copy when serving natively)."""
        return self.serving.records()

    def reset_records(self) -> None:
        self.serving.reset_records()

    def on_scenario(self, runner) -> None:
        """A scenario started: a policy that knows the schedule (the oracle) is told where to read it."""
        bind = getattr(self.policy, "bind", None)
        if bind is not None:
            bind(runner.phase_at)
            self.current = self._apply(self.policy.reset(self.options, self._targets))
            self.serving.set_policy(self.policy, self.monitor)
        self._log("scenario", name=runner.scenario.name, duration_s=runner.duration_s)

    # --- reports --------------------------------------------------------------------------------------
    def decision_us(self) -> np.ndarray:
        return np.asarray(self.records.decision_us)

    def describe(self) -> dict:
        return {"policy": self.policy.describe(), "targets": self._targets.__dict__,
                "options": [o.__dict__ | {"label": o.label()} for o in self.options],
                "members": [{"name": n, "arch": a.to_dict(), "top1": t} for n, a, t in
                            zip(self.source.names, self.source.archs, self.source.top1)],
                "origin": self.source.origin, "platform": self.platform.describe()}

    # --- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.system.stop()
        for rn in self.runners:
            close = getattr(rn, "close", None)
            if close is not None:
                close()
        if self.pin_affinity:
            self.platform.restore_affinity()
        if self.memory_locked:
            self.platform.unlock_memory()
        torch.set_num_threads(self._torch_threads_before)
        self._log("closed")

    def __enter__(self) -> "RuntimeManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
