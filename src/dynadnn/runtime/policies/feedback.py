"""`feedback` (ours): predict every option's tail latency in the current conditions and jump straight to
the most accurate one that meets the deadline with a margin. (A minimum-accuracy target cannot make it
pick an option predicted to miss: when both cannot hold, the deadline wins.)

Model. Per thread-count context we keep a window of slowdown ratios, measured latency / the profiled
idle median of the option that ran. Contention does two things to a latency: it stretches the whole run
(cache and memory-bandwidth interference, a smaller CPU share: multiplicative) and it adds preemption
delays of a few scheduler slices whatever the network (additive). So the prediction for option `o` is

    p95(o) = p50(o) x m + e,   m = median ratio,   e = (p95 ratio - m) x p50(current)   [ms]

which gives exactly the measured p95 for the option running now, scales the body of the distribution for
the others and carries the same absolute tail. A context we have not run recently borrows the active
context's m and e, times `sync_penalty` when its threads exceed the CPUs the system monitor says are free
(a parallel op waits for its slowest thread: 2 threads beside one busy competitor raise the median 2.5-3x
here). Before `min_samples` measurements the idle profile (median p95/p50 of the context) stands in.

Control. Downward moves (the current option's prediction no longer fits) happen at once and straight to
the option that fits: a miss costs more than a frame at lower accuracy. Upward moves need a better option
to fit with extra hysteresis for `dwell_s` continuously and at least `min_dwell_s` after the last switch,
so a noisy window cannot make it oscillate. When slack persists for `probe_s` (current p95 below
`probe_slack` x deadline) but the model still forbids going up, it probes one step up; a probe that misses
backs off the next probe twice as long.

Cost. Per inference: one sorted-window insert, two indexed reads and a few comparisons against thresholds
prepared at the last switch; the search over all options runs only when a threshold trips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ...errors import UserError
from .. import native
from ..monitors import SortedWindow
from ..options import Option, SystemSample, Targets, by_accuracy, fastest
from .base import Policy

Model = tuple  # (m, e_ms, factor) per context


@dataclass(frozen=True)
class FeedbackParams:
    """The feedback law's parameters: the one record both implementations are built from (the Python
    policy copies it onto itself at `reset`; the C core reads each field from it by name, and
    `_native.FEEDBACK_PARAMS` lists the names it reads). The defaults live here and nowhere else."""

    margin: float = 0.10         # deadline / (1 + margin) is the budget a prediction must meet
    up_hysteresis: float = 0.05  # extra margin for an upward move
    window: int = 40             # slowdown ratios kept per thread-count context
    min_samples: int = 8         # before this many, the idle profile stands in for the window
    stale_s: float = 2.0         # another context's own window counts for this long after it last ran
    dwell_s: float = 0.3         # an upward move must fit continuously for this long ...
    min_dwell_s: float = 0.2     # ... and at least this long after the last switch
    probe_s: float = 1.5         # persistent slack this long (doubling after a missed probe): probe up
    probe_slack: float = 0.5     # slack = current p95 below probe_slack x deadline
    sync_penalty: float = 3.0    # a context with more threads than free CPUs: its prediction x this

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if type(f.default) is int and (type(v) is not int or v < 1):
                raise UserError(f"feedback: {f.name} must be an integer >= 1, got {v!r}")
            if type(f.default) is float and (type(v) not in (int, float) or not v >= 0):
                raise UserError(f"feedback: {f.name} must be a number >= 0, got {v!r}")

    def with_(self, **changes) -> "FeedbackParams":
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise UserError(f"feedback: unknown parameter(s) {', '.join(unknown)}: expected "
                            f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)


class FeedbackPolicy(Policy):
    name = "feedback"
    implementation = "python"  # the reference; `NativeFeedbackPolicy` runs the same law in C

    def __init__(self, params: FeedbackParams | None = None, **changes):
        """`FeedbackPolicy(FeedbackParams(...))`, or keyword changes to the defaults (`probe_s=0.5`)."""
        super().__init__()
        self.params = (params or FeedbackParams()).with_(**changes)
        self.__dict__.update(asdict(self.params))

    def reset(self, options: tuple[Option, ...], targets: Targets, start: int | None = None) -> int:
        self.__dict__.update(asdict(self.params))  # the record is the source: re-read at every reset
        self.options = tuple(options)
        self.order = by_accuracy(self.options)
        self.rank = {opt: r for r, opt in enumerate(self.order)}  # 0 = most accurate
        self.threads = sorted({o.threads for o in self.options})
        self.ratios = {t: SortedWindow(self.window) for t in self.threads}
        self.last_seen = {t: -1e18 for t in self.threads}
        self.ref_p50 = {t: 1.0 for t in self.threads}  # p50 of the option whose ratios the window holds
        self.idle_tail = {}
        for t in self.threads:  # profiled p95/p50 of the context (median over its options)
            tails = sorted(o.p95_ms / o.p50_ms for o in self.options if o.threads == t and o.p50_ms > 0)
            self.idle_tail[t] = tails[len(tails) // 2] if tails else 1.0
        self._p50 = [self.options[i].p50_ms for i in self.order]
        self._thr = [self.options[i].threads for i in self.order]
        self._thr_of = [o.threads for o in self.options]
        self._inv_p50 = [1.0 / o.p50_ms if o.p50_ms > 0 else 0.0 for o in self.options]
        self.last_switch_t = -1e18
        self.up_since: float | None = None
        self.slack_since: float | None = None
        self.probe_wait = self.probe_s
        self.probing = False
        self.current = self.initial(targets) if start is None else start
        self._prepare(targets)
        return self.current

    def initial(self, targets: Targets) -> int:
        """Before any measurement: the idle profile decides."""
        budget = targets.effective_deadline_ms() / (1.0 + self.margin)
        for i in self.order:
            if self.options[i].p95_ms <= budget:
                return i
        return fastest(self.options)

    # --- model -----------------------------------------------------------------------------------------
    def _own(self, th: int) -> tuple[float, float]:
        """(median ratio m, tail excess e in ms) from a context's own window, or the idle profile."""
        w = self.ratios[th]
        n = w.count
        if n < self.min_samples:
            return 1.0, (self.idle_tail[th] - 1.0) * self.ref_p50[th]
        m = w.ordered[n // 2]
        return m, (w.ordered[int(0.95 * n)] - m) * self.ref_p50[th]

    def models(self, t: float, system: SystemSample | None) -> dict[int, Model]:
        """Per context: (m, e, factor) so that p95(o) = (p50(o) x m + e) x factor."""
        active = self._active
        m_a, e_a = self._own(active)
        out = {active: (m_a, e_a, 1.0)}
        for th in self.threads:
            if th == active:
                continue
            if self.ratios[th].count >= self.min_samples and t - self.last_seen[th] <= self.stale_s:
                m, e = self._own(th)
                out[th] = (m, e, 1.0)
            else:
                out[th] = (m_a, e_a, self._penalty(th, system))
        return out

    def _penalty(self, th: int, system: SystemSample | None) -> float:
        if th <= 1:
            return 1.0
        free = (system.n_cpus - system.others_busy) if (system is not None and system.ok) else None
        return self.sync_penalty if free is None or th > free + 0.25 else 1.0

    def predicted_p95(self, option: int, models: dict[int, Model]) -> float:
        o = self.options[option]
        m, e, f = models[o.threads]
        return (o.p50_ms * m + e) * f

    def _first_fitting(self, models: dict[int, Model], budget: float, upto: int) -> int:
        """Rank (accuracy order) of the most accurate option predicted to fit `budget` among the first
        `upto` ranks; -1 if none."""
        p50, thr = self._p50, self._thr
        for r in range(upto):
            m, e, f = models[thr[r]]
            if (p50[r] * m + e) * f <= budget:
                return r
        return -1

    # --- control ---------------------------------------------------------------------------------------
    def _prepare(self, targets: Targets) -> None:
        """Budgets and, per context, the smallest profiled median among the more accurate options, so
        the per-inference path is a few comparisons."""
        self._tg = targets
        self._hold_p, self._hold_until = 0.0, -1e18
        deadline = targets.effective_deadline_ms()
        self._deadline = deadline
        self._budget = deadline / (1.0 + self.margin)
        self._up_budget = deadline / (1.0 + self.margin + self.up_hysteresis)
        cur = self.options[self.current]
        self._active = cur.threads
        self._p50_cur = cur.p50_ms
        better = self.order[:self.rank[self.current]]
        self._better_min_p50 = {}
        for th in self.threads:
            p50s = [self.options[i].p50_ms for i in better if self.options[i].threads == th]
            if p50s:
                self._better_min_p50[th] = min(p50s)

    def step(self, t: float, latency_ms: float, option: int, targets: Targets,
             system: SystemSample | None = None) -> int:
        th = self._thr_of[option]
        w = self.ratios[th]
        w.push(latency_ms * self._inv_p50[option])
        self.ref_p50[th] = self.options[option].p50_ms
        self.last_seen[th] = t
        if targets is not self._tg or option != self.current:
            self.current = option  # (the manager ran something else: a fall-back)
            self._prepare(targets)
        if self.probing and latency_ms > self._deadline:  # a probe that misses: back off, go down at once
            self.probing = False
            self.probe_wait *= 2.0
        n = w.count
        p50c = self._p50_cur
        if n >= self.min_samples:
            m = w.ordered[n // 2]
            pred = w.ordered[int(0.95 * n)] * p50c
        else:
            m = 1.0
            pred = self.idle_tail[th] * p50c
        e = pred - m * p50c
        if pred > self._budget:
            if pred > self._hold_p or t >= self._hold_until:
                return self._go_down(t, pred, system)
            return self.current  # nothing faster fitted a moment ago at about this latency

        # upward: a more accurate option fits with hysteresis -> after a dwell
        up_ok = False
        for uth, p50b in self._better_min_p50.items():
            if uth == th:
                ok = p50b * m + e <= self._up_budget
            else:
                ok = self.predicted_min(uth, p50b, t, m, e, system) <= self._up_budget
            if ok:
                up_ok = True
                break
        if up_ok:
            if self.up_since is None:
                self.up_since = t
            if t - self.up_since >= self.dwell_s and t - self.last_switch_t >= self.min_dwell_s:
                r = self._first_fitting(self.models(t, system), self._up_budget, self.rank[self.current])
                if r >= 0:
                    self.probe_wait = self.probe_s
                    return self._switch(self.order[r], t, targets)
            return self.current
        self.up_since = None

        # probing: slack persists but the model forbids going up
        if pred <= self.probe_slack * self._deadline and self.rank[self.current] > 0:
            if self.slack_since is None:
                self.slack_since = t
            elif t - self.slack_since >= self.probe_wait and t - self.last_switch_t >= self.min_dwell_s:
                nxt = self.order[self.rank[self.current] - 1]
                if self.predicted_p95(nxt, self.models(t, system)) <= self._deadline:
                    self.probing = True
                    return self._switch(nxt, t, targets)
        else:
            self.slack_since = None
        return self.current

    def predicted_min(self, th: int, p50: float, t: float, m: float, e: float, system: SystemSample | None) -> float:
        """Predicted p95 of a profiled median `p50` in another context `th`."""
        if self.ratios[th].count >= self.min_samples and t - self.last_seen[th] <= self.stale_s:
            m2, e2 = self._own(th)
            return p50 * m2 + e2
        return (p50 * m + e) * self._penalty(th, system)

    def _go_down(self, t: float, pred: float, system: SystemSample | None) -> int:
        models = self.models(t, system)
        r = self._first_fitting(models, self._budget, len(self.order))
        choice = self.order[r] if r >= 0 else min(range(len(self.options)),
                                                 key=lambda i: self.predicted_p95(i, models))
        if choice != self.current:
            return self._switch(choice, t, self._tg)
        # already on the best we have: search again only if it gets 10 % worse or after 0.1 s
        self._hold_p, self._hold_until = pred * 1.1, t + 0.1
        return self.current

    def _switch(self, option: int, t: float, targets: Targets) -> int:
        self.current = option
        self.last_switch_t = t
        self.up_since = None
        self.slack_since = None
        self._prepare(targets)
        return option

    def force(self, option: int) -> None:
        self.current = option
        self.up_since = None
        self.slack_since = None
        self._prepare(self._tg)

    def describe(self) -> dict:
        return {"policy": self.name, "implementation": self.implementation, **asdict(self.params),
                "model": "p95 = p50 x median ratio + tail excess"}


def _state(name: str) -> property:
    """A piece of control state: read from the C core once it exists, else kept on the instance (the
    reference `reset` writes it before the core is built)."""

    def get(self):
        core = self.__dict__.get("core")
        return getattr(core, name) if core is not None else self.__dict__["_" + name]

    def put(self, value) -> None:
        self.__dict__["_" + name] = value

    return property(get, put)


class NativeFeedbackPolicy(FeedbackPolicy):
    """`FeedbackPolicy` with `step` and `force` in C (`_native.FeedbackCore`), which mirrors the Python
    statement by statement. `reset` (rare) stays Python; it builds the core from what it prepared. After
    that, `step` is the core's own method, and the native serving path (`serving.NativeServing`) calls
    the core without going through Python at all."""

    implementation = "native"
    current = _state("current")
    probe_wait = _state("probe_wait")
    probing = _state("probing")

    def __init__(self, params: FeedbackParams | None = None, **changes):
        if native.core is None:
            raise RuntimeError(f"NativeFeedbackPolicy: the C path is not in use: {native.describe()}")
        super().__init__(params, **changes)

    def reset(self, options: tuple[Option, ...], targets: Targets, start: int | None = None) -> int:
        self.__dict__.pop("step", None)
        self.__dict__.pop("force", None)
        self.core = None
        cur = super().reset(options, targets, start)
        ctx = {th: k for k, th in enumerate(self.threads)}
        self.core = native.core.FeedbackCore(
            p50=[o.p50_ms for o in self.options], ctx_of=[ctx[o.threads] for o in self.options],
            ctx_threads=self.threads, order=self.order, idle_tail=[self.idle_tail[t] for t in self.threads],
            params=self.params, current=cur, targets=targets)
        self.step = self.core.step  # type: ignore[method-assign]
        self.force = self.core.force  # type: ignore[method-assign]
        return cur
