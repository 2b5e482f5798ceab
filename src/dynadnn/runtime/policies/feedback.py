"""`feedback` (ours): predict every option's tail latency in the current conditions and jump straight to
the most accurate one that meets the deadline with a margin. (A minimum-accuracy target cannot make it
pick an option predicted to miss: when both cannot hold, the deadline wins and the manager logs it.)

Model. For each thread-count context we keep a window of slowdown ratios, measured latency / the option's
profiled idle median, and take its p95 as the context's tail slowdown `s95`; an option's predicted p95 is
its profiled median x `s95` of its context. Ratios normalise away which member produced them, so one
window serves every member of a context and the prediction for a member we are not running is live.
A context we have not run recently borrows the active context's `s95`, multiplied by `sync_penalty` when
its threads exceed the CPUs the system monitor says are free (a parallel op waits for its slowest thread:
measured here, 2 threads with one busy competitor raise the median 2.5-3x).

Control. Downward moves (the current option's prediction no longer fits) happen at once: a miss costs
more than a frame at lower accuracy. Upward moves need the better option to fit with extra hysteresis for
`dwell_s` continuously and at least `min_dwell_s` since the last switch, so a noisy window cannot make it
oscillate. When slack persists for `probe_s` (current p95 below `probe_slack` x deadline) but the model
still forbids going up, it probes one step up; a probe that misses backs off the next probe twice as long.
"""

from __future__ import annotations

from ..monitors import SortedWindow
from ..options import Option, SystemSample, Targets, by_accuracy, fastest
from .base import Policy


