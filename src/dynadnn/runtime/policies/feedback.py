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

from ..monitors import Window
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
        self.ratios = {t: Window(self.window_size) for t in self.threads}
        self.last_seen = {t: -1e18 for t in self.threads}
        self.idle_tail = {t: 1.0 for t in self.threads}
        for t in self.threads:  # profiled p95/p50 of the context: the tail ratio of an idle machine
            opts = [o for o in self.options if o.threads == t]
            self.idle_tail[t] = max(o.p95_ms / o.p50_ms for o in opts if o.p50_ms > 0)
        self.last_switch_t = -1e18
        self.up_since: float | None = None
        self.slack_since: float | None = None
        self.probe_wait = self.probe_s
        self.probing = False
        self.current = self.initial(targets) if start is None else start
        return self.current

    def initial(self, targets: Targets) -> int:
        """Before any measurement: the idle profile decides."""
        budget = targets.effective_deadline_ms() / (1.0 + self.margin)
        for i in self.order:
            if self.options[i].p95_ms <= budget:
                return i
        return fastest(self.options)

    # --- model -----------------------------------------------------------------------------------------
    def tail_slowdown(self, threads: int, t: float, active_threads: int, system: SystemSample | None) -> float:
        """Predicted p95 / profiled p50 for options of a context at time t."""
        w = self.ratios[threads]
        if w.count >= self.min_samples and t - self.last_seen[threads] <= self.stale_s:
            return max(w.quantile(0.95), self.idle_tail[threads])
        if threads == active_threads:
            return self.idle_tail[threads]
        base = self.tail_slowdown(active_threads, t, active_threads, system)
        base = base / self.idle_tail[active_threads] * self.idle_tail[threads]
        if threads > 1:
            free = (system.n_cpus - system.others_busy) if (system is not None and system.ok) else None
            if free is None or threads > free + 0.25:
                base *= self.sync_penalty
        return base

    def predicted_p95(self, option: int, slow: dict[int, float]) -> float:
        o = self.options[option]
        return o.p50_ms * slow[o.threads]

    # --- control ---------------------------------------------------------------------------------------
    def step(self, t: float, latency_ms: float, option: int, targets: Targets,
             system: SystemSample | None = None) -> int:
        ran = self.options[option]
        self.ratios[ran.threads].push(latency_ms / ran.p50_ms if ran.p50_ms > 0 else 1.0)
        self.last_seen[ran.threads] = t
        deadline = targets.effective_deadline_ms()
        budget = deadline / (1.0 + self.margin)
        up_budget = deadline / (1.0 + self.margin + self.up_hysteresis)

        active = self.options[self.current].threads
        slow = {th: self.tail_slowdown(th, t, active, system) for th in self.threads}
        pred_current = self.predicted_p95(self.current, slow)
        cur_rank = self.rank[self.current]

        if self.probing and latency_ms > deadline:  # a probe that misses: back off, go back down at once
            self.probing = False
            self.probe_wait *= 2.0
        choice = None
        for i in self.order:  # most accurate first
            if self.predicted_p95(i, slow) <= budget:
                choice = i
                break
        if choice is None:  # nothing fits: the option predicted fastest
            choice = min(range(len(self.options)), key=lambda i: self.predicted_p95(i, slow))

        if pred_current > budget or self.rank[choice] > cur_rank:
            # downward (or sideways to a faster context): at once
            if choice != self.current:
                return self._switch(choice, t)
            return self.current

        # upward: only with hysteresis, after a dwell
        up = None
        for i in self.order[:cur_rank]:
            if self.predicted_p95(i, slow) <= up_budget:
                up = i
                break
        if up is not None:
            if self.up_since is None:
                self.up_since = t
            if t - self.up_since >= self.dwell_s and t - self.last_switch_t >= self.min_dwell_s:
                self.probe_wait = self.probe_s
                return self._switch(up, t)
        else:
            self.up_since = None

        # probing: slack persists but the model forbids going up
        if cur_rank > 0 and pred_current <= self.probe_slack * deadline:
            if self.slack_since is None:
                self.slack_since = t
            elif t - self.slack_since >= self.probe_wait and t - self.last_switch_t >= self.min_dwell_s:
                nxt = self.order[cur_rank - 1]
                if self.predicted_p95(nxt, slow) <= deadline:
                    self.probing = True
                    return self._switch(nxt, t)
        else:
            self.slack_since = None
        return self.current

    def _switch(self, option: int, t: float) -> int:
        self.current = option
        self.last_switch_t = t
        self.up_since = None
        self.slack_since = None
        return option

    def force(self, option: int) -> None:
        self.current = option
        self.up_since = None
        self.slack_since = None

    def describe(self) -> dict:
        return {"policy": self.name, "margin": self.margin, "up_hysteresis": self.up_hysteresis,
                "dwell_s": self.dwell_s, "probe_s": self.probe_s}
