"""A stream of frames from a dataset's test split, served by a manager at a target rate while a
scenario runs: the experiment behind `dynadnn run` and `benchmarks/contention.py`.

Frames are released periodically (`fps`); a frame that is late starts at once and the schedule restarts
from it (no catch-up bursts). Images are pre-resized to every member's resolution once, so the latency
measured is the network's, not the resize's.
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


@dataclass
class Frames:
    """Test images, one per frame, pre-resized: `by_r[r][k]` is frame k at resolution r (1, C, r, r)."""

    by_r: dict[int, torch.Tensor]
    labels: torch.Tensor

    @classmethod
    def from_dataset(cls, data, resolutions, limit: int = 2000) -> "Frames":
        x = data.test_x[:limit]
        return cls({r: resize_batch(x, r).contiguous() for r in sorted(set(resolutions))}, data.test_y[:limit])

    def __len__(self) -> int:
        return int(self.labels.numel())

    def frame(self, k: int) -> dict[int, torch.Tensor]:
        k %= len(self)
        return {r: x[k:k + 1] for r, x in self.by_r.items()}


def run_stream(manager: RuntimeManager, frames: Frames, scenario: Scenario, duration_s: float, fps: float,
               progress=None) -> Trace:
    """Serve frames at `fps` for `duration_s` seconds while `scenario` runs; return the trace."""
    duration_s = seconds(duration_s, "duration")
    fps = number(fps, "fps", low=0.0, low_open=True, high=MAX_FPS)
    if not len(frames):
        raise UserError("frames: the data set's test split is empty; expected images to serve")
    manager.reset_records()
    period = 1.0 / fps
    correct = array("b")
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


def wait_for_tick(next_t: float, period: float) -> float:
    """Sleep until the frame due at `next_t` and return when the one after is due. A late frame restarts
    the clock from now: the stream never bursts to catch up."""
    now = clock()
    if now < next_t:
        time.sleep(next_t - now)
    else:
        next_t = now
    return next_t + period


def _serve(manager, frames, scenario, duration_s, period, correct, progress, fps) -> Trace:
    with ScenarioRunner(scenario, duration_s, manager=manager) as sc:  # phases' targets go to the manager
        manager.on_scenario(sc)
        k = 0
        labels, n_frames = frames.labels.tolist(), len(frames)
        next_t = clock()
        while not sc.done:
            next_t = wait_for_tick(next_t, period)
            logits = manager.predict(frames.frame(k))
            correct.append(int(logits.argmax(1)[0]) == labels[k % n_frames])
            k += 1
            if progress is not None and k % 50 == 0:
                progress(min(1.0, (clock() - sc.t_start) / duration_s))
        if sc.error is not None:
            raise sc.error
        return Trace.from_run(manager, sc, [bool(c) for c in correct], fps)
