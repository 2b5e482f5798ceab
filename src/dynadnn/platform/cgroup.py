"""A CPU-bandwidth cap on this process through a child control group that dynadnn creates and removes.

    cap = CpuCap()                      # root=/sys/fs/cgroup; tests point it at a fake tree in tmp_path
    cap.apply(0.25)                     # at most 25 % of all CPUs' time (0.5 CPU on a 2-CPU machine)
    cap.release()                       # the process back in its own group, the child group removed

The fraction is of ALL the machine's CPUs (`os.cpu_count()`): quota = fraction x CPUs x period. cgroup v1
(`ROOT/cpu/.../cpu.cfs_quota_us` and `cpu.cfs_period_us`, writing the pid to `cgroup.procs` moves every thread)
and v2 (`ROOT/.../cpu.max`, "QUOTA PERIOD") are both driven; the child group is made inside the group the
process is in now (read from /proc/PID/cgroup), named `dynadnn-cap-PID`. Where the tree is absent or not
writable, `apply` raises `CapUnavailable` with the reason, having undone what it did: the caller skips the
event and reports it, never crashes.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000      # the kernel's default CFS period
MIN_QUOTA_US = 1_000     # the kernel refuses a quota under 1 ms


class CapUnavailable(RuntimeError):
    """The cap cannot be applied here (no cpu controller, not writable, ...): skip and report."""


def own_group(text: str, version: int) -> str:
    """The process's group path for the cpu controller, from the text of /proc/PID/cgroup."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if version == 1 and "cpu" in parts[1].split(","):
            return parts[2] or "/"
        if version == 2 and parts[0] == "0" and parts[1] == "":
            return parts[2] or "/"
    raise CapUnavailable(f"no cgroup v{version} cpu entry in /proc/PID/cgroup")


def detect(root: Path) -> tuple[int, Path] | None:
    """(version, hierarchy root) of the cpu controller under `root`, or None."""
    for name in ("cpu", "cpu,cpuacct"):
        if (root / name / "cpu.cfs_quota_us").is_file():
            return 1, root / name
    ctl = root / "cgroup.controllers"
    if ctl.is_file() and "cpu" in ctl.read_text().split():
        return 2, root
    return None


class CpuCap:
    """One cap at a time on one process (this one by default); see the module docstring."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, pid: int | None = None, proc_cgroup: str | None = None):
        self.root = Path(root)
        self.pid = os.getpid() if pid is None else pid
        self._proc_cgroup = proc_cgroup  # the text of /proc/PID/cgroup (tests give a fake)
        self.group: Path | None = None   # the child group while a cap is on
        self.home: Path | None = None    # the group to move back to
        self.version = 0
        self.moved = False               # the process is in the child group

    def _locate(self) -> tuple[Path, int]:
        found = detect(self.root)
        if found is None:
            raise CapUnavailable(f"{self.root}: no cpu controller (cgroup v1 cpu or v2 cpu.max)")
        version, hier = found
        text = self._proc_cgroup
        if text is None:
            try:
                text = Path(f"/proc/{self.pid}/cgroup").read_text()
            except OSError as exc:
                raise CapUnavailable(f"/proc/{self.pid}/cgroup: {exc.strerror or exc}") from None
        return hier / own_group(text, version).lstrip("/"), version

    def apply(self, fraction: float, period_us: int = PERIOD_US) -> int:
        """Cap the process at `fraction` (0..1] of all CPUs' time; returns the quota in us. Re-applying
        changes the quota of the same group. Raises CapUnavailable (nothing left changed) when refused."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"cpu_quota: expected a fraction in (0, 1], got {fraction}")
        quota = max(MIN_QUOTA_US, int(round(fraction * (os.cpu_count() or 1) * period_us)))
        created = self.group is None
        try:
            if created:
                self.home, self.version = self._locate()
                self.group = self.home / f"dynadnn-cap-{self.pid}"
                self.group.mkdir(exist_ok=True)
            self._write_quota(quota, period_us)
            if created:
                self._write(self.group / "cgroup.procs", str(self.pid))
                self.moved = True
        except (OSError, CapUnavailable) as exc:
            if created:
                self.release()
            if isinstance(exc, CapUnavailable):
                raise
            raise CapUnavailable(f"{getattr(exc, 'filename', None) or self.root}: "
                                 f"{exc.strerror or exc}") from None
        return quota

    def _write_quota(self, quota: int, period_us: int) -> None:
        if self.version == 1:
            self._write(self.group / "cpu.cfs_period_us", str(period_us))
            self._write(self.group / "cpu.cfs_quota_us", str(quota))
        else:
            self._write(self.group / "cpu.max", f"{quota} {period_us}")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        if not path.is_file():  # a real cgroup directory makes its files itself; a plain directory does not
            raise OSError(2, "not a control file (no such cgroup file)", str(path))
        with open(path, "w") as f:
            f.write(text)

    def release(self) -> list[str]:
        """Move the process back to its group and remove the child group; returns problems (never raises)."""
        problems: list[str] = []
        group, self.group = self.group, None
        if group is None:
            return problems
        if self.moved and self.home is not None:
            self.moved = False
            try:
                self._write(self.home / "cgroup.procs", str(self.pid))
            except OSError as exc:
                problems.append(f"{self.home / 'cgroup.procs'}: {exc.strerror or exc}")
        try:
            group.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{group}: {exc.strerror or exc}")
        return problems

    @property
    def active(self) -> bool:
        return self.group is not None
