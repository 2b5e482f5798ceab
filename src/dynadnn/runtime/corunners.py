"""The competing processes a scenario starts ("co-runners"), each a real process at the app's own priority.

Kinds (fields beyond `kind`, with defaults):

- `busy`: a Python busy loop, one CPU-bound thread.
- `matmul` (`threads` 1, `size` 384): numpy float32 n x n products back to back on `threads` BLAS threads.
- `paced_app` (`fps` 30, `threads` 1, `size` 384, `layers` 4): a second inference app at equal priority: a
  small numpy model (`layers` n x n float32 layers with tanh) run on one n x n input per frame, frames
  released every 1/fps s, a late frame starting at once (no catch-up bursts), as dynadnn's own stream does.
- `membw` (`threads` 1, `size_mb` 0 = 4 x the last-level cache): a memory-bandwidth hog: streaming copies
  between two float64 buffers of `size_mb` MiB each (each several times the LLC, so every copy goes to
  DRAM), split over `threads` threads.

Any kind takes `"pin": "app"`: the co-runner's CPU set is the app's CPUs at the time it starts (set by the
child on itself before it imports numpy, so its BLAS and copy threads inherit it). Every co-runner runs in its
own process group (`start_new_session`), is killed with SIGKILL to the group by `CompetitorPool.stop_all`,
and exits by itself within ~0.2 s when its parent disappears.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..validate import MAX_PROCESSES

KINDS = ("busy", "matmul", "paced_app", "membw")
MAX_MATMUL = 4096       # a matmul's (or paced app's) n: three n x n float32 matrices are 192 MiB at the cap
MAX_MEMBW_MB = 4096     # a membw buffer (two of them are allocated)
MAX_THREADS = 4 * MAX_PROCESSES  # threads all co-runners of one phase may start together
LLC_FALLBACK_MB = 32    # when /sys does not say
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")

_HEAD = """
import os, sys, time
parent = int(sys.argv[1])  # given by the parent: it may already be gone when this line runs
pin = os.environ.get("DYNADNN_PIN")
if pin:
    os.sched_setaffinity(0, {int(c) for c in pin.split(",")})
"""

_BUSY = _HEAD + """
while True:
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        pass
    if os.getppid() != parent:
        break
"""

_MATMUL = _HEAD + """
import numpy as np
n = int(sys.argv[2])
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

_PACED = _HEAD + """
import numpy as np
n, layers, period = int(sys.argv[2]), int(sys.argv[3]), 1.0 / float(sys.argv[4])
rng = np.random.default_rng(0)
ws = [(rng.standard_normal((n, n)) / n ** 0.5).astype(np.float32) for _ in range(layers)]
x = rng.standard_normal((n, n)).astype(np.float32)
next_t = last = time.perf_counter()
while True:
    now = time.perf_counter()
    if now < next_t:
        time.sleep(next_t - now)
    else:
        next_t = now
    next_t += period
    h = x
    for w in ws:
        h = np.tanh(h @ w)
    if time.perf_counter() - last > 0.2:
        last = time.perf_counter()
        if os.getppid() != parent:
            break
"""

_MEMBW = _HEAD + """
import threading
import numpy as np
n, k = int(sys.argv[2]) * 2 ** 17, int(sys.argv[3])  # float64 elements per buffer, threads
src, dst = np.ones(n), np.empty(n)
def copy(a, b):
    while True:
        np.copyto(dst[a:b], src[a:b])
step = n // k
for i in range(k):
    threading.Thread(target=copy, args=(i * step, n if i == k - 1 else (i + 1) * step), daemon=True).start()
while os.getppid() == parent:
    time.sleep(0.2)
"""


@functools.cache
def llc_mb(cache_dir: Path = CACHE_DIR) -> float:
    """The last-level cache of CPU 0 in MiB (the highest `level` under cache_dir), or LLC_FALLBACK_MB; read
    once per folder (`Competitor.buffer_mb` asks at every check and start)."""
    best = (0, 0.0)
    try:
        for idx in cache_dir.glob("index*"):
            level = int((idx / "level").read_text())
            text = (idx / "size").read_text().strip().upper()
            scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:], 1 / 2**20)
            size = float(text.rstrip("KMG")) * scale
            best = max(best, (level, size))
    except (OSError, ValueError):
        return float(LLC_FALLBACK_MB)
    return best[1] if best[1] > 0 else float(LLC_FALLBACK_MB)


