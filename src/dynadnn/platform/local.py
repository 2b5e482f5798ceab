"""This Linux machine: CPU time counters from /proc/stat and the process's own CPU time (sensors), the
intra-op thread count and the CPU affinity of the process (actuators).

Why /proc/stat and not psutil.cpu_percent: one read of a small text file per sampling period, no hidden
global state, and the parser can be pointed at a fake file in tests.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..validate import available_cpus

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU counters (seconds) at one instant: busy and total over all CPUs, and this process's
    own user+system time."""

    wall: float
    busy: float
    total: float
    own: float


def parse_proc_stat(text: str) -> tuple[float, float]:
    """(busy, total) seconds from the aggregate `cpu` line of /proc/stat. Idle and iowait count as idle."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(v) for v in line.split()[1:]]
            if len(fields) < 4:
                break
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            # user nice system idle iowait irq softirq steal guest guest_nice; guest is already in user
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            total = sum(fields[:8])
            return (total - idle) / hz, total / hz
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def read_proc_stat(path: Path = PROC_STAT) -> CpuTimes:
    """One sample of the machine's and this process's CPU time. Raises OSError/ValueError when the file
    cannot be read; callers that must keep running catch it."""
    busy, total = parse_proc_stat(Path(path).read_text())
    t = os.times()
    return CpuTimes(wall=time.monotonic(), busy=busy, total=total, own=t.user + t.system)


def cpu_load_between(a: CpuTimes, b: CpuTimes, n_cpus: int) -> tuple[float, float]:
    """(total busy CPUs, busy CPUs used by others than this process) between two samples, in CPUs
    (0..n_cpus). The second is what competing processes take from us."""
    dt_total = b.total - a.total
    if dt_total <= 0:
        return 0.0, 0.0
    busy_frac = (b.busy - a.busy) / dt_total
    busy_cpus = busy_frac * n_cpus
    wall = max(b.wall - a.wall, 1e-6)
    own_cpus = max(0.0, (b.own - a.own) / wall)
    return busy_cpus, max(0.0, min(float(n_cpus), busy_cpus - own_cpus))


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware): `validate.available_cpus`."""
    return available_cpus()


class LocalPlatform:
    """Knobs of this machine the manager may turn. Each setter raises OSError/RuntimeError when refused;
    the manager logs that and keeps its previous setting."""

    name = "local"

    def __init__(self) -> None:
        self.n_cpus = cpu_count()
        try:
            self._initial_affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._initial_affinity = set(range(self.n_cpus))

    @property
    def cpus(self) -> list[int]:
        return sorted(self._initial_affinity)

    def set_torch_threads(self, n: int) -> None:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def set_affinity(self, cpus: set[int] | list[int]) -> None:
        os.sched_setaffinity(0, set(cpus))

    def restore_affinity(self) -> None:
        try:
            os.sched_setaffinity(0, self._initial_affinity)
        except (AttributeError, OSError):
            pass

    def lock_memory(self) -> None:
        """Keep every page of this process resident (mlockall, current and future pages), as real-time
        serving does. Why: a kernel reclaiming "cold" pages (this VM runs DAMON with a pageout scheme) takes
        away pages the serving path touches only between frames, and the next frame stalls 50-700 us on
        them; with the pages locked those stalls went from ~1-5 % of frames to < 1 % here. Raises OSError
        when refused (RLIMIT_MEMLOCK for a non-root user)."""
        libc = _libc()
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mlockall refused: {os.strerror(err)} (RLIMIT_MEMLOCK, see `ulimit -l`)")

    def unlock_memory(self) -> None:
        _libc().munlockall()

    def describe(self) -> dict:
        return {"platform": self.name, "cpus": self.cpus, "simulated": False}


MCL_CURRENT, MCL_FUTURE = 1, 2


def thread_ids(pid: int | None = None) -> list[int]:
    """Every thread of a process (this one by default), from /proc/PID/task."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid or os.getpid()}/task"))
    except OSError:
        return [pid or os.getpid()]


class ProcessAffinity:
    """The CPU set of a whole process, every thread of it (`os.sched_setaffinity(0, ...)` moves only the
    calling thread, and torch's and onnxruntime's pools are threads of their own): shrink it, grow it back.

        aff = ProcessAffinity()
        aff.limit(1)      # every thread on the first CPU of the set the process started with
        aff.restore()     # every thread back on the set it had before the first `limit`

    Threads started after a `limit` inherit their creator's set; `restore` puts them on the process's
    initial set. Raises OSError when the kernel refuses (the caller skips the event and reports it)."""

    def __init__(self, pid: int | None = None):
        self.pid = pid or os.getpid()
        self.initial = sorted(os.sched_getaffinity(self.pid))
        self._saved: dict[int, set[int]] | None = None

    def current(self) -> list[int]:
        return sorted(os.sched_getaffinity(self.pid))

    def limit(self, n: int) -> list[int]:
        """Every thread on the first `n` CPUs of the initial set (all of it if it has fewer); returns them."""
        cpus = set(self.initial[:max(1, n)])
        tids = thread_ids(self.pid)
        if self._saved is None:
            self._saved = {}
            for tid in tids:
                try:
                    self._saved[tid] = os.sched_getaffinity(tid)
                except OSError:
                    pass
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread ended meanwhile
                pass
        return sorted(cpus)

    def restore(self) -> list[str]:
        """Every thread back where it was before the first `limit`; returns problems (never raises)."""
        saved, self._saved = self._saved, None
        if saved is None:
            return []
        problems = []
        for tid in thread_ids(self.pid):
            try:
                os.sched_setaffinity(tid, saved.get(tid, set(self.initial)))
            except ProcessLookupError:
                pass
            except OSError as exc:
                problems.append(f"thread {tid}: {exc.strerror or exc}")
        return problems


def _libc():
    return ctypes.CDLL(None, use_errno=True)