class FeedbackPolicy(Policy):
    name = "feedback"

    def __init__(self, margin: float = 0.15, up_hysteresis: float = 0.10, window: int = 40,
                 min_samples: int = 8, stale_s: float = 2.0, dwell_s: float = 0.3, min_dwell_s: float = 0.2,
                 probe_s: float = 3.0, probe_slack: float = 0.5, sync_penalty: float = 3.0):
        super().__init__()
        self.margin, self.up_hysteresis = margin, up_hysteresis
        self.window_size, self.min_samples, self.stale_s = window, min_samples, stale_s
        self.dwell_s, self.min_dwell_s = dwell_s, min_dwell_s
        self.probe_s, self.probe_slack, self.sync_penalty = probe_s, probe_slack, sync_penalty

    def reset(self, options: tuple[Option, ...], targets: Targets, start: int | None = None) -> int:
        self.options = tuple(options)
        self.order = by_accuracy(self.options)
        self.rank = {opt: r for r, opt in enumerate(self.order)}  # 0 = most accurate
        self.threads = sorted({o.threads for o in self.options})
        self.ratios = {t: SortedWindow(self.window_size) for t in self.threads}
        self.last_seen = {t: -1e18 for t in self.threads}
        self.idle_tail = {t: 1.0 for t in self.threads}
        for t in self.threads:  # profiled p95/p50 of the context: the tail ratio of an idle machine
            opts = [o for o in self.options if o.threads == t]
            self.idle_tail[t] = max(o.p95_ms / o.p50_ms for o in opts if o.p50_ms > 0)
        # flat per-option arrays in accuracy order: the hot loop reads these, nothing else
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
        self._active = self.options[self.current].threads
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
    def tail_slowdowns(self, t: float, active: int, system: SystemSample | None) -> dict[int, float]:
        """Predicted p95 / profiled p50 for every context at time t."""
        w = self.ratios[active]
        s_active = max(w.quantile(0.95), self.idle_tail[active]) if w.count >= self.min_samples else self.idle_tail[active]
        return {th: s_active if th == active else self._estimate(th, t, s_active, system) for th in self.threads}

    def predicted_p95(self, option: int, slow: dict[int, float]) -> float:
        o = self.options[option]
        return o.p50_ms * slow[o.threads]

    def _first_fitting(self, slow: dict[int, float], budget: float, upto: int) -> int:
        """Rank (in accuracy order) of the most accurate option predicted to fit `budget`, among the first
        `upto` ranks; -1 if none."""
        p50, thr = self._p50, self._thr
        for r in range(upto):
            if p50[r] * slow[thr[r]] <= budget:
                return r
        return -1

    # --- control ---------------------------------------------------------------------------------------
    def _prepare(self, targets: Targets) -> None:
        """Thresholds on the active context's tail slowdown for the current option and targets, so the
        per-inference path is a few comparisons; the full search over options runs only when one trips."""
        self._tg = targets
        self._hold_s, self._hold_until = 0.0, -1e18
        deadline = targets.effective_deadline_ms()
        self._deadline = deadline
        self._budget = deadline / (1.0 + self.margin)
        self._up_budget = deadline / (1.0 + self.margin + self.up_hysteresis)
        cur = self.options[self.current]
        self._active = cur.threads
        self._down_s = self._budget / cur.p50_ms
        self._probe_s_thr = self.probe_slack * deadline / cur.p50_ms
        better = self.order[:self.rank[self.current]]
        self._up_s = {}  # context -> slowdown at or below which some more accurate option of it fits
        for th in self.threads:
            p50s = [self.options[i].p50_ms for i in better if self.options[i].threads == th]
            if p50s:
                self._up_s[th] = self._up_budget / min(p50s)

    def step(self, t: float, latency_ms: float, option: int, targets: Targets,
             system: SystemSample | None = None) -> int:
        th = self._thr_of[option]
        w = self.ratios[th]
        w.push(latency_ms * self._inv_p50[option])
        self.last_seen[th] = t
        if targets is not self._tg or option != self.current:
            if option != self.current:  # the manager ran something else (a fall-back)
                self.current = option
            self._prepare(targets)
        if self.probing and latency_ms > self._deadline:  # a probe that misses: back off, go down at once
            self.probing = False
            self.probe_wait *= 2.0
        active = self._active
        n = w.count
        s = w.ordered[int(0.95 * n)] if n >= self.min_samples else 0.0
        idle = self.idle_tail[active]
        if s < idle:
            s = idle
        if s > self._down_s:
            if s > self._hold_s or t >= self._hold_until:
                return self._go_down(t, s, system)
            return self.current  # nothing faster fitted a moment ago at about this slowdown

        # upward: some more accurate option fits with hysteresis -> after a dwell
        up_ok = False
        for uth, thr in self._up_s.items():
            s_th = s if uth == active else self._estimate(uth, t, s, system)
            if s_th <= thr:
                up_ok = True
                break
        if up_ok:
            if self.up_since is None:
                self.up_since = t
            if t - self.up_since >= self.dwell_s and t - self.last_switch_t >= self.min_dwell_s:
                slow = self.tail_slowdowns(t, active, system)
                r = self._first_fitting(slow, self._up_budget, self.rank[self.current])
                if r >= 0:
                    self.probe_wait = self.probe_s
                    return self._switch(self.order[r], t, targets)
            return self.current
        self.up_since = None

        # probing: slack persists but the model forbids going up
        if s <= self._probe_s_thr and self.rank[self.current] > 0:
            if self.slack_since is None:
                self.slack_since = t
            elif t - self.slack_since >= self.probe_wait and t - self.last_switch_t >= self.min_dwell_s:
                nxt = self.order[self.rank[self.current] - 1]
                if self.predicted_p95(nxt, self.tail_slowdowns(t, active, system)) <= self._deadline:
                    self.probing = True
                    return self._switch(nxt, t, targets)
        else:
            self.slack_since = None
        return self.current

    def _estimate(self, th: int, t: float, s_active: float, system: SystemSample | None) -> float:
        """Tail slowdown of a context we are not running: its own window if fresh, else the active one's
        scaled by the idle tails, times the sync penalty when its threads exceed the free CPUs."""
        w = self.ratios[th]
        if w.count >= self.min_samples and t - self.last_seen[th] <= self.stale_s:
            return max(w.quantile(0.95), self.idle_tail[th])
        est = s_active / self.idle_tail[self._active] * self.idle_tail[th]
        if th > 1:
            free = (system.n_cpus - system.others_busy) if (system is not None and system.ok) else None
            if free is None or th > free + 0.25:
                est *= self.sync_penalty
        return est

    def _go_down(self, t: float, s: float, system: SystemSample | None) -> int:
        slow = self.tail_slowdowns(t, self._active, system)
        r = self._first_fitting(slow, self._budget, len(self.order))
        choice = self.order[r] if r >= 0 else min(range(len(self.options)), key=lambda i: self.predicted_p95(i, slow))
        if choice != self.current:
            return self._switch(choice, t, self._tg)
        # already on the best we have: search again only if it gets 10 % worse or after 0.1 s
        self._hold_s, self._hold_until = s * 1.1, t + 0.1
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
        return {"policy": self.name, "margin": self.margin, "up_hysteresis": self.up_hysteresis,
                "dwell_s": self.dwell_s, "probe_s": self.probe_s}