@dataclass(frozen=True)
class Competitor:
    kind: str
    threads: int = 1
    size: int = 384
    pin: str | None = None     # "app": on the app's CPUs at start
    fps: float = 30.0          # paced_app
    layers: int = 4            # paced_app
    size_mb: int = 0           # membw: MiB per buffer, 0 = 4 x LLC

    def buffer_mb(self) -> int:
        return self.size_mb or int(round(4 * llc_mb()))

    def memory_bytes(self) -> int:
        """What the co-runner allocates (its buffers), for the up-front cap."""
        if self.kind == "matmul":
            return 3 * 4 * self.size ** 2
        if self.kind == "paced_app":
            return (self.layers + 2) * 4 * self.size ** 2
        if self.kind == "membw":
            return 2 * self.buffer_mb() * 2**20
        return 0

    def command(self, cpus: list[int] | None = None) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env.pop("DYNADNN_PIN", None)
        if cpus:
            env["DYNADNN_PIN"] = ",".join(str(c) for c in cpus)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        head = [sys.executable, "-c"]
        parent = str(os.getpid())
        if self.kind == "busy":
            return head + [_BUSY, parent], env
        if self.kind == "matmul":
            return head + [_MATMUL, parent, str(self.size)], env
        if self.kind == "paced_app":
            return head + [_PACED, parent, str(self.size), str(self.layers), repr(self.fps)], env
        if self.kind == "membw":
            return head + [_MEMBW, parent, str(self.buffer_mb()), str(self.threads)], env
        raise UserError(f"competitor: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    def label(self) -> str:
        pin = " pinned" if self.pin else ""
        if self.kind == "busy":
            return "busy" + pin
        if self.kind == "matmul":
            return f"matmul x{self.threads}t" + pin
        if self.kind == "paced_app":
            return f"paced_app {self.fps:g}fps {self.layers}x{self.size} x{self.threads}t" + pin
        return f"membw {self.buffer_mb()}MiB x{self.threads}t" + pin


def check_count(n: int, where: str) -> None:
    """Refuse a phase of more than MAX_PROCESSES co-runners."""
    if n > MAX_PROCESSES:
        raise UserError(f"{where}: {n} competing processes asked for, at most {MAX_PROCESSES} "
                        "allowed (dynadnn.validate.MAX_PROCESSES)")


def check_load(comps: tuple[Competitor, ...] | list[Competitor], where: str) -> None:
    """Refuse, before anything starts, a phase of more than MAX_PROCESSES co-runners, MAX_THREADS threads,
    or buffers needing more than half of this machine's free memory."""
    check_count(len(comps), where)
    n_threads = sum(c.threads for c in comps)
    if n_threads > MAX_THREADS:
        raise UserError(f"{where}: {n_threads} competing threads asked for, at most {MAX_THREADS} allowed "
                        "(dynadnn.runtime.corunners.MAX_THREADS)")
    need = sum(c.memory_bytes() for c in comps)
    if not need:
        return
    import psutil

    free = psutil.virtual_memory().available
    if need > free // 2:
        raise UserError(f"{where}: the co-runners' buffers need {need / 2**20:.0f} MiB, more than half of "
                        f"this machine's free memory ({free / 2**20:.0f} MiB)")


class CompetitorPool:
    """The competing processes alive now. Each in its own process group; `stop_all` kills every group."""

    def __init__(self) -> None:
        self.procs: list[tuple[Competitor, subprocess.Popen]] = []
        self.started = 0

    def start(self, comp: Competitor, app_cpus: list[int] | None = None,
              all_cpus: list[int] | None = None) -> subprocess.Popen:
        """Start one co-runner: a pinned one (`pin: app`) on `app_cpus` (default: this thread's CPUs now),
        any other on `all_cpus` (default: inherited; give the app's initial set when the app's own CPU set
        may be shrunk, or an unpinned co-runner would inherit the shrunk set)."""
        if len(self.procs) >= MAX_PROCESSES:  # the last guard: parse_scenario and check_limits refuse earlier
            raise UserError(f"competitors: at most {MAX_PROCESSES} may run at once (dynadnn.validate.MAX_PROCESSES)")
        cpus = all_cpus
        if comp.pin == "app":
            cpus = sorted(app_cpus if app_cpus else os.sched_getaffinity(0))
        cmd, env = comp.command(cpus)
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
