"""Platforms: the machine the runtime manager runs on, as sensors it reads and actuators it turns.

`local` is this Linux machine (CPU counters from /proc/stat, threads, affinity); `cpufreq` drives the Linux
cpufreq sysfs interface where the kernel exposes one (no caller yet: the energy work will use it). The
runtime depends on these, never the other way round.
"""

from .local import CpuTimes, LocalPlatform, cpu_count, read_proc_stat

__all__ = ["CpuTimes", "LocalPlatform", "cpu_count", "read_proc_stat"]
