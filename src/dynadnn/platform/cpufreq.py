"""The Linux cpufreq sysfs interface (/sys/devices/system/cpu/cpuN/cpufreq): read the current and
available frequencies and governors, and set a frequency through the `userspace` governor or by clamping
scaling_max_freq. Many VMs (this one included) expose no cpufreq directory: `CpuFreq.available()` says
so and the manager then simply has no frequency knob. Tests drive it against a fake sysfs tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SYSFS_CPU = Path("/sys/devices/system/cpu")


class CpuFreqError(UserError):
    """A cpufreq read or write failed (missing file, permission, value outside the policy)."""


@dataclass(frozen=True)
class CpuFreqState:
    cpu: int
    governor: str
    cur_khz: int
    min_khz: int
    max_khz: int
    available_khz: tuple[int, ...]
    available_governors: tuple[str, ...]


class CpuFreq:
    """One cpufreq backend rooted at `root` (the real sysfs by default)."""

    def __init__(self, root: Path | str = SYSFS_CPU):
        self.root = Path(root)

    def cpus(self) -> list[int]:
        out = []
        for d in self.root.glob("cpu[0-9]*"):
            if (d / "cpufreq").is_dir() and d.name[3:].isdigit():
                out.append(int(d.name[3:]))
        return sorted(out)

    def available(self) -> bool:
        return bool(self.cpus())

    def _dir(self, cpu: int) -> Path:
        d = self.root / f"cpu{cpu}" / "cpufreq"
        if not d.is_dir():
            raise CpuFreqError(f"{d}: no cpufreq directory (the kernel exposes no frequency control for cpu{cpu})")
        return d

    def _read(self, cpu: int, name: str) -> str:
        path = self._dir(cpu) / name
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise CpuFreqError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def _write(self, cpu: int, name: str, value: str) -> None:
        path = self._dir(cpu) / name
        try:
            path.write_text(value)
        except OSError as exc:
            raise CpuFreqError(f"{path}: cannot write {value!r} ({exc.strerror or exc})") from None

    def _read_int(self, cpu: int, name: str) -> int:
        text = self._read(cpu, name)
        try:
            return int(text)
        except ValueError:
            raise CpuFreqError(f"{self._dir(cpu) / name}: expected an integer in kHz, got {text!r}") from None

    def state(self, cpu: int) -> CpuFreqState:
        avail = ()
        if (self._dir(cpu) / "scaling_available_frequencies").exists():
            avail = tuple(sorted(int(v) for v in self._read(cpu, "scaling_available_frequencies").split()))
        govs = ()
        if (self._dir(cpu) / "scaling_available_governors").exists():
            govs = tuple(self._read(cpu, "scaling_available_governors").split())
        return CpuFreqState(cpu=cpu, governor=self._read(cpu, "scaling_governor"),
                            cur_khz=self._read_int(cpu, "scaling_cur_freq"),
                            min_khz=self._read_int(cpu, "scaling_min_freq"),
                            max_khz=self._read_int(cpu, "scaling_max_freq"),
                            available_khz=avail, available_governors=govs)

    def set_frequency(self, cpu: int, khz: int) -> int:
        """Pin `cpu` to the nearest available frequency not above `khz`; return the frequency set. Uses the
        userspace governor when offered, else clamps scaling_max_freq (works with any governor)."""
        st = self.state(cpu)
        target = khz
        if st.available_khz:
            below = [f for f in st.available_khz if f <= khz]
            if not below:
                raise CpuFreqError(f"cpu{cpu}: {khz} kHz is below the lowest available frequency "
                                   f"{st.available_khz[0]} kHz")
            target = below[-1]
        if "userspace" in st.available_governors:
            if st.governor != "userspace":
                self._write(cpu, "scaling_governor", "userspace")
            self._write(cpu, "scaling_setspeed", str(target))
        else:
            self._write(cpu, "scaling_max_freq", str(target))
        return target

    def set_governor(self, cpu: int, governor: str) -> None:
        st = self.state(cpu)
        if st.available_governors and governor not in st.available_governors:
            raise CpuFreqError(f"cpu{cpu}: governor {governor!r} not offered; available: "
                               f"{', '.join(st.available_governors)}")
        self._write(cpu, "scaling_governor", governor)
