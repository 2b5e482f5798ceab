"""A stream of frames from a dataset's test split, served by a manager at a target rate while a
scenario runs: the experiment behind `dynadnn run` and `benchmarks/contention.py`.

Frames are released as a camera releases them, on a fixed grid (`fps`), whatever the app is doing (`Pacer`).
When the app is free it takes the latest released frame; frames superseded while it was busy are dropped
(they get no answer: each counts as a missed deadline). The latency of a served frame counts from its
release, so waiting for the CPU (co-runners, a smaller CPU set, a bandwidth cap) or for the previous frame
is part of it, as it is for a real app. Images are pre-resized to every member's resolution once, so the
latency measured is the network's and the wait's, not the resize's.
"""

from __future__ import annotations

import gc
import time
from array import array
from dataclasses import dataclass

import torch

from ..data import resize_batch
from ..errors import UserError
from ..validate import number, seconds
from .manager import RuntimeManager
from .options import MAX_FPS
from .scenario import Scenario, ScenarioRunner
from .trace import Trace

clock = time.perf_counter
PR_SET_TIMERSLACK = 29  # <linux/prctl.h>


@dataclass
class Frames:
    """Test images, `batch` per frame, pre-resized: `frame(k)[r]` is frame k at resolution r (batch, C, r, r)."""

    by_r: dict[int, torch.Tensor]
    labels: torch.Tensor
    batch: int = 1

    @classmethod
    def from_dataset(cls, data, resolutions, limit: int = 2000, batch: int = 1) -> "Frames":
        x = data.test_x[:max(limit, batch)]
        return cls({r: resize_batch(x, r).contiguous() for r in sorted(set(resolutions))}, data.test_y[:len(x)], batch)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def _start(self, k: int) -> int:
        return (k * self.batch) % max(1, len(self) - self.batch + 1)

    def frame(self, k: int) -> dict[int, torch.Tensor]:
        i = self._start(k)
        return {r: x[i:i + self.batch] for r, x in self.by_r.items()}

    def labels_of(self, k: int) -> torch.Tensor:
        i = self._start(k)
        return self.labels[i:i + self.batch]


def run_stream(manager: RuntimeManager, frames: Frames, scenario: Scenario, duration_s: float, fps: float,
               progress=None) -> Trace:
    """Serve frames at `fps` for `duration_s` seconds while `scenario` runs; return the trace."""
    duration_s = seconds(duration_s, "duration")
    fps = number(fps, "fps", low=0.0, low_open=True, high=MAX_FPS)
    if len(frames) < frames.batch:
        raise UserError(f"frames: the data set's test split has {len(frames)} image(s); expected at least a "
                        f"frame's batch ({frames.batch})")
    manager.reset_records()
    period = 1.0 / fps
    correct = array("d")  # per frame: the fraction of its images classified right
    # Collector pauses would land inside inferences: move everything that exists now out of the
    # collector's sight and make young-generation passes rare for the run (the loop creates no cycles).
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(50_000, threshold[1], threshold[2])
    try:
        return _serve(manager, frames, scenario, duration_s, period, correct, progress, fps)
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class Pacer:
    """A camera's frame clock: frame k is released at t0 + k x period. `next()` returns the release time
    of the frame to serve now: the next one, after sleeping until it is released, or, when the app is
    late, the latest one already released; those it skipped are `dropped` (their release times)."""

    def __init__(self, period: float, t0: float | None = None):
        self.period = period
        self.t0 = clock() if t0 is None else t0
        self.k = 0  # the next frame on the grid not yet served or dropped
        self.dropped = array("d")
        set_timer_slack()

    def next(self) -> float:
        due = self.t0 + self.k * self.period
        now = clock()
        if now < due:
            time.sleep(due - now)
            k = self.k
        else:
            k = max(self.k, int((now - self.t0) / self.period))
            for j in range(self.k, k):
                self.dropped.append(self.t0 + j * self.period)
        self.k = k + 1
        return self.t0 + k * self.period


def set_timer_slack(ns: int = 1000) -> None:
    """Wake-ups from `time.sleep` within ~1 us instead of Linux's default 50 us slack (PR_SET_TIMERSLACK,
    for the calling thread): a frame period can be a fraction of a millisecond. Best effort."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the default slack
        pass


def _serve(manager, frames, scenario, duration_s, period, correct, progress, fps) -> Trace:
    with ScenarioRunner(scenario, duration_s, manager=manager) as sc:  # phases' targets go to the manager
        manager.on_scenario(sc)
        n = 0
        pacer = Pacer(period)
        while not sc.done:
            released = pacer.next()
            k = pacer.k - 1  # the frame's index on the grid: which images it shows
            logits = manager.predict(frames.frame(k), released)
            correct.append(float((logits.argmax(1) == frames.labels_of(k)).float().mean()))
            n += 1
            if progress is not None and n % 50 == 0:
                progress(min(1.0, (clock() - sc.t_start) / duration_s))
        if sc.error is not None:
            raise sc.error
        return Trace.from_run(manager, sc, correct.tolist(), fps, dropped=pacer.dropped)
