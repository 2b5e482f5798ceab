"""`feedback` (ours): stay on the most accurate option while its predicted miss rate is within the budget;
step down only when the current option's misses show, with confidence, a rate above the budget; climb back
when a more accurate option's predicted miss rate falls back within it.

Model. Per thread-count context we keep a window of slowdown ratios, measured latency / the profiled
idle median of the option that ran. Contention does two things to a latency: it stretches the whole run
(cache and memory-bandwidth interference, a smaller CPU share: multiplicative) and it adds preemption
delays of a few scheduler slices whatever the network (additive). So each ratio r of the window, measured
on an option of median `ref`, predicts for option `o`

    latency(o) = p50(o) x m + (r - m) x ref,   m = median ratio          [ms]

which is exactly the measured latency for the option running now, scales the body of the distribution for
the others and carries the same absolute tail. When another option starts running in a context, its window
is re-expressed in that option's terms by the same model (`_rebase`), so its own misses are counted in ms
it would actually wait. An option's predicted miss count at a limit is the number
of window ratios whose prediction exceeds it (one bisect of the sorted window). A context we have not run
recently borrows the active context's window, times `sync_penalty` when its threads exceed the CPUs the
system monitor says are free (a parallel op waits for its slowest thread: 2 threads beside one busy
competitor raise the median 2.5-3x here). Before `min_samples` measurements the idle profile (median
p95/p50 of the context) stands in: an option fits when that p95 does.

The rule (budget q = `miss_budget`, the fraction of frames allowed late). With n ratios in the window:
- down: the current option's misses at the deadline reach k_down(n), the smallest k with
  P(Binomial(n, q) >= k) <= 1 - `miss_confidence` (n = 40, q = 1 %, 95 %: 3 misses; one or two isolated
  spikes never trip it, a sustained slowdown trips it within 3 frames). It then goes at once, straight to
  the most accurate option predicted under k_down(n) misses at deadline / (1 + `margin`) (nothing fits:
  the one with the smallest predicted p95);
- up: a more accurate option predicted within the budget with hysteresis, under k_down(n) - 1 misses (at
  least one miss short of a breach; none before the window holds a breach's worth) at the tighter deadline
  / (1 + `margin` + `up_hysteresis`), for `dwell_s` continuously and at least `min_dwell_s` after the last
  switch; so a noisy window cannot make it oscillate. A waiting time does not scale with a member's
  median the way the model assumes (a queue forms once a member's duty cycle exceeds the CPU share the app
  gets), so an upward move can fail: a step down within `up_fail_s` of it doubles the dwell the next upward
  move needs (up to `backoff_max_s`); any other step down resets it to `dwell_s`;
- verify: a step down must show its gain. After 3 x `window` frames on the new option, if it missed more than
  half as often per frame as the option it left did when it left (the first of a cascade of steps down), the
  steps are undone (back to that more accurate option) and steps down not forced by a sustained run of misses wait `down_block_s` (doubling
  up to `backoff_max_s` while steps keep failing); a step that shows its gain resets that;
- probe: when slack persists for `probe_s` (current p95 below `probe_slack` x deadline) but the model still
  forbids going up, it probes one step up; a probe that misses backs off the next probe twice as long.

Cost. Per inference: one sorted-window insert, one bisect, two indexed reads and one bisect per context
with a more accurate option; the search over all options runs only when a threshold trips.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, dataclass, fields, replace

from ...errors import UserError
from ...validate import count, number
from .. import native
from ..monitors import SortedWindow
from ..options import Option, SystemSample, Targets, by_accuracy, fastest
from .base import Policy

Model = tuple  # (m, e_ms, factor, window or None, ref_p50) per context
INF = float("inf")
INT_MAX = 2**31 - 1  # the C core keeps the integer fields in a C int
VERIFY_WINDOWS = 3  # a step down is judged on this many windows' worth of frames (fewer: a coin flip at a few %)


def miss_allowances(n_max: int, q: float, confidence: float) -> tuple[list[int], list[int]]:
    """Per window count n = 0..n_max: (k_down(n), max(1, k_down(n) - 1)), the miss counts from which the
    current option is over budget with `confidence`, and below which an option may be climbed to.
    k_down(n) is the smallest k with P(Binomial(n, q) >= k) <= 1 - confidence (n + 1: never). The C core
    computes the same tables with the same operations in the same order."""
    alpha = 1.0 - confidence
    down, up = [], []
    for n in range(n_max + 1):
        p = 1.0
        for _ in range(n):
            p *= 1.0 - q  # P(K = 0)
        tail, k = 1.0, 0  # tail = P(K >= k)
        while k <= n and tail > alpha:
            tail -= p
            p *= (n - k) / (k + 1) * q / (1.0 - q)
            k += 1
        down.append(k)
        up.append(max(1, k - 1))
    return down, up


@dataclass(frozen=True)
class FeedbackParams:
    """The feedback law's parameters: the one record both implementations are built from (the Python
    policy copies it onto itself at `reset`; the C core reads each field from it by name, and
    `_native.FEEDBACK_PARAMS` lists the names it reads). The defaults live here and nowhere else."""

    miss_budget: float = 0.01    # the fraction of frames allowed late
    miss_confidence: float = 0.95  # step down when the misses show a rate above the budget this surely
    margin: float = 0.10         # deadline / (1 + margin): where an option not yet run must fit
    up_hysteresis: float = 0.05  # extra margin for an upward move
    window: int = 40             # slowdown ratios kept per thread-count context
    min_samples: int = 8         # before this many, the idle profile stands in for the window
    stale_s: float = 2.0         # another context's own window counts for this long after it last ran
    dwell_s: float = 0.3         # an upward move must fit continuously for this long ...
    min_dwell_s: float = 0.2     # ... and at least this long after the last switch
    probe_s: float = 1.5         # persistent slack this long (doubling after a missed probe): probe up
    probe_slack: float = 0.5     # slack = current p95 below probe_slack x deadline
    sync_penalty: float = 3.0    # a context with more threads than free CPUs: its prediction x this
    up_fail_s: float = 1.0       # a step down this soon after an upward move: that move failed, and ...
    backoff_max_s: float = 8.0   # ... the next one waits twice as long (dwell_s doubling up to this)
    down_block_s: float = 2.0    # a step down that shows no gain is undone, and steps down wait this long (doubling)

    def __post_init__(self) -> None:
        """The ranges the C core accepts (`_native.c` read_params: integers 1..INT_MAX, 0 <= miss_budget < 1,
        0 < miss_confidence < 1), every other number finite and >= 0."""
        for f in fields(self):
            v, name = getattr(self, f.name), f"feedback: {f.name}"
            if type(f.default) is int:
                object.__setattr__(self, f.name, count(v, name, low=1, high=INT_MAX))  # 40.0 -> 40, as C reads it
            elif f.name == "miss_budget":
                number(v, name, low=0.0, high=1.0, high_open=True)
            elif f.name == "miss_confidence":
                number(v, name, low=0.0, low_open=True, high=1.0, high_open=True)
            else:
                number(v, name, low=0.0)

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

    def reset(self, options: tuple[Option, ...], targets: Targets, start: int | None = None) -> int:
        self.__dict__.update(asdict(self.params))  # the record is the source: re-read at every reset
        self.options = tuple(options)
        self.order = by_accuracy(self.options)
        self.rank = {opt: r for r, opt in enumerate(self.order)}  # 0 = most accurate
        self.threads = sorted({o.threads for o in self.options})
        self.ratios = {t: SortedWindow(self.window) for t in self.threads}
        self.win_opt = {t: -1 for t in self.threads}  # the option whose ratios a context's window holds
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
        self._down_k, self._up_k = miss_allowances(self.window, self.miss_budget, self.miss_confidence)
        self.last_switch_t = -1e18
        self.up_since: float | None = None
        self.slack_since: float | None = None
        self.probe_wait = self.probe_s
        self.up_wait = self.dwell_s
        self.last_up_t = -1e18
        self.verify_opt, self.verify_rate = -1, 0.0  # the option a step down left, its misses per frame then
        self.block_until, self.down_block = -1e18, self.down_block_s
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

    def _src(self, th: int) -> tuple:
        """(window, ref p50) whose ratios predict misses for context `th`, or (None, 1.0) before min_samples."""
        w = self.ratios[th]
        return (w, self.ref_p50[th]) if w.count >= self.min_samples else (None, 1.0)

    def models(self, t: float, system: SystemSample | None) -> dict[int, Model]:
        """Per context: (m, e, factor, window, ref) so that p95(o) = (p50(o) x m + e) x factor and each
        ratio r of the window predicts (p50(o) x m + (r - m) x ref) x factor."""
        active = self._active
        m_a, e_a = self._own(active)
        src_a = self._src(active)
        out = {active: (m_a, e_a, 1.0, *src_a)}
        for th in self.threads:
            if th == active:
                continue
            if self.ratios[th].count >= self.min_samples and t - self.last_seen[th] <= self.stale_s:
                m, e = self._own(th)
                out[th] = (m, e, 1.0, *self._src(th))
            else:
                out[th] = (m_a, e_a, self._penalty(th, system), *src_a)
        return out

    @staticmethod
    def _fits(model: Model, p50: float, limit: float, allow: list[int]) -> bool:
        """Is an option of median `p50` predicted to exceed `limit` ms on fewer than allow[n] of the n
        window ratios? (No window yet: does its idle-profile p95 fit?)"""
        m, e, f, w, ref = model
        if w is None:
            return (p50 * m + e) * f <= limit
        return FeedbackPolicy._misses(model, p50, limit) < allow[w.count]

    @staticmethod
    def _misses(model: Model, p50: float, limit: float) -> int:
        """How many of the window's ratios predict an option of median `p50` over `limit` ms (a window is there)."""
        m, e, f, w, ref = model
        lim = limit / f if f > 0.0 else INF
        if ref <= 0.0:
            ref = 1.0
        return w.count - bisect_right(w.ordered, m + (lim - p50 * m) / ref)

    def _rebase(self, w: SortedWindow, prev: int, option: int) -> None:
        """Ratios measured on option `prev`, re-expressed for `option` by the model (the median scales, the
        excess over it is the same in ms): r -> m + (r - m) x p50(prev) / p50(option), monotone, so the
        window stays sorted. Predictions for every option are unchanged by it; what changes is that the
        current option's misses (`late`) are counted in its own terms: a wait that made a small member
        late is not taken, multiplied by the larger member's median, for a miss of the larger one."""
        p_new = self.options[option].p50_ms
        if prev < 0 or not w.count or p_new <= 0.0:
            return
        m, k = w.ordered[w.count // 2], self.options[prev].p50_ms / p_new
        n = w.count
        w.values[:n] = [m + (v - m) * k for v in w.values[:n]]  # the first `count` ring slots are the valid ones
        w.ordered[:] = [m + (v - m) * k for v in w.ordered]

    def _penalty(self, th: int, system: SystemSample | None) -> float:
        if th <= 1:
            return 1.0
        free = (system.n_cpus - system.others_busy) if (system is not None and system.ok) else None
        return self.sync_penalty if free is None or th > free + 0.25 else 1.0

    def predicted_p95(self, option: int, models: dict[int, Model]) -> float:
        o = self.options[option]
        m, e, f = models[o.threads][:3]
        return (o.p50_ms * m + e) * f

    def _first_fitting(self, models: dict[int, Model], limit: float, allow: list[int], upto: int) -> int:
        """Rank (accuracy order) of the most accurate option predicted to fit `limit` (`_fits`) among the
        first `upto` ranks; -1 if none."""
        p50, thr, fits = self._p50, self._thr, self._fits
        for r in range(upto):
            if fits(models[thr[r]], p50[r], limit, allow):
                return r
        return -1

    # --- control ---------------------------------------------------------------------------------------
    def _prepare(self, targets: Targets) -> None:
        """Budgets and, per context, the smallest profiled median among the more accurate options, so
        the per-inference path is a few comparisons."""
        self._tg = targets
        self._hold_k, self._hold_until = 0, -1e18
        self._late_run = 0  # the current option's latest frames in a row over the deadline
        self._since = self._since_late = 0  # frames since the last switch (or target change), and those late
        deadline = targets.effective_deadline_ms()
        self._deadline = deadline
        self._budget = deadline / (1.0 + self.margin)
        self._up_budget = deadline / (1.0 + self.margin + self.up_hysteresis)
        cur = self.options[self.current]
        self._active = cur.threads
        self._p50_cur = cur.p50_ms
        self._late_ratio = deadline / cur.p50_ms if cur.p50_ms > 0 else INF  # a ratio above: a miss
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
        if self.win_opt[th] != option:  # another option: the window's ratios re-expressed in its terms
            self._rebase(w, self.win_opt[th], option)
            self.win_opt[th] = option
        w.push(latency_ms * self._inv_p50[option])
        self.ref_p50[th] = self.options[option].p50_ms
        self.last_seen[th] = t
        if targets is not self._tg or option != self.current:
            self.current = option  # (the manager ran something else: a fall-back)
            self._prepare(targets)
        self._late_run = self._late_run + 1 if latency_ms > self._deadline else 0
        if self.probing and latency_ms > self._deadline:  # a probe that misses: back off, go down at once
            self.probing = False
            self.probe_wait *= 2.0
        n = w.count
        p50c = self._p50_cur
        if n >= self.min_samples:
            m = w.ordered[n // 2]
            pred = w.ordered[int(0.95 * n)] * p50c
            late = n - bisect_right(w.ordered, self._late_ratio)  # the current option's misses in the window
            down = late >= self._down_k[n]
        else:
            m = 1.0
            pred = self.idle_tail[th] * p50c
            late = 0
            down = pred > self._budget
        self._since += 1
        self._since_late += latency_ms > self._deadline
        if self.verify_opt >= 0 and self._since >= VERIFY_WINDOWS * self.window:
            undo = self._verify(t)
            if undo >= 0:
                return self._switch(undo, t, targets)
        if down:
            if late > self._hold_k or t >= self._hold_until:
                return self._go_down(t, late, system)
            return self.current  # nothing better fitted a moment ago with as many misses
        e = pred - m * p50c
        model = (m, e, 1.0, w if n >= self.min_samples else None, self.ref_p50[th])
        if self._up_fits(th, model, t, system):  # upward: a more accurate option fits -> after a dwell
            if self.up_since is None:
                self.up_since = t
            if t - self.up_since >= self.up_wait and t - self.last_switch_t >= self.min_dwell_s:
                r = self._first_fitting(self.models(t, system), self._up_budget, self._up_k, self.rank[self.current])
                if r >= 0:
                    self.probe_wait = self.probe_s
                    self.last_up_t = t
                    self.verify_opt = -1
                    return self._switch(self.order[r], t, targets)
            return self.current
        self.up_since = None
        return self._probe(t, pred, targets, system)

    def _probe(self, t: float, pred: float, targets: Targets, system: SystemSample | None) -> int:
        """Slack persists (current p95 `pred` well under the deadline) but the model forbids going up: one
        step up, when it may."""
        if pred <= self.probe_slack * self._deadline and self.rank[self.current] > 0:
            if self.slack_since is None:
                self.slack_since = t
            elif t - self.slack_since >= self.probe_wait and t - self.last_switch_t >= self.min_dwell_s:
                nxt = self.order[self.rank[self.current] - 1]
                if self.predicted_p95(nxt, self.models(t, system)) <= self._deadline:
                    self.probing = True
                    self.verify_opt = -1
                    return self._switch(nxt, t, targets)
        else:
            self.slack_since = None
        return self.current

    def _verify(self, t: float) -> int:
        """A step down shows its gain (under half the misses per frame of the option it left), or is undone:
        the option to go back to (steps down then held, doubling), else -1."""
        prev, self.verify_opt = self.verify_opt, -1
        if 2 * self._since_late >= self.verify_rate * self._since:
            self.block_until = t + self.down_block
            self.down_block = min(2.0 * self.down_block, self.backoff_max_s)
            return prev
        self.down_block = self.down_block_s
        return -1

    def _up_fits(self, th: int, model: Model, t: float, system: SystemSample | None) -> bool:
        """Does the fastest more accurate option of some context fit the upward limit? `model` is the
        running context's."""
        for uth, p50b in self._better_min_p50.items():
            if uth != th:
                if self.ratios[uth].count >= self.min_samples and t - self.last_seen[uth] <= self.stale_s:
                    model_u = (*self._own(uth), 1.0, *self._src(uth))
                else:
                    model_u = (model[0], model[1], self._penalty(uth, system), model[3], model[4])
            else:
                model_u = model
            if self._fits(model_u, p50b, self._up_budget, self._up_k):
                return True
        return False

    def _go_down(self, t: float, late: int, system: SystemSample | None) -> int:
        """The most accurate option predicted within the budget. If none is: under a sustained slowdown (the
        latest frames in a row are a breach by themselves) the option predicted fastest; under scattered misses,
        the one predicted to miss least (the most accurate of those), and only if it at least halves the
        current option's misses: accuracy is traded only for a real gain (a preemption delay of a few ms
        late-frames a sub-millisecond member and its smaller siblings alike)."""
        n = self.ratios[self._active].count
        if t < self.block_until and self._late_run < self._down_k[n]:  # a step down just failed: hold
            self._hold_k, self._hold_until = late, t + 0.1
            return self.current
        models = self.models(t, system)
        r = self._first_fitting(models, self._budget, self._down_k, len(self.order))
        if r >= 0:
            choice = self.order[r]
        elif models[self._active][3] is None or self._late_run >= self._down_k[n]:
            # no window yet, or a sustained slowdown (the latest frames in a row are a breach by themselves):
            # the option predicted fastest
            choice = min(range(len(self.options)), key=lambda i: self.predicted_p95(i, models))
        else:  # scattered misses
            choice, best = self.current, late // 2 + 1
            for r in range(len(self.order)):
                k = self._misses(models[self._thr[r]], self._p50[r], self._deadline)
                if k < best:
                    choice, best = self.order[r], k
        if choice != self.current:  # right after an upward move, that move failed: the next waits twice as long
            self.up_wait = min(2.0 * self.up_wait, self.backoff_max_s) if t - self.last_up_t <= self.up_fail_s \
                else self.dwell_s
            # measured misses (a window): verify the step against the option the first step of a cascade left;
            # from the idle profile there is nothing to compare with
            if self.verify_opt < 0:
                self.verify_opt, self.verify_rate = (self.current, late / n) if n >= self.min_samples else (-1, 0.0)
            return self._switch(choice, t, self._tg)
        # already on the best we have: search again only after one more miss or after 0.1 s
        self._hold_k, self._hold_until = late, t + 0.1
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
                "model": "latency = p50 x median ratio + tail excess; down at a confident miss rate above miss_budget"}


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
    up_wait = _state("up_wait")
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
